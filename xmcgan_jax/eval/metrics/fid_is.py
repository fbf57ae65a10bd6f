"""'fid': FID against the real eval images and the Inception Score.

The FID Inception of config.inception_weights (or an API user's features
function, options['fid_features']) as pytorch-fid computes them, or with
fid_resize='clean' as clean-fid does; the real statistics are cached per
dataset, split, resolution, image count, weights digest and resize.
"""

from typing import Callable, Dict, Iterator, Sequence, Tuple

import numpy as np

from xmcgan_jax.eval import fid
from xmcgan_jax.eval import inception
from xmcgan_jax.eval.metrics import base

RESIZE_PROVENANCE = {
    'pytorch_fid': 'bilinear to 299 (pytorch-fid)',
    'clean': 'PIL bicubic with antialias to 299, float (clean-fid clean)',
}


def weights_digest(path: str) -> str:
  """The SHA-256 of the Inception weights' source (or of the file)."""
  with open(path, 'rb') as f:
    data = np.load(f)
    if 'meta/source_sha256' in data.files:
      return str(data['meta/source_sha256'])
  from xmcgan_jax.eval import convert_inception  # pylint: disable=g-import-not-at-top
  return convert_inception.sha256(path)


def inception_features(inputs: base.EvalInputs):
  """(uint8 images -> (pool3 features, class probabilities), its digest):
  the API user's function if given, else the config's FID Inception."""
  given = inputs.options.get('fid_features')
  if given is not None:
    return given, inputs.options.get('fid_features_digest', 'custom')
  c = inputs.config
  return (inception.InceptionFeatures.from_npz(
      c.inception_weights, c.eval_batch_size, resize=c.fid_resize),
          weights_digest(c.inception_weights))


def real_statistics(config, features: Callable[[np.ndarray], Tuple[
    np.ndarray, np.ndarray]], digest: str, count: int,
                    images: Iterator[np.ndarray]
                    ) -> Tuple[np.ndarray, np.ndarray]:
  """Inception (mu, sigma) of the real eval images, cached with provenance.

  Args:
    config: the run's config (dataset, image_size, fid_resize,
      fid_stats_dir).
    features: uint8 images -> (pool3 features, class probabilities).
    digest: names the features' weights in the cache file name.
    count: real images (also in the name).
    images: the real uint8 batches (read only if not cached).

  Returns:
    (mu, sigma) of the pool3 features.
  """

  def compute():
    mu, sigma = fid.statistics(np.concatenate([features(b)[0]
                                               for b in images]))
    return {'mu': mu, 'sigma': sigma}

  provenance = {
      'dataset': config.dataset, 'image_size': config.image_size,
      'images': count, 'inception_sha256': digest, 'resize': 'dataset '
      'pipeline to image_size, uint8, then ' +
      RESIZE_PROVENANCE[config.fid_resize]}
  stats = base.cached_real(
      config, base.real_cache_name(config, '', count, digest,
                                   config.fid_resize), provenance, compute)
  return stats['mu'], stats['sigma']


@base.register('fid')
class FidInceptionScore(base.Metric):
  """Keys: fid, inception_score, inception_score_std."""
  weights = ('inception_weights', '')
  replaced_by = 'fid_features'

  def __init__(self, inputs: base.EvalInputs):
    self._features, digest = inception_features(inputs)
    self._splits = inputs.config.inception_score_splits
    self._real = real_statistics(inputs.config, self._features, digest,
                                 len(inputs.captions), inputs.real_images())

  def features(self, images: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    return self._features(images)

  def scores(self, features: Sequence[Tuple[np.ndarray, np.ndarray]]
             ) -> Dict[str, float]:
    pools = np.concatenate([f[0] for f in features])
    probs = np.concatenate([f[1] for f in features])
    score, std = fid.inception_score(probs, splits=self._splits)
    return {'fid': fid.frechet_distance(*self._real, *fid.statistics(pools)),
            'inception_score': score, 'inception_score_std': std}
