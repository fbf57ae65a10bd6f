"""The README's commands, run as a newcomer types them.

The commands are read from README.md's code blocks, never copied here, so
the README and the tests cannot drift apart. They run with their relative
paths (workdirs/shapes, configs/shapes.py) from a directory laid out like the
repository root: configs/ links to the repository's, and HOME is a fresh
directory, so TFDS's default data_dir (~/tensorflow_datasets) starts empty
and nothing lands in the real checkout. Only overrides that shrink the run
(steps, dataset size) are appended.
"""

import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, 'README.md')

# Appended to the README's training command: a short run on a small dataset.
TINY_RUN = ['--config.num_train_steps=2', '--config.shapes_train_size=64',
            '--config.shapes_eval_size=32', '--config.shuffle_buffer=64',
            '--config.checkpoint_every_steps=1', '--config.log_every_steps=1',
            '--config.sample_every_steps=2', '--config.eval_num_samples=32',
            '--config.eval_batch_size=16', '--config.standing_stats_passes=3']


def code_blocks(language: str, section: str = ''):
  """The README's fenced code blocks of one language, as strings.

  Args:
    language: 'bash' or 'python'.
    section: only blocks under this '## ' heading ('' = all).
  """
  with open(README, encoding='utf-8') as f:
    text = f.read()
  if section:
    text = text.split(f'\n## {section}\n', 1)[1].split('\n## ', 1)[0]
  return re.findall(rf'```{language}\n(.*?)```', text, re.S)


def shell_commands(section: str = ''):
  """Every command of the README's bash blocks, continuations joined and
  comments dropped."""
  commands = []
  for block in code_blocks('bash', section):
    for line in block.replace('\\\n', ' ').splitlines():
      line = line.split(' #', 1)[0].strip()
      if line and not line.startswith('#'):
        commands.append(' '.join(line.split()))
  return commands


def readme_command(*required: str) -> str:
  """The one README command that contains every string of `required`."""
  found = [c for c in shell_commands() if all(r in c for r in required)]
  assert len(found) == 1, (required, found)
  return found[0]


def test_ci_installs_and_tests_as_the_readme_says():
  """.ci/run runs the README's install and test commands (with `python -m`
  in front of pip, as scripts should)."""
  with open(os.path.join(ROOT, '.ci', 'run'), encoding='utf-8') as f:
    ci = ' '.join(f.read().replace('\\\n', ' ').split())
  pip_lines = [c for c in shell_commands('Install') + shell_commands('Test')
               if c.startswith('pip ')]
  assert len(pip_lines) == 3, pip_lines
  assert any('-c constraints.txt' in c and '.[test]' in c for c in pip_lines)
  pytest_lines = [c for c in shell_commands('Test') if 'pytest' in c]
  assert pytest_lines == ['python -m pytest -q', 'python -m pytest -q -m slow']
  for command in pip_lines + pytest_lines:
    as_module = re.sub(r'(^|&& )pip ', r'\1python -m pip ', command)
    assert as_module in ci, command


@pytest.fixture(scope='module')
def newcomer(tmp_path_factory):
  """A directory like the repository root, with its own empty HOME."""
  home = tmp_path_factory.mktemp('newcomer')
  os.symlink(os.path.join(ROOT, 'configs'), home / 'configs')
  env = dict(os.environ, HOME=str(home), PYTHONPATH=ROOT)
  env.pop('TFDS_DATA_DIR', None)
  # The run's own compilation cache (WORKDIR/jax_cache), as a user gets it.
  env.pop('JAX_COMPILATION_CACHE_DIR', None)
  # One CPU device, as on a newcomer's laptop (conftest fakes 8 for the
  # in-process tests).
  env['XLA_FLAGS'] = env.get('XLA_FLAGS', '').replace(
      '--xla_force_host_platform_device_count=8', '')
  return home, env


def _run(command, cwd, env, timeout=900):
  result = subprocess.run(command, cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
  assert result.returncode == 0, (command, result.stderr[-4000:])
  return result


def _python(argv):
  assert argv[0] == 'python', argv
  return [sys.executable] + argv[1:]


@pytest.fixture(scope='module')
def trained(newcomer):
  """The README's main command with a relative workdir, shortened."""
  home, env = newcomer
  command = readme_command('xmcgan_jax.main', '--config=configs/shapes.py',
                           '--workdir=workdirs/shapes')
  result = _run(_python(shlex.split(command)) + TINY_RUN, home, env)
  return home, env, result


def test_main_command_with_relative_workdir(trained):
  home, _, result = trained
  workdir = home / 'workdirs' / 'shapes'
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['1', '2']
  assert os.listdir(workdir / 'jax_cache')  # The compiled step, for resuming.
  assert (home / 'tensorflow_datasets').is_dir()  # TFDS's default data_dir.
  # config.json holds absolute paths, so other jobs find the same files.
  with open(workdir / 'config.json') as f:
    assert '"data_dir": ""' in f.read()  # '' stays the TFDS default.
  lines = result.stderr.splitlines()
  assert any('step 2/2' in line for line in lines), result.stderr[-3000:]
  # The project's lines, not library chatter or failed accelerator probes.
  for noise in ('orbax', 'cuInit', "Unable to initialize backend",
                'Traceback'):
    assert noise not in result.stderr, (noise, result.stderr[-3000:])
  assert len(lines) < 40, result.stderr


def test_sample_command(trained):
  home, env, _ = trained
  command = readme_command('--mode=sample', '--workdir=workdirs/shapes')
  result = _run(_python(shlex.split(command)), home, env)
  png = result.stdout.strip().splitlines()[-1]
  assert png.startswith(str(home / 'workdirs' / 'shapes' / 'samples'))
  assert os.path.getsize(png) > 1000


def test_python_sampling_snippet(trained):
  home, env, _ = trained
  (snippet,) = [b for b in code_blocks('python') if 'Sampler' in b]
  script = snippet + ('\nassert images.shape == (1, 64, 64, 3), images.shape'
                      "\nassert images.dtype.name == 'uint8'\n")
  _run([sys.executable, '-c', script], home, env)


def test_eval_command(trained):
  from xmcgan_jax.eval import shapes_oracle  # pylint: disable=g-import-not-at-top
  home, env, _ = trained
  workdir = home / 'workdirs' / 'shapes'
  shapes_oracle.ShapesOracle.load_or_train(  # A quick oracle, cached.
      str(workdir / shapes_oracle.oracle_file_name(2)), train_examples=64,
      steps=5, grid=2)
  command = readme_command('--mode=eval', '--workdir=workdirs/shapes')
  _run(_python(shlex.split(command)), home, env)
  with open(workdir / 'eval' / 'results.csv') as f:
    header, row = f.read().splitlines()
  values = dict(zip(header.split(','), row.split(',')))
  assert values['step'] == '2'
  assert 0 <= float(values['raw/oracle_object_accuracy']) <= 1
  assert np.isfinite(float(values['ema/oracle_frechet_distance']))


@pytest.mark.parametrize('extra,message', [
    (['--config.batch_sise=8'],
     "has no field 'batch_sise'; did you mean --config.batch_size"),
    (['--config.image_size=96'], 'config.image_size=96: no channel schedule'),
    (['--config.batch_size=eight'], '--config.batch_size=eight'),
    (['--config.fid_resize=lanczos'],
     "config.fid_resize='lanczos': choose from ('pytorch_fid', 'clean')"),
])
def test_user_errors_are_one_line_with_status_2(newcomer, extra, message):
  home, env = newcomer
  command = readme_command('xmcgan_jax.main', '--config=configs/shapes.py',
                           '--workdir=workdirs/shapes')
  result = subprocess.run(
      _python(shlex.split(command)) + extra, cwd=home, env=env,
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  assert message in result.stderr.strip().splitlines()[-1], result.stderr


@pytest.mark.parametrize('argv,message', [
    (['--config=configs/nope.py', '--workdir=w'],
     '--config=configs/nope.py: file not found'),
    (['--mode=sample', '--workdir=workdirs/never', '--captions=a red circle'],
     'workdirs/never/config.json not found'),
    (['--config=configs/shapes.py', '--workdir=w',
      '--config.text_encoder=./no_such_encoder'],
     "Text encoder '" + '{home}/no_such_encoder'),
    (['--config=configs/shapes.py', '--workdir=w',
      '--config.clip_weights=no_clip_here'],
     "config.clip_weights='{home}/no_clip_here': file not found"),
])
def test_missing_files_are_one_line_with_status_2(newcomer, argv, message):
  home, env = newcomer
  result = subprocess.run(
      [sys.executable, '-m', 'xmcgan_jax.main'] + argv, cwd=home, env=env,
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and message.format(home=home) in last, (
      result.stderr[-3000:])
