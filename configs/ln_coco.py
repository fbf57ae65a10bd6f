"""XMC-GAN on Localized Narratives over COCO-2017 images (LN-COCO), 256px.

  python -m xmcgan_jax.main --config=configs/ln_coco.py --workdir=gs://BUCKET/ln_coco \
      --config.manual_dir=/data/ln_coco --config.data_dir=gs://BUCKET/tfds \
      --config.image_encoder.weights=vgg19_weights_tf_dim_ordering_tf_kernels.h5

manual_dir holds the LN JSONL files and the COCO-2017 images (README, Data).
All four contrastive terms, as configs/coco.py: the image term needs the
VGG-19 weights (README, Image encoders); without them,
--config.image_encoder.name=none --config.loss_weights.image_pretrained=0
trains the reduced model. The 2021 release has no LN code: where this
config's choices come from is in docs/fidelity.md.
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
  # Our choice, as configs/coco.py (docs/fidelity.md).
  c.contrastive_negatives = 'global'
  c.dtype = 'bfloat16'
  c.image_encoder.name = 'vgg19'  # As the paper; needs .weights.
  c.image_encoder.feature = 'fc7'
  return c
