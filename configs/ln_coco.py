"""XMC-GAN on Localized Narratives over COCO-2017 images (LN-COCO), 256px.

  python -m xmcgan_jax.main --config=configs/ln_coco.py --workdir=gs://BUCKET/ln_coco \
      --config.manual_dir=/data/ln_coco --config.data_dir=gs://BUCKET/tfds

manual_dir holds the LN JSONL files and the COCO-2017 images (README, Data).
"""

from xmcgan_jax import config_base


def get_config():
  """LN-COCO: long narratives, T = 64 tokens."""
  c = config_base.get_base_config()
  c.dataset = 'ln_coco'
  c.manual_dir = ''  # Required: JSONL + train2017/ + val2017/.
  c.image_size = 256
  c.max_tokens = 64  # Narratives are long.
  c.text_encoder = 'bert-base-uncased'
  c.batch_size = 256
  c.dtype = 'bfloat16'
  return c
