"""xmcgan_jax: XMC-GAN (cross-modal contrastive text-to-image GAN) in JAX/Flax."""

__version__ = '0.1.0'
