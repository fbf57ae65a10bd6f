"""Config -> models, optimizers and step hyperparameters.

Kept free of TensorFlow so the train step can be built on machines that only
have JAX (benchmarks on GPU images, sampling).
"""

import dataclasses
from typing import Tuple

import jax.numpy as jnp
import optax

from xmcgan_jax.models import Discriminator
from xmcgan_jax.models import Generator
from xmcgan_jax.training import train_step


def build_models(config, text_dim: int) -> Tuple[Generator, Discriminator]:
  """The generator and discriminator a config describes.

  Args:
    config: an experiment config (see config_base.py).
    text_dim: E, the text encoder's hidden size.

  Returns:
    (generator, discriminator), unbound.
  """
  dtype = jnp.dtype(config.dtype)
  generator = Generator(
      image_size=config.image_size, base_width=config.g_width,
      z_dim=config.z_dim, text_dim=text_dim, max_tokens=config.max_tokens,
      attention_gamma=config.attention_gamma, dtype=dtype,
      remat=config.remat, out_padded_channels=config.g_out_padded_channels,
      stem_text=config.g_stem_text)
  discriminator = Discriminator(
      image_size=config.image_size, base_width=config.d_width,
      text_dim=text_dim, dtype=dtype, remat=config.remat)
  return generator, discriminator


def build_optimizers(config) -> Tuple[optax.GradientTransformation,
                                      optax.GradientTransformation]:
  """The G and D Adam optimizers of a config."""
  return train_step.make_optimizers(g_lr=config.g_lr, d_lr=config.d_lr,
                                    b1=config.adam_b1, b2=config.adam_b2)


def build_step_config(config) -> train_step.StepConfig:
  """The StepConfig (loss weights, negatives, BN groups, ...) of a config.

  Every StepConfig field is the config field of the same name.
  """
  fields = {f.name: config[f.name]
            for f in dataclasses.fields(train_step.StepConfig)
            if f.name not in ('word_gammas', 'weights')}
  return train_step.StepConfig(
      word_gammas=tuple(float(g) for g in config.word_gammas),
      weights=train_step.LossWeights(**config.loss_weights.to_dict()),
      **fields)
