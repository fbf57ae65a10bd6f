"""Checkpoints of the whole train state with Orbax, resumable and robust.

A checkpoint holds the TrainState and the data position of every process (the
number of training records each has consumed), so a resumed run continues
with exactly the data and noise of an uninterrupted one. Saves are atomic
(Orbax writes to a temporary directory and renames), asynchronous, and only
the last `keep` are kept. A checkpoint that fails to restore (half-written,
corrupted) is skipped with a warning in favour of the previous one. A save
that fails, in the call or in Orbax's background thread, raises
CheckpointSaveError at the next `check()` (cheap: the loop calls it every
step), so a run never goes on training while its saves fail.
"""

import io
import re
import sys
import time
from typing import Any, List, Optional, Tuple

from absl import logging
import jax
import orbax.checkpoint as ocp

from xmcgan_jax import errors
from xmcgan_jax import paths


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


class Checkpointer:
  """Saves and restores (TrainState, data positions) under one directory.

  Args:
    directory: e.g. WORKDIR/checkpoints (local or gs://).
    keep: how many recent checkpoints to keep.
    asynchronous: write in a background thread.
  """

  def __init__(self, directory: str, keep: int = 3, asynchronous: bool = True):
    self.directory = paths.resolve(directory)  # Orbax needs absolute paths.
    self._pending = None  # Step of the save that may still be running.
    self._manager = ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True,
            enable_async_checkpointing=asynchronous),
        item_names=('state', 'data'))

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
          state=ocp.args.StandardSave(state),
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
    if partial:  # Reads the named subtrees only (no D, no Adam moments).
      state_args = ocp.args.PyTreeRestore(
          abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(
              abstract), partial_restore=True)
    else:
      state_args = ocp.args.StandardRestore(abstract)
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
