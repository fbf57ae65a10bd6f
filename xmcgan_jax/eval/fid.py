"""Frechet distance and Inception Score, in float64 as pytorch-fid computes them.

The feature extractor is separate (Inception pool3 features for FID, its
softmax for IS); these functions take the arrays.
"""

from typing import Tuple

import numpy as np
import scipy.linalg


def statistics(features: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """(mean, covariance) of (N, D) features, float64, unbiased covariance."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or features.shape[0] < 2:
    raise ValueError(f'Need (N >= 2, D) features, got {features.shape}.')
  return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray, eps: float = 1e-6) -> float:
  """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)).

  As pytorch-fid: if the product is singular, eps is added to both
  diagonals; a negligible imaginary part of sqrtm is dropped, a large one
  is an error.
  """
  mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(
      np.float64)
  sigma1 = np.atleast_2d(sigma1).astype(np.float64)
  sigma2 = np.atleast_2d(sigma2).astype(np.float64)
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError('Mean or covariance shapes differ: '
                     f'{mu1.shape} vs {mu2.shape}, {sigma1.shape} vs '
                     f'{sigma2.shape}.')
  diff = mu1 - mu2
  covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
  if not np.isfinite(covmean).all():
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError('sqrtm has a significant imaginary component '
                       f'{np.max(np.abs(covmean.imag))}.')
    covmean = covmean.real
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) -
               2 * np.trace(covmean))


def inception_score(probabilities: np.ndarray, splits: int = 10
                    ) -> Tuple[float, float]:
  """(mean, std) over splits of exp(E_x KL(p(y|x) || p(y))).

  Args:
    probabilities: (N, classes) softmax outputs.
    splits: the data is cut into this many equal parts (the standard 10).
  """
  p = np.asarray(probabilities, np.float64)
  scores = []
  for part in np.array_split(p, splits):
    marginal = part.mean(axis=0, keepdims=True)
    kl = part * (np.log(part + 1e-12) - np.log(marginal + 1e-12))
    scores.append(np.exp(kl.sum(axis=1).mean()))
  return float(np.mean(scores)), float(np.std(scores))
