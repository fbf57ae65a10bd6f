"""Command line entry point.

  python -m xmcgan_jax.main --config=configs/shapes.py --workdir=workdirs/shapes
  python -m xmcgan_jax.main --config=configs/coco.py --workdir=gs://b/coco \
      --config.batch_size=512
  python -m xmcgan_jax.main --mode=sample --workdir=workdirs/shapes \
      --captions='a large red circle at the top left|a small blue square in the bottom right'
  python -m xmcgan_jax.main --mode=eval --workdir=workdirs/shapes [--eval_poll]

Every host of a TPU pod or GPU cluster runs the same command; with several
processes jax.distributed is initialised first (TPU pods, SLURM and
JAX_COORDINATOR_ADDRESS with JAX_NUM_PROCESSES and JAX_PROCESS_ID are
detected; --multiprocess forces it).

A mistake in what the user gave (a config key or value, a missing file, run
or text encoder) ends the command with one line and status 2; a failed
checkpoint save with one line and status 1; other failures keep their
traceback.
"""

import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from xmcgan_jax import config_base
from xmcgan_jax import console
from xmcgan_jax import errors
from xmcgan_jax import run_dir

_WORKDIR = flags.DEFINE_string('workdir', None, 'Checkpoints, logs, samples.')
_MODE = flags.DEFINE_enum(
    'mode', 'train', ['train', 'sample', 'eval'],
    'train; sample a PNG grid from the workdir; or eval its checkpoints '
    '(FID/IS, Shapes oracle) with the workdir\'s config.json, or --config '
    'when given.')
_CAPTIONS = flags.DEFINE_string(
    'captions', '', "--mode=sample: captions separated by '|'.")
_SEED = flags.DEFINE_integer('seed', 0, '--mode=sample: noise seed.')
_OUTPUT = flags.DEFINE_string('output', '', '--mode=sample: PNG path.')
_EVAL_POLL = flags.DEFINE_bool(
    'eval_poll', False, '--mode=eval: keep evaluating new checkpoints until '
    'the final step (a job beside training).')
_EVAL_TIMEOUT = flags.DEFINE_float(
    'eval_timeout_s', 6 * 3600, '--mode=eval --eval_poll: stop after this '
    'long without a new checkpoint.')
_EVAL_ALL = flags.DEFINE_bool(
    'eval_all', False, '--mode=eval: evaluate every kept checkpoint not yet '
    'evaluated, oldest first (the run\'s curve), not only the newest.')
_MULTIPROCESS = flags.DEFINE_enum(
    'multiprocess', 'auto', ['auto', 'on', 'off'],
    'Call jax.distributed.initialize(): auto = when the environment shows '
    'several processes.')
config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file (configs/*.py).',
    lock_config=True)
flags.mark_flags_as_required(['workdir'])


def _several_processes() -> bool:
  env = os.environ
  if env.get('JAX_COORDINATOR_ADDRESS'):
    return True
  if int(env.get('SLURM_NTASKS', '1')) > 1:
    return True
  hosts = env.get('TPU_WORKER_HOSTNAMES', '')
  return ',' in hosts


def _initialize_distributed(jax) -> None:
  """jax.distributed.initialize, with the process count and id from env.

  JAX reads JAX_COORDINATOR_ADDRESS itself but not the process count or id
  (it detects those on TPU pods and under SLURM only).
  """
  kwargs = {}
  for name, arg in (('JAX_NUM_PROCESSES', 'num_processes'),
                    ('JAX_PROCESS_ID', 'process_id')):
    if os.environ.get(name):
      kwargs[arg] = int(os.environ[name])
  jax.distributed.initialize(**kwargs)


def _enable_compilation_cache(jax, workdir: str) -> None:
  """JAX's persistent compilation cache (config.compilation_cache_dir).

  Compiles that take over a second are stored, so a resumed, restarted or
  preempted job (and the eval job beside it) skips them. An explicit
  JAX_COMPILATION_CACHE_DIR wins.
  """
  if os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    return
  config = flags.FLAGS.config
  path = run_dir.resolve(config.get('compilation_cache_dir', '')
                       if config is not None else '')
  jax.config.update('jax_compilation_cache_dir',
                    path or os.path.join(workdir, 'jax_cache'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)


def _parse_flags(argv):
  """absl's flag parsing, with one-line errors (status 2) for config flags.

  Checks that the --config file exists and that every --config.KEY override
  names a field (suggesting the closest one) before ml_collections applies
  them, which would end in a traceback.
  """
  try:
    config_path = console.flag_value(argv, 'config')
    if config_path is not None:
      config_base.check_overrides(config_path,
                                  console.config_overrides(argv))
    return flags.FLAGS(argv)
  except (errors.UserError, flags.Error) as e:
    console.exit_with_error(e)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if _MODE.value == 'train' and flags.FLAGS.config is None:
    raise app.UsageError('--mode=train needs --config=configs/<name>.py.')
  console.quiet_libraries(flags.FLAGS.verbosity)
  try:
    _start_and_run(run_dir.resolve(_WORKDIR.value))
  except errors.UserError as e:
    console.exit_with_error(e)
  except errors.CheckpointSaveError as e:
    # Orbax's abandoned save threads would hold the interpreter for minutes.
    console.exit_with_error(e, status=1, hard=True)


def _start_and_run(workdir: str) -> None:
  """Checks the user's input, starts JAX (and TensorFlow), runs --mode."""
  _check_before_jax(workdir)
  import jax  # pylint: disable=g-import-not-at-top
  _enable_compilation_cache(jax, workdir)
  if _MULTIPROCESS.value == 'on' or (_MULTIPROCESS.value == 'auto' and
                                     _several_processes()):
    _initialize_distributed(jax)
  if _MODE.value != 'sample':  # Sampling needs no TensorFlow.
    # TensorFlow only feeds data here: kept off the accelerators, imported
    # without its CUDA probe lines.
    console.import_tensorflow(jax.default_backend(), flags.FLAGS.verbosity)
  if jax.process_index() > 0:
    logging.set_verbosity(logging.WARNING)
  logging.info('JAX %s: process %d of %d, %d local / %d global devices (%s).',
               jax.__version__, jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(),
               jax.devices()[0].device_kind)
  _run_mode(workdir)


def _check_before_jax(workdir: str) -> None:
  """The user errors found without JAX or TensorFlow: reported in a second.

  The config's fields (all but the device count, which needs JAX), its
  local weight files and its text encoder for training; the run's
  config.json for sampling and evaluation.
  """
  if _MODE.value == 'train':
    config = run_dir.resolve_config(flags.FLAGS.config)
    config_base.validate(config)
    run_dir.check_files(config, remote=False)  # URLs: after TF's import.
    # Its files: a directory, the offline package or the hub cache (flax
    # and safetensors, no TensorFlow).
    from xmcgan_jax.text import encoder  # pylint: disable=g-import-not-at-top
    encoder.resolve_text_encoder_dir(config.text_encoder)
    return
  if _MODE.value == 'eval' and flags.FLAGS.config is not None:
    return
  path = os.path.join(workdir, run_dir.CONFIG_FILE)
  if not run_dir.is_remote(path) and not os.path.exists(path):
    raise run_dir.missing_run(workdir)


def _run_mode(workdir: str) -> None:
  """Runs --mode on the resolved workdir."""
  if _MODE.value == 'sample':
    from xmcgan_jax.sampling import sample  # pylint: disable=g-import-not-at-top
    captions = [c.strip() for c in _CAPTIONS.value.split('|') if c.strip()]
    if not captions:
      raise errors.UserError("--mode=sample needs --captions='a ...|b ...'.")
    path = sample.sample_grid(workdir, captions, run_dir.resolve(_OUTPUT.value),
                              _SEED.value)
    logging.info('Wrote %s', path)
    print(path)
    return
  if _MODE.value == 'eval':
    from xmcgan_jax.eval import evaluate  # pylint: disable=g-import-not-at-top
    results = evaluate.run(workdir, flags.FLAGS.config, poll=_EVAL_POLL.value,
                           timeout_s=_EVAL_TIMEOUT.value,
                           every_checkpoint=_EVAL_ALL.value)
    for result in results:
      print(result)
    return
  from xmcgan_jax.training import train  # pylint: disable=g-import-not-at-top
  train.train(flags.FLAGS.config, workdir)


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
