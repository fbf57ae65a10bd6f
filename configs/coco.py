"""XMC-GAN on COCO-2014 at 256px, the paper's setting (TPU v3-32 class).

  python -m xmcgan_jax.main --config=configs/coco.py --workdir=gs://BUCKET/coco \
      --config.data_dir=gs://BUCKET/tensorflow_datasets \
      --config.image_encoder.weights=vgg19_weights_tf_dim_ordering_tf_kernels.h5

Prepare TFDS coco_captions/2014 in data_dir first (see README, Data). The
paper's fourth contrastive term uses VGG-19: the weights are a Keras
application file or a converted torchvision file (README, Image encoders).
Without them, train the reduced model explicitly:
--config.image_encoder.name=none --config.loss_weights.image_pretrained=0.
Every place where this config departs from the paper or the 2021 release is
listed in docs/fidelity.md.
"""

from xmcgan_jax import config_base


def get_config():
  """Paper COCO: 256px, global batch 256, BERT-base, global negatives."""
  c = config_base.get_base_config()
  c.dataset = 'coco'
  c.image_size = 256
  c.max_tokens = 17  # As the 2021 release (COCO captions are short).
  c.text_encoder = 'bert-base-uncased'  # E = 768; a directory or HF cache.
  c.g_width = 96  # gf.
  c.d_width = 96  # df.
  c.batch_size = 256  # Global batch per sub-step.
  c.d_steps_per_g_step = 2
  # Our choice, not settled by the paper: every anchor sees the whole global
  # batch (255 negatives) instead of its device's 7, as the 2021 release
  # (whose cross-device path raises NotImplementedError). 'local' gives the
  # release's behaviour (docs/fidelity.md, "Contrastive negatives").
  c.contrastive_negatives = 'global'
  c.bn_group = 'device'  # As the 2021 release.
  c.dtype = 'bfloat16'
  c.num_train_steps = 500_000
  c.image_encoder.name = 'vgg19'  # The paper's encoder; needs .weights.
  c.image_encoder.feature = 'fc7'  # Our choice: the paper does not name it.
  return c
