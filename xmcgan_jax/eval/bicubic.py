"""Bicubic resampling exactly as torch.nn.functional.interpolate computes it.

mode='bicubic', align_corners=False, no antialias: the cubic convolution
kernel with a = -0.75, taps beyond the border reading the border pixel. The
references' own resizes are this one: CMMD's images (google-research/cmmd)
and DINOv2's position embeddings (the release and transformers). As one
matrix per axis it runs in NumPy on the host and in jnp inside a model.
"""

from typing import Optional

import numpy as np


def _cubic(x: np.ndarray, a: float = -0.75) -> np.ndarray:
  x = np.abs(x)
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def matrix(size_in: int, size_out: int,
           scale: Optional[float] = None) -> np.ndarray:
  """(size_out, size_in) weights of torch's bicubic resize along one axis.

  Args:
    size_in: input length.
    size_out: output length.
    scale: the scale factor torch was given (interpolate(scale_factor=...)
      maps output i to input (i + 0.5) / scale - 0.5); None: size_out /
      size_in, as interpolate(size=...) does.

  Returns:
    The weights, float64.
  """
  step = size_in / size_out if scale is None else 1.0 / scale
  src = (np.arange(size_out) + 0.5) * step - 0.5
  left = np.floor(src).astype(int)
  out = np.zeros((size_out, size_in))
  for tap in range(-1, 3):
    index = np.clip(left + tap, 0, size_in - 1)
    np.add.at(out, (np.arange(size_out), index), _cubic(src - (left + tap)))
  return out


def resize(images: np.ndarray, size: int) -> np.ndarray:
  """(N, H, W, C) float -> (N, size, size, C), as torch's bicubic resize."""
  rows = matrix(images.shape[1], size)
  cols = matrix(images.shape[2], size)
  return np.einsum('oh,nhwc,pw->nopc', rows, images.astype(np.float64),
                   cols).astype(np.float32)
