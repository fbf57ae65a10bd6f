"""XMC-GAN generator: BigGAN-style up-blocks, word-region attention at 16x16
(the paper's; `attention_resolution` moves it for studies).

Images come out in [0, 1] (float32). Where this departs from the paper or
the 2021 release, docs/fidelity.md says so.
"""

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from xmcgan_jax import losses
from xmcgan_jax.models import layers

Dtype = Any

# Channel multipliers (of the base width gf) of the spatially conditioned blocks
# after 16x16, one block per doubling up to the image size.
_SPATIAL_CHANNELS = {64: (2, 1), 128: (4, 2, 1), 256: (8, 4, 2, 1)}
# The stem (4x4) and the two self-modulated blocks (to 8x8 and 16x16).
_STEM_CHANNELS = 16
_GLOBAL_BLOCK_CHANNELS = (16, 8)
# Grids the word-region attention can run at (the paper: 16).
ATTENTION_RESOLUTIONS = (8, 16, 32)


def generator_channels(image_size: int) -> Sequence[int]:
  """Channel multipliers after 16x16 for `image_size`; raises if unsupported."""
  if image_size not in _SPATIAL_CHANNELS:
    raise ValueError(f'image_size={image_size} has no generator channel schedule; '
                     f'supported: {sorted(_SPATIAL_CHANNELS)}.')
  return _SPATIAL_CHANNELS[image_size]


def _conv(features: int, kernel: int, dtype: Dtype, name: str) -> nn.Conv:
  # G's block convs have no bias (the 2021 release's have one). Most feed
  # only a BatchNorm, which subtracts the batch mean: there a bias has an
  # exactly-zero gradient, and Adam would only turn its rounding noise into
  # lr-sized random steps. Four also reach the attention query directly:
  # block1's last and shortcut convs (its output is the query's input), and
  # block0's last and shortcut convs (block0's output is the input of
  # block1's shortcut, which passes it on unnormalised). There a bias adds a
  # constant to the query, which the query's own bias can absorb: the same
  # functions, though in the release those biases do get gradients. Only
  # OutputConv keeps a bias.
  return nn.Conv(features, (kernel, kernel), padding='SAME', dtype=dtype,
                 use_bias=False, kernel_init=layers.kernel_init, name=name)


class UpConv(nn.Module):
  """Nearest 2x upsampling, then a bias-free 3x3 'SAME' conv, computed
  sub-pixel (layers.conv_after_upsample2: exact, 56% fewer FLOPs).

  Its parameter is the (3, 3, I, O) kernel of the upsampled input, named and
  shaped as the nn.Conv it replaces, so checkpoints load either way.
  """
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', layers.kernel_init,
                        (3, 3, x.shape[-1], self.features), jnp.float32)
    return layers.conv_after_upsample2(x, kernel, self.dtype)


class OutputConv(nn.Module):
  """The 3x3 conv to RGB, its output channels zero-padded for the hardware.

  A convolution with 3 output channels runs GPU tensor cores at a fraction of
  their rate (measured: 15 TFLOP/s for this conv at 256px on an H100, of 989
  peak). The
  kernel is padded with zero filters to `padded_channels` outputs and the
  extra outputs are sliced off: the same result and parameters (a (3, 3, C, 3)
  kernel and a bias), in a layout cuDNN runs well.

  Attributes:
    features: real output channels (3).
    padded_channels: channels the convolution computes (<= features: none).
    dtype: compute dtype.
  """
  features: int = 3
  padded_channels: int = 16
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', layers.kernel_init,
                        (3, 3, x.shape[-1], self.features), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (self.features,),
                      jnp.float32)
    extra = max(0, self.padded_channels - self.features)
    kernel = jnp.pad(kernel, ((0, 0), (0, 0), (0, 0), (0, extra)))
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel.astype(self.dtype), (1, 1), 'SAME',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return y[..., :self.features] + bias.astype(self.dtype)


class GenBlock(nn.Module):
  """Up-sampling residual block with (local) conditional BatchNorm.

  main: CBN -> ReLU -> up x2 -> conv3x3 -> CBN -> ReLU -> conv3x3, where
  "up x2 -> conv3x3" is one sub-pixel conv at the input resolution (UpConv);
  shortcut: conv1x1 -> up x2 (a 1x1 conv commutes with nearest upsampling, so
  it runs at the input resolution: 4x fewer FLOPs, same result).
  `cond` is a vector (B, D) for CBN or a map (B, r, r, D) for local CBN (r =
  the attention's grid, 16 in the paper).
  """
  features: int
  dtype: Dtype = jnp.float32
  bn_axis_name: Optional[str] = None
  bn_group_size: Optional[int] = None
  cond_upsample: str = 'nearest'  # See layers.ConditionalBatchNorm.

  @nn.compact
  def __call__(self, x: jax.Array, cond: jax.Array, train: bool) -> jax.Array:
    cbn = lambda c, name: layers.ConditionalBatchNorm(
        c, dtype=self.dtype, bn_axis_name=self.bn_axis_name,
        bn_group_size=self.bn_group_size, cond_upsample=self.cond_upsample,
        name=name)
    h = nn.relu(cbn(x.shape[-1], 'cbn1')(x, cond, train))
    h = UpConv(self.features, self.dtype, name='conv1')(h)
    h = nn.relu(cbn(self.features, 'cbn2')(h, cond, train))
    h = _conv(self.features, 3, self.dtype, 'conv2')(h)
    shortcut = _conv(self.features, 1, self.dtype, 'shortcut')(x)
    return h + layers.upsample_nearest(shortcut, 2)


class WordRegionAttention(nn.Module):
  """Each position of h attends over the caption's words (cosine, softmax).

  Returns the context map (B, h, w, E): convex mixes of unit word vectors.
  """
  text_dim: int
  gamma: float = 15.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, h: jax.Array, word_emb: jax.Array,
               word_mask: jax.Array) -> jax.Array:
    b, height, width, _ = h.shape
    q = nn.Dense(self.text_dim, kernel_init=layers.kernel_init, dtype=self.dtype,
                 name='query')(h)
    q = losses.l2_normalize(
        q.reshape(b, height * width, -1).astype(jnp.float32))
    w = losses.l2_normalize(word_emb.astype(jnp.float32))
    scores = self.gamma * jnp.einsum('bre,bte->brt', q, w)
    scores = jnp.where(word_mask[:, None, :], scores, -1e9)
    attn = jax.nn.softmax(scores, axis=-1)
    context = jnp.einsum('brt,bte->bre', attn, w)
    return context.reshape(b, height, width, -1).astype(self.dtype)


def dummy_inputs(generator: 'Generator', batch: int = 2):
  """(z, sentence, words, mask) of zeros shaped for `generator.init`."""
  g = generator
  return (jnp.zeros((batch, g.z_dim), jnp.float32),
          jnp.zeros((batch, g.text_dim), jnp.float32),
          jnp.zeros((batch, g.max_tokens, g.text_dim), jnp.float32),
          jnp.ones((batch, g.max_tokens), bool))


class Generator(nn.Module):
  """Text-conditioned generator for 64, 128 or 256 px images.

  Attributes:
    image_size: output size (64, 128 or 256).
    base_width: gf; channel counts are multiples of it.
    z_dim: noise size; the projected sentence has the same size.
    text_dim: E, the text encoder width.
    max_tokens: T, the padded caption length.
    attention_gamma: inverse temperature of the word-region attention.
    dtype: compute dtype (parameters stay float32).
    bn_axis_name, bn_group_size: cross-device BatchNorm (see layers.BatchNorm).
    remat: recompute each block's activations in the backward pass instead
      of storing them (less memory, about one more forward of compute).
    out_padded_channels: see OutputConv (3 or less: no padding).
    stem_text: feed the stem [projected sentence, z] instead of z alone (a
      deviation from the paper; see `__call__`).
    cond_upsample: 'nearest' (paper) or 'bilinear': how the local CBN's
      16x16 modulation reaches 32x32 and up (layers.ConditionalBatchNorm).
    attention_resolution: the grid of the word-region attention, one of
      ATTENTION_RESOLUTIONS below image_size (paper: 16). The blocks before
      it are self-modulated by [sentence, z], those after it by the local
      condition map; so 8 moves one block from the first kind to the second
      and 32 one the other way (a study option, docs/fidelity.md).
  """
  image_size: int = 128
  base_width: int = 96
  z_dim: int = 128
  text_dim: int = 768
  max_tokens: int = 17
  attention_gamma: float = 15.0
  dtype: Dtype = jnp.float32
  bn_axis_name: Optional[str] = None
  bn_group_size: Optional[int] = None
  remat: bool = False
  out_padded_channels: int = 16
  stem_text: bool = False
  cond_upsample: str = 'nearest'
  attention_resolution: int = 16

  @nn.compact
  def __call__(self, z: jax.Array, sentence_emb: jax.Array, word_emb: jax.Array,
               word_mask: jax.Array, train: bool = True) -> jax.Array:
    """Generates images.

    Args:
      z: (B, z_dim) noise.
      sentence_emb: (B, E) sentence features.
      word_emb: (B, T, E) word features.
      word_mask: (B, T) bool, True on real tokens.
      train: batch statistics (and their running averages updated) if True.

    Returns:
      (B, image_size, image_size, 3) float32 images in [0, 1].
    """
    channels = tuple(_GLOBAL_BLOCK_CHANNELS) + tuple(
        generator_channels(self.image_size))
    res = self.attention_resolution
    if res not in ATTENTION_RESOLUTIONS or res >= self.image_size:
      raise ValueError(f'attention_resolution={res}: use one of '
                       f'{ATTENTION_RESOLUTIONS} below image_size '
                       f'{self.image_size}.')
    num_global = res.bit_length() - 3  # Blocks from 4x4 up to res x res.
    b = z.shape[0]
    expected = {'z': (b, self.z_dim), 'sentence_emb': (b, self.text_dim),
                'word_emb': (b, self.max_tokens, self.text_dim),
                'word_mask': (b, self.max_tokens)}
    for name, arr in zip(expected, (z, sentence_emb, word_emb, word_mask)):
      if arr.shape != expected[name]:
        raise ValueError(f'Generator input {name} has shape {arr.shape}, '
                         f'expected {expected[name]}.')
    gf = self.base_width
    # static_argnums counts self: (self, x, cond, train).
    block_cls = nn.remat(GenBlock, static_argnums=(3,)) if self.remat else GenBlock
    block = lambda c, name: block_cls(
        c * gf, dtype=self.dtype, bn_axis_name=self.bn_axis_name,
        bn_group_size=self.bn_group_size, cond_upsample=self.cond_upsample,
        name=name)
    z = z.astype(self.dtype)
    sentence = nn.Dense(self.z_dim, kernel_init=layers.kernel_init,
                        dtype=self.dtype, name='sentence_proj')(
                            sentence_emb.astype(self.dtype))
    g = jnp.concatenate([sentence, z], axis=-1)  # (B, 2 z_dim)

    # Only z feeds the stem (paper); the text enters through the modulated
    # norms, which scale and shift whole channels: a caption can move an
    # object only by gating channels whose position pattern suits it. With
    # stem_text the 4x4 layout is a linear function of the caption as well,
    # which a short run learns (docs/shapes.md).
    # The stem keeps its bias (as the 2021 release's Dense does): reshaped to
    # (4, 4, C) it is a learned map per position and channel, which the next
    # BatchNorm does not remove (BN subtracts one mean per channel): a source
    # of absolute position besides zero padding.
    h = nn.Dense(4 * 4 * _STEM_CHANNELS * gf, kernel_init=layers.kernel_init,
                 dtype=self.dtype, name='stem')(g if self.stem_text else z)
    h = h.reshape(b, 4, 4, _STEM_CHANNELS * gf)
    for i, c in enumerate(channels[:num_global]):
      h = block(c, f'block{i}')(h, g, train)

    context = WordRegionAttention(self.text_dim, self.attention_gamma,
                                  dtype=self.dtype, name='attention')(
                                      h, word_emb, word_mask)
    g_map = jnp.broadcast_to(g[:, None, None, :], (b, res, res, g.shape[-1]))
    cond_map = jnp.concatenate([context, g_map.astype(self.dtype)], axis=-1)

    for i, c in enumerate(channels[num_global:], start=num_global):
      h = block(c, f'block{i}')(h, cond_map, train)

    h = layers.ConditionalBatchNorm(
        h.shape[-1], dtype=self.dtype, bn_axis_name=self.bn_axis_name,
        bn_group_size=self.bn_group_size, cond_upsample=self.cond_upsample,
        name='out_cbn')(h, cond_map, train)
    h = OutputConv(3, self.out_padded_channels, self.dtype,
                   name='out_conv')(nn.relu(h))
    return (jnp.tanh(h.astype(jnp.float32)) + 1.0) / 2.0
