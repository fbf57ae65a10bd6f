"""The device mesh and host <-> global array helpers.

One 1-D mesh axis, 'data', spans every device of every process. Train state is
replicated (P()), batches are sharded along 'data'. Batches carry a leading
sub-step axis (d_steps_per_g_step), so their batch axis is axis 1.
"""

from typing import Any, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'
# (sub-step, batch, ...) arrays are sharded over their batch axis.
BATCH_SPEC = P(None, DATA_AXIS)
REPLICATED = P()


def make_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A 1-D ('data',) mesh over `devices` (default: all devices, all hosts)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places every leaf of `tree` replicated on `mesh`."""
  return jax.device_put(tree, NamedSharding(mesh, REPLICATED))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
  """Builds global arrays from this process's part of a (sub-step, batch) batch.

  Every process passes its own rows (its share of the batch axis); on one
  process this is the whole batch.

  Args:
    batch: pytree of numpy arrays shaped (d_steps, local_batch, ...).
    mesh: the data mesh.

  Returns:
    The pytree of global jax.Arrays sharded with BATCH_SPEC.
  """
  sharding = NamedSharding(mesh, BATCH_SPEC)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      batch)


def check_batch_divisible(global_batch: int, mesh: Mesh) -> None:
  """Raises a clear error when the batch does not split evenly over devices."""
  n = mesh.shape[DATA_AXIS]
  if global_batch % n:
    raise ValueError(f'batch_size={global_batch} (per sub-step) is not divisible '
                     f'by the {n} devices of the mesh.')
