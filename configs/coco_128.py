"""The 2021 release's GPU recipe: COCO-2014 at 128px, global batch 56.

  python -m xmcgan_jax.main --config=configs/coco_128.py --workdir=/data/runs/coco128 \
      --config.data_dir=/data/tensorflow_datasets

As the 2021 code: per-device BatchNorm statistics and per-device contrastive
negatives ('local'); ResNet-50 logits for the image term (set
--config.image_encoder.weights, or --config.image_encoder.name=none).
"""

from xmcgan_jax import config_base


def get_config():
  """128px, batch 56 (e.g. 8 GPUs x 7), local negatives."""
  c = config_base.get_base_config()
  c.dataset = 'coco'
  c.image_size = 128
  c.max_tokens = 17
  c.text_encoder = 'bert-base-uncased'
  c.batch_size = 56  # Global batch per sub-step.
  c.contrastive_negatives = 'local'  # The 2021 release's only option.
  c.bn_group = 'device'
  c.dtype = 'bfloat16'
  c.image_encoder.name = 'resnet50'  # Needs image_encoder.weights.
  c.image_encoder.feature = 'logits'  # As the 2021 release.
  return c
