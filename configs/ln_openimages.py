"""XMC-GAN on Localized Narratives over Open Images V6 (LN-OpenImages), 256px.

  python -m xmcgan_jax.main --config=configs/ln_openimages.py \
      --workdir=gs://BUCKET/ln_oi --config.manual_dir=/data/ln_openimages \
      --config.data_dir=gs://BUCKET/tfds \
      --config.image_encoder.weights=vgg19_weights_tf_dim_ordering_tf_kernels.h5

manual_dir holds the LN JSONL files and the Open Images images (README, Data).
All four contrastive terms, as configs/coco.py: the image term needs the
VGG-19 weights (README, Image encoders); without them,
--config.image_encoder.name=none --config.loss_weights.image_pretrained=0
trains the reduced model. The 2021 release has no LN code: where this
config's choices come from is in docs/fidelity.md.
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
  # Our choice, as configs/coco.py (docs/fidelity.md).
  c.contrastive_negatives = 'global'
  c.dtype = 'bfloat16'
  c.image_encoder.name = 'vgg19'  # As the paper; needs .weights.
  c.image_encoder.feature = 'fc7'
  return c
