"""Training loop: end to end, exact resume, SIGTERM, corrupt checkpoints, CLI."""

import glob
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from benchmarks import common
from xmcgan_jax import config_base
from xmcgan_jax import run_dir
from xmcgan_jax.training import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', '*.py')))


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


def _tiny(data_dir, **overrides):
  config = common.load_config(os.path.join(ROOT, 'configs', 'tiny.py'))
  config.data_dir = data_dir
  config.update(overrides)
  return config


def _arrays(state):
  return [np.asarray(x) for x in jax.tree.leaves(state)]


@pytest.fixture(scope='module')
def straight_and_resumed(tmp_path_factory, data_dir):
  """4 steps in one go, and the same run resumed (fresh train) from its
  step-2 checkpoint, as after a kill between the two checkpoints."""
  straight_dir = str(tmp_path_factory.mktemp('straight'))
  straight = train.train(_tiny(data_dir), straight_dir)
  resumed_dir = str(tmp_path_factory.mktemp('resumed'))
  checkpoints = os.path.join(resumed_dir, 'checkpoints')
  shutil.copytree(os.path.join(straight_dir, 'checkpoints'), checkpoints)
  shutil.rmtree(os.path.join(checkpoints, '4'))
  assert run_dir.Checkpointer(checkpoints, keep=2).all_steps() == [2]
  resumed = train.train(_tiny(data_dir), resumed_dir)
  return straight, resumed, resumed_dir


def test_end_to_end_writes_checkpoints_events_and_samples(
    straight_and_resumed):
  _, resumed, workdir = straight_and_resumed
  assert int(resumed.step) == 4
  steps = run_dir.Checkpointer(os.path.join(workdir, 'checkpoints'),
                                     keep=2).all_steps()
  assert steps == [2, 4]
  assert glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))
  for name in ('real', 'generated', 'ema'):
    pngs = glob.glob(os.path.join(workdir, 'samples', f'{name}_*.png'))
    assert pngs and os.path.getsize(pngs[0]) > 1000


def test_shapes_confusion_counts_every_captioned_object(straight_and_resumed,
                                                        tmp_path):
  """benchmarks/shapes_confusion.py on a trained run: per generator, its
  counts cover each captioned object once."""
  from benchmarks import shapes_confusion  # pylint: disable=g-import-not-at-top
  from xmcgan_jax.eval import shapes_oracle  # pylint: disable=g-import-not-at-top
  # A copy: the tool caches its (here briefly trained) oracle in the run.
  workdir = str(tmp_path / 'run')
  shutil.copytree(straight_and_resumed[2], workdir)
  out = shapes_confusion.main(['--workdir', workdir, '--count', '8',
                               '--oracle_steps', '20'])
  config = run_dir.read_config(workdir)
  _, truth, _ = shapes_oracle.validation_set(
      8, config.image_size, grid=config.shapes_grid,
      max_objects=config.shapes_max_objects)
  rows = [line.split(' | ') for line in out.splitlines()
          if line.startswith(('| raw | ', '| ema | ')) and 'read' not in line]
  for generator in ('raw', 'ema'):
    counts = [[int(v) for v in r[2:6]] for r in rows
              if r[0] == f'| {generator}' and len(r) == 7]
    assert len(counts) == 3
    assert sum(map(sum, counts)) == int(np.sum(truth[..., 0] > 0))
    for shape, row in enumerate(counts, 1):
      assert sum(row) == int(np.sum(truth[..., 0] == shape))


def test_d_attributes_scores_every_class_as_separate_d_calls(
    straight_and_resumed):
  """benchmarks/d_attributes.py on a trained run: swaps change one word of
  one class; D's hard-negative scores of the swaps equal D called with each
  swap as the caption; the table has one row per class of the 2x2 task."""
  from benchmarks import d_attributes  # pylint: disable=g-import-not-at-top
  from xmcgan_jax.data import shapes  # pylint: disable=g-import-not-at-top
  from xmcgan_jax.eval import shapes_oracle  # pylint: disable=g-import-not-at-top
  from xmcgan_jax.sampling import sample  # pylint: disable=g-import-not-at-top
  caption = 'a small red circle at the top left'
  assert d_attributes.swaps(caption, ['circle', 'square', 'triangle']) == [
      'a small red square at the top left',
      'a small red triangle at the top left']
  assert d_attributes.swaps(caption, ['middle', 'center']) == []
  workdir = straight_and_resumed[2]
  out = d_attributes.main(['--workdir', workdir, '--count', '8'])
  rows = [line.split(' | ') for line in out.splitlines()[2:]]
  assert [r[0].strip('| ') for r in rows] == list(shapes.WORD_CLASS_NAMES)
  for row, words in zip(rows, shapes.WORD_CLASSES):
    assert int(row[1]) == len(words.split()) - 1
    assert all(0 <= float(v.strip(' |')) <= 100 for v in row[2:])

  sampler = sample.Sampler.from_workdir(workdir)
  real, _, captions = shapes_oracle.validation_set(
      4, sampler.config.image_size, grid=sampler.config.shapes_grid,
      max_objects=sampler.config.shapes_max_objects)
  swapped = [d_attributes.swaps(c, shapes.SHAPES) for c in captions]
  _, sentence = sampler.text_features(captions)
  flat = sampler.text_features([s for pair in swapped for s in pair])[1]
  discriminator, variables = d_attributes.restore_discriminator(
      sampler, sentence.shape[-1])
  true, other = d_attributes.sentence_scores(
      discriminator, variables, real, sentence, flat.reshape(4, 2, -1))
  for k in range(2):
    alone, _ = d_attributes.sentence_scores(
        discriminator, variables, real, flat.reshape(4, 2, -1)[:, k],
        flat.reshape(4, 2, -1)[:, :1])
    np.testing.assert_allclose(other[:, k], alone, rtol=1e-4, atol=1e-5)
  assert not np.allclose(true, other[:, 0])
  sampler.close()


def test_exact_resume(straight_and_resumed):
  straight, resumed, _ = straight_and_resumed
  for a, b in zip(_arrays(straight), _arrays(resumed)):
    np.testing.assert_array_equal(a, b)


def test_corrupt_latest_checkpoint_falls_back(straight_and_resumed, tmp_path,
                                              caplog, capsys):
  straight, _, workdir = straight_and_resumed
  copy = str(tmp_path / 'checkpoints')
  shutil.copytree(os.path.join(workdir, 'checkpoints'), copy)
  for path in glob.glob(os.path.join(copy, '4', 'state', '**', '*'),
                        recursive=True):
    if os.path.isfile(path) and 'ocdbt' in path:
      with open(path, 'wb') as f:
        f.write(b'garbage')
  checkpointer = run_dir.Checkpointer(copy, keep=2)
  with caplog.at_level('WARNING'):
    step, state, positions = checkpointer.restore_latest(straight)
  assert step == 2 and int(state.step) == 2
  assert positions[0] == 2 * 8 * 2  # 2 steps of 2 sub-batches of 8.
  assert 'step 4' in caplog.text and 'unreadable' in caplog.text
  # One warning line, not TensorStore's abandoned-read tracebacks.
  (warning,) = [r.getMessage() for r in caplog.records
                if 'unreadable' in r.getMessage()]
  assert '\n' not in warning
  assert 'Event loop is closed' not in capsys.readouterr().err


def _documented_overrides(path):
  """The --config.KEY=VALUE overrides of a config's documented command."""
  docstring = open(path).read().split('"""')[1].replace('\\\n', ' ')
  commands = [line for line in docstring.splitlines()
              if 'python -m xmcgan_jax.main' in line]
  assert len(commands) == 1, (path, commands)
  return [arg[len('--config.'):].split('=', 1)
          for arg in shlex.split(commands[0]) if arg.startswith('--config.')]


def test_every_config_validates_with_its_documented_command():
  """Each configs/*.py, with the overrides its docstring's command gives,
  passes validate: no documented command can fail on a config error."""
  names = {os.path.basename(p) for p in CONFIGS}
  assert {'shapes.py', 'coco.py', 'coco_128.py', 'ln_coco.py',
          'ln_openimages.py', 'tiny.py'} <= names
  for path in CONFIGS:
    config = common.load_config(path)
    for key, value in _documented_overrides(path):
      holder = config
      *parents, name = key.split('.')
      for parent in parents:
        holder = holder[parent]
      holder[name] = type(holder[name])(value)
    config_base.validate(config, num_devices=8)


@pytest.mark.parametrize('weight,returncode', [(1.0, 2), (0.0, None)])
def test_ln_coco_without_image_encoder_needs_its_weight_at_zero(
    tmp_path, weight, returncode):
  """A loss term that cannot run is an error naming both fields."""
  config = common.load_config(os.path.join(ROOT, 'configs', 'ln_coco.py'))
  config.manual_dir = str(tmp_path)
  config.image_encoder.name = 'none'
  config.loss_weights.image_pretrained = weight
  if returncode is None:
    config_base.validate(config, num_devices=8)
    return
  with pytest.raises(ValueError, match=r'loss_weights.image_pretrained=1.0'
                     r".*image_encoder.name='none'"):
    config_base.validate(config, num_devices=8)
  result = subprocess.run(
      [sys.executable, '-m', 'xmcgan_jax.main', '--config=configs/ln_coco.py',
       f'--workdir={tmp_path}/w', f'--config.manual_dir={tmp_path}',
       '--config.image_encoder.name=none'], cwd=ROOT, capture_output=True,
      text=True, timeout=300)
  assert result.returncode == returncode, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert lines[-1].startswith('error: config.loss_weights.image_pretrained='
                              '1.0:') and 'image_encoder.name' in lines[-1]
  assert 'Traceback' not in result.stderr


@pytest.mark.parametrize('field,value,message', [
    ('batch_size', 12, 'batch_size=12.*not divisible by the 8 devices'),
    ('dataset', 'imagenet', 'dataset=.imagenet.*unknown dataset'),
    ('image_size', 96, 'image_size=96.*no channel schedule'),
    ('bn_group', 'pod', 'bn_group'),
    ('contrastive_negatives', 'cross', 'contrastive_negatives'),
    ('shapes_grid', 4, 'shapes_grid=4.*2x2'),
    ('shapes_max_objects', 0, r'shapes_max_objects=0.*\[1, 9\]'),
    ('lr_decay_steps', 10**9, 'lr_decay_steps=.*num_train_steps'),
    ('g_attention_resolution', 64, 'g_attention_resolution=64.*below'),
    ('loss_weights.r1', -1.0, 'loss_weights.r1=-1.0.*positive'),
])
def test_bad_config_fields_are_named(data_dir, field, value, message):
  config = _tiny(data_dir)
  config.update_from_flattened_dict({field: value})
  with pytest.raises(ValueError, match=message):
    config_base.validate(config, num_devices=8)
  with pytest.raises(ValueError, match=message):
    train.train(config, '/nonexistent/never/written')


def test_mirror_pairs_need_an_even_batch(data_dir):
  config = _tiny(data_dir, mirror_pairs=True, batch_size=9)
  with pytest.raises(ValueError, match='batch_size=9.*mirror_pairs'):
    config_base.validate(config, num_devices=1)
  config = _tiny(data_dir, mirror_pairs=True, shape_pairs=True, batch_size=6)
  with pytest.raises(ValueError, match='batch_size=6.*divisible by 4'):
    config_base.validate(config, num_devices=1)
  config = _tiny(data_dir, shape_pairs=True, dataset='coco')
  with pytest.raises(ValueError, match="shape_pairs.*'coco'"):
    config_base.validate(config, num_devices=1)


def test_missing_weights_fail_before_compiling(data_dir, tmp_path):
  config = _tiny(data_dir, text_encoder=str(tmp_path / 'no_such_bert'))
  with pytest.raises(FileNotFoundError, match='no_such_bert'):
    train.train(config, str(tmp_path / 'w'))
  config = _tiny(data_dir)
  config.image_encoder.name = 'vgg19'
  config.image_encoder.weights = str(tmp_path / 'vgg19.h5')
  with pytest.raises(FileNotFoundError, match='image_encoder.weights'):
    train.train(config, str(tmp_path / 'w'))
  config = _tiny(data_dir, image_size=128, max_tokens=600)
  with pytest.raises(ValueError, match='max_tokens=600'):
    train.train(config, str(tmp_path / 'w'))


def test_local_weight_files_are_checked_without_tensorflow(tmp_path):
  """The CLI reports a missing local weight file or text encoder before
  importing TF, and leaves URLs (which need TF) to training setup."""
  script = '\n'.join([
      'import sys',
      'from xmcgan_jax import config_base, errors, run_dir',
      'config = config_base.get_base_config()',
      "config.inception_weights = 'gs://no-such-bucket/w.npz'",
      f'config.clip_weights = {str(tmp_path / "clip")!r}',
      'try:',
      '  run_dir.check_files(config, remote=False)',
      'except errors.MissingFileError as e:',
      '  print(e)',
      # The CLI's text-encoder lookup, as main._check_before_jax calls it.
      'from xmcgan_jax.text import encoder',
      'try:',
      f'  encoder.resolve_text_encoder_dir({str(tmp_path / "no_bert")!r})',
      'except errors.MissingFileError as e:',
      '  print(e)',
      "assert 'tensorflow' not in sys.modules, 'tensorflow imported'"])
  result = subprocess.run([sys.executable, '-c', script], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "config.clip_weights='" in result.stdout
  assert 'file not found' in result.stdout
  assert "Text encoder '" + str(tmp_path / 'no_bert') in result.stdout


def _cli(workdir, *args):
  return [sys.executable, '-m', 'xmcgan_jax.main',
          '--config=' + os.path.join(ROOT, 'configs', 'tiny.py'),
          '--workdir=' + workdir] + list(args)


@pytest.mark.slow
def test_cli_override_and_sigterm_leave_a_loadable_checkpoint(
    tmp_path, data_dir, straight_and_resumed):
  """The CLI trains with overrides; SIGTERM saves the step it reached."""
  straight, _, _ = straight_and_resumed
  workdir = str(tmp_path / 'cli')
  log = open(tmp_path / 'log.txt', 'w')
  process = subprocess.Popen(
      _cli(workdir, '--config.num_train_steps=100000',
           '--config.checkpoint_every_steps=100000',
           '--config.log_every_steps=1', f'--config.data_dir={data_dir}'),
      cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
  deadline = time.time() + 400
  text = ''
  while time.time() < deadline and 'step 3/100000' not in text:
    time.sleep(1)
    text = open(tmp_path / 'log.txt').read()
    assert process.poll() is None, text[-3000:]
  process.send_signal(signal.SIGTERM)
  assert process.wait(timeout=120) == 0, open(tmp_path / 'log.txt').read()[-3000:]
  checkpointer = run_dir.Checkpointer(
      os.path.join(workdir, 'checkpoints'), keep=2)
  steps = checkpointer.all_steps()
  assert len(steps) == 1 and steps[0] >= 3
  step, state, _ = checkpointer.restore_latest(straight)
  assert step == steps[0] == int(state.step)


def test_sampling_api(straight_and_resumed):
  """Captions in, uint8 images out, from the workdir."""
  from xmcgan_jax.sampling import sample  # pylint: disable=g-import-not-at-top
  _, resumed, workdir = straight_and_resumed
  sampler = sample.Sampler.from_workdir(workdir)
  assert sampler.step == int(resumed.step)
  captions = ['a large red circle at the center', 'a small blue square',
              'a large red circle at the center']
  a = sampler.sample(captions, seed=0, batch_size=2)
  assert a.shape == (3, 64, 64, 3) and a.dtype == np.uint8
  # Same seed, same images, whatever the batching: XLA may round a batch of
  # 2 differently from a batch of 64 (seen: 2 of 36,864 values off by 1/255).
  b = sampler.sample(captions, seed=0)
  assert np.abs(a.astype(int) - b).max() <= 1 and np.mean(a != b) < 1e-3
  np.testing.assert_array_equal(b, sampler.sample(captions, seed=0))
  assert not np.array_equal(a, sampler.sample(captions, seed=1))
  assert not np.array_equal(a, sampler.sample(captions, seed=0, ema=False))
  # The EMA statistics come from config.standing_stats_passes forwards.
  passes = sampler.config.standing_stats_passes
  sampler.config.standing_stats_passes = passes + 1
  assert not np.array_equal(b, sampler.sample(captions, seed=0))
  sampler.config.standing_stats_passes = passes
  # It read G's weights only, and exactly the trained ones; load_step swaps
  # in another checkpoint's.
  weights = sampler._state  # pylint: disable=protected-access
  for name in ('g_params', 'g_state', 'ema_g_params'):
    for got, want in zip(jax.tree.leaves(getattr(weights, name)),
                         jax.tree.leaves(getattr(resumed, name))):
      np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  sampler.load_step(2)
  assert sampler.step == 2
  assert not np.array_equal(a, sampler.sample(captions, seed=0, batch_size=2))
  sampler.close()
  # The CLI (--mode=sample) runs as the README writes it in test_readme.py.


def test_colab_notebook_runs_on_cpu_without_tensorflow(straight_and_resumed,
                                                       tmp_path):
  nbformat = pytest.importorskip('nbformat')
  nbclient = pytest.importorskip('nbclient')
  pytest.importorskip('ipykernel')
  _, _, workdir = straight_and_resumed
  notebook = nbformat.read(os.path.join(ROOT, 'launch',
                                        'colab_sampling.ipynb'), as_version=4)
  notebook.cells.append(nbformat.v4.new_code_cell(
      "import sys\nassert 'tensorflow' not in sys.modules, 'TF imported'\n"
      "assert images.shape == (2, 64, 64, 3)"))
  env = {'XMCGAN_WORKDIR': workdir, 'XMCGAN_SKIP_INSTALL': '1'}
  old = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  try:
    nbclient.NotebookClient(notebook, timeout=600, kernel_name='python3',
                            resources={'metadata': {'path': str(tmp_path)}}
                            ).execute()
  finally:
    for k, v in old.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
  assert os.path.getsize(tmp_path / 'samples.png') > 1000


def test_eval_mode_evaluates_each_checkpoint_once(straight_and_resumed,
                                                  tmp_path):
  """--mode=eval's job: oracle metrics, FID/IS through a features function,
  cached real statistics, results in JSONL, CSV and TensorBoard."""
  from xmcgan_jax.eval import evaluate  # pylint: disable=g-import-not-at-top
  from xmcgan_jax.sampling import sample  # pylint: disable=g-import-not-at-top
  from xmcgan_jax.eval import shapes_oracle  # pylint: disable=g-import-not-at-top
  _, _, workdir = straight_and_resumed
  workdir = shutil.copytree(workdir, str(tmp_path / 'run'))
  shapes_oracle.ShapesOracle.load_or_train(  # A quick oracle, cached.
      os.path.join(workdir, shapes_oracle.oracle_file_name(3)),
      train_examples=64, steps=5)
  # A run saved before the Shapes layout fields existed: they get defaults.
  with open(os.path.join(workdir, 'config.json')) as f:
    saved = json.load(f)
  del saved['shapes_grid'], saved['shapes_max_objects']
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump(saved, f)
  config = run_dir.read_config(workdir)
  assert (config.shapes_grid, config.shapes_max_objects) == (3, 3)
  config.fid_stats_dir = str(tmp_path / 'stats')

  def features(images):  # Mean colours of 2x2 blocks; 4 "classes".
    x = images.astype(np.float64).reshape(len(images), 2, 32, 2, 32, 3)
    pool = x.mean(axis=(2, 4)).reshape(len(images), -1) / 255.0
    logits = pool[:, :4] * 5
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return pool, probs

  make = lambda: evaluate.Evaluator(workdir, config, features, 'fake')
  results = evaluate.run(workdir, evaluator=make())
  assert [r['step'] for r in results] == [4]
  result = results[0]
  assert result['num_images'] == 16
  for name in ('raw', 'ema'):
    assert result[f'{name}/fid'] > 0
    assert 1.0 <= result[f'{name}/inception_score'] <= 4.0
    assert 0.0 <= result[f'{name}/oracle_object_accuracy'] <= 1.0
    assert np.isfinite(result[f'{name}/oracle_frechet_distance'])
  assert result['raw/fid'] != result['ema/fid']
  stats = glob.glob(str(tmp_path / 'stats' / 'shapes_validation_64px_16_fake'
                        '*_pytorch_fid.npz'))
  assert len(stats) == 1 and 'provenance' in np.load(stats[0]).files
  eval_dir = os.path.join(workdir, 'eval')
  assert glob.glob(os.path.join(eval_dir, 'events.out.tfevents.*'))
  with open(os.path.join(eval_dir, 'results.csv')) as f:
    header, row = f.read().splitlines()
  assert header.startswith('step,') and row.startswith('4,')
  # Evaluated already: a second job finds nothing new (polling returns at
  # the final step), and reuses the cached real statistics.
  mtime = os.path.getmtime(stats[0])
  assert evaluate.run(workdir, poll=True, evaluator=make()) == []
  assert os.path.getmtime(stats[0]) == mtime
  # Any kept checkpoint on request.
  older = make().evaluate(2)
  assert older['step'] == 2 and older['raw/fid'] != result['raw/fid']
  # --eval_all: every kept checkpoint not yet evaluated (2 here), once.
  curve = evaluate.run(workdir, evaluator=make(), every_checkpoint=True)
  assert [r['step'] for r in curve] == [2]
  assert curve[0]['raw/fid'] == older['raw/fid']
  assert evaluate.run(workdir, evaluator=make(), every_checkpoint=True) == []
  with open(os.path.join(eval_dir, 'results.csv')) as f:
    assert [line.split(',')[0] for line in f.read().splitlines()[1:]] == [
        '4', '2']


def _evaluable_copy(straight_and_resumed, tmp_path) -> str:
  """A copy of the tiny run with a quick Shapes oracle cached in it."""
  from xmcgan_jax.eval import shapes_oracle  # pylint: disable=g-import-not-at-top
  workdir = shutil.copytree(straight_and_resumed[2], str(tmp_path / 'run'))
  shapes_oracle.ShapesOracle.load_or_train(
      os.path.join(workdir, shapes_oracle.oracle_file_name(3)),
      train_examples=64, steps=5)
  return workdir


def test_eval_mode_reports_clip_metrics(straight_and_resumed, tmp_path):
  """config.clip_weights (a random CLIP in the Hugging Face layout) adds CLIP
  score, its cosine form and CLIP R-precision for raw, EMA and real images;
  no FID Inception needed; fid_resize names the statistics cache."""
  import fake_data  # pylint: disable=g-import-not-at-top
  from xmcgan_jax.eval import clip  # pylint: disable=g-import-not-at-top
  from xmcgan_jax.eval import evaluate  # pylint: disable=g-import-not-at-top
  from xmcgan_jax.eval import shapes_oracle  # pylint: disable=g-import-not-at-top
  from xmcgan_jax.sampling import sample  # pylint: disable=g-import-not-at-top
  workdir = _evaluable_copy(straight_and_resumed, tmp_path)
  config = run_dir.read_config(workdir)
  config.clip_weights = fake_data.write_random_clip(str(tmp_path / 'clip'))
  # 120 captions: R-precision needs more than 99.
  config.eval_num_samples = config.shapes_eval_size = 120
  result = evaluate.run(workdir, config)[0]
  for name in ('raw', 'ema', 'real'):
    assert -1 <= result[f'{name}/clip_score_cosine'] <= 1
    assert 0 <= result[f'{name}/clip_score'] <= 100
    assert 0 <= result[f'{name}/clip_r_precision'] <= 1
  assert result['raw/clip_score'] != result['ema/clip_score']
  # The real ceiling by hand from the same model and captions.
  model = clip.Clip(config.clip_weights)
  real, _, captions = shapes_oracle.validation_set(120, config.image_size)
  cos = clip.cosines(model.embed_images(real), model.embed_texts(captions))
  assert result['real/clip_score_cosine'] == pytest.approx(cos.mean(), 1e-5)
  assert result['real/clip_score'] == pytest.approx(
      np.mean(100 * np.maximum(cos, 0)), 1e-4)
  with open(os.path.join(workdir, 'eval', 'results.csv')) as f:
    header = f.readline().strip().split(',')
  assert {'raw/clip_score', 'ema/clip_r_precision',
          'real/clip_score_cosine'} <= set(header)
  # A bad CLIP directory fails at once, naming the file.
  config.clip_weights = str(tmp_path / 'nowhere')
  with pytest.raises(FileNotFoundError, match='nowhere/config.json'):
    evaluate.Evaluator(workdir, config)


@pytest.mark.slow
def test_eval_mode_reports_every_metric(straight_and_resumed, tmp_path):
  """Every plug-in at once on the tiny run: random CLIP (for 'clip' and
  'cmmd') and DINOv2 (for 'fd_dinov2' and PRDC on its features) in the
  Hugging Face layouts, FID/IS through a features function; every key for
  raw and EMA G lands in results.jsonl and results.csv; a missing weight
  directory fails before anything is generated."""
  import fake_data  # pylint: disable=g-import-not-at-top
  from xmcgan_jax.eval import evaluate  # pylint: disable=g-import-not-at-top
  from xmcgan_jax.eval import metrics  # pylint: disable=g-import-not-at-top
  workdir = _evaluable_copy(straight_and_resumed, tmp_path)
  config = run_dir.read_config(workdir)
  clip_dir = fake_data.write_random_clip(str(tmp_path / 'clip'))
  config.cmmd_clip_weights = clip_dir
  config.dinov2_weights = fake_data.write_random_dinov2(
      str(tmp_path / 'dinov2'))
  assert metrics.default_metrics(config) == ['shapes_oracle', 'cmmd',
                                             'fd_dinov2']
  config.clip_weights = clip_dir
  config.eval_metrics = metrics.names()
  config.prdc_features = 'dinov2'
  config.fid_stats_dir = str(tmp_path / 'stats')
  config.eval_num_samples = config.shapes_eval_size = 24
  features = lambda x: (x.reshape(len(x), -1)[:, :16] / 255.0,
                        np.full((len(x), 4), 0.25))
  result = evaluate.run(workdir, evaluator=evaluate.Evaluator(
      workdir, config, features, 'fake'))[0]
  for name in ('raw', 'ema'):
    for key in ('fid', 'inception_score', 'oracle_object_accuracy',
                'clip_score', 'cmmd', 'fd_dinov2', 'precision', 'recall',
                'density', 'coverage'):
      assert np.isfinite(result[f'{name}/{key}']), (name, key)
    assert result[f'{name}/fd_dinov2'] > 0 and result[f'{name}/cmmd'] > 0
    assert 0 <= result[f'{name}/coverage'] <= 1
  assert result['raw/fd_dinov2'] != result['ema/fd_dinov2']
  assert {f'eval_seconds/{n}' for n in metrics.names()} <= set(result)
  with open(os.path.join(workdir, 'eval', 'results.csv')) as f:
    header = f.readline().strip().split(',')
  assert {'raw/cmmd', 'ema/fd_dinov2', 'raw/density'} <= set(header)
  assert len(glob.glob(str(tmp_path / 'stats' / 'dinov2_shapes_*'))) == 1
  assert len(glob.glob(str(tmp_path / 'stats' / 'prdc_dinov2_shapes_*'))) == 1
  config.dinov2_weights = str(tmp_path / 'nowhere')
  with pytest.raises(FileNotFoundError,
                     match='config.dinov2_weights: .*nowhere/config.json'):
    evaluate.Evaluator(workdir, config, features, 'fake')


def _make_unwritable(path) -> bool:
  """Makes a directory unwritable, also for root (the tests run as root in
  CI): the immutable attribute where the filesystem has it, else chmod."""
  if os.geteuid() != 0:
    os.chmod(path, 0o555)
    return True
  return subprocess.run(['chattr', '+i', str(path)], capture_output=True
                        ).returncode == 0


@pytest.mark.slow
def test_failed_checkpoint_save_stops_the_run_at_once(straight_and_resumed,
                                                      tmp_path, data_dir):
  """A save that fails in Orbax's background thread stops training with one
  line naming the directory; the previous checkpoint stays readable."""
  straight, _, workdir = straight_and_resumed
  workdir = shutil.copytree(workdir, str(tmp_path / 'run'))
  checkpoints = os.path.join(workdir, 'checkpoints')
  if not _make_unwritable(checkpoints):
    pytest.skip('cannot make a directory unwritable here (no chattr)')
  try:
    start = time.time()
    result = subprocess.run(
        _cli(workdir, '--config.num_train_steps=12',
             '--config.log_every_steps=1', f'--config.data_dir={data_dir}'),
        cwd=ROOT, capture_output=True, text=True, timeout=400)
    elapsed = time.time() - start
  finally:
    if os.geteuid() == 0:
      subprocess.run(['chattr', '-i', checkpoints], check=True)
    else:
      os.chmod(checkpoints, 0o755)
  assert result.returncode == 1, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: Saving the checkpoint of step 6 in '
                         f'{checkpoints} failed'), result.stderr[-3000:]
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  # Resumed at 4, saved (and failed) at 6, stopped by step 8: never went on.
  assert 'step 6/12' in result.stderr and 'step 9/12' not in result.stderr
  assert elapsed < 300  # Not held by Orbax's abandoned threads (minutes).
  checkpointer = run_dir.Checkpointer(checkpoints, keep=2)
  assert checkpointer.all_steps() == [2, 4]
  step, _, _ = checkpointer.restore_latest(straight)
  assert step == 4


def test_d_downsample_from_step_averages_first_then_max_pools(
    straight_and_resumed, data_dir, tmp_path):
  """d_downsample='max' from step 2 of 4 equals the paper's average pooling
  for 2 steps (the fixture's step-2 checkpoint) resumed with max pooling."""
  straight, _, workdir = straight_and_resumed
  resumed_dir = str(tmp_path / 'resumed')
  shutil.copytree(os.path.join(workdir, 'checkpoints'),
                  os.path.join(resumed_dir, 'checkpoints'))
  shutil.rmtree(os.path.join(resumed_dir, 'checkpoints', '4'))
  resumed = train.train(_tiny(data_dir, d_downsample='max'), resumed_dir)
  switched = train.train(_tiny(data_dir, d_downsample='max',
                               d_downsample_from_step=2),
                         str(tmp_path / 'switched'))
  for a, b in zip(_arrays(resumed), _arrays(switched)):
    np.testing.assert_array_equal(a, b)
  assert not all(np.array_equal(a, b) for a, b in
                 zip(_arrays(switched), _arrays(straight)))
