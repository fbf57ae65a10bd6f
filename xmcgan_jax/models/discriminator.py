"""XMC-GAN discriminator: spectrally normalised residual blocks, projection head.

D is also the image encoder of the contrastive losses: it returns the pooled
features v, the sentence projection p and 16x16 region features.
"""

from typing import Any, NamedTuple, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from xmcgan_jax.models import layers

Dtype = Any

# (channel multiplier of df, downsample) per DiscBlock after the first
# (optimized) block, which halves the input size at df channels.
_SCHEDULES = {
    64: ((2, True), (4, True), (8, True), (16, False)),
    128: ((2, True), (4, True), (8, True), (16, True), (16, False)),
    256: ((2, True), (4, True), (8, True), (8, True), (16, True), (16, False)),
}
REGION_SIZE = 16  # Region features are taken where the activations are 16x16.


def discriminator_schedule(image_size: int) -> Sequence[Tuple[int, bool]]:
  """DiscBlock (channels, downsample) list for `image_size`; raises if none."""
  if image_size not in _SCHEDULES:
    raise ValueError(f'image_size={image_size} has no discriminator channel '
                     f'schedule; supported: {sorted(_SCHEDULES)}.')
  return _SCHEDULES[image_size]


class DiscOutput(NamedTuple):
  """What D computes for N images.

  logits: (N,) float32 adversarial logits.
  pooled: (N, C) v, sum-pooled ReLU features (image contrastive feature).
  projection: (N, C) p, the projected sentence (text contrastive feature).
  regions: (N, 256, E) region features from the 16x16 activations.
  hard_projection: (N, K, C) the projected hard negative captions of each
    image (text/hard_negatives.py), or None without them.
  """
  logits: jax.Array
  pooled: jax.Array
  projection: jax.Array
  regions: jax.Array
  hard_projection: Optional[jax.Array] = None


class OptimizedBlock(nn.Module):
  """First block: conv3x3 -> ReLU -> conv3x3 -> pool; shortcut pool -> conv1x1.

  Each "conv, then pool" runs as one exact stride-2 conv (layers.SpectralConv
  with pool=True); `pool_op` other than 'avg' pools both branches' full
  resolution outputs instead (layers.SpectralConv).
  """
  features: int
  dtype: Dtype = jnp.float32
  pool_op: str = 'avg'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = lambda k, name, pool=False: layers.SpectralConv(
        self.features, k, self.dtype, pool=pool, pool_op=self.pool_op,
        name=name)
    h = conv(3, 'conv1')(x, train)
    h = conv(3, 'conv2', pool=True)(nn.relu(h), train)
    shortcut = conv(1, 'shortcut', pool=True)(x, train)
    return h + shortcut


class DiscBlock(nn.Module):
  """ReLU -> conv3x3 -> ReLU -> conv3x3 (-> pool); learnable shortcut if needed.

  With downsample, conv2 and the shortcut conv each run with their pooling
  as one exact stride-2 conv (layers.SpectralConv with pool=True);
  `pool_op` other than 'avg' pools both branches' full resolution outputs
  instead (layers.SpectralConv).
  """
  features: int
  downsample: bool
  dtype: Dtype = jnp.float32
  pool_op: str = 'avg'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = lambda k, name, pool=False: layers.SpectralConv(
        self.features, k, self.dtype, pool=pool, pool_op=self.pool_op,
        name=name)
    h = conv(3, 'conv1')(nn.relu(x), train)
    h = conv(3, 'conv2', pool=self.downsample)(nn.relu(h), train)
    shortcut = x
    if self.downsample or x.shape[-1] != self.features:
      shortcut = conv(1, 'shortcut', pool=self.downsample)(x, train)
    return h + shortcut


class Discriminator(nn.Module):
  """Projection discriminator with contrastive feature heads.

  Attributes:
    image_size: input size (64, 128 or 256).
    base_width: df.
    text_dim: E; region features are projected to it.
    dtype: compute dtype (parameters stay float32, logits come out float32).
    remat: recompute block activations in the backward pass (less memory).
    downsample: the blocks' 2x2 pooling (residual branch and shortcut),
      'avg' (the paper's), 'max' or 'mixed' (layers.POOL_OPS; study options:
      with average pooling D learned circle from square slowly on Shapes,
      docs/shapes.md).
  """
  image_size: int = 128
  base_width: int = 96
  text_dim: int = 768
  dtype: Dtype = jnp.float32
  remat: bool = False
  downsample: str = 'avg'

  @nn.compact
  def __call__(self, images: jax.Array, sentence_emb: jax.Array,
               train: bool = True,
               hard_sentence_emb: Optional[jax.Array] = None) -> DiscOutput:
    """Scores images against captions.

    Args:
      images: (N, H, W, 3) in [0, 1].
      sentence_emb: (N, E) the caption of each image.
      train: run one spectral-norm power iteration and store it if True.
      hard_sentence_emb: (N, K, E) hard negative captions of each image, to
        project with the captions (for the contrastive terms), or None.

    Returns:
      A DiscOutput.
    """
    schedule = discriminator_schedule(self.image_size)
    n = images.shape[0]
    if images.shape[1:] != (self.image_size, self.image_size, 3):
      raise ValueError(f'Discriminator got images of shape {images.shape[1:]}, '
                       f'expected {(self.image_size, self.image_size, 3)}.')
    df = self.base_width
    if self.downsample not in layers.POOL_OPS:
      raise ValueError(f'downsample={self.downsample!r}: use one of '
                       f'{layers.POOL_OPS}.')
    h = OptimizedBlock(df, self.dtype, self.downsample, name='block0')(
        images.astype(self.dtype), train)
    regions = None
    # static_argnums counts self: (self, x, train).
    block_cls = nn.remat(DiscBlock, static_argnums=(2,)) if self.remat else DiscBlock
    for i, (mult, down) in enumerate(schedule):
      h = block_cls(mult * df, down, self.dtype, self.downsample,
                    name=f'block{i + 1}')(h, train)
      if regions is None and h.shape[1] == REGION_SIZE:
        regions = layers.SpectralConv(self.text_dim, 1, self.dtype,
                                      name='region_proj')(h, train)
        regions = regions.reshape(n, REGION_SIZE * REGION_SIZE, self.text_dim)
    pooled = jnp.sum(nn.relu(h), axis=(1, 2))
    logits = layers.SpectralDense(1, dtype=self.dtype, name='logit')(pooled, train)
    sentences = sentence_emb
    if hard_sentence_emb is not None:
      # One call on all rows: one power iteration, and the captions' rows
      # are what they are without the negatives (the layer is row-wise).
      sentences = jnp.concatenate([sentence_emb, hard_sentence_emb.reshape(
          (-1, hard_sentence_emb.shape[-1]))])
    projected = layers.SpectralDense(h.shape[-1], dtype=self.dtype,
                                     name='text_proj')(
                                         sentences.astype(self.dtype), train)
    projection = projected[:n]
    hard_projection = None
    if hard_sentence_emb is not None:
      hard_projection = projected[n:].reshape(
          hard_sentence_emb.shape[:2] + (h.shape[-1],))
    logits = logits[:, 0].astype(jnp.float32) + jnp.sum(
        pooled.astype(jnp.float32) * projection.astype(jnp.float32), axis=-1)
    return DiscOutput(logits, pooled, projection, regions, hard_projection)
