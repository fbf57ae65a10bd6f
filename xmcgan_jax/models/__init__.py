"""Flax networks of XMC-GAN."""

from xmcgan_jax.models.discriminator import DiscOutput
from xmcgan_jax.models.discriminator import Discriminator
from xmcgan_jax.models.discriminator import discriminator_schedule
from xmcgan_jax.models.generator import Generator
from xmcgan_jax.models.generator import generator_channels
from xmcgan_jax.models.build import build_models
