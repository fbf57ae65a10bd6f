"""The FID Inception v3 (TTUR / pytorch-fid weights) in Flax.

FID and IS numbers are only comparable when everyone uses the same network,
resize and quantisation. This is the 2015 TensorFlow Inception graph that
TTUR's FID and the improved-GAN IS code use, in the layout pytorch-fid
ships (`pt_inception-2015-12-05-6726825d.pth`): torchvision's Inception v3
with a 1008-way head and the FID-specific blocks (average pools that do not
count padding; max instead of average pooling in the last block's pool
branch). Images are quantised to uint8, bilinearly resized to 299x299 as
`torch.nn.functional.interpolate(align_corners=False)` does (no antialias),
and scaled to [-1, 1]; or, with resize='clean', resized as clean-fid does
(see InceptionFeatures). clean-fid runs the same 2015 graph through another
port (StyleGAN2-ADA's TorchScript); the resize is what moves FIDs.

Weights: convert the .pth once with `python -m xmcgan_jax.eval.convert_inception`
(needs torch); loading the .npz here needs no torch. BatchNorm (eps 1e-3,
inference statistics) is folded into each convolution at load time.
"""

from typing import Dict, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from xmcgan_jax import config_base
from xmcgan_jax.eval import batched

INPUT_SIZE = 299
POOL_DIM = 2048
NUM_CLASSES = 1008
# How images reach the network's 299x299 (see InceptionFeatures).
FID_RESIZE_MODES = config_base.FID_RESIZE_MODES
BN_EPS = 1e-3  # torchvision's BasicConv2d.
# Full float32 matmuls: GPU and TPU default to lower precision, which moves
# pool3 features by far more than the 1e-4 that comparable FIDs need.
_PRECISION = jax.lax.Precision.HIGHEST


class _Conv(nn.Module):
  """Conv + (folded) BatchNorm + ReLU: torchvision's BasicConv2d."""
  features: int
  kernel: Tuple[int, int]
  strides: int = 1
  padding: Tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x):
    ph, pw = self.padding
    x = nn.Conv(self.features, self.kernel, strides=self.strides,
                padding=((ph, ph), (pw, pw)), use_bias=True,
                precision=_PRECISION, name='conv')(x)
    return nn.relu(x)


def _max_pool(x, stride: int, pad: int = 0):
  return nn.max_pool(x, (3, 3), strides=(stride, stride),
                     padding=((pad, pad), (pad, pad)))


def _avg_pool_exclude_pad(x):
  """3x3, stride 1, padding 1, dividing by the in-image count (FID blocks)."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)


class _BlockA(nn.Module):  # Mixed_5b..5d.
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = _Conv(64, (1, 1), name='branch1x1')(x)
    b5 = _Conv(48, (1, 1), name='branch5x5_1')(x)
    b5 = _Conv(64, (5, 5), padding=(2, 2), name='branch5x5_2')(b5)
    b3 = _Conv(64, (1, 1), name='branch3x3dbl_1')(x)
    b3 = _Conv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(b3)
    b3 = _Conv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_3')(b3)
    bp = _Conv(self.pool_features, (1, 1), name='branch_pool')(
        _avg_pool_exclude_pad(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class _BlockB(nn.Module):  # Mixed_6a: 35 -> 17.
  @nn.compact
  def __call__(self, x):
    b3 = _Conv(384, (3, 3), strides=2, name='branch3x3')(x)
    bd = _Conv(64, (1, 1), name='branch3x3dbl_1')(x)
    bd = _Conv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(bd)
    bd = _Conv(96, (3, 3), strides=2, name='branch3x3dbl_3')(bd)
    return jnp.concatenate([b3, bd, _max_pool(x, 2)], axis=-1)


class _BlockC(nn.Module):  # Mixed_6b..6e: factorised 7x7.
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = _Conv(192, (1, 1), name='branch1x1')(x)
    b7 = _Conv(c7, (1, 1), name='branch7x7_1')(x)
    b7 = _Conv(c7, (1, 7), padding=(0, 3), name='branch7x7_2')(b7)
    b7 = _Conv(192, (7, 1), padding=(3, 0), name='branch7x7_3')(b7)
    bd = _Conv(c7, (1, 1), name='branch7x7dbl_1')(x)
    bd = _Conv(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_2')(bd)
    bd = _Conv(c7, (1, 7), padding=(0, 3), name='branch7x7dbl_3')(bd)
    bd = _Conv(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_4')(bd)
    bd = _Conv(192, (1, 7), padding=(0, 3), name='branch7x7dbl_5')(bd)
    bp = _Conv(192, (1, 1), name='branch_pool')(_avg_pool_exclude_pad(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class _BlockD(nn.Module):  # Mixed_7a: 17 -> 8.
  @nn.compact
  def __call__(self, x):
    b3 = _Conv(192, (1, 1), name='branch3x3_1')(x)
    b3 = _Conv(320, (3, 3), strides=2, name='branch3x3_2')(b3)
    b7 = _Conv(192, (1, 1), name='branch7x7x3_1')(x)
    b7 = _Conv(192, (1, 7), padding=(0, 3), name='branch7x7x3_2')(b7)
    b7 = _Conv(192, (7, 1), padding=(3, 0), name='branch7x7x3_3')(b7)
    b7 = _Conv(192, (3, 3), strides=2, name='branch7x7x3_4')(b7)
    return jnp.concatenate([b3, b7, _max_pool(x, 2)], axis=-1)


class _BlockE(nn.Module):  # Mixed_7b (average pool) and 7c (max pool).
  max_pool_branch: bool

  @nn.compact
  def __call__(self, x):
    b1 = _Conv(320, (1, 1), name='branch1x1')(x)
    b3 = _Conv(384, (1, 1), name='branch3x3_1')(x)
    b3 = jnp.concatenate([
        _Conv(384, (1, 3), padding=(0, 1), name='branch3x3_2a')(b3),
        _Conv(384, (3, 1), padding=(1, 0), name='branch3x3_2b')(b3)], -1)
    bd = _Conv(448, (1, 1), name='branch3x3dbl_1')(x)
    bd = _Conv(384, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(bd)
    bd = jnp.concatenate([
        _Conv(384, (1, 3), padding=(0, 1), name='branch3x3dbl_3a')(bd),
        _Conv(384, (3, 1), padding=(1, 0), name='branch3x3dbl_3b')(bd)], -1)
    # The FID graph max-pools here (other Inceptions average-pool).
    pooled = (_max_pool(x, 1, pad=1) if self.max_pool_branch
              else _avg_pool_exclude_pad(x))
    bp = _Conv(192, (1, 1), name='branch_pool')(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def resize_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out, in) bilinear weights of torch's interpolate(align_corners=False)."""
  scale = in_size / out_size
  src = np.maximum((np.arange(out_size) + 0.5) * scale - 0.5, 0.0)
  lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = src - lo
  m = np.zeros((out_size, in_size), np.float64)
  np.add.at(m, (np.arange(out_size), lo), 1.0 - frac)
  np.add.at(m, (np.arange(out_size), hi), frac)
  return m.astype(np.float32)


class FIDInceptionV3(nn.Module):
  """Images in [0, 1] (B, H, W, 3) -> pool3 features and 1008-way logits."""

  @nn.compact
  def __call__(self, images: jax.Array) -> Dict[str, jax.Array]:
    """Runs the network.

    Args:
      images: (B, H, W, 3) float in [0, 1] (uint8 / 255), any H, W.

    Returns:
      {'pool': (B, 2048) pool3 features (FID), 'logits': (B, 1008) with the
      head's bias, 'logits_unbiased': (B, 1008) without it (the improved-GAN
      Inception Score takes the softmax of these)}.
    """
    _, h, w, _ = images.shape
    x = images.astype(jnp.float32)
    if (h, w) != (INPUT_SIZE, INPUT_SIZE):
      x = jnp.einsum('oh,bhwc->bowc', resize_matrix(h, INPUT_SIZE), x,
                     precision=_PRECISION)
      x = jnp.einsum('pw,bowc->bopc', resize_matrix(w, INPUT_SIZE), x,
                     precision=_PRECISION)
    x = 2.0 * x - 1.0
    x = _Conv(32, (3, 3), strides=2, name='Conv2d_1a_3x3')(x)
    x = _Conv(32, (3, 3), name='Conv2d_2a_3x3')(x)
    x = _Conv(64, (3, 3), padding=(1, 1), name='Conv2d_2b_3x3')(x)
    x = _max_pool(x, 2)
    x = _Conv(80, (1, 1), name='Conv2d_3b_1x1')(x)
    x = _Conv(192, (3, 3), name='Conv2d_4a_3x3')(x)
    x = _max_pool(x, 2)
    for name, pool_features in (('Mixed_5b', 32), ('Mixed_5c', 64),
                                ('Mixed_5d', 64)):
      x = _BlockA(pool_features, name=name)(x)
    x = _BlockB(name='Mixed_6a')(x)
    for name, c7 in (('Mixed_6b', 128), ('Mixed_6c', 160), ('Mixed_6d', 160),
                     ('Mixed_6e', 192)):
      x = _BlockC(c7, name=name)(x)
    x = _BlockD(name='Mixed_7a')(x)
    x = _BlockE(False, name='Mixed_7b')(x)
    x = _BlockE(True, name='Mixed_7c')(x)
    pool = x.mean(axis=(1, 2))
    fc = nn.Dense(NUM_CLASSES, precision=_PRECISION, name='fc')
    logits = fc(pool)
    unbiased = jnp.dot(pool, fc.variables['params']['kernel'],
                       precision=_PRECISION)
    return {'pool': pool, 'logits': logits, 'logits_unbiased': unbiased}


def params_from_torch_state(state: Dict[str, np.ndarray]) -> Dict:
  """Flax params from pytorch-fid / torchvision state-dict arrays.

  Folds each BasicConv2d's BatchNorm into its convolution: kernel * s and
  bias beta - mean * s with s = gamma / sqrt(var + 1e-3), computed in
  float64.

  Args:
    state: torch names ('Mixed_5b.branch1x1.conv.weight', ...,
      'fc.weight') to numpy arrays; 'num_batches_tracked' is ignored.

  Returns:
    The params tree of `FIDInceptionV3`.

  Raises:
    ValueError: a weight is missing, unexpected or has the wrong shape.
  """
  expected = jax.eval_shape(
      lambda: FIDInceptionV3().init(jax.random.PRNGKey(0), jnp.zeros(
          (1, INPUT_SIZE, INPUT_SIZE, 3))))['params']
  expected = flax.traverse_util.flatten_dict(flax.core.unfreeze(expected))
  state = {k: np.asarray(v) for k, v in state.items()
           if not k.endswith('num_batches_tracked')}
  used, flat = set(), {}

  def take(name):
    if name not in state:
      raise ValueError(f'Inception weights lack {name!r}.')
    used.add(name)
    return state[name].astype(np.float64)

  for path, leaf in expected.items():
    if path[0] == 'fc':
      value = take('fc.weight').T if path[-1] == 'kernel' else take('fc.bias')
    else:
      prefix = '.'.join(path[:-2])  # e.g. Mixed_5b.branch1x1 (drop conv/x).
      gamma, beta = take(f'{prefix}.bn.weight'), take(f'{prefix}.bn.bias')
      mean, var = (take(f'{prefix}.bn.running_mean'),
                   take(f'{prefix}.bn.running_var'))
      scale = gamma / np.sqrt(var + BN_EPS)
      if path[-1] == 'kernel':  # torch (O, I, kh, kw) -> (kh, kw, I, O).
        value = take(f'{prefix}.conv.weight').transpose(2, 3, 1, 0) * scale
      else:
        value = beta - mean * scale
    if value.shape != leaf.shape:
      raise ValueError(f'Inception weight for {"/".join(path)} has shape '
                       f'{value.shape}, expected {leaf.shape}.')
    flat[path] = value.astype(np.float32)
  unused = sorted(set(state) - used)
  if unused:
    raise ValueError(f'Unexpected Inception weights (not the FID variant?): '
                     f'{unused[:5]}{" ..." if len(unused) > 5 else ""}')
  return flax.traverse_util.unflatten_dict(flat)


def load_params(path: str) -> Dict:
  """Params from an .npz written by `convert_inception` (no torch needed)."""
  with open(path, 'rb') as f:
    data = np.load(f)
    state = {k: data[k] for k in data.files if not k.startswith('meta/')}
  return params_from_torch_state(state)


class InceptionFeatures:
  """Batched, jitted FID Inception features of uint8 images.

  Args:
    params: from `load_params`.
    batch_size: images per device call (split over the local devices).
    resize: how images reach 299x299 (one of FID_RESIZE_MODES):
      'pytorch_fid': bilinear without antialias inside the network, inputs
        scaled to [-1, 1] as (x / 255) * 2 - 1 (pytorch-fid, TTUR);
      'clean': clean-fid's `clean` mode: PIL bicubic with antialias on the
        host (`clean_resize`), not quantised, and clean-fid's scaling
        (x - 128) / 128.
  """

  def __init__(self, params, batch_size: int = 200,
               resize: str = 'pytorch_fid'):
    if resize not in FID_RESIZE_MODES:
      raise ValueError(f'Unknown FID resize {resize!r}; choose from '
                       f'{FID_RESIZE_MODES}.')
    self.resize = resize
    model = FIDInceptionV3()

    def forward(params, images):
      # The network maps v to 2v - 1: v = x / 255 gives pytorch-fid's
      # scaling; v = x / 256 gives clean-fid's (x - 128) / 128.
      scale = 255.0 if resize == 'pytorch_fid' else 256.0
      out = model.apply({'params': params}, images.astype(jnp.float32) / scale)
      return out['pool'], jax.nn.softmax(out['logits_unbiased'], axis=-1)
    self._apply = batched.BatchedApply(forward, params, batch_size)

  @classmethod
  def from_npz(cls, path: str, batch_size: int = 200,
               resize: str = 'pytorch_fid') -> 'InceptionFeatures':
    return cls(load_params(path), batch_size, resize)

  def __call__(self, images: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(N, H, W, 3) uint8 -> (pool features (N, 2048), IS softmax (N, 1008))."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError('Inception features need (N, H, W, 3) uint8 images, '
                       f'got {images.dtype} {images.shape}.')
    if self.resize == 'clean':
      images = clean_resize(images)
    return self._apply(images)


def clean_resize(images: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
  """clean-fid's `clean` resize: uint8 (N, H, W, 3) -> float32 (N, S, S, 3).

  Each channel goes to PIL as a float image and is resized with bicubic
  filtering, which PIL antialiases when downsampling; values are clipped to
  [0, 255] and not quantised (clean-fid's make_resizer('PIL', False,
  'bicubic')).
  """
  out = np.empty((len(images), size, size, images.shape[-1]), np.float32)
  for i, image in enumerate(images):
    for c in range(image.shape[-1]):
      channel = Image.fromarray(image[..., c].astype(np.float32), mode='F')
      out[i, ..., c] = np.asarray(channel.resize((size, size),
                                                 Image.BICUBIC)).clip(0, 255)
  return out
