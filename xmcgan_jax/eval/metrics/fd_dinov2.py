"""'fd_dinov2': the Frechet distance on DINOv2 features (FD-DINOv2).

Stein et al. (NeurIPS 2023, "Exposing flaws of generative model evaluation
metrics"), as their dgm-eval computes it: DINOv2 ViT-L/14 (the Hugging Face
directory of facebook/dinov2-large in config.dinov2_weights), images resized
to 224 x 224 by PIL bicubic, ImageNet mean/std, the class token after the
final LayerNorm, then the Frechet distance of FID between the Gaussians of
the real and generated features. The real statistics are cached per
dataset, split, resolution, image count and weights.
"""

import functools
from typing import Callable, Dict, Sequence, Tuple

import numpy as np

from xmcgan_jax.eval import dinov2
from xmcgan_jax.eval import fid
from xmcgan_jax.eval.metrics import base

RESIZE = 'pil_bicubic224'  # In the cache file names.


@functools.lru_cache(maxsize=2)
def _load(directory: str, batch_size: int) -> Tuple[dinov2.Dinov2, str]:
  # 'fd_dinov2' and 'prdc' on DINOv2 features share one loaded network.
  return dinov2.Dinov2(directory, batch_size), base.directory_digest(
      directory)


def dinov2_features(inputs: base.EvalInputs
                    ) -> Tuple[Callable[[np.ndarray], np.ndarray], str]:
  """(uint8 images -> (N, D) features, its digest): the API user's function
  (options['dinov2_features']) if given, else config.dinov2_weights'."""
  given = inputs.options.get('dinov2_features')
  if given is not None:
    return given, inputs.options.get('dinov2_features_digest', 'custom')
  c = inputs.config
  network, digest = _load(c.dinov2_weights, c.eval_batch_size)
  return network.features, digest


def provenance(config, count: int, digest: str) -> Dict[str, object]:
  """What the cached real DINOv2 arrays depend on."""
  return {'dataset': config.dataset, 'image_size': config.image_size,
          'images': count, 'dinov2_sha256': digest,
          'resize': 'dataset pipeline to image_size, uint8, then PIL bicubic '
          'to 224, ImageNet mean/std (dgm-eval)'}


@base.register('fd_dinov2')
class FdDinov2(base.Metric):
  """Key: fd_dinov2."""
  weights = ('dinov2_weights', 'config.json')
  replaced_by = 'dinov2_features'

  def __init__(self, inputs: base.EvalInputs):
    c = inputs.config
    self._features, digest = dinov2_features(inputs)
    count = len(inputs.captions)

    def compute():
      mu, sigma = fid.statistics(np.concatenate(
          [self._features(b) for b in inputs.real_images()]))
      return {'mu': mu, 'sigma': sigma}

    stats = base.cached_real(
        c, base.real_cache_name(c, 'dinov2', count, digest, RESIZE),
        provenance(c, count, digest), compute)
    self._real = stats['mu'], stats['sigma']

  def features(self, images: np.ndarray) -> np.ndarray:
    return self._features(images)

  def scores(self, features: Sequence[np.ndarray]) -> Dict[str, float]:
    return {'fd_dinov2': fid.frechet_distance(
        *self._real, *fid.statistics(np.concatenate(features)))}
