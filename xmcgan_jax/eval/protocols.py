"""Named evaluation protocols: how images and captions are chosen and sized.

Published text-to-image numbers on COCO differ in which captions make the
images, how the real images are resized and how many there are; a FID is
comparable only with FIDs of the same protocol. `config.eval_protocol`
names one, and `apply` sets the eval fields that define it (overriding
what the config says, with a log line per changed field):

  ours               this repo's choices: the first eval_num_samples eval
                     examples, each with its first caption, real images
                     resized to image_size by the pipeline (antialiased
                     bilinear, no crop).
  release_2021       the 2021 XMC-GAN release: 30,000 images from random
                     val captions (one per image), real images resized to
                     image_size by the pipeline, Inception Score over one
                     split. Not reproduced: the release's Keras InceptionV3
                     (we use the FID Inception of inception_weights), its
                     float (not uint8) generated images, its mean over 3
                     generations.
  clean_fid_coco30k  GigaGAN / StyleGAN-T style: 30,000 COCO-2014 val
                     captions (a random one per image), real and generated
                     images centre-cropped and resized to 256 by PIL's
                     Lanczos, FID by clean-fid's resize to 299.
"""

import dataclasses
from typing import Dict, Tuple

from absl import logging

from xmcgan_jax import errors


@dataclasses.dataclass(frozen=True)
class Protocol:
  """A protocol's eval fields, datasets, and what its numbers compare with."""
  fields: Dict[str, object]
  datasets: Tuple[str, ...]
  compares_with: str


PROTOCOLS = {
    'ours': Protocol({}, ('shapes', 'coco', 'ln_coco', 'ln_openimages'),
                     "this repo's own runs"),
    'release_2021': Protocol(
        {'eval_num_samples': 30_000, 'eval_caption': 'random',
         'eval_real_resize': 'bilinear', 'eval_image_size': 0,
         'inception_score_splits': 1, 'fid_resize': 'pytorch_fid'},
        ('coco', 'ln_coco', 'ln_openimages'),
        'the XMC-GAN paper (COCO-14 FID 9.33, LN-COCO 14.12) up to its '
        'Keras Inception'),
    'clean_fid_coco30k': Protocol(
        {'eval_num_samples': 30_000, 'eval_caption': 'random',
         'eval_real_resize': 'center_crop_lanczos', 'eval_image_size': 256,
         'fid_resize': 'clean'},
        ('coco',),
        'GigaGAN and StyleGAN-T zero-shot COCO-2014 FID-30k'),
}


def apply(config):
  """The config with its eval_protocol's fields set.

  Args:
    config: a run's config (eval_protocol names the protocol).

  Returns:
    A copy; the config itself is not changed.

  Raises:
    errors.ConfigError: an unknown protocol, or one not defined for the
      config's dataset.
  """
  name = config.eval_protocol
  if name not in PROTOCOLS:
    raise errors.ConfigError(f'config.eval_protocol={name!r}: choose from '
                             f'{sorted(PROTOCOLS)}.')
  protocol = PROTOCOLS[name]
  if config.dataset not in protocol.datasets:
    raise errors.ConfigError(
        f'config.eval_protocol={name!r} defines numbers on '
        f'{list(protocol.datasets)}, not dataset {config.dataset!r}; use '
        "'ours'.")
  config = config.copy_and_resolve_references()
  for field, value in protocol.fields.items():
    if config[field] != value:
      logging.info('eval_protocol %s: %s = %r (the config said %r).', name,
                   field, value, config[field])
      config[field] = value
  return config
