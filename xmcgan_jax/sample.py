"""Sampling from a trained run: captions in, uint8 images out.

  from xmcgan_jax import sample
  sampler = sample.Sampler.from_workdir('workdirs/shapes')
  images = sampler.sample(['a large red circle at the top left'], seed=0)

Works on CPU, GPU and TPU and needs no TensorFlow: the config comes from the
run's config.json, the weights from its newest readable Orbax checkpoint,
captions are tokenized by the pure-Python WordPiece tokenizer.
"""

import json
import os
from typing import Iterator, Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding

from xmcgan_jax import builders
from xmcgan_jax import checkpointing
from xmcgan_jax import config_base
from xmcgan_jax import errors
from xmcgan_jax import generate
from xmcgan_jax import parallel
from xmcgan_jax import paths
from xmcgan_jax import train_step as train_step_lib
from xmcgan_jax import visualize
from xmcgan_jax import wordpiece
from xmcgan_jax.models import text_encoder as text_encoder_lib

_STANDING_BATCH = 64  # Captions (cycled) per standing-statistics forward.


def _read(path: str) -> str:
  if '://' in path:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    with tf.io.gfile.GFile(path) as f:
      return f.read()
  with open(path, encoding='utf-8') as f:
    return f.read()


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a training run saved as WORKDIR/config.json."""
  path = os.path.join(workdir, paths.CONFIG_FILE)
  try:
    text = _read(path)
  except (OSError, IOError) as e:
    raise paths.missing_run(workdir) from e
  config = ml_collections.ConfigDict(json.loads(text))
  # Runs saved before a field existed ran with its default behaviour (every
  # field added so far defaults to what the code did before it): fill it in.
  with config.unlocked():
    for key, value in config_base.get_base_config().items():
      if key not in config:
        logging.info('%s has no %r; using the default %r.', path, key, value)
        config[key] = value
  return config


class Sampler:
  """A trained generator with its frozen text encoder.

  Use Sampler.from_workdir; `step` is the checkpoint step it holds.
  """

  def __init__(self, config, state: train_step_lib.TrainState,
               text: text_encoder_lib.TextEncoder, generator):
    self.config = config
    self.step = int(state.step)
    self._state = state
    self._text = text
    self._tokenizer = wordpiece.WordPieceTokenizer(text.vocab_path,
                                                   text.lower_case)
    self._generate = generate.make_generate_fn(generator, text.features_fn())
    self._standing = generate.make_standing_stats_fn(generator)
    self._text_features = jax.jit(text.features_fn())
    self._standing_cache = (None, None)  # (captions key, statistics).

  @classmethod
  def from_workdir(cls, workdir: str, text_encoder: Optional[str] = None,
                   step: Optional[int] = None, config=None) -> 'Sampler':
    """Loads a checkpoint of a training workdir (the newest readable one).

    Args:
      workdir: the --workdir of a training run (local or gs://).
      text_encoder: override config.text_encoder (e.g. a local copy).
      step: load this checkpoint step instead of the newest.
      config: the run's config; default: WORKDIR/config.json.

    Returns:
      The Sampler.
    """
    workdir = paths.resolve(workdir)
    if config is None:
      config = load_config(workdir)
    if text_encoder:
      config = ml_collections.ConfigDict(config.to_dict())
      config.text_encoder = text_encoder
    config = paths.resolve_config(config)
    text = text_encoder_lib.load_text_encoder(
        config.text_encoder, pooling=config.text_pooling,
        dtype=jnp.dtype(config.dtype))
    generator, discriminator = builders.build_models(config, text.width)
    g_tx, d_tx = builders.build_optimizers(config)
    mesh = parallel.make_mesh(jax.local_devices()[:1])
    replicated = NamedSharding(mesh, parallel.REPLICATED)
    abstract = jax.eval_shape(lambda: train_step_lib.create_train_state(
        jax.random.PRNGKey(0), generator, discriminator, g_tx, d_tx))
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
        abstract)
    checkpointer = checkpointing.Checkpointer(
        os.path.join(workdir, paths.CHECKPOINT_DIR), keep=config.keep_checkpoints,
        asynchronous=False)
    if step is None:
      restored = checkpointer.restore_latest(abstract)
    else:
      restored = checkpointer.restore(step, abstract)
    checkpointer.close()
    if restored is None:
      raise errors.MissingFileError(f'No readable checkpoint under {workdir}/'
                              'checkpoints.')
    return cls(config, restored[1], text, generator)

  def sample(self, captions: Sequence[str], seed: int = 0, ema: bool = True,
             batch_size: int = 64) -> np.ndarray:
    """Images for captions, (N, S, S, 3) uint8; same seed, same images.

    Args:
      captions: one image per caption (repeat a caption for several).
      seed: noise seed.
      ema: use the EMA generator with standing BatchNorm statistics
        (default) or the raw generator with its running statistics.
      batch_size: images per generator call.
    """
    return np.concatenate(list(self.sample_batches(captions, seed, ema,
                                                   batch_size)))

  def sample_batches(self, captions: Sequence[str], seed: int = 0,
                     ema: bool = True, batch_size: int = 64
                     ) -> Iterator[np.ndarray]:
    """`sample` as a stream of (<= batch_size, S, S, 3) uint8 batches.

    For many images (evaluation): only one batch is in host memory at a
    time; the EMA BatchNorm statistics are computed once, from the first
    64 captions.
    """
    params = self._state.ema_g_params if ema else self._state.g_params
    ids, mask = self._tokenizer.tokenize(list(captions),
                                         self.config.max_tokens)
    z = np.asarray(generate.noise(seed, len(captions), self.config.z_dim))
    g_state = self._state.g_state
    if ema:  # From the first captions, whatever the sampling batch size.
      g_state = self.standing_statistics(ids[:_STANDING_BATCH],
                                         mask[:_STANDING_BATCH])
    for start in range(0, len(captions), batch_size):
      chunk = slice(start, start + batch_size)
      n = len(ids[chunk])
      pad = lambda x: np.concatenate(
          [x, np.repeat(x[-1:], batch_size - n, 0)]) if n < batch_size else x
      images = self._generate(params, g_state, self._text.params,
                              pad(ids[chunk]), pad(mask[chunk]), pad(z[chunk]))
      yield visualize.to_uint8(np.asarray(images)[:n])


  def standing_statistics(self, ids: np.ndarray, mask: np.ndarray,
                          batch_size: int = _STANDING_BATCH,
                          passes: int = 50):
    """BatchNorm statistics of the EMA weights on these captions.

    `passes` train-mode forwards with fresh noise over the captions (cycled
    to a fixed batch_size, so the result does not depend on how sampling is
    batched); with momentum 0.9 the raw generator's statistics decay to
    0.9**passes of their weight.
    """
    key = (ids.tobytes(), mask.tobytes(), batch_size, passes)
    if self._standing_cache[0] == key:
      return self._standing_cache[1]
    rows = np.resize(np.arange(len(ids)), batch_size)
    words, sentence = self._text_features(self._text.params, ids[rows],
                                          mask[rows])
    state = self._state.g_state
    for k in range(passes):  # The text is encoded once, G runs `passes` times.
      z = generate.noise(10_000 + k, batch_size, self.config.z_dim)
      state = self._standing(self._state.ema_g_params, state, sentence, words,
                             mask[rows], z)
    self._standing_cache = (key, state)
    return state


def sample_grid(workdir: str, captions: Sequence[str], output: str = '',
                seed: int = 0, ema: bool = True) -> str:
  """Samples captions from a workdir and writes a PNG grid with them.

  Returns:
    The PNG path (default WORKDIR/samples/cli_<step>_seed<seed>.png).
  """
  workdir = paths.resolve(workdir)
  sampler = Sampler.from_workdir(workdir)
  images = sampler.sample(captions, seed=seed, ema=ema)
  output = paths.resolve(output) or os.path.join(
      workdir, paths.SAMPLES_DIR, f'cli_{sampler.step:08d}_seed{seed}.png')
  visualize.save_png(output, visualize.make_grid(images, list(captions)))
  return output
