"""Command line entry point.

  python -m xmcgan_jax.main --config=configs/shapes.py --workdir=/tmp/shapes
  python -m xmcgan_jax.main --config=configs/coco.py --workdir=gs://b/coco \
      --config.batch_size=512
  python -m xmcgan_jax.main --mode=sample --workdir=/tmp/shapes \
      --captions='a large red circle at the top left|a small blue square in the bottom right'
  python -m xmcgan_jax.main --mode=eval --workdir=/tmp/shapes [--eval_poll]

Every host of a TPU pod or GPU cluster runs the same command; with several
processes jax.distributed is initialised first (TPU pods, SLURM and
JAX_COORDINATOR_ADDRESS are detected; --multiprocess forces it).
"""

import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if _MODE.value == 'train' and flags.FLAGS.config is None:
    raise app.UsageError('--mode=train needs --config=configs/<name>.py.')
  import jax  # pylint: disable=g-import-not-at-top
  if _MULTIPROCESS.value == 'on' or (_MULTIPROCESS.value == 'auto' and
                                     _several_processes()):
    jax.distributed.initialize()
  # TensorFlow only feeds data here: keep it off the accelerators.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')
  tf.config.set_visible_devices([], 'TPU')
  if jax.process_index() > 0:
    logging.set_verbosity(logging.WARNING)
  logging.info('JAX %s: process %d of %d, %d local / %d global devices (%s).',
               jax.__version__, jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(),
               jax.devices()[0].device_kind)
  if _MODE.value == 'sample':
    from xmcgan_jax import sample  # pylint: disable=g-import-not-at-top
    captions = [c.strip() for c in _CAPTIONS.value.split('|') if c.strip()]
    if not captions:
      raise app.UsageError("--mode=sample needs --captions='a ...|b ...'.")
    path = sample.sample_grid(_WORKDIR.value, captions, _OUTPUT.value,
                              _SEED.value)
    logging.info('Wrote %s', path)
    print(path)
    return
  if _MODE.value == 'eval':
    from xmcgan_jax import evaluate  # pylint: disable=g-import-not-at-top
    results = evaluate.run(_WORKDIR.value, flags.FLAGS.config,
                           poll=_EVAL_POLL.value,
                           timeout_s=_EVAL_TIMEOUT.value)
    for result in results:
      print(result)
    return
  from xmcgan_jax import train  # pylint: disable=g-import-not-at-top
  train.train_and_evaluate(flags.FLAGS.config, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)
