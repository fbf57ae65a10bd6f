"""Config -> the generator and discriminator it describes.

The one place where model hyperparameters leave the config: training,
sampling, evaluation and the benchmarks all build their networks here.
"""

from typing import Tuple

import jax.numpy as jnp

from xmcgan_jax.models.discriminator import Discriminator
from xmcgan_jax.models.generator import Generator


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
      stem_text=config.g_stem_text,
      cond_upsample=config.g_cond_upsample,
      attention_resolution=config.get('g_attention_resolution', 16))
  discriminator = Discriminator(
      image_size=config.image_size, base_width=config.d_width,
      text_dim=text_dim, dtype=dtype, remat=config.remat,
      downsample=config.get('d_downsample', 'avg'))
  return generator, discriminator
