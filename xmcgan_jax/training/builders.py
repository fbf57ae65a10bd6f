"""Config -> optimizers and step hyperparameters (models: models/build.py).

Kept free of TensorFlow so the train step can be built on machines that only
have JAX (benchmarks on GPU images, sampling).
"""

from typing import Tuple

import jax
import jax.numpy as jnp
import optax

from xmcgan_jax import objectives
from xmcgan_jax.training import train_step


def build_optimizers(config) -> Tuple[optax.GradientTransformation,
                                      optax.GradientTransformation]:
  """The G and D Adam optimizers of a config (TTUR: own learning rates).

  With config.lr_decay_steps both rates fall linearly over the run's last G
  steps; D's schedule counts its d_steps_per_g_step updates per G step.
  """
  decay = config.get('lr_decay_steps', 0)
  g_tx = optax.adam(config.g_lr, b1=config.adam_b1, b2=config.adam_b2)
  d_tx = optax.adam(config.d_lr, b1=config.adam_b1, b2=config.adam_b2)
  if not decay:
    return g_tx, d_tx
  return (decay_at_end(g_tx, config.num_train_steps, decay, 1),
          decay_at_end(d_tx, config.num_train_steps, decay,
                       config.d_steps_per_g_step))


def decay_at_end(adam: optax.GradientTransformation, num_steps: int,
                 decay_steps: int, updates_per_step: int
                 ) -> optax.GradientTransformation:
  """Adam whose updates shrink linearly over the last `decay_steps` G steps.

  The scale reads Adam's own update count, so the optimizer state is
  optax.adam's: a run with constant rates resumes with decay (and back), and
  every update before the decay equals constant-rate Adam's.

  Args:
    adam: an optax.adam transformation (constant rate).
    num_steps: the run's G steps (config.num_train_steps).
    decay_steps: G steps of the decay; the update of G step s (0-based) is
      scaled by min(1, (num_steps - s) / decay_steps), so the last one by
      1 / decay_steps.
    updates_per_step: updates of this optimizer per G step.

  Returns:
    The transformation, with adam's init and state.
  """
  def update(updates, state, params=None):
    updates, state = adam.update(updates, state, params)
    step = (state[0].count - 1) // updates_per_step  # This update's G step.
    scale = jnp.clip((num_steps - step) / decay_steps, 0.0, 1.0)
    return jax.tree.map(lambda u: (scale * u).astype(u.dtype), updates), state

  return optax.GradientTransformation(adam.init, update)


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
