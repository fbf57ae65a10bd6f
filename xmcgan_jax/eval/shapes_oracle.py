"""Shapes oracle: reads (shape, colour, size) back from every grid cell.

A small CNN trained on Shapes training images (the generator of
data/shapes.py, so no TFDS read is needed) and cached in the workdir. From it:
  - caption alignment of generated images: the fraction of captioned objects
    found as described (shape, colour and size in their cell) and the
    fraction of images whose every cell is right (objects and empty cells);
  - a Frechet distance on its cell features (real vs generated);
  - its own accuracy on real validation images: the ceiling of the above.
"""

import os
from typing import Dict, List, Optional, Sequence, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from xmcgan_jax.data import shapes
from xmcgan_jax.eval import fid

_SIZE = 36  # Input side: 12 (3x3 grid) or 18 (2x2) px per cell.
EMPTY = 'none'
SHAPE_CLASSES = (EMPTY,) + shapes.SHAPES


class OracleNet(nn.Module):
  """Per-cell logits: shape (incl. empty), colour, size; and features.

  The image is resized to 36x36, each grid cell is cut out and read by one
  shared MLP: cheap to train on a CPU and exact enough for flat shapes.

  Attributes:
    grid: cells per side (2 or 3).
  """
  grid: int = 3

  @nn.compact
  def __call__(self, images: jax.Array):
    b, g = images.shape[0], self.grid
    x = jax.image.resize(images, (b, _SIZE, _SIZE, 3), 'bilinear')
    side = _SIZE // g
    cells = x.reshape((b, g, side, g, side, 3)).transpose(0, 1, 3, 2, 4, 5)
    cells = cells.reshape((b, g * g, side * side * 3))
    h = nn.relu(nn.Dense(256)(cells))
    h = nn.relu(nn.Dense(128)(h))
    return {'shape': nn.Dense(len(SHAPE_CLASSES))(h),
            'colour': nn.Dense(len(shapes.COLOUR_NAMES))(h),
            'size': nn.Dense(len(shapes.SIZES))(h),
            # Image features for the Frechet distance: cell features pooled
            # to 128 dimensions (few enough for covariances from ~1k images).
            'features': jnp.mean(h, axis=1)}


def cell_labels(objects: Dict[str, Sequence[str]], grid: int = 3
                ) -> np.ndarray:
  """(cells, 3) int labels (shape incl. empty, colour, size); -1 if empty."""
  cell_names = shapes.grid_cells(grid)
  labels = np.full((len(cell_names), 3), -1, np.int32)
  labels[:, 0] = 0
  for shape, colour, size, cell in zip(objects['shape'], objects['colour'],
                                       objects['size'], objects['cell']):
    if cell not in cell_names:
      raise ValueError(f'Cell {cell!r} is not in the {grid}x{grid} grid.')
    labels[cell_names.index(cell)] = (SHAPE_CLASSES.index(shape),
                                        shapes.COLOUR_NAMES.index(colour),
                                        shapes.SIZES.index(size))
  return labels


class ShapesOracle:
  """A trained oracle; use ShapesOracle.load_or_train."""

  def __init__(self, params, grid: int = 3):
    self.params = params
    self.grid = grid
    net = OracleNet(grid)
    self._apply = jax.jit(lambda p, x: net.apply({'params': p}, x))

  @classmethod
  def load_or_train(cls, cache_path: str, image_size: int = 64,
                    train_examples: int = 4000, steps: Optional[int] = None,
                    seed: int = 0, grid: int = 3) -> 'ShapesOracle':
    """Loads the cached oracle or trains one (20-40 s on 2 cores).

    Args:
      cache_path: msgpack file of the parameters ('' = no cache).
      image_size: Shapes image side.
      train_examples: generated training images.
      steps: Adam steps of batch 64; default 1,500 for 3x3 cells and 4,000
        for 2x2 (a 2x2 cell is 2.25x the input; after 1,500 steps it read
        71% of real shapes right, after 4,000 all of them).
      seed: data and initialisation seed.
      grid: cells per side of the Shapes dataset (2 or 3).

    Returns:
      The oracle.
    """
    if steps is None:
      steps = 1500 if grid == 3 else 4000
    net = OracleNet(grid)
    template = net.init(jax.random.PRNGKey(seed),
                        jnp.zeros((1, image_size, image_size, 3)))
    if cache_path and os.path.exists(cache_path):
      with open(cache_path, 'rb') as f:
        params = flax.serialization.from_bytes(template['params'], f.read())
      return cls(params, grid)
    # 1-3 objects whatever the run's max_objects: every cell sees shapes.
    images, labels, _ = generated_set('train', train_examples, image_size,
                                      seed, grid)
    images = images.astype(np.float32) / 255.0
    tx = optax.adam(2e-3)
    params = template['params']
    opt_state = tx.init(params)

    def loss_fn(params, x, y):
      out = net.apply({'params': params}, x)
      ce = optax.softmax_cross_entropy_with_integer_labels
      present = (y[..., 0] > 0).astype(jnp.float32)
      loss = jnp.mean(ce(out['shape'], y[..., 0]))
      for head, k in (('colour', 1), ('size', 2)):
        per = ce(out[head], jnp.maximum(y[..., k], 0))
        loss += jnp.sum(per * present) / jnp.maximum(jnp.sum(present), 1)
      return loss

    @jax.jit
    def step(params, opt_state, x, y):
      grads = jax.grad(loss_fn)(params, x, y)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state

    rng = np.random.default_rng(seed)
    for _ in range(steps):
      idx = rng.integers(0, len(images), 64)
      params, opt_state = step(params, opt_state, images[idx], labels[idx])
    if cache_path:
      os.makedirs(os.path.dirname(cache_path) or '.', exist_ok=True)
      with open(cache_path, 'wb') as f:
        f.write(flax.serialization.to_bytes(params))
    return cls(params, grid)

  def predict(self, images: np.ndarray, batch: int = 256
              ) -> Tuple[np.ndarray, np.ndarray]:
    """(labels (N, cells, 3) with -1 for empty cells, features (N, F))."""
    labels, features = [], []
    for start in range(0, len(images), batch):
      x = np.asarray(images[start:start + batch], np.float32)
      if x.dtype == np.uint8 or x.max() > 1.5:
        x = x / 255.0
      out = self._apply(self.params, x)
      shape = np.asarray(jnp.argmax(out['shape'], -1))
      colour = np.asarray(jnp.argmax(out['colour'], -1))
      size = np.asarray(jnp.argmax(out['size'], -1))
      pred = np.stack([shape, colour, size], -1)
      pred[shape == 0, 1:] = -1
      labels.append(pred)
      features.append(np.asarray(out['features']))
    return np.concatenate(labels), np.concatenate(features)


def alignment(predicted: np.ndarray, truth: np.ndarray) -> Dict[str, float]:
  """Caption alignment of predicted (N, cells, 3) labels against the truth.

  Returns:
    object_accuracy: captioned objects found with their shape, colour, size;
    image_accuracy: images with every cell right (objects and empty cells);
    colour_accuracy: captioned objects whose cell holds something of the
      captioned colour (shape and size ignored): a looser, earlier signal;
    shape_accuracy, size_accuracy: captioned objects whose cell holds the
      captioned shape, or something of the captioned size: with
      colour_accuracy, which attribute object_accuracy loses.
  """
  present = truth[..., 0] > 0
  exact = np.all(predicted == truth, axis=-1)
  filled = predicted[..., 0] > 0
  colour = filled & (predicted[..., 1] == truth[..., 1])
  size = filled & (predicted[..., 2] == truth[..., 2])
  return {'object_accuracy': float(exact[present].mean()),
          'image_accuracy': float(exact.all(axis=1).mean()),
          'colour_accuracy': float(colour[present].mean()),
          'shape_accuracy': float(
              (predicted[..., 0] == truth[..., 0])[present].mean()),
          'size_accuracy': float(size[present].mean())}


_OBJECT_CLASSES = len(shapes.SHAPES) * len(shapes.COLOUR_NAMES) * len(
    shapes.SIZES)


def embed_labels(labels: np.ndarray) -> np.ndarray:
  """(N, cells, 3) labels -> (N, cells * 36) one-hot object-in-cell vectors."""
  labels = np.asarray(labels)
  present = labels[..., 0] > 0
  index = (((labels[..., 0] - 1) * len(shapes.COLOUR_NAMES) + labels[..., 1])
           * len(shapes.SIZES) + labels[..., 2])
  out = np.zeros(labels.shape[:2] + (_OBJECT_CLASSES,), np.float32)
  n, cell = np.nonzero(present)
  out[n, cell, index[n, cell]] = 1.0
  return out.reshape(len(labels), -1)


class OracleImageTextEncoder:
  """The oracle as an image-text encoder for R-precision on Shapes.

  Both sides map to the same space: which object (shape, colour, size) sits
  in which cell, one-hot. An image read back exactly as captioned has cosine
  similarity 1 with its caption.
  """

  def __init__(self, oracle: ShapesOracle):
    self.oracle = oracle

  def embed_images(self, images: np.ndarray) -> np.ndarray:
    return embed_labels(self.oracle.predict(images)[0])

  def embed_texts(self, captions: Sequence[str]) -> np.ndarray:
    labels = []
    for caption in captions:
      objects = sorted(shapes.parse_caption(caption))
      labels.append(cell_labels({
          'size': [o[0] for o in objects], 'colour': [o[1] for o in objects],
          'shape': [o[2] for o in objects], 'cell': [o[3] for o in objects]},
          self.oracle.grid))
    return embed_labels(np.stack(labels))


def generated_metrics(labels: np.ndarray, features: np.ndarray,
                      truth: np.ndarray,
                      real_stats: Tuple[np.ndarray, np.ndarray]
                      ) -> Dict[str, float]:
  """Alignment of generated images and their oracle Frechet distance.

  Args:
    labels, features: the oracle's predictions on the generated images.
    truth: (N, cells, 3) labels of their captions.
    real_stats: fid.statistics of the oracle features of real images.

  Returns:
    `alignment`'s fractions and frechet_distance.
  """
  out = alignment(labels, truth)
  out['frechet_distance'] = fid.frechet_distance(*real_stats,
                                                 *fid.statistics(features))
  return out


def evaluate(oracle: ShapesOracle, generated: np.ndarray,
             truth: np.ndarray, real: np.ndarray) -> Dict[str, float]:
  """Alignment of generated images, the real-image ceiling, oracle FD."""
  real_labels, real_features = oracle.predict(real)
  metrics = generated_metrics(*oracle.predict(generated), truth,
                              fid.statistics(real_features))
  out = {f'generated_{k}': v for k, v in metrics.items()
         if k != 'frechet_distance'}
  out.update({f'real_{k}': v for k, v in alignment(real_labels, truth).items()})
  out['frechet_distance'] = metrics['frechet_distance']
  return out


def generated_set(split: str, count: int, image_size: int = 64, seed: int = 0,
                  grid: int = 3, max_objects: int = 3
                  ) -> Tuple[np.ndarray, np.ndarray, List[str]]:
  """(uint8 images, cell labels, first captions) of examples 0..count-1."""
  images, labels, captions = [], [], []
  for i in range(count):
    ex = shapes.make_example(seed, split, i, image_size, grid, max_objects)
    images.append(ex['image'])
    labels.append(cell_labels(ex['objects'], grid))
    captions.append(ex['captions'][0])
  return np.stack(images), np.stack(labels), captions


def validation_set(count: int, image_size: int = 64, seed: int = 0,
                   grid: int = 3, max_objects: int = 3
                   ) -> Tuple[np.ndarray, np.ndarray, List[str]]:
  """(uint8 images, cell labels, first captions) of Shapes validation."""
  return generated_set('validation', count, image_size, seed, grid,
                       max_objects)


def oracle_file_name(grid: int) -> str:
  """The oracle's cache file in a workdir (one per grid: shapes differ)."""
  return f'shapes_oracle_grid{grid}.msgpack'
