"""Config -> optimizers and step hyperparameters (models: models/build.py).

Kept free of TensorFlow so the train step can be built on machines that only
have JAX (benchmarks on GPU images, sampling).
"""

import dataclasses
from typing import Any, Callable, Optional, Tuple

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


@dataclasses.dataclass(frozen=True)
class StepSchedule:
  """The train step that makes each G step.

  With config.d_downsample_from_step, D averages (the paper's pooling) for
  the first `early_steps` G steps and then pools as config.d_downsample
  says: two compiled steps over the same parameters.
  """
  step_fn: Callable[..., Any]
  early_step_fn: Optional[Callable[..., Any]] = None
  early_steps: int = 0

  def at(self, step: int) -> Callable[..., Any]:
    """The step function that makes G step `step` + 1."""
    return self.early_step_fn if step < self.early_steps else self.step_fn


def build_step_schedule(config, discriminator,
                        make_step: Callable[[Any], Callable[..., Any]]
                        ) -> StepSchedule:
  """The StepSchedule of a config.

  Args:
    config: the run's config (d_downsample, d_downsample_from_step).
    discriminator: the config's discriminator module.
    make_step: discriminator module -> its train step (jitted; XLA compiles
      the early one only if it runs, so a resumed run past the switch pays
      for one step).

  Returns:
    The schedule; one step function when D never switches its pooling.
  """
  from_step = config.get('d_downsample_from_step', 0)
  step_fn = make_step(discriminator)
  if not from_step or discriminator.downsample == 'avg':
    return StepSchedule(step_fn)
  return StepSchedule(step_fn, make_step(discriminator.clone(downsample='avg')),
                      from_step)
