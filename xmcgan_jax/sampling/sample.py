"""Sampling from a trained run: captions in, uint8 images out.

  from xmcgan_jax.sampling import sample
  sampler = sample.Sampler.from_workdir('workdirs/shapes')
  images = sampler.sample(['a large red circle at the top left'], seed=0)

Works on CPU, GPU and TPU and needs no TensorFlow: the config comes from the
run's config.json, the generator's weights from its newest readable Orbax
checkpoint, captions are tokenized by Hugging Face `tokenizers` WordPiece.
"""

import os
from typing import Any, Dict, Iterator, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding

from xmcgan_jax import errors
from xmcgan_jax import models
from xmcgan_jax import parallel
from xmcgan_jax import run_dir
from xmcgan_jax.models import generator as generator_lib
from xmcgan_jax.sampling import generate
from xmcgan_jax.sampling import visualize
from xmcgan_jax.text import encoder as text_encoder_lib
from xmcgan_jax.text import wordpiece

_STANDING_BATCH = 64  # Captions (cycled) per standing-statistics forward.


class GeneratorWeights(NamedTuple):
  """The generator's part of a training checkpoint (TrainState fields)."""
  step: Any
  g_params: Any
  g_state: Any  # BatchNorm running statistics of the raw generator.
  ema_g_params: Any


class Sampler:
  """A trained generator with its frozen text encoder.

  Use Sampler.from_workdir; `step` is the checkpoint step it holds.
  """

  def __init__(self, config, weights: GeneratorWeights,
               text: text_encoder_lib.TextEncoder, generator,
               checkpointer: Optional[run_dir.Checkpointer] = None):
    self.config = config
    self._text = text
    self._checkpointer = checkpointer
    self._tokenizer = wordpiece.WordPieceTokenizer(text.vocab_path,
                                                   text.lower_case)
    self._generate = generate.make_generate_fn(generator, text.features_fn())
    self._standing = generate.make_standing_stats_fn(generator)
    self._text_features = jax.jit(text.features_fn())
    self._set_weights(weights)

  def _set_weights(self, weights: GeneratorWeights) -> None:
    self.step = int(weights.step)
    self._state = weights
    self._standing_cache = (None, None)  # (captions key, statistics).

  @classmethod
  def from_workdir(cls, workdir: str, text_encoder: Optional[str] = None,
                   step: Optional[int] = None, config=None) -> 'Sampler':
    """Loads a checkpoint of a training workdir (the newest readable one).

    Only the generator's weights are read (not D, not the optimizers).

    Args:
      workdir: the --workdir of a training run (local or gs://).
      text_encoder: override config.text_encoder (e.g. a local copy).
      step: load this checkpoint step instead of the newest.
      config: the run's config; default: WORKDIR/config.json.

    Returns:
      The Sampler.
    """
    workdir = run_dir.resolve(workdir)
    if config is None:
      config = run_dir.read_config(workdir)
    if text_encoder:
      config = ml_collections.ConfigDict(config.to_dict())
      config.text_encoder = text_encoder
    config = run_dir.resolve_config(config)
    text = text_encoder_lib.load_text_encoder(
        config.text_encoder, pooling=config.text_pooling,
        dtype=jnp.dtype(config.dtype),
        weights=config.get('text_encoder_weights', 'pretrained'))
    generator, _ = models.build_models(config, text.width)
    checkpointer = run_dir.Checkpointer(
        os.path.join(workdir, run_dir.CHECKPOINT_DIR),
        keep=config.keep_checkpoints, asynchronous=False)
    weights = _restore(checkpointer, _abstract_weights(generator), step)
    return cls(config, weights, text, generator, checkpointer)

  def load_step(self, step: Optional[int] = None) -> None:
    """Swaps in the generator of another checkpoint (default: the newest).

    The text encoder and the compiled functions are kept, so evaluating a
    series of checkpoints loads and compiles them once.
    """
    self._checkpointer.reload()  # Steps written since it was opened.
    self._set_weights(_restore(self._checkpointer, self._state, step))

  def close(self) -> None:
    if self._checkpointer is not None:
      self._checkpointer.close()

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

  def tokenize(self, captions: Sequence[str]
               ) -> Tuple[np.ndarray, np.ndarray]:
    """(ids, mask) (N, max_tokens) of captions, as training tokenized them."""
    return self._tokenizer.tokenize(list(captions), self.config.max_tokens)

  def text_features(self, captions: Sequence[str]
                    ) -> Tuple[np.ndarray, np.ndarray]:
    """(word (N, T, E), sentence (N, E)) features of captions, as training
    computed them."""
    words, sentence = self._text_features(self._text.params,
                                          *self.tokenize(captions))
    return np.asarray(words), np.asarray(sentence)

  def restore_fields(self, abstract: Dict[str, Any]) -> Dict[str, Any]:
    """Other TrainState fields of the checkpoint G's weights came from.

    Args:
      abstract: field name -> abstract tree (see `on_one_device`), e.g. D's
        {'d_params': ..., 'd_state': ...}.

    Returns:
      The same names -> restored arrays.
    """
    return _restore_fields(self._checkpointer, abstract, self.step)

  def sample_batches(self, captions: Sequence[str], seed: int = 0,
                     ema: bool = True, batch_size: int = 64
                     ) -> Iterator[np.ndarray]:
    """`sample` as a stream of (<= batch_size, S, S, 3) uint8 batches.

    For many images (evaluation): only one batch is in host memory at a
    time; the EMA BatchNorm statistics are computed once, from the first
    64 captions.
    """
    ids, mask = self.tokenize(captions)
    return self.sample_token_batches(ids, mask, seed, ema, batch_size)

  def sample_token_batches(self, ids: np.ndarray, mask: np.ndarray,
                           seed: int = 0, ema: bool = True,
                           batch_size: int = 64) -> Iterator[np.ndarray]:
    """`sample_batches` of captions already tokenized: (N, T) ids, mask."""
    params = self._state.ema_g_params if ema else self._state.g_params
    z = np.asarray(generate.noise(seed, len(ids), self.config.z_dim))
    g_state = self._state.g_state
    if ema:  # From the first captions, whatever the sampling batch size.
      g_state = self.standing_statistics(ids[:_STANDING_BATCH],
                                         mask[:_STANDING_BATCH])
    for start in range(0, len(ids), batch_size):
      chunk = slice(start, start + batch_size)
      n = len(ids[chunk])
      pad = lambda x: np.concatenate(
          [x, np.repeat(x[-1:], batch_size - n, 0)]) if n < batch_size else x
      images = self._generate(params, g_state, self._text.params,
                              pad(ids[chunk]), pad(mask[chunk]), pad(z[chunk]))
      yield visualize.to_uint8(np.asarray(images)[:n])

  def standing_statistics(self, ids: np.ndarray, mask: np.ndarray,
                          batch_size: int = _STANDING_BATCH,
                          passes: Optional[int] = None):
    """BatchNorm statistics of the EMA weights on these captions.

    `passes` (default: config.standing_stats_passes) train-mode forwards
    with fresh noise over the captions (cycled to a fixed batch_size, so the
    result does not depend on how sampling is batched); with momentum 0.9
    the raw generator's statistics decay to 0.9**passes of their weight.
    """
    if passes is None:
      passes = self.config.standing_stats_passes
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


def on_one_device(tree: Any) -> Any:
  """ShapeDtypeStructs of tree's leaves, replicated on one local device: an
  abstract state to restore a checkpoint into for sampling or a tool."""
  mesh = parallel.make_mesh(jax.local_devices()[:1])
  replicated = NamedSharding(mesh, parallel.REPLICATED)
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
      tree)


def _restore_fields(checkpointer: run_dir.Checkpointer,
                    abstract: Dict[str, Any], step: Optional[int]
                    ) -> Dict[str, Any]:
  """The TrainState fields named in `abstract` of checkpoint `step`
  (default: the newest readable)."""
  if step is None:
    restored = checkpointer.restore_latest(abstract, partial=True)
  else:
    restored = checkpointer.restore(step, abstract, partial=True)
  if restored is None:
    raise errors.MissingFileError(
        f'No readable checkpoint under {checkpointer.directory}.')
  return restored[1]


def _restore(checkpointer: run_dir.Checkpointer,
             like: GeneratorWeights, step: Optional[int]) -> GeneratorWeights:
  """G's weights of checkpoint `step` (default: the newest readable)."""
  # The TrainState fields of the same names.
  return GeneratorWeights(**_restore_fields(checkpointer, like._asdict(),
                                            step))


def _abstract_weights(generator) -> GeneratorWeights:
  """Shapes, dtypes and (one local device) placement of G's weights."""
  shapes = jax.eval_shape(lambda: generator.init(
      jax.random.PRNGKey(0), *generator_lib.dummy_inputs(generator),
      train=False))
  return GeneratorWeights(
      step=on_one_device(jax.ShapeDtypeStruct((), jnp.int32)),
      g_params=on_one_device(shapes['params']),
      g_state=on_one_device(shapes['batch_stats']),
      ema_g_params=on_one_device(shapes['params']))


def sample_grid(workdir: str, captions: Sequence[str], output: str = '',
                seed: int = 0, ema: bool = True) -> str:
  """Samples captions from a workdir and writes a PNG grid with them.

  Returns:
    The PNG path (default WORKDIR/samples/cli_<step>_seed<seed>.png).
  """
  workdir = run_dir.resolve(workdir)
  sampler = Sampler.from_workdir(workdir)
  images = sampler.sample(captions, seed=seed, ema=ema)
  sampler.close()
  output = run_dir.resolve(output) or os.path.join(
      workdir, run_dir.SAMPLES_DIR, f'cli_{sampler.step:08d}_seed{seed}.png')
  visualize.save_png(output, visualize.make_grid(images, list(captions)))
  return output
