"""Runs a jitted network over host arrays in fixed-size, device-sharded batches.

The eval networks (FID Inception, CLIP) see thousands of images in batches
whose last one is short. Padding every batch to one size keeps a single
compilation; splitting each batch over the local devices uses all of them.
"""

from typing import Any, Callable, Tuple

import jax
import numpy as np


class BatchedApply:
  """`fn(params, *arrays)` over arrays of any length, `batch_size` at a time.

  Args:
    fn: (params, *batch arrays) -> array or tuple of arrays, each with the
      batch as leading axis; jitted here.
    params: replicated onto every local device once.
    batch_size: rounded down to a multiple of the local device count (at
      least one example per device).
  """

  def __init__(self, fn: Callable[..., Any], params, batch_size: int):
    devices = jax.local_devices()
    self.batch_size = max(len(devices),
                          batch_size // len(devices) * len(devices))
    mesh = jax.sharding.Mesh(np.array(devices), ('data',))
    self._sharding = jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec('data'))
    self._params = jax.device_put(params, jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec()))
    self._fn = jax.jit(fn)

  def __call__(self, *arrays: np.ndarray) -> Tuple[np.ndarray, ...]:
    """Returns fn's outputs for all rows, as a tuple of numpy arrays."""
    n = len(arrays[0])
    outputs = []
    for start in range(0, n, self.batch_size):
      chunks = [a[start:start + self.batch_size] for a in arrays]
      size = len(chunks[0])
      pad = self.batch_size - size
      if pad:  # Zero rows, dropped below.
        chunks = [np.concatenate([c, np.zeros((pad,) + c.shape[1:], c.dtype)])
                  for c in chunks]
      out = self._fn(self._params,
                     *(jax.device_put(c, self._sharding) for c in chunks))
      out = out if isinstance(out, tuple) else (out,)
      outputs.append([np.asarray(o)[:size] for o in out])
    return tuple(np.concatenate(parts) for parts in zip(*outputs))
