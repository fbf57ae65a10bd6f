"""The sharded train step: device-count invariance, negatives, compile, learning."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fake_data
from xmcgan_jax.models import Discriminator
from xmcgan_jax.models import Generator
from xmcgan_jax import config_base
from xmcgan_jax import parallel
from xmcgan_jax.text import feature_table
from xmcgan_jax.training import builders
from xmcgan_jax.training import train_step as ts

SIZE, E, T, Z, B = 64, 16, 6, 8, 16  # B: global batch per sub-step.


def _models():
  g = Generator(image_size=SIZE, base_width=4, z_dim=Z, text_dim=E,
                max_tokens=T)
  d = Discriminator(image_size=SIZE, base_width=4, text_dim=E)
  return g, d


def _batch(seed=0, d_steps=2):
  """(batch, frozen): token rows whose random features a table holds."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(2, T + 1, size=(d_steps, B, 1))
  # Real images: smooth colour fields that depend on the caption, so that
  # D has something to learn.
  sentence = rng.normal(size=(d_steps, B, E)).astype(np.float32)
  yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
  colour = 1 / (1 + np.exp(-sentence[..., :3]))
  images = colour[:, :, None, None, :] * (0.5 + 0.5 * np.sin(
      6 * xx + 3 * yy))[None, None, :, :, None]
  mask = np.arange(T)[None, None] < lengths
  words = rng.normal(size=(d_steps, B, T, E)).astype(np.float32)
  table, ids = feature_table.from_features(
      words.reshape(-1, T, E), sentence.reshape(-1, E), mask.reshape(-1, T))
  batch = {'image': images.astype(np.float32),
           'token_ids': ids.reshape(d_steps, B, T), 'token_mask': mask}
  return batch, {'text_encoder': table.params}


@functools.lru_cache(maxsize=None)
def _step(n_devices, negatives, bn_group='global'):
  g, d = _models()
  g_tx, d_tx = fake_data.optimizers()
  mesh = parallel.make_mesh(jax.devices()[:n_devices])
  config = fake_data.step_config(contrastive_negatives=negatives,
                                 bn_group=bn_group)
  step = ts.make_train_step(g, d, g_tx, d_tx, mesh, config,
                            feature_table.lookup_fn())
  init = lambda: ts.create_train_state(jax.random.PRNGKey(0), g, d, g_tx, d_tx,
                                       mesh)
  return step, init


def _leaves(state):
  parts = (state.g_params, state.d_params, state.ema_g_params, state.g_state,
           state.d_state)
  return [np.asarray(x) for x in jax.tree.leaves(parts)]


def _assert_close(got, want, rtol):
  """Every leaf within rtol in relative L2 norm: ||a - b|| / ||b||."""
  for a, b in zip(got, want):
    error = np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12)
    assert error < rtol, error


@pytest.fixture(scope='module')
def one_step_states():
  batch, frozen = _batch()
  out = {}
  for key in [(8, 'global'), (1, 'global'), (8, 'local')]:
    step, init = _step(*key)
    state, metrics = step(init(), batch, frozen)
    out[key] = (_leaves(state), {k: float(v) for k, v in metrics.items()})
  return out


def test_eight_devices_equal_one_device(one_step_states):
  params8, metrics8 = one_step_states[(8, 'global')]
  params1, metrics1 = one_step_states[(1, 'global')]
  _assert_close(params8, params1, rtol=1e-5)
  for k in metrics1:
    np.testing.assert_allclose(metrics8[k], metrics1[k], rtol=1e-4, atol=1e-5)


def test_local_negatives_change_the_result(one_step_states):
  params_g, metrics_g = one_step_states[(8, 'global')]
  params_l, metrics_l = one_step_states[(8, 'local')]
  diff = max(np.max(np.abs(a - b)) for a, b in zip(params_g, params_l))
  assert diff > 1e-4
  # 2 rows per device: local NCE has 1 negative, global has 15.
  assert metrics_l['d_sentence'] < metrics_g['d_sentence']


def test_metrics_cover_every_term(one_step_states):
  _, metrics = one_step_states[(8, 'global')]
  for k in ['d_loss', 'g_loss', 'd_adversarial', 'd_sentence',
            'd_word_region', 'g_adversarial', 'g_sentence', 'g_word_region',
            'g_image_d', 'real_logits', 'fake_logits', 'd_sentence_acc',
            'g_word_region_acc', 'd_grad_norm', 'g_grad_norm']:
    assert np.isfinite(metrics[k]), k
  assert 'g_image_pretrained' not in metrics  # No encoder given.


def test_compiles_once_and_learns():
  """Repeated calls reuse one executable; D's hinge loss falls, no NaN."""
  step, init = _step(8, 'global')
  state = init()
  batch, frozen = _batch(seed=1)
  d_adv = []
  for _ in range(30):
    state, metrics = step(state, batch, frozen)
    d_adv.append(float(metrics['d_adversarial']))
    assert all(np.isfinite(float(v)) for v in metrics.values())
  assert step.jitted._cache_size() == 1  # pylint: disable=protected-access
  assert int(state.step) == 30
  assert np.mean(d_adv[-5:]) < d_adv[0] - 0.3, d_adv


def test_switched_off_terms_are_not_computed():
  g, d = _models()
  g_tx, d_tx = fake_data.optimizers()
  mesh = parallel.make_mesh()
  config = fake_data.step_config(**{
      'd_steps_per_g_step': 1, 'loss_weights.word_region': 0.0,
      'loss_weights.image_d': 0.0})
  step = ts.make_train_step(g, d, g_tx, d_tx, mesh, config,
                            feature_table.lookup_fn())
  state = ts.create_train_state(jax.random.PRNGKey(1), g, d, g_tx, d_tx, mesh)
  batch, frozen = _batch()
  _, metrics = step(state, jax.tree.map(lambda x: x[:1], batch), frozen)
  assert 'd_word_region' not in metrics and 'g_image_d' not in metrics
  assert 'g_sentence' in metrics


def test_bad_batches_and_configs_are_named():
  step, init = _step(8, 'global')
  state = init()
  batch, frozen = _batch()
  with pytest.raises(ValueError, match='token_ids'):
    step(state, dict(batch, token_ids=batch['token_ids'][..., :-1]), frozen)
  with pytest.raises(ValueError, match='token_mask'):
    step(state, {k: batch[k] for k in ('image', 'token_ids')}, frozen)
  with pytest.raises(ValueError, match='text_encoder'):
    step(state, batch, {})
  with pytest.raises(ValueError, match='divisible'):
    step(state, jax.tree.map(lambda x: x[:, :12], batch), frozen)
  with pytest.raises(ValueError, match='d_steps_per_g_step'):
    step(state, jax.tree.map(lambda x: x[:1], batch), frozen)
  with pytest.raises(ValueError, match='contrastive_negatives'):
    fake_data.step_config(contrastive_negatives='cross')
  with pytest.raises(ValueError, match='bn_group'):
    fake_data.step_config(bn_group='pod')


def test_lr_decay_scales_adam_over_the_last_steps_and_keeps_its_state():
  """builders.build_optimizers with lr_decay_steps: each update is constant-
  rate Adam's times min(1, (num_train_steps - G step) / lr_decay_steps), D's
  schedule counting d_steps_per_g_step updates per G step; the state is
  optax.adam's (runs resume across the setting)."""
  config = config_base.get_base_config()
  config.num_train_steps, config.d_steps_per_g_step = 6, 2
  constant = builders.build_optimizers(config)
  config.lr_decay_steps = 3
  decayed = builders.build_optimizers(config)
  grads = [{'w': jnp.asarray(np.random.default_rng(i).normal(size=4),
                             jnp.float32)} for i in range(12)]
  params = {'w': jnp.ones(4)}
  for which, per_step in ((0, 1), (1, 2)):
    a, b = constant[which], decayed[which]
    state_a, state_b = a.init(params), b.init(params)
    assert jax.tree.structure(state_a) == jax.tree.structure(state_b)
    for count in range(6 * per_step):
      up_a, state_a = a.update(grads[count], state_a, params)
      up_b, state_b = b.update(grads[count], state_b, params)
      step = count // per_step
      scale = min(1.0, (6 - step) / 3)  # 1, 1, 1, 1, 2/3, 1/3.
      np.testing.assert_allclose(up_b['w'], scale * up_a['w'], rtol=1e-6)
      np.testing.assert_allclose(state_b[0].mu['w'], state_a[0].mu['w'])


def test_r1_penalty_adds_its_own_gradient_to_ds():
  """loss_weights.r1 = gamma: the step's D update (plain SGD, rate 1, on 2
  devices) moves by gamma * the gradient of 0.5 * mean ||dD(x)/dx||^2 over
  the real images, computed here directly; 'd_r1' is that penalty and
  d_loss grows by gamma times it."""
  g, d = _models()
  g_tx, _ = fake_data.optimizers()
  sgd = optax.sgd(1.0)
  mesh = parallel.make_mesh(jax.devices()[:2])
  batch, frozen = _batch()
  batch = jax.tree.map(lambda x: x[:1], batch)
  gamma = 0.5
  after, metrics = {}, {}
  for r1 in (0.0, gamma):
    config = fake_data.step_config(**{'d_steps_per_g_step': 1,
                                      'loss_weights.r1': r1})
    step = ts.make_train_step(g, d, g_tx, sgd, mesh, config,
                              feature_table.lookup_fn())
    state = ts.create_train_state(jax.random.PRNGKey(0), g, d, g_tx, sgd,
                                  mesh)
    before = jax.tree.map(np.asarray, (state.d_params, state.d_state))
    state, metrics[r1] = step(state, batch, frozen)
    after[r1] = jax.tree.map(np.asarray, state.d_params)
  assert 'd_r1' not in metrics[0.0]
  d_params, d_state = before
  _, sentence = feature_table.lookup_fn()(
      frozen['text_encoder'], batch['token_ids'][0], batch['token_mask'][0])
  images = jnp.asarray(batch['image'][0])

  def penalty(params):
    def logits(x):
      out, _ = d.apply({'params': params, 'spectral_norm_stats': d_state}, x,
                       sentence, train=True, mutable=['spectral_norm_stats'])
      return jnp.sum(out.logits)
    grads = jax.grad(logits)(images)
    return 0.5 * jnp.mean(jnp.sum(grads**2, axis=(1, 2, 3)))

  want, want_grads = jax.value_and_grad(penalty)(d_params)
  assert float(want) > 0
  np.testing.assert_allclose(metrics[gamma]['d_r1'], want, rtol=1e-4)
  np.testing.assert_allclose(
      metrics[gamma]['d_loss'] - metrics[0.0]['d_loss'], gamma * want,
      rtol=1e-3)
  moved = jax.tree.map(lambda a, b: a - b, after[0.0], after[gamma])
  # A difference of two updated parameter sets: float32 keeps ~3 digits.
  _assert_close(jax.tree.leaves(moved),
                [gamma * np.asarray(x) for x in jax.tree.leaves(want_grads)],
                rtol=2e-3)
