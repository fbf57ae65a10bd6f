"""The Shapes oracle reads real images right and shuffled captions as wrong."""

import numpy as np
import pytest

from xmcgan_jax.eval import shapes_oracle


# Trains the oracle (about a minute): with the slow tests.
pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """(oracle, its cache file), trained once for the module."""
  cache = str(tmp_path_factory.mktemp('oracle') / 'oracle.msgpack')
  return shapes_oracle.ShapesOracle.load_or_train(cache), cache


def test_oracle_accuracy_and_chance(trained):
  oracle, cache = trained
  images, truth, _ = shapes_oracle.validation_set(400)
  predicted, features = oracle.predict(images)
  real = shapes_oracle.alignment(predicted, truth)
  assert real['object_accuracy'] > 0.95, real
  shuffled = shapes_oracle.alignment(predicted, np.roll(truth, 1, axis=0))
  assert shuffled['object_accuracy'] < 0.1, shuffled
  # Cached: a second load gives the same predictions without training.
  again = shapes_oracle.ShapesOracle.load_or_train(cache)
  np.testing.assert_array_equal(again.predict(images[:8])[0], predicted[:8])
  near = shapes_oracle.evaluate(oracle, images[200:], truth[200:],
                                images[:200])
  assert near['generated_object_accuracy'] > 0.95
  noise = np.random.default_rng(0).integers(0, 256, images[:200].shape,
                                            dtype=np.uint8)
  far = shapes_oracle.evaluate(oracle, noise, truth[:200], images[:200])
  assert far['frechet_distance'] > 10 * near['frechet_distance']
  assert far['generated_object_accuracy'] < 0.2


def test_oracle_r_precision_real_and_shuffled(trained):
  """The oracle as image-text encoder: real images find their captions."""
  from xmcgan_jax.eval import r_precision  # pylint: disable=g-import-not-at-top
  oracle, _ = trained
  images, truth, captions = shapes_oracle.validation_set(300)
  encoder = shapes_oracle.OracleImageTextEncoder(oracle)
  # Parsed captions embed exactly like the true cell labels.
  np.testing.assert_array_equal(encoder.embed_texts(captions),
                                shapes_oracle.embed_labels(truth))
  real = r_precision.r_precision_of(encoder, images, captions)
  assert real > 0.9, real
  shuffled = r_precision.r_precision_of(encoder, images[::-1], captions)
  assert shuffled < 0.1, shuffled
