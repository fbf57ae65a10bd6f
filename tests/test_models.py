"""Generator and discriminator: shapes, dtypes, layers, parameter counts."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from benchmarks.param_counts import count_parameters
from xmcgan_jax.models import Discriminator
from xmcgan_jax.models import discriminator as discriminator_lib
from xmcgan_jax.models import Generator
from xmcgan_jax.models import generator as generator_lib
from xmcgan_jax.models import layers
from xmcgan_jax import config_base
from xmcgan_jax import errors
from xmcgan_jax import parallel

E, T, Z = 16, 6, 8


def _text(b, seed=0):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(2, T + 1, size=b)
  return (rng.normal(size=(b, Z)).astype(np.float32),
          rng.normal(size=(b, E)).astype(np.float32),
          rng.normal(size=(b, T, E)).astype(np.float32),
          np.arange(T)[None] < lengths[:, None])


# Every size and both compute dtypes, without the full cross product (CPU time).
@pytest.mark.parametrize('size,dtype', [(64, jnp.float32), (64, jnp.bfloat16),
                                        (128, jnp.bfloat16),
                                        (256, jnp.float32)])
def test_shapes_dtypes_and_range(size, dtype):
  g = Generator(image_size=size, base_width=2, z_dim=Z, text_dim=E,
                max_tokens=T, dtype=dtype)
  d = Discriminator(image_size=size, base_width=2, text_dim=E, dtype=dtype)
  b = 3
  z, sentence, words, mask = _text(b)
  # Jitted: op-by-op dispatch of these modules costs far more than compiling.
  g_vars = jax.jit(lambda k: g.init(k, z, sentence, words, mask, train=False))(
      jax.random.key(0))
  images, _ = jax.jit(lambda v: g.apply(v, z, sentence, words, mask, train=True,
                                        mutable=['batch_stats']))(g_vars)
  assert images.shape == (b, size, size, 3) and images.dtype == jnp.float32
  assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(g_vars))
  d_vars = jax.jit(lambda k: d.init(k, images, sentence, train=False))(
      jax.random.key(1))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(d_vars))
  out, _ = jax.jit(lambda v: d.apply(v, images, sentence, train=True,
                                     mutable=['spectral_norm_stats']))(d_vars)
  width = 2 * 16
  assert out.logits.shape == (b,) and out.logits.dtype == jnp.float32
  assert out.pooled.shape == (b, width) and out.pooled.dtype == dtype
  assert out.projection.shape == (b, width)
  assert out.regions.shape == (b, 256, E) and out.regions.dtype == dtype
  assert np.isfinite(np.asarray(out.logits)).all()


def test_bad_sizes_and_inputs_are_named():
  with pytest.raises(ValueError, match='image_size=96'):
    z, s, w, m = _text(1)
    Generator(image_size=96, base_width=2, z_dim=Z, text_dim=E,
              max_tokens=T).init(jax.random.key(0), z, s, w, m)
  with pytest.raises(ValueError, match='word_emb'):
    z, s, w, m = _text(1)
    Generator(image_size=64, base_width=2, z_dim=Z, text_dim=E,
              max_tokens=T + 1).init(jax.random.key(0), z, s, w, m)


def test_stem_sees_the_caption_only_with_stem_text():
  z, s, w, m = _text(2)
  other_s = s[::-1].copy()
  for stem_text in (False, True):
    g = Generator(image_size=64, base_width=2, z_dim=Z, text_dim=E,
                  max_tokens=T, stem_text=stem_text)
    g_vars = jax.jit(g.init)(jax.random.key(0), z, s, w, m)
    assert g_vars['params']['stem']['kernel'].shape[0] == (
        2 * Z if stem_text else Z)

    @jax.jit
    def stem_out(sentence):
      _, state = g.apply(g_vars, z, sentence, w, m, train=False,
                         capture_intermediates=lambda mdl, _: mdl.name == 'stem')
      return state['intermediates']['stem']['__call__'][0]

    changed = not np.allclose(stem_out(s), stem_out(other_s))
    assert changed == stem_text


@pytest.mark.parametrize('resolution', [8, 16, 32])
def test_attention_resolution_sets_where_words_enter(resolution):
  """The attention runs on the grid it is given; the blocks before it are
  modulated by the vector [sentence, z], those after it by the local map
  [words' context, sentence, z] (paper: 16, after two global blocks)."""
  z, s, w, m = _text(2)
  g = Generator(image_size=64, base_width=2, z_dim=Z, text_dim=E,
                max_tokens=T, attention_resolution=resolution)
  g_vars = jax.jit(g.init)(jax.random.key(0), z, s, w, m)
  local = resolution.bit_length() - 3  # The first locally modulated block.
  for i in range(4):
    fan_in = g_vars['params'][f'block{i}']['cbn1']['gamma']['kernel'].shape[0]
    assert fan_in == (2 * Z if i < local else E + 2 * Z), (i, fan_in)

  @jax.jit
  def context_of(words):
    _, state = g.apply(
        g_vars, z, s, words, m, train=False,
        capture_intermediates=lambda mdl, _: mdl.name == 'attention')
    return state['intermediates']['attention']['__call__'][0]

  context = context_of(w)
  assert context.shape == (2, resolution, resolution, E)
  assert not np.allclose(context, context_of(w[::-1].copy()))


def test_bad_attention_resolution_is_named():
  z, s, w, m = _text(1)
  with pytest.raises(ValueError, match='attention_resolution=64'):
    Generator(image_size=64, base_width=2, z_dim=Z, text_dim=E, max_tokens=T,
              attention_resolution=64).init(jax.random.key(0), z, s, w, m)
  from xmcgan_jax import config_base  # pylint: disable=g-import-not-at-top
  from xmcgan_jax.models import generator  # pylint: disable=g-import-not-at-top
  assert config_base.G_ATTENTION_RESOLUTIONS == generator.ATTENTION_RESOLUTIONS


def test_local_cbn_rewrite_equals_naive_full_resolution():
  """gamma/beta at 16x16 then upsampled == 1x1 convs of the upsampled map."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 64, 64, 5)).astype(np.float32)
  cond16 = rng.normal(size=(2, 16, 16, 7)).astype(np.float32)
  cbn = layers.ConditionalBatchNorm(5)
  variables = cbn.init(jax.random.key(0), x, cond16, train=True)
  got, _ = cbn.apply(variables, x, cond16, train=True, mutable=['batch_stats'])

  p = variables['params']
  cond64 = np.repeat(np.repeat(cond16, 4, axis=1), 4, axis=2)
  gamma = cond64 @ p['gamma']['kernel'] + p['gamma']['bias']
  beta = cond64 @ p['beta']['kernel'] + p['beta']['bias']
  mean = x.mean((0, 1, 2))
  var = x.var((0, 1, 2))
  want = (x - mean) / np.sqrt(var + 1e-5) * (1 + gamma) + beta
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_bilinear_cond_upsample_is_the_convs_of_the_resized_map():
  """g_cond_upsample='bilinear': gamma/beta of the 16x16 map resized
  bilinearly equal the 1x1 convs of the bilinearly resized map (both linear
  per pixel); 'nearest' stays the default and differs from it."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 32, 32, 5)).astype(np.float32)
  cond16 = rng.normal(size=(2, 16, 16, 7)).astype(np.float32)
  cbn = layers.ConditionalBatchNorm(5, cond_upsample='bilinear')
  variables = cbn.init(jax.random.key(0), x, cond16, train=True)
  got, _ = cbn.apply(variables, x, cond16, train=True, mutable=['batch_stats'])
  p = variables['params']
  cond32 = np.asarray(jax.image.resize(cond16, (2, 32, 32, 7), 'bilinear'))
  gamma = cond32 @ p['gamma']['kernel'] + p['gamma']['bias']
  beta = cond32 @ p['beta']['kernel'] + p['beta']['bias']
  x_hat = (x - x.mean((0, 1, 2))) / np.sqrt(x.var((0, 1, 2)) + 1e-5)
  np.testing.assert_allclose(got, x_hat * (1 + gamma) + beta, rtol=1e-4,
                             atol=1e-4)
  nearest, _ = layers.ConditionalBatchNorm(5).apply(
      variables, x, cond16, train=True, mutable=['batch_stats'])
  assert np.abs(np.asarray(nearest) - np.asarray(got)).max() > 1e-2


def test_generator_shortcut_rewrite_equals_upsample_then_conv():
  """The shortcut conv1x1 before upsampling equals it after (the release)."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 3)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(1, 1, 3, 4)), jnp.float32)
  conv = lambda h: jax.lax.conv_general_dilated(
      h, kernel, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  np.testing.assert_allclose(layers.upsample_nearest(conv(x), 2),
                             conv(layers.upsample_nearest(x, 2)), rtol=1e-5,
                             atol=1e-5)


def test_spectral_norm_power_iteration_and_eval_freeze():
  layer = layers.SpectralDense(6)
  x = jnp.ones((1, 10))
  variables = layer.init(jax.random.key(0), x, update_stats=False)
  kernel = np.asarray(variables['params']['kernel'])
  sigma_true = np.linalg.svd(kernel, compute_uv=False)[0]
  state = variables['spectral_norm_stats']
  for _ in range(30):
    _, new = layer.apply({'params': variables['params'],
                          'spectral_norm_stats': state}, x, update_stats=True,
                         mutable=['spectral_norm_stats'])
    state = new['spectral_norm_stats']
  # After converging, the layer applies kernel / sigma_max.
  y_sn, _ = layer.apply({'params': variables['params'],
                         'spectral_norm_stats': state}, x, update_stats=False,
                        mutable=['spectral_norm_stats'])
  x_probe = np.eye(10, dtype=np.float32)
  w_sn = layer.apply({'params': {'kernel': variables['params']['kernel'],
                                 'bias': np.zeros(6, np.float32)},
                      'spectral_norm_stats': state}, x_probe,
                     update_stats=False)
  np.testing.assert_allclose(np.asarray(w_sn), kernel / sigma_true, rtol=1e-3,
                             atol=1e-4)
  # Frozen in eval: the u vector is not written back.
  _, after = layer.apply({'params': variables['params'],
                          'spectral_norm_stats': state}, x, update_stats=False,
                         mutable=['spectral_norm_stats'])
  np.testing.assert_array_equal(after['spectral_norm_stats']['u'], state['u'])
  assert np.isfinite(np.asarray(y_sn)).all()


def _release_sn_kernel(kernel: np.ndarray, u: np.ndarray) -> np.ndarray:
  """The 2021 release's spectral norm, by hand: one power iteration from the
  stored u (v = u W^T, u' = v W, both l2-normalised), sigma = v W u'^T."""
  w = kernel.reshape(-1, kernel.shape[-1]).astype(np.float64)
  v = u @ w.T
  v /= np.linalg.norm(v)
  u_new = v @ w
  u_new /= np.linalg.norm(u_new)
  return kernel / (v @ w @ u_new.T)[0, 0]


def test_discriminator_eval_refines_u_once_and_stores_nothing():
  """D(train=False) is the release's eval function: every spectral norm
  refines its stored u by one power iteration and does not store it."""
  d = Discriminator(image_size=64, base_width=2, text_dim=E)
  rng = np.random.default_rng(3)
  images = rng.random((2, 64, 64, 3), dtype=np.float32)
  sentence = rng.normal(size=(2, E)).astype(np.float32)
  d_vars = d.init(jax.random.key(4), images, sentence, train=False)
  eval_out, after = d.apply(d_vars, images, sentence, train=False,
                            mutable=['spectral_norm_stats'])
  jax.tree.map(np.testing.assert_array_equal,
               after['spectral_norm_stats'], d_vars['spectral_norm_stats'])
  # The logit layer by hand (the release's normalisation of its kernel),
  # then the whole output against a train-mode pass, which refines the same
  # stored u once (D has no other train/eval difference).
  layer = d_vars['params']['logit']['kernel']
  u = np.asarray(d_vars['spectral_norm_stats']['logit']['u'])
  pooled = np.asarray(eval_out.pooled, np.float64)
  projection = np.asarray(eval_out.projection, np.float64)
  want = (pooled @ _release_sn_kernel(np.asarray(layer), u))[:, 0]
  want += np.asarray(d_vars['params']['logit']['bias'])[0]
  want += np.sum(pooled * projection, axis=-1)
  np.testing.assert_allclose(np.asarray(eval_out.logits), want, rtol=1e-5,
                             atol=1e-5)
  train_out, _ = d.apply(d_vars, images, sentence, train=True,
                         mutable=['spectral_norm_stats'])
  # hard_projection is None without hard negatives; tree.map skips it.
  jax.tree.map(lambda got, ref: np.testing.assert_allclose(
      np.asarray(got), np.asarray(ref), rtol=1e-6, atol=1e-6),
               eval_out, train_out)
  assert eval_out.hard_projection is None


def test_batchnorm_groups_on_8_devices():
  """Group statistics over pairs of devices equal numpy per-group stats."""
  mesh = parallel.make_mesh()
  x = np.random.default_rng(0).normal(size=(16, 3, 3, 4)).astype(np.float32)
  x += np.arange(16)[:, None, None, None]  # Make groups differ.
  bn = layers.BatchNorm(axis_name='data', group_size=2)
  variables = bn.init(jax.random.key(0), x[:2], use_running_average=True)

  def per_device(x):
    y, _ = bn.apply(variables, x, use_running_average=False,
                    mutable=['batch_stats'])
    return y

  got = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=P('data'),
                              out_specs=P('data'), check_vma=False))(x)
  want = []
  for g in range(4):  # 2 devices x 2 examples per group.
    xs = x[4 * g:4 * g + 4]
    want.append((xs - xs.mean((0, 1, 2))) /
                np.sqrt(xs.var((0, 1, 2)) + 1e-5))
  np.testing.assert_allclose(got, np.concatenate(want), rtol=1e-4, atol=1e-4)


def test_parameter_counts_at_paper_widths():
  """gf = df = 96, BERT-base E = 768, T = 17.

  The reference counts, derived from the 2021 release's layer shapes, are G
  78.5 M / 92.9 M and D 87.9 M / 99.4 M (128 / 256 px). Our G drops the biases
  of the convs that feed a BatchNorm (their gradient is exactly zero), about
  15 k parameters (the stem Dense keeps its bias: reshaped to 4x4 it varies
  over positions, which BatchNorm does not remove); D is unchanged.
  """
  n128 = count_parameters(128)
  n256 = count_parameters(256)
  assert round(n128['discriminator'] / 1e5) == 879
  assert round(n256['discriminator'] / 1e5) == 994
  for n, ref in ((n128['generator'], 78.51e6), (n256['generator'], 92.87e6)):
    assert 0 < ref - n < 3e4, n


def _assert_close_in_norm(a, b, tol=1e-5):
  """float32 summation-order noise only: relative L2 error below tol."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert np.linalg.norm(a - b) <= tol * (np.linalg.norm(b) + 1e-12), (
      np.linalg.norm(a - b), np.linalg.norm(b))


def test_padded_output_conv_and_remat_change_nothing():
  """The GPU layout options are exact: same params, outputs and gradients."""
  z, s, w, m = _text(4)
  images = np.random.default_rng(1).random((4, 64, 64, 3)).astype(np.float32)
  kw = dict(image_size=64, base_width=2, z_dim=Z, text_dim=E, max_tokens=T)
  plain_g = Generator(out_padded_channels=3, **kw)
  fast_g = Generator(remat=True, **kw)  # Padded to 16 by default.
  g_vars = jax.jit(plain_g.init)(jax.random.PRNGKey(0), z, s, w, m)
  assert jax.tree.structure(jax.eval_shape(
      fast_g.init, jax.random.PRNGKey(0), z, s, w, m)) == jax.tree.structure(
          g_vars)

  def g_grads(model):
    def loss(params):
      out, _ = model.apply({**g_vars, 'params': params}, z, s, w, m,
                           mutable=['batch_stats'])
      return jnp.sum(out * images[..., ::-1]), out
    return jax.jit(jax.grad(loss, has_aux=True))(g_vars['params'])

  for a, b in zip(jax.tree.leaves(g_grads(fast_g)),
                  jax.tree.leaves(g_grads(plain_g))):
    _assert_close_in_norm(a, b)

  d_kw = dict(image_size=64, base_width=2, text_dim=E)
  plain_d, remat_d = Discriminator(**d_kw), Discriminator(remat=True, **d_kw)
  d_vars = jax.jit(plain_d.init)(jax.random.PRNGKey(0), images, s)

  def d_grads(model):
    def loss(params):
      out, stats = model.apply({**d_vars, 'params': params}, images, s,
                               mutable=['spectral_norm_stats'])
      return jnp.sum(out.logits), stats
    return jax.jit(jax.grad(loss, has_aux=True))(d_vars['params'])

  for a, b in zip(jax.tree.leaves(d_grads(remat_d)),
                  jax.tree.leaves(d_grads(plain_d))):
    _assert_close_in_norm(a, b)


class _NaiveSpectralConv(nn.Module):
  """The 2021 formulation: 'SAME' conv, then (pool) 2x2 average pooling
  (pool_op 'max': the maximum; 'mixed': the mean of maximum and average)."""
  features: int
  kernel_size: int = 3
  pool: bool = False
  pool_op: str = 'avg'

  @nn.compact
  def __call__(self, x, update_stats):
    k = self.kernel_size
    kernel = self.param('kernel', layers.kernel_init,
                        (k, k, x.shape[-1], self.features), jnp.float32)
    kernel = layers._spectral_normalize(self, kernel, update_stats)  # pylint: disable=protected-access
    y = jax.lax.conv_general_dilated(
        x, kernel, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        precision='highest')
    y = y + self.param('bias', nn.initializers.zeros, (self.features,))
    if not self.pool:
      return y
    top, mean = nn.max_pool(y, (2, 2), (2, 2)), layers.avg_pool2(y)
    return {'avg': mean, 'max': top, 'mixed': (top + mean) / 2}[self.pool_op]


class _NaiveUpConv(nn.Module):
  """The 2021 formulation: nearest 2x upsampling, then a 3x3 conv."""
  features: int

  @nn.compact
  def __call__(self, x):
    return nn.Conv(self.features, (3, 3), padding='SAME', use_bias=False,
                   precision='highest', name='conv')(
                       layers.upsample_nearest(x, 2))


def _blocks_agree(fast, naive, x, *static, rename=lambda p: p):
  """Outputs and gradients (parameters and input x) of two blocks with the
  same parameters; `rename` maps the fast block's params to the naive's."""
  variables = fast.init(jax.random.key(0), x, *static)

  def loss(module, params, x):
    out = module.apply(dict(variables, params=params), x, *static,
                       mutable=True)[0]
    return jnp.sum(jnp.sin(out)), out

  with jax.default_matmul_precision('highest'):  # jit: op-by-op is slow.
    (_, got), got_grads = jax.jit(jax.value_and_grad(
        lambda p, x: loss(fast, p, x), argnums=(0, 1), has_aux=True))(
            variables['params'], x)
    (_, want), want_grads = jax.jit(jax.value_and_grad(
        lambda p, x: loss(naive, p, x), argnums=(0, 1), has_aux=True))(
            rename(variables['params']), x)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  got_grads = (rename(got_grads[0]), got_grads[1])
  assert jax.tree.structure(got_grads) == jax.tree.structure(want_grads)
  for a, b in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
    scale = max(float(np.max(np.abs(b))), 1e-6)
    np.testing.assert_allclose(np.asarray(a) / scale, np.asarray(b) / scale,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('size,kernel,pool_op', [
    (8, 3, 'avg'), (6, 3, 'avg'), (10, 1, 'avg'), (8, 3, 'max'),
    (10, 1, 'max'), (6, 3, 'mixed'), (8, 1, 'mixed')])
def test_pooled_spectral_conv_equals_conv_then_pool(size, kernel, pool_op):
  """D's conv + 2x2 average pool as one stride-2 conv (even sizes, odd and
  even outputs); the 1x1 shortcut pools first. 'max' and 'mixed': the
  conv's output, pooled."""
  x = jnp.asarray(np.random.default_rng(size).normal(size=(2, size, size, 3)),
                  jnp.float32)
  _blocks_agree(layers.SpectralConv(5, kernel, pool=True, pool_op=pool_op),
                _NaiveSpectralConv(5, kernel, pool=True, pool_op=pool_op),
                x, True)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_max_pool2_equals_reduce_window_max_with_ties(seed):
  """layers.max_pool2: the value and the gradient of nn.max_pool (XLA's
  reduce-window max), exactly, on inputs with many tied maxima (each
  window's gradient goes to its first maximum, row-major)."""
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.integers(0, 2, (3, 8, 6, 4)), jnp.float32)
  cotangent = jnp.asarray(rng.normal(size=(3, 4, 3, 4)), jnp.float32)
  want, want_vjp = jax.vjp(lambda v: nn.max_pool(v, (2, 2), (2, 2)), x)
  got, got_vjp = jax.vjp(layers.max_pool2, x)
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(got_vjp(cotangent)[0], want_vjp(cotangent)[0])
  # And on ties the gradient is not split: one entry per window.
  assert int(jnp.sum(got_vjp(jnp.ones_like(got))[0] != 0)) == got.size


def test_config_names_the_pool_ops_of_the_layers():
  from xmcgan_jax import config_base  # pylint: disable=g-import-not-at-top
  assert config_base.D_DOWNSAMPLES == layers.POOL_OPS


def test_max_downsample_keeps_the_parameters_and_changes_the_pooling():
  """Discriminator(downsample='max' or 'mixed'): the same parameter tree
  (checkpoints and the parameter count unchanged), other functions of the
  images; a bad value is named."""
  _, s, _, _ = _text(2)
  x = jnp.asarray(np.random.default_rng(1).uniform(size=(2, 64, 64, 3)),
                  jnp.float32)
  outs, trees = [], []
  for downsample in layers.POOL_OPS:
    d = Discriminator(image_size=64, base_width=2, text_dim=E,
                      downsample=downsample)
    variables = d.init(jax.random.key(0), x, s, train=False)
    trees.append(jax.tree.map(jnp.shape, variables))
    outs.append(jax.jit(lambda v, x, s, d=d: d.apply(v, x, s, train=False))(
        variables, x, s))
  assert trees[0] == trees[1] == trees[2]
  for i, j in ((0, 1), (0, 2), (1, 2)):
    assert not np.allclose(outs[i].logits, outs[j].logits)
  with pytest.raises(ValueError, match="downsample='median'"):
    Discriminator(image_size=64, base_width=2, text_dim=E,
                  downsample='median').init(jax.random.key(0), x, s)
  config = config_base.get_base_config()
  config.d_downsample = 'median'
  with pytest.raises(errors.ConfigError, match="config.d_downsample='median'"):
    config_base.validate(config)


@pytest.mark.parametrize('height,width', [(8, 8), (7, 5), (4, 9)])
def test_upsample_conv_equals_nearest_upsample_then_conv(height, width):
  """G's nearest 2x upsample + 3x3 conv as one sub-pixel conv (any size)."""
  x = jnp.asarray(np.random.default_rng(height).normal(
      size=(2, height, width, 3)), jnp.float32)
  _blocks_agree(generator_lib.UpConv(4), _NaiveUpConv(4), x,
                rename=lambda p: {'conv': p})


class _NaiveOptimizedBlock(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x, train):
    h = _NaiveSpectralConv(self.features, name='conv1')(x, train)
    h = _NaiveSpectralConv(self.features, pool=True, name='conv2')(
        nn.relu(h), train)
    return h + _NaiveSpectralConv(self.features, 1, name='shortcut')(
        layers.avg_pool2(x), train)


class _NaiveDiscBlock(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x, train):
    h = _NaiveSpectralConv(self.features, name='conv1')(nn.relu(x), train)
    h = _NaiveSpectralConv(self.features, pool=True, name='conv2')(
        nn.relu(h), train)
    return h + _NaiveSpectralConv(self.features, 1, pool=True,
                                  name='shortcut')(x, train)


class _NaiveGenBlock(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x, cond, train):
    cbn = lambda c, name: layers.ConditionalBatchNorm(c, name=name)
    h = nn.relu(cbn(x.shape[-1], 'cbn1')(x, cond, train))
    h = _NaiveUpConv(self.features, name='conv1')(h)
    h = nn.relu(cbn(self.features, 'cbn2')(h, cond, train))
    h = nn.Conv(self.features, (3, 3), padding='SAME', use_bias=False,
                precision='highest', name='conv2')(h)
    shortcut = nn.Conv(self.features, (1, 1), use_bias=False,
                       precision='highest', name='shortcut')(
                           layers.upsample_nearest(x, 2))
    return h + shortcut


def test_blocks_equal_their_naive_formulation(size=8):
  """D's optimized and down blocks and G's up block (global and local CBN)
  equal the 2021 formulation, outputs and gradients (float32)."""
  rng = np.random.default_rng(size)
  x = jnp.asarray(rng.normal(size=(2, size, size, 3)), jnp.float32)
  _blocks_agree(discriminator_lib.OptimizedBlock(4),
                _NaiveOptimizedBlock(4), x, True)
  _blocks_agree(discriminator_lib.DiscBlock(6, True), _NaiveDiscBlock(6), x,
                True)
  as_naive = lambda p: dict(p, conv1={'conv': p['conv1']})
  for cond in (rng.normal(size=(2, 5)),  # Global CBN; local CBN (a map):
               rng.normal(size=(2, size // 2, size // 2, 5))):
    _blocks_agree(generator_lib.GenBlock(6), _NaiveGenBlock(6), x,
                  jnp.asarray(cond, jnp.float32), True, rename=as_naive)
