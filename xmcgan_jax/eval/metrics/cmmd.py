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

import hashlib
import os
from typing import Dict, Sequence

import numpy as np

from xmcgan_jax.eval import clip as clip_lib
from xmcgan_jax.eval.metrics import base

SIGMA = 10.0  # The reference's kernel bandwidth.
SCALE = 1000.0  # The reference reports MMD^2 times this.


def _cubic(x: np.ndarray, a: float = -0.75) -> np.ndarray:
  x = np.abs(x)
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def bicubic_matrix(size_in: int, size_out: int) -> np.ndarray:
  """(size_out, size_in) weights of torch's bicubic resize along one axis
  (align_corners=False; taps beyond the border read the border pixel)."""
  src = (np.arange(size_out) + 0.5) * size_in / size_out - 0.5
  left = np.floor(src).astype(int)
  out = np.zeros((size_out, size_in))
  for tap in range(-1, 3):
    index = np.clip(left + tap, 0, size_in - 1)
    np.add.at(out, (np.arange(size_out), index), _cubic(src - (left + tap)))
  return out


def resize_bicubic(images: np.ndarray, size: int) -> np.ndarray:
  """(N, H, W, C) float -> (N, size, size, C), as torch's bicubic resize."""
  rows = bicubic_matrix(images.shape[1], size)
  cols = bicubic_matrix(images.shape[2], size)
  return np.einsum('oh,nhwc,pw->nopc', rows, images.astype(np.float64),
                   cols).astype(np.float32)


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


def _digest(directory: str) -> str:
  """SHA-256 over the directory's config and safetensors files."""
  h = hashlib.sha256()
  for name in sorted(os.listdir(directory)):
    if name == 'config.json' or name.endswith('.safetensors'):
      with open(os.path.join(directory, name), 'rb') as f:
        for block in iter(lambda: f.read(1 << 22), b''):
          h.update(block)
  return h.hexdigest()


@base.register('cmmd')
class Cmmd(base.Metric):
  """Key: cmmd."""
  weights = ('cmmd_clip_weights', 'config.json')

  def __init__(self, inputs: base.EvalInputs):
    c = inputs.config
    self._clip = clip_lib.Clip(c.cmmd_clip_weights, c.eval_batch_size)
    digest = _digest(c.cmmd_clip_weights)
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
    pixels = resize_bicubic(images.astype(np.float32) / 255.0, size)
    pixels = (pixels - np.float32(clip_lib.IMAGE_MEAN)) / np.float32(
        clip_lib.IMAGE_STD)
    embeddings = self._clip.embed_pixels(pixels)
    return embeddings / np.linalg.norm(embeddings, axis=-1, keepdims=True)

  def scores(self, features: Sequence[np.ndarray]) -> Dict[str, float]:
    return {'cmmd': mmd(self._real, np.concatenate(features))}
