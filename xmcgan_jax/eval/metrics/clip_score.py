"""'clip': CLIP score (both conventions) and CLIP R-precision.

With the Hugging Face CLIP directory of config.clip_weights; the real images
give the ceilings (eval/clip.py defines the keys).
"""

from typing import Dict, Sequence

import numpy as np

from xmcgan_jax import config_base
from xmcgan_jax.eval import clip as clip_lib
from xmcgan_jax.eval.metrics import base


@base.register('clip')
class ClipScore(base.Metric):
  """Keys: clip_score, clip_score_cosine, clip_r_precision (N > 99)."""
  weights = ('clip_weights', 'config.json')

  def __init__(self, inputs: base.EvalInputs):
    c = inputs.config
    self._clip = clip_lib.Clip(c.clip_weights, c.eval_batch_size)
    self._seed = config_base.data_seed(c)
    self._captions = self._clip.embed_texts(inputs.captions)
    self._real = clip_lib.clip_metrics(
        np.concatenate([self._clip.embed_images(b)
                        for b in inputs.real_images()]),
        self._captions, seed=self._seed)

  def features(self, images: np.ndarray) -> np.ndarray:
    return self._clip.embed_images(images)

  def scores(self, features: Sequence[np.ndarray]) -> Dict[str, float]:
    return clip_lib.clip_metrics(np.concatenate(features), self._captions,
                                 seed=self._seed)

  def reference(self) -> Dict[str, float]:
    return self._real
