"""Images from captions with a trained generator (no TensorFlow needed)."""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import flax.linen as nn

from xmcgan_jax.text import encoder as text_encoder_lib


def make_generate_fn(generator: nn.Module,
                     text_features: text_encoder_lib.TextFeaturesFn
                     ) -> Callable[..., jax.Array]:
  """A jitted generate(g_params, g_state, text_params, ids, mask, z).

  Args:
    generator: the Generator module.
    text_features: the frozen text encoder's features function.

  Returns:
    A function giving (B, H, W, 3) float32 images in [0, 1]; G runs in eval
    mode (BatchNorm running statistics `g_state`).
  """

  @jax.jit
  def generate(g_params: Any, g_state: Any, text_params: Any,
               token_ids: jax.Array, token_mask: jax.Array, z: jax.Array):
    words, sentence = text_features(text_params, token_ids, token_mask)
    return generator.apply({'params': g_params, 'batch_stats': g_state}, z,
                           sentence, words, token_mask.astype(bool),
                           train=False)

  return generate


def make_standing_stats_fn(generator: nn.Module) -> Callable[..., Any]:
  """A jitted pass that refreshes G's BatchNorm running statistics.

  standing(g_params, g_state, sentence, words, mask, z) -> new g_state: one
  train-mode forward on precomputed text features whose batch statistics
  enter the running averages (momentum 0.9). Repeated over fresh noise it
  gives EMA weights their own ("standing") statistics instead of the raw
  generator's.
  """

  @jax.jit
  def standing(g_params, g_state, sentence, words, mask, z):
    _, new_vars = generator.apply(
        {'params': g_params, 'batch_stats': g_state}, z, sentence, words,
        mask.astype(bool), train=True, mutable=['batch_stats'])
    return new_vars['batch_stats']

  return standing


def noise(seed: int, batch: int, z_dim: int) -> jax.Array:
  """Standard normal z of a given seed."""
  return jax.random.normal(jax.random.PRNGKey(seed), (batch, z_dim),
                           jnp.float32)
