"""'cmmd': CMMD (Jayasumana et al., "Rethinking FID", CVPR 2024).

As the reference implementation (google-research/cmmd) computes it:
  - CLIP ViT-L/14@336 image embeddings (config.cmmd_clip_weights: the
    Hugging Face directory of openai/clip-vit-large-patch14-336). Images in
    [0, 1] are resized to the model's input side by bicubic interpolation as
    torch.nn.functional.interpolate(mode='bicubic') does (a = -0.75, no
    antialias, no crop), normalised by CLIP's mean and std, embedded and
    scaled to unit length;
  - MMD^2 between the real and generated embeddings with a Gaussian RBF
    kernel, sigma = 10, each of k(x, x'), k(y, y'), k(x, y) the mean over all
    pairs with the diagonal included, times 1000.
The real embeddings are cached per dataset, split, resolution, image count
and weights.
"""

from typing import Dict, Sequence

import numpy as np

from xmcgan_jax.eval import bicubic
from xmcgan_jax.eval import clip as clip_lib
from xmcgan_jax.eval.metrics import base

SIGMA = 10.0  # The reference's kernel bandwidth.
SCALE = 1000.0  # The reference reports MMD^2 times this.


def mmd(x: np.ndarray, y: np.ndarray, sigma: float = SIGMA,
        scale: float = SCALE) -> float:
  """The reference's MMD^2 (all pairs, diagonal included) times `scale`."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  gamma = 1.0 / (2 * sigma**2)

  def kernel_mean(a, b):
    sq = (np.sum(a * a, 1)[:, None] + np.sum(b * b, 1)[None] - 2 * a @ b.T)
    return np.mean(np.exp(-gamma * sq))

  return float(scale * (kernel_mean(x, x) + kernel_mean(y, y) -
                        2 * kernel_mean(x, y)))


@base.register('cmmd')
class Cmmd(base.Metric):
  """Key: cmmd."""
  weights = ('cmmd_clip_weights', 'config.json')

  def __init__(self, inputs: base.EvalInputs):
    c = inputs.config
    self._clip = clip_lib.Clip(c.cmmd_clip_weights, c.eval_batch_size)
    digest = base.directory_digest(c.cmmd_clip_weights)
    compute = lambda: {'embeddings': np.concatenate(
        [self.features(b) for b in inputs.real_images()])}
    count = len(inputs.captions)
    self._real = base.cached_real(
        c, base.real_cache_name(c, 'cmmd', count, digest, 'torch_bicubic'),
        {'dataset': c.dataset, 'image_size': c.image_size, 'images': count,
         'clip_sha256': digest, 'resize': 'uint8 / 255, torch bicubic to '
         f'{self._clip.config.image_size}, CLIP mean/std'},
        compute)['embeddings']

  def features(self, images: np.ndarray) -> np.ndarray:
    size = self._clip.config.image_size
    pixels = bicubic.resize(images.astype(np.float32) / 255.0, size)
    pixels = (pixels - np.float32(clip_lib.IMAGE_MEAN)) / np.float32(
        clip_lib.IMAGE_STD)
    embeddings = self._clip.embed_pixels(pixels)
    return embeddings / np.linalg.norm(embeddings, axis=-1, keepdims=True)

  def scores(self, features: Sequence[np.ndarray]) -> Dict[str, float]:
    return {'cmmd': mmd(self._real, np.concatenate(features))}
