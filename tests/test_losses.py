"""Losses against plain-numpy references, and global negatives on 8 devices."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from xmcgan_jax import losses
from xmcgan_jax import parallel


def _logsumexp(x, axis):
  m = x.max(axis=axis, keepdims=True)
  return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def _np_ce_diag(logits):
  """Mean over rows of the cross-entropy with the diagonal as the label."""
  logits = logits.astype(np.float64)
  return np.mean(_logsumexp(logits, 1) - np.diag(logits))


def _np_nce(a, b, tau):
  a = a / np.linalg.norm(a, axis=1, keepdims=True)
  b = b / np.linalg.norm(b, axis=1, keepdims=True)
  logits = a @ b.T / tau
  return _np_ce_diag(logits) + _np_ce_diag(logits.T)


def _np_word_region(regions, words, mask, g1, g2, g3):
  n = regions.shape[0]
  scores = np.zeros((n, n))
  for i in range(n):
    r = regions[i] / np.linalg.norm(regions[i], axis=1, keepdims=True)
    for j in range(n):
      w = words[j][mask[j]]  # Real tokens only.
      w = w / np.linalg.norm(w, axis=1, keepdims=True)
      a = g1 * (r @ w.T)  # (R, t)
      a = np.exp(a - a.max(0)) / np.exp(a - a.max(0)).sum(0)  # Over regions.
      c = a.T @ r  # (t, E)
      cos = np.sum(c * w, 1) / np.linalg.norm(c, axis=1)
      scores[i, j] = np.log(np.sum(np.exp(g2 * cos))) / g2
  logits = g3 * scores
  return _np_ce_diag(logits) + _np_ce_diag(logits.T)


def _inputs(seed, n, t=7, r=9, e=12):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, t + 1, size=n)
  lengths[0] = t
  return dict(
      regions=rng.normal(size=(n, r, e)).astype(np.float32),
      words=rng.normal(size=(n, t, e)).astype(np.float32),
      mask=np.arange(t)[None] < lengths[:, None],
      a=rng.normal(size=(n, e)).astype(np.float32),
      b=rng.normal(size=(n, e)).astype(np.float32))


def test_hinge_matches_numpy():
  rng = np.random.default_rng(0)
  real, fake = rng.normal(size=5), rng.normal(size=7)
  want_d = np.mean(np.maximum(0, 1 - real)) + np.mean(np.maximum(0, 1 + fake))
  np.testing.assert_allclose(losses.hinge_d(real, fake), want_d, rtol=1e-6)
  np.testing.assert_allclose(losses.hinge_g(fake), -fake.mean(), rtol=1e-5)


@pytest.mark.parametrize('n', [1, 2, 6])
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_contrastive_matches_numpy(n, dtype):
  x = _inputs(n, n)
  a, b = jnp.asarray(x['a'], dtype), jnp.asarray(x['b'], dtype)
  got = losses.contrastive_loss(a, b, temperature=0.1)
  assert got.dtype == jnp.float32
  want = _np_nce(np.asarray(a, np.float64), np.asarray(b, np.float64), 0.1)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  if n == 1:  # A batch of one has no negatives: the loss is exactly zero.
    assert abs(float(got)) < 1e-6


@pytest.mark.parametrize('n', [1, 3, 5])
def test_word_region_matches_numpy(n):
  x = _inputs(10 + n, n)
  got = losses.word_region_loss(x['regions'], x['words'], x['mask'],
                                gamma1=5.0, gamma2=5.0, gamma3=50.0)
  want = _np_word_region(x['regions'], x['words'], x['mask'], 5.0, 5.0, 50.0)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_word_region_ignores_padding_content():
  x = _inputs(3, 4)
  words = x['words'].copy()
  words[~x['mask']] = 1e3  # Garbage in padded positions must not matter.
  a = losses.word_region_loss(x['regions'], x['words'], x['mask'])
  b = losses.word_region_loss(x['regions'], words, x['mask'])
  np.testing.assert_allclose(a, b, rtol=1e-6)


def test_accuracy_of_perfect_pairs():
  a = np.eye(4, dtype=np.float32)
  loss, acc = losses.contrastive_loss(a, a, with_accuracy=True)
  assert float(acc) == 1.0 and float(loss) < 1e-3


def _sharded_vs_single(loss_fn, n_rows=16):
  """Loss values and parameter gradients on 8 devices vs one device."""
  mesh = parallel.make_mesh()
  assert mesh.size == 8
  x = _inputs(7, n_rows)
  rng = np.random.default_rng(1)
  params = {'w': rng.normal(size=(12, 12)).astype(np.float32) / 3}

  def objective(params, data, axis_name):
    return loss_fn(params, data, axis_name)

  data = {k: x[k] for k in ('regions', 'words', 'mask', 'a', 'b')}
  value, grads = jax.value_and_grad(objective)(params, data, None)

  def per_device(params, data):
    v, g = jax.value_and_grad(objective)(params, data, 'data')
    return v, jax.lax.pmean(g, 'data')

  sharded = jax.jit(jax.shard_map(
      per_device, mesh=mesh, in_specs=(P(), P('data')), out_specs=(P(), P()),
      check_vma=False))
  value8, grads8 = sharded(params, data)
  return value, grads, value8, grads8


def test_contrastive_global_negatives_equal_single_device():
  def fn(params, d, axis_name):
    return losses.contrastive_loss(d['a'] @ params['w'], d['b'],
                                   axis_name=axis_name)
  value, grads, value8, grads8 = _sharded_vs_single(fn)
  np.testing.assert_allclose(value8, value, rtol=1e-5)
  np.testing.assert_allclose(grads8["w"], grads["w"], rtol=1e-4, atol=1e-5)


def test_word_region_global_negatives_equal_single_device():
  def fn(params, d, axis_name):
    return losses.word_region_loss(d['regions'] @ params['w'], d['words'],
                                   d['mask'], axis_name=axis_name)
  value, grads, value8, grads8 = _sharded_vs_single(fn)
  np.testing.assert_allclose(value8, value, rtol=1e-5)
  np.testing.assert_allclose(grads8["w"], grads["w"], rtol=1e-4, atol=1e-5)


def test_global_negatives_with_local_batch_one():
  def fn(params, d, axis_name):
    return losses.contrastive_loss(d['a'] @ params['w'], d['b'],
                                   axis_name=axis_name)
  value, grads, value8, grads8 = _sharded_vs_single(fn, n_rows=8)
  np.testing.assert_allclose(value8, value, rtol=1e-5)
  np.testing.assert_allclose(grads8["w"], grads["w"], rtol=1e-4, atol=1e-5)
