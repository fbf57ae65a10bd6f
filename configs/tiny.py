"""Tiny config for the tests: 64px, narrow networks, a few steps on Shapes.

  python -m xmcgan_jax.main --config=configs/tiny.py --workdir=/tmp/tiny
"""

from xmcgan_jax import config_base


def get_config():
  """A model and dataset small enough for a CPU test in seconds."""
  c = config_base.get_base_config()
  c.dataset = 'shapes'
  c.shapes_train_size = 64  # Tiny generated dataset.
  c.shapes_eval_size = 32
  c.image_size = 64  # Smallest channel schedule.
  c.max_tokens = 40  # Shapes captions.
  c.shuffle_buffer = 64
  c.random_flip = False
  c.text_encoder = 'all-MiniLM-L6-v2'  # Offline package, E=384.
  c.g_width = 4  # gf: tiny.
  c.d_width = 4  # df: tiny.
  c.z_dim = 8
  c.dtype = 'float32'
  c.loss_weights.image_pretrained = 0.0  # No image encoder weights offline.
  c.batch_size = 8  # One example per fake CPU device.
  c.num_train_steps = 4
  c.log_every_steps = 2
  c.checkpoint_every_steps = 2
  c.keep_checkpoints = 2
  c.sample_every_steps = 4
  c.num_sample_captions = 4
  c.eval_num_samples = 16
  c.eval_batch_size = 8
  c.standing_stats_passes = 3  # Sampling's EMA statistics: 3 G forwards.
  return c
