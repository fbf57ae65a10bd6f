"""'prdc': precision, recall, density and coverage of generated images.

Improved precision and recall (Kynkaenniemi et al., NeurIPS 2019) and
density and coverage (Naeem et al., ICML 2020), as the `prdc` package
computes them, on the features config.prdc_features names: 'inception'
(the FID Inception's pool3, the 'fid' metric's network, or an API user's
options['fid_features']) or 'dinov2' (the 'fd_dinov2' metric's class token,
as dgm-eval reports PRDC; or options['dinov2_features']). Each real feature's
radius is the distance to its k-th nearest other real feature (k =
config.prdc_k, 5 as published), and likewise for generated features;
  precision: generated features inside some real radius,
  recall: real features inside some generated radius,
  density: real radii holding each generated feature, / k, averaged,
  coverage: real features whose nearest generated one is inside its radius.
The real features are cached with FID's provenance.
"""

from typing import Dict, Sequence

import numpy as np

from xmcgan_jax.eval.metrics import base
from xmcgan_jax.eval.metrics import fd_dinov2
from xmcgan_jax.eval.metrics import fid_is

_CHUNK = 2048  # Rows of a distance block: bounded memory at 30k images.


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  sq = (np.sum(a * a, 1)[:, None] + np.sum(b * b, 1)[None] - 2 * a @ b.T)
  return np.sqrt(np.maximum(sq, 0.0))


def kth_neighbour_distances(features: np.ndarray, k: int) -> np.ndarray:
  """Each row's distance to its k-th nearest other row."""
  x = np.asarray(features, np.float64)
  out = np.empty(len(x))
  for start in range(0, len(x), _CHUNK):
    d = _distances(x[start:start + _CHUNK], x)
    # Itself is the nearest (distance 0): the (k+1)-th smallest.
    out[start:start + _CHUNK] = np.partition(d, k, axis=1)[:, k]
  return out


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5) -> Dict[str, float]:
  """Precision, recall, density and coverage of `fake` against `real`."""
  real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
  real_radii = kth_neighbour_distances(real, k)
  fake_radii = kth_neighbour_distances(fake, k)
  inside_real = np.zeros(len(fake))  # Real radii holding each fake.
  fake_hits_real = np.zeros(len(real), bool)
  nearest_fake = np.full(len(real), np.inf)
  for start in range(0, len(real), _CHUNK):
    d = _distances(real[start:start + _CHUNK], fake)  # (real, fake)
    radii = real_radii[start:start + _CHUNK, None]
    inside_real += (d < radii).sum(axis=0)
    fake_hits_real[start:start + _CHUNK] = (d < fake_radii[None]).any(axis=1)
    nearest_fake[start:start + _CHUNK] = d.min(axis=1)
  return {'precision': float((inside_real > 0).mean()),
          'recall': float(fake_hits_real.mean()),
          'density': float(inside_real.mean() / k),
          'coverage': float((nearest_fake < real_radii).mean())}


@base.register('prdc')
class Prdc(base.Metric):
  """Keys: precision, recall, density, coverage."""

  @classmethod
  def weights_for(cls, config):
    if config.prdc_features == 'dinov2':
      return fd_dinov2.FdDinov2.weights, fd_dinov2.FdDinov2.replaced_by
    return fid_is.FidInceptionScore.weights, 'fid_features'

  def __init__(self, inputs: base.EvalInputs):
    c = inputs.config
    self._k = c.prdc_k
    count = len(inputs.captions)
    if count <= self._k:
      raise ValueError(f'prdc needs more than config.prdc_k={self._k} '
                       f'images; the eval set has {count}.')
    if c.prdc_features == 'dinov2':
      self._features, digest = fd_dinov2.dinov2_features(inputs)
      name = base.real_cache_name(c, 'prdc_dinov2', count, digest,
                                  fd_dinov2.RESIZE)
      provenance = fd_dinov2.provenance(c, count, digest)
    else:
      pool3, digest = fid_is.inception_features(inputs)
      self._features = lambda images: pool3(images)[0]
      name = base.real_cache_name(c, 'prdc_pool3', count, digest,
                                  c.fid_resize)
      provenance = {
          'dataset': c.dataset, 'image_size': c.image_size, 'images': count,
          'inception_sha256': digest, 'resize': 'dataset pipeline to '
          'image_size, uint8, then ' + fid_is.RESIZE_PROVENANCE[c.fid_resize]}
    compute = lambda: {'features': np.concatenate(
        [self._features(b) for b in inputs.real_images()])}
    self._real = base.cached_real(c, name, provenance, compute)['features']

  def features(self, images: np.ndarray) -> np.ndarray:
    return self._features(images)

  def scores(self, features: Sequence[np.ndarray]) -> Dict[str, float]:
    return prdc(self._real, np.concatenate(features), self._k)
