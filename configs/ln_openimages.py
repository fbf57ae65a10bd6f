"""XMC-GAN on Localized Narratives over Open Images V6 (LN-OpenImages), 256px.

  python -m xmcgan_jax.main --config=configs/ln_openimages.py \
      --workdir=gs://BUCKET/ln_oi --config.manual_dir=/data/ln_openimages \
      --config.data_dir=gs://BUCKET/tfds

manual_dir holds the LN JSONL files and the Open Images images (README, Data).
"""

from xmcgan_jax import config_base


def get_config():
  """LN-OpenImages: 507k narratives, T = 64 tokens."""
  c = config_base.get_base_config()
  c.dataset = 'ln_openimages'
  c.manual_dir = ''  # Required: JSONL + train/ + validation/.
  c.image_size = 256
  c.max_tokens = 64
  c.text_encoder = 'bert-base-uncased'
  c.batch_size = 256
  c.dtype = 'bfloat16'
  return c
