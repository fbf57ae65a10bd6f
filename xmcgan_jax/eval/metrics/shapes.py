"""'shapes_oracle': caption alignment on Shapes, read by the Shapes oracle.

The oracle (eval/shapes_oracle.py, trained once and cached in the workdir)
reads each grid cell of a generated image; from it: the fraction of
captioned objects found as described, of images right in every cell, of
objects whose cell holds the captioned colour (shape, size), a Frechet
distance on its cell features and R-precision with it as image-text encoder
(N > 99).
"""

import os
from typing import Dict, Sequence, Tuple

import numpy as np

from xmcgan_jax import config_base
from xmcgan_jax import errors
from xmcgan_jax.eval import fid
from xmcgan_jax.eval import r_precision
from xmcgan_jax.eval import shapes_oracle
from xmcgan_jax.eval.metrics import base


@base.register('shapes_oracle')
class ShapesOracleMetrics(base.Metric):
  """Keys: oracle_{object,image,colour,shape,size}_accuracy,
  oracle_frechet_distance, r_precision."""

  def __init__(self, inputs: base.EvalInputs):
    c = inputs.config
    if c.dataset != 'shapes' or inputs.truth is None:
      raise errors.ConfigError(
          f"config.eval_metrics: 'shapes_oracle' reads Shapes images; "
          f'config.dataset is {c.dataset!r}.')
    self.oracle = shapes_oracle.ShapesOracle.load_or_train(
        os.path.join(inputs.workdir,
                     shapes_oracle.oracle_file_name(c.shapes_grid)),
        image_size=c.image_size, grid=c.shapes_grid)
    self._truth, self._seed = inputs.truth, config_base.data_seed(c)
    self._with_r_precision = len(inputs.captions) > (
        r_precision.NUM_DISTRACTORS + 1)
    # Caption embeddings for R-precision: fixed, so computed once.
    self._captions = shapes_oracle.OracleImageTextEncoder(
        self.oracle).embed_texts(inputs.captions)
    self._real_labels, real_features = self.oracle.predict(
        np.concatenate(list(inputs.real_images())))
    self._real_stats = fid.statistics(real_features)

  def features(self, images: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    return self.oracle.predict(images)

  def _r_precision(self, labels: np.ndarray) -> Dict[str, float]:
    if not self._with_r_precision:
      return {}
    return {'r_precision': r_precision.r_precision(
        shapes_oracle.embed_labels(labels), self._captions, seed=self._seed)}

  def scores(self, features: Sequence[Tuple[np.ndarray, np.ndarray]]
             ) -> Dict[str, float]:
    labels = np.concatenate([f[0] for f in features])
    out = {f'oracle_{k}': v for k, v in shapes_oracle.generated_metrics(
        labels, np.concatenate([f[1] for f in features]), self._truth,
        self._real_stats).items()}
    out.update(self._r_precision(labels))
    return out

  def reference(self) -> Dict[str, float]:
    out = {f'oracle_{k}': v for k, v in shapes_oracle.alignment(
        self._real_labels, self._truth).items()}
    out.update(self._r_precision(self._real_labels))
    return out
