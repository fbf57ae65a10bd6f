"""Building blocks shared by the generator and discriminator.

Everything here computes in `dtype` (bf16 for training on accelerators) and keeps
parameters and normalisation statistics in float32.
"""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xmcgan_jax.losses import l2_normalize

Dtype = Any

# The 2021 release initialises every conv and dense kernel glorot-normal, biases zero.
kernel_init = nn.initializers.glorot_normal()


def upsample_nearest(x: jax.Array, factor: int) -> jax.Array:
  """Nearest-neighbour upsampling of an NHWC tensor by an integer factor."""
  if factor == 1:
    return x
  b, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, factor, w, factor, c))
  return x.reshape(b, h * factor, w * factor, c)


# Rows (or columns) of the low-resolution input that each output phase of
# "nearest 2x upsampling, then a 3-tap conv" reads, and the taps summed on
# each: even outputs 2i read x[i-1] (tap 0) and x[i] (taps 1+2); odd outputs
# 2i+1 read x[i] (taps 0+1) and x[i+1] (tap 2).
_PHASE_TAPS = np.array([[[1, 0, 0], [0, 1, 1]],
                        [[1, 1, 0], [0, 0, 1]]], np.float32)


def conv_after_upsample2(x: jax.Array, kernel: jax.Array,
                         dtype: Dtype = jnp.float32) -> jax.Array:
  """conv3x3_SAME(upsample_nearest(x, 2), kernel), computed sub-pixel.

  Each of the 4 output phases is a 2x2-tap conv of the low-resolution input,
  so one VALID 2x2 conv with 4x the output channels over the 1-padded input
  computes them all, and depth-to-space interleaves them: 16 taps per input
  pixel instead of 36 per output 2x2, 56% fewer FLOPs, and the upsampled
  input is never written. Exact for any input size.

  Args:
    x: (B, H, W, I).
    kernel: (3, 3, I, O) 'SAME' kernel of the upsampled input.
    dtype: compute dtype.

  Returns:
    (B, 2H, 2W, O).
  """
  b, h, w, _ = x.shape
  out = kernel.shape[-1]
  taps = jnp.asarray(_PHASE_TAPS, kernel.dtype)
  # phases[r, s, i, a, c, o] = sum_uv taps[a, r, u] taps[c, s, v] kernel[u, v]
  phases = jnp.einsum('aru,csv,uvio->rsiaco', taps, taps, kernel)
  phases = phases.reshape(2, 2, kernel.shape[2], 4 * out)
  y = jax.lax.conv_general_dilated(
      jnp.pad(x.astype(dtype), ((0, 0), (1, 1), (1, 1), (0, 0))),
      phases.astype(dtype), (1, 1), 'VALID',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  y = y.reshape(b, h + 1, w + 1, 2, 2, out)
  # Phase (a, c) of output (2i+a, 2j+c) sits at y[i+a, j+c, a, c].
  rows = [jnp.stack([y[:, a:a + h, c:c + w, a, c] for c in (0, 1)], axis=3)
          for a in (0, 1)]
  return jnp.stack(rows, axis=2).reshape(b, 2 * h, 2 * w, out)


def avg_pool2(x: jax.Array) -> jax.Array:
  """2x2 average pooling with stride 2 (even sizes, so 'SAME' == 'VALID')."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def max_pool2(x: jax.Array) -> jax.Array:
  """2x2 max pooling with stride 2 (even sizes), as nn.max_pool computes it.

  Forward and gradient equal XLA's reduce-window max: each window's gradient
  goes to its first maximum in row-major order (ties included). Written as
  three pairwise selects because XLA:CPU's reduce-window and
  select-and-scatter took ~1.5x as long in D's backward (benchmarks/README).
  """
  b, h, w, c = x.shape
  rows = x.reshape(b, h // 2, 2, w // 2, 2 * c)  # A window row: [left | right].
  first = lambda p, q: jnp.where(p >= q, p, q)  # p wins ties: it comes first.
  top, bottom = rows[:, :, 0], rows[:, :, 1]
  return first(first(top[..., :c], top[..., c:]),
               first(bottom[..., :c], bottom[..., c:]))


def _sync_moments(moments: jax.Array, axis_name: Optional[str],
                  group_size: Optional[int]) -> jax.Array:
  """Averages per-device BatchNorm moments over a device group.

  Args:
    moments: (2, C) float32 [mean, mean of squares] of this device's batch.
    axis_name: mesh axis to synchronise over, or None for per-device stats.
    group_size: devices per statistics group; None means the whole axis.

  Returns:
    The group-averaged moments (equal per-device batches are assumed).
  """
  if axis_name is None:
    return moments
  if group_size is None:
    return jax.lax.pmean(moments, axis_name)
  # shard_map collectives take no axis_index_groups: gather the (tiny) moments of
  # every device and average this device's group.
  every = jax.lax.all_gather(moments, axis_name)  # (n_devices, 2, C)
  n = every.shape[0]
  groups = every.reshape(n // group_size, group_size, *moments.shape).mean(1)
  return groups[jax.lax.axis_index(axis_name) // group_size]


class BatchNorm(nn.Module):
  """BatchNorm without own scale/offset, with optional cross-device groups.

  Attributes:
    momentum: running-average decay (0.9, as the 2021 release).
    epsilon: added to the variance.
    axis_name: mesh axis for synchronised statistics; None = per-device.
    group_size: devices per statistics group (None = all devices on the axis).
    dtype: output dtype.
  """
  momentum: float = 0.9
  epsilon: float = 1e-5
  axis_name: Optional[str] = None
  group_size: Optional[int] = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool) -> jax.Array:
    c = x.shape[-1]
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, (c,), jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, (c,), jnp.float32)
    x32 = x.astype(jnp.float32)
    if use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      axes = tuple(range(x.ndim - 1))
      moments = jnp.stack([x32.mean(axes), jnp.square(x32).mean(axes)])
      moments = _sync_moments(moments, self.axis_name, self.group_size)
      mean = moments[0]
      var = jnp.maximum(moments[1] - jnp.square(mean), 0.0)
      if not self.is_initializing():
        m = self.momentum
        ra_mean.value = m * ra_mean.value + (1 - m) * mean
        ra_var.value = m * ra_var.value + (1 - m) * var
    y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon)
    return y.astype(self.dtype)


class ConditionalBatchNorm(nn.Module):
  """BatchNorm modulated by a condition: x_hat * (1 + gamma(c)) + beta(c).

  With a condition vector (B, D) this is the self-modulation CBN of the
  generator's first blocks. With a condition map (B, h, w, D) it is the local
  CBN: gamma/beta are 1x1 convs of the map, computed at the map's resolution
  and nearest-upsampled to x's. Because a 1x1 conv commutes with nearest
  upsampling, this equals running the 1x1 convs over the upsampled map at
  x's resolution (the 2021 formulation) at a fraction of the FLOPs.

  Attributes:
    features: channels of x.
    dtype: compute dtype.
    bn_axis_name, bn_group_size: see `BatchNorm`.
    cond_upsample: how gamma/beta of a condition map reach x's resolution:
      'nearest' (the paper and the 2021 release: constant over each block of
      pixels) or 'bilinear' (jax.image.resize, half-pixel centres; the 1x1
      convs still commute with it, both being linear per pixel).
  """
  features: int
  dtype: Dtype = jnp.float32
  bn_axis_name: Optional[str] = None
  bn_group_size: Optional[int] = None
  cond_upsample: str = 'nearest'

  @nn.compact
  def __call__(self, x: jax.Array, cond: jax.Array, train: bool) -> jax.Array:
    x_hat = BatchNorm(axis_name=self.bn_axis_name, group_size=self.bn_group_size,
                      dtype=self.dtype, name='bn')(x, use_running_average=not train)
    dense = lambda name: nn.Dense(self.features, kernel_init=kernel_init,
                                  dtype=self.dtype, name=name)
    gamma = dense('gamma')(cond)
    beta = dense('beta')(cond)
    b, h, w, c = x_hat.shape
    if cond.ndim == 2:
      return x_hat * (1 + gamma[:, None, None, :]) + beta[:, None, None, :]
    ch, cw = cond.shape[1:3]
    if h % ch or w % cw:
      raise ValueError(f'Condition map {cond.shape[1:3]} does not divide the '
                       f'activation size {(h, w)}.')
    fh, fw = h // ch, w // cw
    if self.cond_upsample == 'bilinear':
      resize = lambda t: jax.image.resize(t, (b, h, w, c), 'bilinear')
      return x_hat * (1 + resize(gamma)) + resize(beta)
    # Broadcast instead of materialising the upsampled gamma/beta.
    x6 = x_hat.reshape(b, ch, fh, cw, fw, c)
    out = (x6 * (1 + gamma[:, :, None, :, None, :])
           + beta[:, :, None, :, None, :])
    return out.reshape(b, h, w, c)


# Hand-written, not flax's nn.SpectralNorm: that wraps a whole layer and
# normalises its params, while ours must normalise the 3x3 kernel before the
# exact rewrites derive the 4x4 / sub-pixel kernels from it; it also keeps the
# release's u-then-v iteration and checkpoints' 'spectral_norm_stats' layout.
def _spectral_normalize(module: nn.Module, kernel: jax.Array,
                        update_stats: bool) -> jax.Array:
  """Divides `kernel` by its largest singular value (one power iteration).

  The kernel is viewed as a (fan_in, out) matrix. The persistent vector `u`
  (1, out) lives in the 'spectral_norm_stats' collection. Every forward
  refines u by one power iteration, as the 2021 release does; a training
  forward (`update_stats`) writes the refined u back, any other forward
  leaves the stored u as it was.
  """
  w = kernel.reshape(-1, kernel.shape[-1]).astype(jnp.float32)
  u_var = module.variable(
      'spectral_norm_stats', 'u',
      lambda: jax.random.normal(module.make_rng('params'), (1, w.shape[-1]),
                                jnp.float32))
  v = l2_normalize(u_var.value @ w.T, eps=1e-10)
  u = l2_normalize(v @ w, eps=1e-10)
  if update_stats and not module.is_initializing():
    u_var.value = u
  u = jax.lax.stop_gradient(u)
  v = jax.lax.stop_gradient(v)
  sigma = (v @ w @ u.T)[0, 0]
  return kernel / (sigma + 1e-10)


class SpectralDense(nn.Module):
  """Dense layer whose kernel is spectrally normalised."""
  features: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, update_stats: bool) -> jax.Array:
    kernel = self.param('kernel', kernel_init, (x.shape[-1], self.features),
                        jnp.float32)
    kernel = _spectral_normalize(self, kernel, update_stats)
    y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      bias = self.param('bias', nn.initializers.zeros, (self.features,),
                        jnp.float32)
      y = y + bias.astype(self.dtype)
    return y


def pooled_kernel(kernel: jax.Array) -> jax.Array:
  """The stride-2 kernel of a 'SAME' conv followed by 2x2 average pooling.

  For a (k, k, I, O) kernel, avg_pool2(conv_SAME(x, kernel)) equals a stride-2
  conv of x with this (k+1, k+1, I, O) kernel (the kernel convolved with a
  2x2 box, divided by 4) and padding k // 2 on each side. For k = 3: 16 taps
  at a quarter of the positions instead of 9 at all of them, 56% fewer
  FLOPs, and the full-resolution output is never written.
  """
  return sum(jnp.pad(kernel, ((a, 1 - a), (b, 1 - b), (0, 0), (0, 0)))
             for a in (0, 1) for b in (0, 1)) / 4


# 2x2 pooling of SpectralConv(pool=True): average (the paper's), maximum, or
# the mean of the two.
POOL_OPS = ('avg', 'max', 'mixed')


class SpectralConv(nn.Module):
  """NHWC convolution with a spectrally normalised kernel.

  'SAME' stride 1; with `pool`, followed by 2x2 average pooling (even sizes),
  computed exactly as one stride-2 conv of the pooled kernel (pooled_kernel).
  `pool_op` 'max' pools the full-resolution output by its 2x2 maximum
  instead, 'mixed' by the mean of the maximum and the average. The parameter
  is the k x k kernel either way, and spectral norm acts on it.
  """
  features: int
  kernel_size: int = 3
  dtype: Dtype = jnp.float32
  pool: bool = False
  pool_op: str = 'avg'

  @nn.compact
  def __call__(self, x: jax.Array, update_stats: bool) -> jax.Array:
    k = self.kernel_size
    kernel = self.param('kernel', kernel_init,
                        (k, k, x.shape[-1], self.features), jnp.float32)
    kernel = _spectral_normalize(self, kernel, update_stats)
    strides, padding = (1, 1), 'SAME'
    if self.pool_op not in POOL_OPS:
      raise ValueError(f'pool_op={self.pool_op!r}: use one of {POOL_OPS}.')
    full_resolution = self.pool and self.pool_op != 'avg'
    if self.pool and k == 1 and not full_resolution:  # Exact, 4x cheaper.
      x = avg_pool2(x)
    elif self.pool and not full_resolution:
      kernel = pooled_kernel(kernel)
      strides, padding = (2, 2), ((k // 2, k // 2), (k // 2, k // 2))
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel.astype(self.dtype), strides, padding,
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    bias = self.param('bias', nn.initializers.zeros, (self.features,),
                      jnp.float32)
    y = y + bias.astype(self.dtype)
    if not full_resolution:
      return y
    top = max_pool2(y)
    return top if self.pool_op == 'max' else (top + avg_pool2(y)) / 2
