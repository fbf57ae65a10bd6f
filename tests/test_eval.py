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


def test_cmmd_mmd_matches_the_reference_formula():
  """MMD^2 of the CMMD reference: Gaussian RBF (sigma 10), means over all
  pairs with the diagonal included, times 1000; zero for equal sets."""
  from xmcgan_jax.eval.metrics import cmmd  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(7, 5)), rng.normal(size=(9, 5)) + 0.5
  k = lambda a, b: np.exp(-np.array([[np.sum((p - q) ** 2) for q in b]
                                     for p in a]) / (2 * 10.0**2)).mean()
  want = 1000 * (k(x, x) + k(y, y) - 2 * k(x, y))
  assert cmmd.mmd(x, y) == pytest.approx(want, rel=1e-9)
  assert cmmd.mmd(x, x) == pytest.approx(0.0, abs=1e-9)


def test_bicubic_resize_matches_torch():
  """Both ways torch is called: with an output size (CMMD's images) and with
  a scale factor (the DINOv2 release's position embeddings)."""
  torch = pytest.importorskip('torch')
  from xmcgan_jax.eval import bicubic  # pylint: disable=g-import-not-at-top
  images = np.random.default_rng(1).random((2, 8, 6, 3)).astype(np.float32)
  want = torch.nn.functional.interpolate(
      torch.from_numpy(images.transpose(0, 3, 1, 2)), size=(13, 13),
      mode='bicubic').permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(bicubic.resize(images, 13), want, atol=1e-5)
  grid = np.random.default_rng(2).normal(size=(37, 37)).astype(np.float32)
  scale = 16.1 / 37  # DINOv2 at 224px: 16 patches a side, offset 0.1.
  want = torch.nn.functional.interpolate(
      torch.from_numpy(grid)[None, None], scale_factor=(scale, scale),
      mode='bicubic', align_corners=False)[0, 0].numpy()
  m = bicubic.matrix(37, 16, scale)
  np.testing.assert_allclose(m @ grid @ m.T, want, atol=1e-5)


def test_prdc_hand_example():
  """k = 1 on points of a line, counted by hand."""
  from xmcgan_jax.eval.metrics import prdc  # pylint: disable=g-import-not-at-top
  real = np.array([[0.0], [1.0], [3.0]])  # Radii (k=1): 1, 1, 2.
  fake = np.array([[0.5], [10.0], [11.0]])  # Radii: 9.5, 1, 1.
  got = prdc.prdc(real, fake, k=1)
  # 0.5 lies in the balls of 0 and 1 (strictly), 10 and 11 in none.
  assert got['precision'] == pytest.approx(1 / 3)
  assert got['density'] == pytest.approx(2 / 3)
  # Every real point lies within 9.5 of 0.5.
  assert got['recall'] == pytest.approx(1.0)
  # Nearest fake: 0 -> 0.5 (< 1), 1 -> 0.5 (< 1), 3 -> 2.5 (not < 2).
  assert got['coverage'] == pytest.approx(2 / 3)


def test_prdc_matches_the_prdc_package():
  """Naeem et al.'s own implementation (pip prdc) on random features."""
  reference = pytest.importorskip('prdc')
  from xmcgan_jax.eval.metrics import prdc  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(3)
  real = rng.normal(size=(300, 16))
  fake = rng.normal(0.3, 1.2, size=(250, 16))
  want = reference.compute_prdc(real_features=real, fake_features=fake,
                                nearest_k=5)
  got = prdc.prdc(real, fake, k=5)
  for key in ('precision', 'recall', 'density', 'coverage'):
    assert got[key] == pytest.approx(want[key], abs=1e-12), key


def test_protocols_set_their_fields_and_name_bad_choices():
  from xmcgan_jax import config_base  # pylint: disable=g-import-not-at-top
  from xmcgan_jax import errors  # pylint: disable=g-import-not-at-top
  from xmcgan_jax.eval import protocols  # pylint: disable=g-import-not-at-top
  assert config_base.EVAL_PROTOCOLS == tuple(protocols.PROTOCOLS)
  config = config_base.get_base_config()
  config.dataset = 'coco'
  ours = protocols.apply(config)
  assert ours.to_dict() == config.to_dict()
  config.eval_protocol = 'release_2021'
  release = protocols.apply(config)
  assert (release.eval_num_samples, release.eval_caption,
          release.inception_score_splits) == (30_000, 'random', 1)
  assert config.inception_score_splits == 10  # The given config is kept.
  config.dataset = 'shapes'
  with pytest.raises(errors.ConfigError, match="eval_protocol='release_2021' "
                     "defines numbers on .*not dataset 'shapes'"):
    protocols.apply(config)
  config.eval_protocol = 'fid30k'
  with pytest.raises(errors.ConfigError, match='choose from'):
    protocols.apply(config)
  with pytest.raises(errors.ConfigError, match='eval_protocol'):
    config_base.validate(config)


def test_generated_images_take_the_real_images_resize():
  import ml_collections  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from xmcgan_jax.eval import evaluate  # pylint: disable=g-import-not-at-top
  images = np.random.default_rng(4).integers(0, 256, (2, 16, 16, 3),
                                             np.uint8)
  config = ml_collections.ConfigDict(dict(
      image_size=16, eval_image_size=0, eval_real_resize='bilinear'))
  assert evaluate.resize_generated(images, config) is images
  config.update(eval_image_size=40, eval_real_resize='center_crop_lanczos')
  got = evaluate.resize_generated(images, config)
  np.testing.assert_array_equal(got[1], np.asarray(
      Image.fromarray(images[1]).resize((40, 40), Image.LANCZOS)))
  config.eval_real_resize = 'bilinear'
  assert evaluate.resize_generated(images, config).shape == (2, 40, 40, 3)


def test_shapes_alignment_names_the_attribute_that_is_wrong():
  """Per-attribute accuracies of the oracle's reading of a generated image."""
  from xmcgan_jax.eval import shapes_oracle  # pylint: disable=g-import-not-at-top
  # Two images, 2x2 grid (shape incl. empty, colour, size; -1 when empty).
  truth = np.array([[[1, 0, 0], [0, -1, -1], [0, -1, -1], [0, -1, -1]],
                    [[0, -1, -1], [2, 3, 1], [3, 5, 0], [0, -1, -1]]])
  predicted = truth.copy()
  predicted[0, 0] = (2, 0, 0)  # Circle drawn as a square: shape wrong.
  predicted[1, 1] = (2, 3, 0)  # Large drawn small: size wrong.
  predicted[1, 2] = (0, -1, -1)  # Object missing: every attribute wrong.
  out = shapes_oracle.alignment(predicted, truth)
  assert out == pytest.approx({
      'object_accuracy': 0.0, 'image_accuracy': 0.0,
      'colour_accuracy': 2 / 3, 'shape_accuracy': 1 / 3,
      'size_accuracy': 1 / 3})
  assert shapes_oracle.alignment(truth, truth) == pytest.approx({
      'object_accuracy': 1.0, 'image_accuracy': 1.0, 'colour_accuracy': 1.0,
      'shape_accuracy': 1.0, 'size_accuracy': 1.0})
