"""The Shapes oracle reads real images right and shuffled captions as wrong."""

import numpy as np

from xmcgan_jax.eval import shapes_oracle


def test_oracle_accuracy_and_chance(tmp_path):
  cache = str(tmp_path / 'oracle.msgpack')
  oracle = shapes_oracle.ShapesOracle.load_or_train(cache)
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
