"""Checkpoints of the whole train state with Orbax, resumable and robust.

A checkpoint holds the TrainState and the data position of every process (the
number of training records each has consumed), so a resumed run continues
with exactly the data and noise of an uninterrupted one. Saves are atomic
(Orbax writes to a temporary directory and renames), asynchronous, and only
the last `keep` are kept. A checkpoint that fails to restore (half-written,
corrupted) is skipped with a warning in favour of the previous one.
"""

from typing import Any, List, Optional, Tuple

from absl import logging
import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves and restores (TrainState, data positions) under one directory.

  Args:
    directory: e.g. WORKDIR/checkpoints (local or gs://).
    keep: how many recent checkpoints to keep.
    asynchronous: write in a background thread.
  """

  def __init__(self, directory: str, keep: int = 3, asynchronous: bool = True):
    self.directory = directory
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
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave({'positions': [int(p) for p in data_positions]})
    ), force=True)

  def restore_latest(self, abstract_state: Any
                     ) -> Optional[Tuple[int, Any, List[int]]]:
    """(step, state, data positions) of the newest readable checkpoint.

    Args:
      abstract_state: a TrainState of jax.ShapeDtypeStruct (with shardings)
        or concrete arrays, giving the structure and placement to restore.

    Returns:
      None if there is no readable checkpoint.
    """
    for step in reversed(self.all_steps()):
      try:
        return self.restore(step, abstract_state)
      except Exception as e:  # pylint: disable=broad-except
        logging.warning('Checkpoint at step %d in %s is unreadable (%s: %s); '
                        'trying the previous one.', step, self.directory,
                        type(e).__name__, e)
    return None

  def restore(self, step: int, abstract_state: Any
              ) -> Tuple[int, Any, List[int]]:
    """(step, state, data positions) of the checkpoint at `step`.

    Raises:
      Whatever Orbax raises for a missing or unreadable checkpoint.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
    return step, restored['state'], list(restored['data']['positions'])

  def reload(self) -> None:
    """Re-reads the directory (checkpoints written by another process)."""
    self._manager.reload()

  def wait_until_finished(self) -> None:
    """Blocks until asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
