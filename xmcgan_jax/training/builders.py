"""Config -> optimizers and step hyperparameters (models: models/build.py).

Kept free of TensorFlow so the train step can be built on machines that only
have JAX (benchmarks on GPU images, sampling).
"""

from typing import Tuple

import optax

from xmcgan_jax import objectives
from xmcgan_jax.training import train_step


def build_optimizers(config) -> Tuple[optax.GradientTransformation,
                                      optax.GradientTransformation]:
  """The G and D Adam optimizers of a config (TTUR: own learning rates)."""
  return (optax.adam(config.g_lr, b1=config.adam_b1, b2=config.adam_b2),
          optax.adam(config.d_lr, b1=config.adam_b1, b2=config.adam_b2))


def build_step_config(config, hard_negative_classes: Tuple[Tuple[int, ...],
                                                         ...] = ()
                      ) -> train_step.StepConfig:
  """The StepConfig (loss weights, negatives, BN groups, ...) of a config.

  Every StepConfig and LossConfig field is the config field of the same name,
  except `hard_negative_classes`: config.hard_negative_words as token ids
  (text/hard_negatives.word_class_ids, which needs the run's tokenizer).
  """
  loss = objectives.LossConfig(
      weights=objectives.LossWeights(**config.loss_weights.to_dict()),
      temperature=float(config.temperature),
      word_gammas=tuple(float(g) for g in config.word_gammas),
      contrastive_negatives=config.contrastive_negatives)
  return train_step.StepConfig(
      d_steps_per_g_step=config.d_steps_per_g_step, bn_group=config.bn_group,
      ema_decay=config.ema_decay, loss=loss,
      hard_negative_classes=hard_negative_classes)
