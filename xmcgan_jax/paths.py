"""User-given paths: local ones made absolute once, remote ones left alone.

Orbax needs absolute checkpoint paths, and several processes of one run must
agree on a path even when one of its parents does not exist yet (`run/../x`).
So every path a user gives is resolved at the entry point (command line,
train_and_evaluate, Sampler, the eval job): `~` expanded, made absolute
against the current directory and normalised. URLs (`gs://...`) pass through.
"""

import os

import ml_collections

from xmcgan_jax import errors

# A run directory (--workdir), shared by the training, sampling and eval
# jobs: the resolved config (written by training), Orbax checkpoints, PNG
# sample grids and the eval job's results.
CONFIG_FILE = 'config.json'
CHECKPOINT_DIR = 'checkpoints'
SAMPLES_DIR = 'samples'
EVAL_DIR = 'eval'

# Config fields that hold a file or directory path ('' = unset).
PATH_FIELDS = ('data_dir', 'manual_dir', 'inception_weights', 'fid_stats_dir',
               'clip_weights', 'image_encoder.weights',
               'compilation_cache_dir')


def missing_run(workdir: str) -> errors.MissingFileError:
  """The error for a --workdir without a training run's config."""
  return errors.MissingFileError(
      f'{os.path.join(workdir, CONFIG_FILE)} not found: is {workdir} the '
      '--workdir of a training run?')


def is_remote(path: str) -> bool:
  """True for URLs such as gs://bucket/dir (handled by tf.io.gfile)."""
  return '://' in path


def resolve(path: str) -> str:
  """An absolute, normalised local path; '' and remote paths unchanged."""
  if not path or is_remote(path):
    return path
  return os.path.abspath(os.path.expanduser(path))


def looks_local(name: str) -> bool:
  """Whether a name such as config.text_encoder is a local path.

  Text encoders are also named by package or Hugging Face hub name
  ('all-MiniLM-L6-v2', 'sentence-transformers/all-MiniLM-L6-v2'): those stay
  names unless a directory of that name exists here.
  """
  return (name.startswith(('~', '.', os.sep)) or
          os.path.isdir(os.path.expanduser(name)))


def resolve_config(config: ml_collections.ConfigDict
                   ) -> ml_collections.ConfigDict:
  """A copy of `config` with every path field resolved (see resolve)."""
  config = ml_collections.ConfigDict(config.to_dict())
  for field in PATH_FIELDS:
    parent, _, name = field.rpartition('.')
    holder = config[parent] if parent else config
    if name in holder:
      holder[name] = resolve(holder[name])
  if looks_local(config.get('text_encoder', '')):
    config.text_encoder = resolve(config.text_encoder)
  return config
