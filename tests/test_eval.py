"""Evaluation arithmetic against plain numpy/scipy, R-precision sanity."""

import numpy as np
import pytest
import scipy.linalg

from xmcgan_jax.eval import fid
from xmcgan_jax.eval import r_precision


def test_frechet_distance_matches_direct_formula():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(500, 8))
  b = rng.normal(0.3, 1.4, size=(400, 8)) @ rng.normal(size=(8, 8))
  mu1, s1 = fid.statistics(a)
  mu2, s2 = fid.statistics(b)
  want = (np.sum((a.mean(0) - b.mean(0))**2) + np.trace(np.cov(a.T)) +
          np.trace(np.cov(b.T)) -
          2 * np.trace(scipy.linalg.sqrtm(np.cov(a.T) @ np.cov(b.T)).real))
  assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, 1e-9)
  assert fid.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-6)
  # Singular covariances (fewer samples than dims) still give a number.
  c = rng.normal(size=(5, 8))
  assert np.isfinite(fid.frechet_distance(*fid.statistics(c),
                                          *fid.statistics(c[::-1] + 1)))


def test_inception_score_matches_numpy():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(100, 10)) * 3
  p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  scores = []
  for part in np.split(p, 10):
    py = part.mean(0)
    scores.append(np.exp(np.mean(np.sum(part * np.log(part / py), 1))))
  mean, std = fid.inception_score(p, splits=10)
  assert mean == pytest.approx(np.mean(scores), 1e-6)
  assert std == pytest.approx(np.std(scores), 1e-6)
  uniform = np.full((50, 10), 0.1)
  assert fid.inception_score(uniform, 5)[0] == pytest.approx(1.0)
  onehot = np.eye(10)[np.arange(50) % 10]
  assert fid.inception_score(onehot, 1)[0] == pytest.approx(10.0, 1e-6)


def test_r_precision_perfect_and_random_encoders():
  rng = np.random.default_rng(2)
  texts = rng.normal(size=(1000, 32))
  assert r_precision.r_precision(texts + 0.01 * rng.normal(size=texts.shape),
                                 texts) == 1.0
  chance = r_precision.r_precision(rng.normal(size=(1000, 32)), texts)
  assert 0.0 <= chance < 0.04  # 1 in 100 expected.
  with pytest.raises(ValueError, match='more than 99'):
    r_precision.r_precision(texts[:50], texts[:50])
