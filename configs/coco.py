"""XMC-GAN on COCO-2014 at 256px, the paper's setting (TPU v3-32 class).

  python -m xmcgan_jax.main --config=configs/coco.py --workdir=gs://BUCKET/coco \
      --config.data_dir=gs://BUCKET/tensorflow_datasets

Prepare TFDS coco_captions/2014 in data_dir first (see README, Data). The
paper's fourth contrastive term uses VGG-19: set
--config.image_encoder.weights=vgg19_weights_tf_dim_ordering_tf_kernels.h5
(README, Image encoders), or --config.image_encoder.name=none to train
without it.
"""

from xmcgan_jax import config_base


def get_config():
  """Paper COCO: 256px, global batch 256, BERT-base, global negatives."""
  c = config_base.get_base_config()
  c.dataset = 'coco'
  c.image_size = 256
  c.max_tokens = 17  # As the paper (COCO captions are short).
  c.text_encoder = 'bert-base-uncased'  # E = 768; a directory or HF cache.
  c.g_width = 96  # gf.
  c.d_width = 96  # df.
  c.batch_size = 256  # Global batch per sub-step.
  c.d_steps_per_g_step = 2
  c.contrastive_negatives = 'global'
  c.bn_group = 'device'
  c.dtype = 'bfloat16'
  c.num_train_steps = 500_000
  c.image_encoder.name = 'vgg19'  # As the paper; needs image_encoder.weights.
  c.image_encoder.feature = 'fc7'  # VGG-19 4096-d fc7, as the paper.
  return c
