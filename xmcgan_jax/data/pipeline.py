"""The tf.data input pipeline shared by every dataset.

Train: this process's share of the split (tfds.split_for_jax_process), one
seeded shuffle per epoch over the still-encoded records, then per example:
decode, one random caption, skip-and-count of undecodable images and empty
captions, bilinear antialiased resize, random horizontal flip, tokenization;
optionally each example followed by its mirror image with 'left' and 'right'
swapped in its caption (`mirror_pairs`).
Batches are (d_steps, per_process_batch, ...) numpy arrays ready for
parallel.shard_batch. Every random choice is a stateless function of (seed,
record position), and the record position is carried in each batch, so a run
resumed from `position` sees exactly the data of an uninterrupted one.

Eval: no flip, caption 0, and padding (with `valid` False) so that every
process runs the same number of batches.
"""

import dataclasses
import threading
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

from absl import logging
import numpy as np
from PIL import Image
import tensorflow as tf
import tensorflow_datasets as tfds

from xmcgan_jax import config_base
from xmcgan_jax import data
from xmcgan_jax.data import localized_narratives
from xmcgan_jax.data import shapes
from xmcgan_jax.data import shapes_builder
from xmcgan_jax import errors
from xmcgan_jax.text import tokenizer as tokenizer_lib

AUTOTUNE = tf.data.AUTOTUNE
Batch = Dict[str, np.ndarray]


def _shapes_builder(config, data_dir: Optional[str]
                    ) -> tfds.core.DatasetBuilder:
  shapes_config = shapes_builder.shapes_config(config.image_size,
                                       config.shapes_train_size,
                                       config.shapes_eval_size,
                                       grid=config.shapes_grid,
                                       max_objects=config.shapes_max_objects)
  # TFDS wants a predefined config by name, a custom one as an object.
  predefined = [c.name for c in shapes_builder.Shapes.BUILDER_CONFIGS]
  if shapes_config.name in predefined:
    shapes_config = shapes_config.name
  return shapes_builder.Shapes(config=shapes_config, data_dir=data_dir)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """How to build a dataset, and where its splits and captions are."""
  # (config, data_dir or None) -> the TFDS builder (not yet prepared).
  builder: Callable[[Any, Optional[str]], tfds.core.DatasetBuilder]
  train_split: str
  eval_split: str
  # Raw TFDS example -> tf.string vector of its captions.
  captions: Callable[[Dict[str, tf.Tensor]], tf.Tensor]


# Every dataset `config.dataset` can name (config_base.DATASETS lists the same
# names for validation without TensorFlow; a test checks that they agree).
DATASETS = {
    'shapes': DatasetSpec(_shapes_builder, 'train', 'validation',
                          lambda ex: ex['captions']),
    'coco': DatasetSpec(
        lambda config, data_dir: tfds.builder('coco_captions/2014',
                                              data_dir=data_dir),
        'train', 'val+test+restval', lambda ex: ex['captions']['text']),
    'ln_coco': DatasetSpec(
        lambda config, data_dir: localized_narratives.LnCoco(
            data_dir=data_dir),
        'train', 'validation', lambda ex: tf.reshape(ex['caption'], [1])),
    'ln_openimages': DatasetSpec(
        lambda config, data_dir: localized_narratives.LnOpenImages(
            data_dir=data_dir),
        'train', 'validation', lambda ex: tf.reshape(ex['caption'], [1])),
}


def swap_left_right(captions: tf.Tensor) -> tf.Tensor:
  """Captions of the mirror images: whole words left <-> right swapped.

  Lower-case and capitalised forms are swapped ('Left' -> 'Right'); other
  side words ('west', 'leftmost') are not.

  Args:
    captions: tf.string tensor of any shape.

  Returns:
    The swapped captions, same shape.
  """
  placeholder = '\x01'  # A control character: BERT tokenizers drop them.
  for left, right in (('left', 'right'), ('Left', 'Right')):
    captions = tf.strings.regex_replace(captions, rf'\b{left}\b', placeholder)
    captions = tf.strings.regex_replace(captions, rf'\b{right}\b', left)
    captions = tf.strings.regex_replace(captions, placeholder, right)
  return captions


def make_builder(config) -> tfds.core.DatasetBuilder:
  """The TFDS builder of `config.dataset` (not yet prepared)."""
  if config.dataset not in DATASETS:
    raise ValueError(f'config.dataset={config.dataset!r}: unknown dataset; '
                     f'choose from {sorted(DATASETS)}.')
  return DATASETS[config.dataset].builder(config, config.data_dir or None)


def prepare(builder: tfds.core.DatasetBuilder, manual_dir: str = '') -> None:
  """Builds the dataset files if they are not there yet.

  Shapes is generated here; LN reads its manual directory; COCO must be
  downloadable or already prepared in data_dir.
  """
  if tf.io.gfile.exists(builder.data_dir) and builder.info.splits:
    return
  logging.info('Preparing %s in %s (once per data_dir).', builder.name,
               builder.data_dir)
  # TFDS's progress bars are a screenful of redraws; --verbosity=1 keeps them.
  tfds.display_progress_bar(logging.level_debug())
  try:
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=manual_dir or None))
  except Exception as e:  # pylint: disable=broad-except
    if builder.name == 'coco_captions':
      raise errors.MissingFileError(
          f'Could not prepare coco_captions in {builder.data_dir} ({e}). On a '
          'machine with network run `tfds build coco_captions/2014 '
          '--data_dir=DIR` and set config.data_dir=DIR.') from e
    raise


class SkipCounter:
  """Thread-safe counts of skipped records, by reason.

  They count what the pipeline has read, and training's parallel map and
  prefetch read ahead of the batches consumed (into the next epoch too).
  """

  def __init__(self):
    self._lock = threading.Lock()
    self._counts = {'undecodable_image': 0, 'empty_caption': 0}

  def add(self, reason: str) -> None:
    with self._lock:
      self._counts[reason] += 1

  def counts(self) -> Dict[str, int]:
    with self._lock:
      return dict(self._counts)


def center_crop_lanczos(image: np.ndarray, size: int) -> np.ndarray:
  """The centre square of a uint8 (H, W, 3) image, resized to size x size
  by PIL's Lanczos (clean-fid's COCO reference images; GigaGAN)."""
  h, w = image.shape[:2]
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  square = Image.fromarray(np.asarray(image[top:top + side,
                                            left:left + side], np.uint8))
  return np.asarray(square.resize((size, size), Image.LANCZOS), np.uint8)


def _decode(encoded: tf.Tensor, counter: SkipCounter):
  """Decodes an image to (H, W, 3) uint8; (1, 1, 3) zeros and False if bad."""

  def decode(encoded_bytes):
    try:
      image = tf.io.decode_image(encoded_bytes, channels=3,
                                 expand_animations=False)
      if image.shape[0] and image.shape[1]:
        return image, True
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError):
      pass
    counter.add('undecodable_image')
    return tf.zeros((1, 1, 3), tf.uint8), False

  image, ok = tf.py_function(decode, [encoded], (tf.uint8, tf.bool))
  image.set_shape([None, None, 3])
  ok.set_shape([])
  return image, ok


@dataclasses.dataclass
class InputPipeline:
  """Builds train and eval iterators of one dataset for this process.

  Attributes:
    builder: a prepared TFDS builder.
    spec: its DatasetSpec.
    tokenizer: the text encoder's tokenizer.
    image_size: output images are (image_size, image_size, 3) in [0, 1].
    max_tokens: T.
    seed: data seed (shuffles, caption choice, flips).
    process_index, process_count: this process among all.
    shuffle_buffer: examples in the shuffle buffer.
    random_flip: flip training images horizontally at random (wrong for
      captions that name left and right, as Shapes').
    mirror_pairs: follow every training example by its horizontal mirror,
      captioned with 'left' and 'right' swapped (swap_left_right). Batches
      then hold pairs that differ only in side: contrastive negatives that
      make D and G tell left from right, which random pairs of captions
      rarely demand (docs/shapes.md). Batches consume half as
      many records.
    shape_pairs: (Shapes) follow every training example by its shape
      sibling (shapes.shape_sibling: one object drawn with another shape,
      its shape word replaced in the caption), before mirror_pairs: hard
      negatives for shape, as mirror pairs are for side. Batches consume half
      as many records again.
    shapes_grid: cells per side of the Shapes images (for shape_pairs).
  """
  builder: tfds.core.DatasetBuilder
  spec: DatasetSpec
  tokenizer: tokenizer_lib.Tokenizer
  image_size: int
  max_tokens: int
  seed: int = 0
  process_index: int = 0
  process_count: int = 1
  shuffle_buffer: int = 10_000
  random_flip: bool = True
  mirror_pairs: bool = False
  shape_pairs: bool = False
  shapes_grid: int = 3

  def __post_init__(self):
    self.skipped = SkipCounter()

  def _split(self, split: str):
    return tfds.split_for_jax_process(split, process_index=self.process_index,
                                      process_count=self.process_count)

  def _raw(self, split) -> tf.data.Dataset:
    """Encoded images and caption lists, in file order."""
    ds = self.builder.as_dataset(
        split=split, shuffle_files=False,
        decoders={'image': tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(interleave_cycle_length=1))
    captions = self.spec.captions
    return ds.map(lambda ex: {'image': ex['image'], 'captions': captions(ex)})

  def num_examples(self, split: str) -> int:
    """Examples of `split` that this process reads."""
    return self.builder.info.splits[self._split(split)].num_examples

  def _prepare(self, position, example, train: bool, pick: str = 'random',
               resize: str = 'bilinear', size: int = 0):
    """Decodes, picks a caption, resizes, flips, tokenizes one example.

    Args:
      position: the example's index in its split (seeds its choices).
      example: the raw example.
      train: flip at random (if random_flip); training always picks a
        random caption and resizes bilinearly to image_size.
      pick: the caption, 'first' or 'random' (by data seed and position).
      resize: 'bilinear' (antialiased, no crop) or 'center_crop_lanczos'
        (center_crop_lanczos below).
      size: output side; 0 = image_size.
    """
    image, ok_image = _decode(example['image'], self.skipped)
    captions = example['captions']
    count = tf.shape(captions)[0]
    seed = tf.stack([tf.cast(self.seed, tf.int64), position])
    if train or pick == 'random':
      index = tf.random.stateless_uniform([], seed, 0, tf.maximum(count, 1),
                                          dtype=tf.int32)
    else:
      index = 0
    caption = tf.cond(count > 0, lambda: captions[tf.minimum(index, count - 1)],
                      lambda: tf.constant(''))
    ok_caption = tf.strings.length(tf.strings.strip(caption)) > 0
    size = size or self.image_size
    if resize == 'center_crop_lanczos' and not train:
      image = tf.numpy_function(lambda x: center_crop_lanczos(x, size),
                                [image], tf.uint8, stateful=False)
      image = tf.cast(tf.reshape(image, [size, size, 3]), tf.float32) / 255.0
    else:
      image = tf.image.resize(image, [size, size], method='bilinear',
                              antialias=True) / 255.0
    image = tf.clip_by_value(image, 0.0, 1.0)
    if train and self.random_flip:
      flip = tf.random.stateless_uniform([], seed + [0, 1 << 40]) < 0.5
      image = tf.cond(flip, lambda: tf.image.flip_left_right(image),
                      lambda: image)
    ids, mask = self.tokenizer.tokenize(caption, self.max_tokens)
    return {'image': image, 'token_ids': ids, 'token_mask': mask,
            'caption': caption, 'position': position,
            'ok_image': ok_image, 'ok_caption': ok_caption}

  def _with_mirror(self, example):
    """The example and its mirror (left/right swapped), stacked on axis 0."""
    return self._pair(example, tf.image.flip_left_right(example['image']),
                      swap_left_right(example['caption']))

  def _pair(self, example, image, caption):
    """The example and a second one (image, caption) of its record, stacked
    on axis 0."""
    ids, mask = self.tokenizer.tokenize(caption, self.max_tokens)
    pair = lambda a, b: tf.stack([a, b])
    return {'image': pair(example['image'], image),
            'token_ids': pair(example['token_ids'], ids),
            'token_mask': pair(example['token_mask'], mask),
            'caption': pair(example['caption'], caption),
            # Both come from one record: resuming stays record-exact.
            'position': pair(example['position'], example['position'])}

  def _with_shape_sibling(self, example):
    """The example and its shape sibling (shapes.shape_sibling), stacked."""
    size, grid, seed = self.image_size, self.shapes_grid, self.seed

    def sibling(caption, position):
      image, text = shapes.shape_sibling(caption.decode(), [seed, position],
                                         size, grid)
      return image, text.encode()

    image, caption = tf.numpy_function(
        sibling, [example['caption'], example['position']],
        (tf.uint8, tf.string), stateful=False)
    image = tf.cast(tf.reshape(image, [size, size, 3]), tf.float32) / 255.0
    return self._pair(example, image, tf.reshape(caption, []))

  def _keep(self, example) -> tf.Tensor:
    """Filter predicate; counts empty captions (images count at decode)."""
    def count(ok_image, ok_caption):
      if ok_image and not ok_caption:
        self.skipped.add('empty_caption')
      return bool(ok_image and ok_caption)
    keep = tf.py_function(count, [example['ok_image'], example['ok_caption']],
                          tf.bool)
    keep.set_shape([])
    return keep

  def train_caption_tokens(self) -> Tuple[np.ndarray, np.ndarray]:
    """Token rows of every distinct caption training can draw.

    Every caption of this process's training records, and with mirror_pairs
    its left/right-swapped form too (the caption of the mirrored image).

    Returns:
      (token ids, token mask), each (N, T), one row per distinct caption.
    """
    split = self._split(self.spec.train_split)
    captions = set()
    for names in self._raw(split).map(lambda ex: ex['captions']
                                      ).as_numpy_iterator():
      captions.update(names.tolist())
    captions = sorted(c for c in captions if c.strip())
    if self.shape_pairs:
      captions = sorted(set(captions).union(*(
          [v.encode() for v in shapes.shape_variants(c.decode())]
          for c in captions)))
    if self.mirror_pairs:
      swapped = swap_left_right(tf.constant(captions, tf.string)).numpy()
      captions = sorted(set(captions) | set(swapped.tolist()))
    return self.tokenizer.tokenize_numpy(captions, self.max_tokens)

  def train_dataset(self, per_process_batch: int, d_steps: int,
                    position: int = 0) -> tf.data.Dataset:
    """Endless training batches from record `position` on.

    Args:
      per_process_batch: examples per sub-batch on this process.
      d_steps: sub-batches per batch.
      position: records already consumed (0, or `next_position` of the last
        batch a resumed run had used).

    Returns:
      A dataset of dicts: data.TRAIN_BATCH_KEYS (image (d_steps, b, S, S, 3)
      float32, token_ids and token_mask (d_steps, b, T)) and next_position
      () int64, the record to resume from.
    """
    split = self._split(self.spec.train_split)
    raw = self._raw(split)
    n = self.builder.info.splits[split].num_examples
    if n == 0:
      raise ValueError(f'{self.builder.name} {split} is empty for process '
                       f'{self.process_index}.')
    seed, process = self.seed, self.process_index
    buffer = min(self.shuffle_buffer, n)

    def epoch(e):
      # One fixed order per (seed, process, epoch).
      epoch_seed = (seed * 1_000_003 + process * 7_919 + e) % (2**31 - 1)
      shuffled = raw.shuffle(buffer, seed=epoch_seed,
                             reshuffle_each_iteration=False)
      return shuffled.enumerate(start=e * n)

    ds = tf.data.Dataset.range(position // n, 2**62).flat_map(epoch)
    ds = ds.skip(position % n)
    ds = ds.map(lambda p, ex: self._prepare(p, ex, train=True),
                num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.filter(self._keep)
    group = config_base.pair_group_size(self.mirror_pairs, self.shape_pairs)
    if per_process_batch % group:
      raise errors.ConfigError(
          f'mirror_pairs={self.mirror_pairs} and shape_pairs='
          f'{self.shape_pairs} need a per-process batch divisible by {group}, '
          f'got {per_process_batch}.')
    # A batch that never splits a record's group ends on a record.
    if self.shape_pairs:
      ds = ds.map(self._with_shape_sibling, num_parallel_calls=AUTOTUNE,
                  deterministic=True).unbatch()
    if self.mirror_pairs:
      ds = ds.map(self._with_mirror, num_parallel_calls=AUTOTUNE,
                  deterministic=True).unbatch()
    ds = ds.batch(per_process_batch * d_steps, drop_remainder=True)

    def to_steps(batch):
      shape = lambda x: tf.reshape(
          x, tf.concat([[d_steps, per_process_batch], tf.shape(x)[1:]], 0))
      steps = {k: shape(batch[k]) for k in data.TRAIN_BATCH_KEYS}
      steps['next_position'] = tf.reduce_max(batch['position']) + 1
      return steps

    return ds.map(to_steps, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)

  def eval_dataset(self, per_process_batch: int,
                   num_examples: Optional[int] = None, caption: str = 'first',
                   resize: str = 'bilinear', size: int = 0
                   ) -> tf.data.Dataset:
    """The eval split in fixed order, padded to the same batch count everywhere.

    Args:
      per_process_batch: examples per batch on this process.
      num_examples: use only the first examples of the (whole) split.
      caption: 'first' or 'random' (config.eval_caption).
      resize, size: see _prepare (config.eval_real_resize, eval_image_size).

    Returns:
      A dataset of dicts: image (b, S, S, 3), token_ids, token_mask,
      caption (b,) strings, valid (b,) bool (False on padding).
    """
    split_name = self.spec.eval_split
    if num_examples is not None:
      split_name = (f'{split_name}[:{num_examples}]' if '+' not in split_name
                    else split_name)
    split = self._split(split_name)
    total = self.builder.info.splits[split_name].num_examples
    if num_examples is not None:
      total = min(total, num_examples)
    per_process = -(-total // self.process_count)
    batches = max(1, -(-per_process // per_process_batch))
    ds = self._raw(split).enumerate()
    ds = ds.map(lambda p, ex: self._prepare(p, ex, False, caption, resize,
                                            size),
                num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.filter(self._keep)
    if num_examples is not None:
      ds = ds.take(per_process)
    keys = ('image', 'token_ids', 'token_mask', 'caption')
    ds = ds.map(lambda ex: dict({k: ex[k] for k in keys}, valid=True))
    size = size or self.image_size
    pad = {'image': tf.zeros([size, size, 3]),
           'token_ids': tf.zeros([self.max_tokens], tf.int32),
           'token_mask': tf.zeros([self.max_tokens], tf.bool),
           'caption': tf.constant(''), 'valid': tf.constant(False)}
    ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat())
    ds = ds.take(batches * per_process_batch).batch(per_process_batch)
    return ds.prefetch(AUTOTUNE)


def create_input_pipeline(config, tokenizer: tokenizer_lib.Tokenizer,
                          process_index: int = 0, process_count: int = 1,
                          prepare_data: bool = True) -> InputPipeline:
  """The InputPipeline of an experiment config (prepares the data first).

  Args:
    config: experiment config (dataset, data_dir, manual_dir, image_size,
      max_tokens, seed, data_seed, shuffle_buffer, shapes_*).
    tokenizer: the text encoder's tokenizer.
    process_index, process_count: this process among all.
    prepare_data: build the dataset files if missing.

  Returns:
    The pipeline.
  """
  builder = make_builder(config)
  if prepare_data:
    prepare(builder, config.manual_dir)
  return InputPipeline(
      builder=builder, spec=DATASETS[config.dataset], tokenizer=tokenizer,
      image_size=config.image_size, max_tokens=config.max_tokens,
      seed=config_base.data_seed(config), process_index=process_index,
      process_count=process_count, shuffle_buffer=config.shuffle_buffer,
      random_flip=config.random_flip, mirror_pairs=config.mirror_pairs,
      shape_pairs=config.shape_pairs, shapes_grid=config.shapes_grid)


def as_numpy(ds: tf.data.Dataset) -> Iterator[Batch]:
  """Iterates a dataset as numpy dicts."""
  return iter(tfds.as_numpy(ds))
