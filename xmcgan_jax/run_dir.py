"""The run directory (--workdir): its layout, paths, config.json, checkpoints.

The training, sampling and eval jobs share one directory: the resolved config
(written by training as config.json, read by the others), Orbax checkpoints,
PNG sample grids and the eval job's results. This module owns that layout so
that sampling and evaluation read a run without importing the training code.

Paths. Orbax needs absolute checkpoint paths, and several processes of one
run must agree on a path even when one of its parents does not exist yet
(`run/../x`). So every path a user gives is resolved at the entry point
(command line, training, Sampler, the eval job): `~` expanded, made absolute
against the current directory and normalised. URLs (`gs://...`) pass
through.

Checkpoints. A checkpoint holds the TrainState and the data position of
every process (the number of training records each has consumed), so a
resumed run continues with exactly the data and noise of an uninterrupted
one. Saves are atomic (Orbax writes to a temporary directory and renames),
asynchronous, and only the last `keep` are kept. A checkpoint that fails to
restore (half-written, corrupted) is skipped with a warning in favour of the
previous one. A save that fails, in the call or in Orbax's background thread,
raises CheckpointSaveError at the next `check()` (cheap: the loop calls it
every step), so a run never goes on training while its saves fail.
"""

import io
import json
import os
import re
import sys
import time
from typing import Any, List, Optional, Tuple

from absl import logging
import jax
import ml_collections
import orbax.checkpoint as ocp

from xmcgan_jax import config_base
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
               'clip_weights', 'cmmd_clip_weights', 'dinov2_weights',
               'image_encoder.weights', 'compilation_cache_dir')


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


# config.json -------------------------------------------------------------


def _exists(path: str) -> bool:
  if is_remote(path):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return tf.io.gfile.exists(path)
  return os.path.exists(path)


def check_files(config, remote: bool = True) -> None:
  """Fails fast, naming the field, when a configured file does not exist.

  Local paths are checked without TensorFlow, so the training CLI reports
  them before starting JAX and TensorFlow (seconds); URLs need tf.io.gfile.

  Args:
    config: an experiment config.
    remote: also check URLs (imports TensorFlow). The CLI's pre-JAX check
      leaves them to training setup, after TensorFlow's quiet import.

  Raises:
    MissingFileError: the first missing file.
  """
  for field, path in (('image_encoder.weights', config.image_encoder.weights),
                      ('inception_weights', config.inception_weights),
                      ('clip_weights', config.clip_weights),
                      ('cmmd_clip_weights', config.cmmd_clip_weights),
                      ('dinov2_weights', config.dinov2_weights)):
    if not path or (is_remote(path) and not remote):
      continue
    if not _exists(path):
      raise errors.MissingFileError(
          f'config.{field}={path!r}: file not found.')


def _read(path: str) -> str:
  if is_remote(path):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    with tf.io.gfile.GFile(path) as f:
      return f.read()
  with open(path, encoding='utf-8') as f:
    return f.read()


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes the run's resolved config as WORKDIR/config.json (process 0)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.io.gfile.makedirs(workdir)
  with tf.io.gfile.GFile(os.path.join(workdir, CONFIG_FILE), 'w') as f:
    f.write(config.to_json(indent=1))


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a training run saved as WORKDIR/config.json.

  Runs saved before a field existed ran with its default behaviour (every
  field added so far defaults to what the code did before it), so missing
  fields get the defaults of config_base; renamed fields are carried over
  (config_base.upgrade).

  Raises:
    MissingFileError: WORKDIR has no config.json.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  try:
    text = _read(path)
  except (OSError, IOError) as e:
    raise missing_run(workdir) from e
  config = ml_collections.ConfigDict(json.loads(text))
  with config.unlocked():
    config_base.upgrade(config)
    for key, value in config_base.get_base_config().items():
      if key not in config:
        logging.info('%s has no %r; using the default %r.', path, key, value)
        config[key] = value
  return config


# Checkpoints -------------------------------------------------------------


class _AbandonedReadsHidden:
  """Hides the tracebacks of a failed restore's abandoned reads.

  When Orbax fails to read one array of a checkpoint, TensorStore's other
  pending reads complete later and print a traceback each ('Event loop is
  closed': Orbax's asyncio loop is gone), thousands of lines on sys.stderr
  from its own threads. The warning of restore_latest says what happened, so
  on failure this waits until those prints stop and passes on only log
  lines. With --verbosity >= 1 everything is shown.
  """

  _LOG_LINE = re.compile(r'^[IWEF]\d{4} ')

  def __enter__(self):
    self._active = not logging.level_debug()
    if self._active:
      self._stderr, sys.stderr = sys.stderr, io.StringIO()
    return self

  def __exit__(self, kind, error, traceback):
    if not self._active:
      return False
    captured = sys.stderr
    if error is not None:  # Let the abandoned reads finish printing.
      deadline, size = time.monotonic() + 10.0, -1
      while time.monotonic() < deadline and size != len(captured.getvalue()):
        size = len(captured.getvalue())
        time.sleep(0.5)
    sys.stderr = self._stderr
    text = captured.getvalue()
    if error is not None:
      text = ''.join(line for line in text.splitlines(keepends=True)
                     if self._LOG_LINE.match(line))
    self._stderr.write(text)
    return False


# Orbax splits each replicated array into one slice per replica so that the
# hosts of a pod share its write ("replica-parallel"). Every slice is an eager
# device op, which costs more than the write for small arrays (a 64px model has
# hundreds of kernels and biases: 5,000 slices per save over 8 devices, most of
# a save's time). Arrays whose slice would be under 1 MiB are written whole by
# one replica; large arrays keep the shared write.
_MIN_REPLICA_SLICE_BYTES = 1 << 20


def _state_handler() -> ocp.PyTreeCheckpointHandler:
  """Orbax's PyTree handler with small arrays written by one replica."""
  types = ocp.type_handlers.create_type_handler_registry(*[
      (ty, ocp.type_handlers.get_type_handler(ty))
      for ty in ocp.type_handlers.supported_types()])
  # No array metadata store: it only records typed PRNG keys, and the
  # TrainState holds its key as raw uint32.
  types.add(jax.Array, ocp.type_handlers.ArrayHandler(
      min_slice_bytes_for_replica_parallel=_MIN_REPLICA_SLICE_BYTES),
            override=True, ignore_warnings=True)
  return ocp.PyTreeCheckpointHandler(type_handler_registry=types)


class Checkpointer:
  """Saves and restores (TrainState, data positions) under one directory.

  Args:
    directory: e.g. WORKDIR/checkpoints (local or gs://).
    keep: how many recent checkpoints to keep.
    asynchronous: write in a background thread.
  """

  def __init__(self, directory: str, keep: int = 3, asynchronous: bool = True):
    self.directory = resolve(directory)  # Orbax needs absolute paths.
    self._pending = None  # Step of the save that may still be running.
    self._manager = ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True,
            enable_async_checkpointing=asynchronous),
        item_handlers={'state': _state_handler(),
                       'data': ocp.JsonCheckpointHandler()})

  def all_steps(self) -> List[int]:
    """Steps with a finished checkpoint, oldest first."""
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, data_positions: List[int]) -> None:
    """Saves state and data positions at `step` (no-op if already saved)."""
    if step in self._manager.all_steps():
      return
    self.check()
    try:
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.PyTreeSave(state),
          data=ocp.args.JsonSave(
              {'positions': [int(p) for p in data_positions]})), force=True)
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(step, e) from e
    self._pending = step

  def check(self) -> None:
    """Raises CheckpointSaveError if the last save has failed.

    Returns at once while that save is still being written.
    """
    if self._pending is not None and not self._manager.is_saving_in_progress():
      self.wait_until_finished()

  def _save_error(self, step: int, cause: Exception
                  ) -> errors.CheckpointSaveError:
    kept = self.all_steps()
    return errors.CheckpointSaveError(
        f'Saving the checkpoint of step {step} in {self.directory} failed '
        f'({type(cause).__name__}: {cause}); stopped training. Kept '
        f'checkpoints: {kept or "none"}.')

  def restore_latest(self, abstract_state: Any, partial: bool = False
                     ) -> Optional[Tuple[int, Any, List[int]]]:
    """(step, state, data positions) of the newest readable checkpoint.

    Args:
      abstract_state: a TrainState of jax.ShapeDtypeStruct (with shardings)
        or concrete arrays, giving the structure and placement to restore.
      partial: `abstract_state` is a dict of some of the TrainState's fields
        (say, the generator's); only those are read.

    Returns:
      None if there is no readable checkpoint.
    """
    for step in reversed(self.all_steps()):
      try:
        with _AbandonedReadsHidden():
          return self.restore(step, abstract_state, partial)
      except Exception as e:  # pylint: disable=broad-except
        cause = str(e).strip().splitlines()[0][:160] if str(e).strip() else ''
        logging.warning('Checkpoint at step %d in %s is unreadable (%s: %s); '
                        'trying the previous one.', step, self.directory,
                        type(e).__name__, cause)
    return None

  def restore(self, step: int, abstract_state: Any, partial: bool = False
              ) -> Tuple[int, Any, List[int]]:
    """(step, state, data positions) of the checkpoint at `step`.

    Args:
      step: the checkpoint's step.
      abstract_state: as for restore_latest.
      partial: as for restore_latest.

    Raises:
      Whatever Orbax raises for a missing or unreadable checkpoint.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    # partial: reads the named subtrees only (no D, no Adam moments).
    state_args = ocp.args.PyTreeRestore(
        abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(
            abstract), partial_restore=partial)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=state_args, data=ocp.args.JsonRestore()))
    return step, restored['state'], list(restored['data']['positions'])

  def reload(self) -> None:
    """Re-reads the directory (checkpoints written by another process)."""
    self._manager.reload()

  def wait_until_finished(self) -> None:
    """Blocks until asynchronous saves are on disk.

    Raises:
      CheckpointSaveError: the last save failed.
    """
    step, self._pending = self._pending, None
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(step, e) from e

  def close(self) -> None:
    self._manager.close()
