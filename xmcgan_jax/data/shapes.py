"""Shapes: the embedded default dataset, generated locally by a TFDS builder.

Each image holds 1 to max_objects (3) flat-coloured shapes (circle, square,
triangle; six colours; two sizes) in distinct cells of a 3x3 (or 2x2) grid on
a grey background, with 5 template captions that name every object's size,
colour, shape and cell in varied wording and order. The ground-truth objects
are stored as features, so generated images can be checked against their
captions (eval/shapes_oracle). Everything is a deterministic function of
(seed, split, index, grid, max_objects).

This module is NumPy only (the oracle and the GPU study harness use it where
TensorFlow is not installed); its TFDS builder is data/shapes_builder.py.
"""

import re
from typing import Dict, List, Sequence, Set, Tuple

import numpy as np

SHAPES = ('circle', 'square', 'triangle')
COLOURS = {
    'red': (220, 40, 40), 'green': (40, 170, 60), 'blue': (40, 80, 220),
    'yellow': (235, 205, 30), 'purple': (145, 60, 185),
    'orange': (245, 135, 25),
}
COLOUR_NAMES = tuple(COLOURS)
SIZES = ('small', 'large')
# Cell names in row-major order, per grid side.
GRID_CELLS = {
    2: ('top left', 'top right', 'bottom left', 'bottom right'),
    3: ('top left', 'top middle', 'top right', 'middle left', 'center',
        'middle right', 'bottom left', 'bottom middle', 'bottom right'),
}
# Classes of interchangeable caption words, one per attribute (shape, colour,
# size, row and column of a 2x2 grid): config.hard_negative_words of the
# default (3x3 cells also say 'middle' and 'center', which have no swap here).
WORD_CLASSES = (' '.join(SHAPES), ' '.join(COLOUR_NAMES), ' '.join(SIZES),
                'top bottom', 'left right')
WORD_CLASS_NAMES = ('shape', 'colour', 'size', 'row', 'column')
BACKGROUND = (200, 200, 200)
# Radius of the shape as a fraction of the cell side, per size.
_RADIUS = {'small': 0.22, 'large': 0.42}
_JITTER = 0.06  # Max offset of a shape's centre, fraction of the cell side.
_SPLIT_IDS = {'train': 0, 'validation': 1}

Object = Dict[str, str]  # {'shape', 'colour', 'size', 'cell'}


def grid_cells(grid: int) -> Tuple[str, ...]:
  """The cell names of a `grid` x `grid` layout; raises if unsupported."""
  if grid not in GRID_CELLS:
    raise ValueError(f'Shapes grid={grid} is not supported; use one of '
                     f'{sorted(GRID_CELLS)}.')
  return GRID_CELLS[grid]


def sample_objects(rng: np.random.Generator, grid: int = 3,
                   max_objects: int = 3) -> List[Object]:
  """1 to `max_objects` objects in distinct cells."""
  cell_names = grid_cells(grid)
  n = int(rng.integers(1, max_objects + 1))
  cells = rng.choice(len(cell_names), size=n, replace=False)
  return [{'shape': SHAPES[rng.integers(len(SHAPES))],
           'colour': COLOUR_NAMES[rng.integers(len(COLOURS))],
           'size': SIZES[rng.integers(len(SIZES))],
           'cell': cell_names[c]} for c in cells]


def cell_centre(cell: str, image_size: int, grid: int = 3
                ) -> Tuple[float, float]:
  """(y, x) pixel centre of a grid cell."""
  index = grid_cells(grid).index(cell)
  side = image_size / grid
  return (index // grid + 0.5) * side, (index % grid + 0.5) * side


def render(objects: Sequence[Object], image_size: int,
           rng: np.random.Generator, grid: int = 3) -> np.ndarray:
  """Draws the objects; returns (S, S, 3) uint8.

  Sizes and jitter are fractions of the cell side, so a 2x2 grid draws
  larger shapes than a 3x3 one at the same image size.
  """
  image = np.empty((image_size, image_size, 3), np.uint8)
  image[...] = BACKGROUND
  yy, xx = np.mgrid[0:image_size, 0:image_size] + 0.5
  side = image_size / grid
  for obj in objects:
    cy, cx = cell_centre(obj['cell'], image_size, grid)
    cy += rng.uniform(-_JITTER, _JITTER) * side
    cx += rng.uniform(-_JITTER, _JITTER) * side
    r = _RADIUS[obj['size']] * side
    dy, dx = yy - cy, xx - cx
    if obj['shape'] == 'circle':
      inside = dy**2 + dx**2 <= r**2
    elif obj['shape'] == 'square':
      half = r * 0.85
      inside = (np.abs(dy) <= half) & (np.abs(dx) <= half)
    else:  # Upward triangle: apex at top, base at the bottom.
      top, bottom = -r, r * 0.8
      t = (dy - top) / (bottom - top)  # 0 at apex, 1 at the base.
      inside = (t >= 0) & (t <= 1) & (np.abs(dx) <= t * r)
    image[inside] = COLOURS[obj['colour']]
  return image


_OBJECT_TEMPLATES = (
    'a {size} {colour} {shape} {prep} the {cell}',
    'a {size} {shape} in {colour} {prep} the {cell}',
    'the {cell} has a {size} {colour} {shape}',
)
_FRAMES = ('{}', 'there is {}', 'an image of {}', 'a picture with {}',
           '{} on a grey background')


def make_captions(objects: Sequence[Object], rng: np.random.Generator,
                  count: int = 5) -> List[str]:
  """`count` captions, each naming every object (random order and wording)."""
  captions = []
  for _ in range(count):
    phrases = []
    for i in rng.permutation(len(objects)):
      template = _OBJECT_TEMPLATES[rng.integers(len(_OBJECT_TEMPLATES))]
      prep = ('at', 'in')[rng.integers(2)]
      phrases.append(template.format(prep=prep, **objects[i]))
    if len(phrases) == 1:
      body = phrases[0]
    else:
      body = ', '.join(phrases[:-1]) + ' and ' + phrases[-1]
    captions.append(_FRAMES[rng.integers(len(_FRAMES))].format(body))
  return captions


_ALT = lambda names: '(' + '|'.join(sorted(names, key=len, reverse=True)) + ')'
# Every grid's cell names (2x2 names are a subset of 3x3's).
_CELLS = tuple(sorted(set().union(*GRID_CELLS.values())))
_PARSERS = (
    (re.compile(rf'{_ALT(SIZES)} {_ALT(COLOUR_NAMES)} {_ALT(SHAPES)} '
                rf'(?:at|in) the {_ALT(_CELLS)}'),
     ('size', 'colour', 'shape', 'cell')),
    (re.compile(rf'{_ALT(SIZES)} {_ALT(SHAPES)} in {_ALT(COLOUR_NAMES)} '
                rf'(?:at|in) the {_ALT(_CELLS)}'),
     ('size', 'shape', 'colour', 'cell')),
    (re.compile(rf'the {_ALT(_CELLS)} has a {_ALT(SIZES)} {_ALT(COLOUR_NAMES)} '
                rf'{_ALT(SHAPES)}'),
     ('cell', 'size', 'colour', 'shape')),
)


def parse_caption(caption: str) -> Set[Tuple[str, str, str, str]]:
  """The (size, colour, shape, cell) tuples a Shapes caption mentions."""
  found = set()
  for pattern, fields in _PARSERS:
    for match in pattern.finditer(caption.lower()):
      obj = dict(zip(fields, match.groups()))
      found.add((obj['size'], obj['colour'], obj['shape'], obj['cell']))
  return found


def _shape_words(caption: str) -> List[Tuple[int, int, Object]]:
  """(start, end) of each object's shape word in `caption`, and the object,
  in caption order."""
  found = []
  for pattern, fields in _PARSERS:
    shape_group = fields.index('shape') + 1
    for match in pattern.finditer(caption.lower()):
      found.append((match.start(shape_group), match.end(shape_group),
                    dict(zip(fields, match.groups()))))
  return sorted(found, key=lambda f: f[0])


def shape_variants(caption: str) -> List[str]:
  """Every caption made from `caption` by giving one object another shape."""
  variants = []
  for start, end, obj in _shape_words(caption):
    for shape in SHAPES:
      if shape != obj['shape']:
        variants.append(caption[:start] + shape + caption[end:])
  return variants


def shape_sibling(caption: str, seed: Sequence[int], image_size: int,
                  grid: int) -> Tuple[np.ndarray, str]:
  """A hard negative of a Shapes caption: one object with another shape.

  The object (picked at random) keeps its colour, size and cell and takes
  one of the other shapes; its shape word is replaced in the caption, so the
  wording is the same; the image of the new caption is rendered (with its own
  jitter).

  Args:
    caption: a Shapes caption (make_captions' wording).
    seed: the random choices' seed (e.g. [data seed, record position]).
    image_size: side of the rendered image.
    grid: cells per side.

  Returns:
    (image (S, S, 3) uint8, the sibling's caption).

  Raises:
    ValueError: the caption names no object.
  """
  words = _shape_words(caption)
  if not words:
    raise ValueError(f'Shapes caption {caption!r} names no object.')
  rng = np.random.default_rng(seed)
  start, end, picked = words[rng.integers(len(words))]
  others = [shape for shape in SHAPES if shape != picked['shape']]
  shape = others[rng.integers(len(others))]
  objects = [dict(obj, shape=shape) if obj is picked else obj
             for _, _, obj in words]
  return (render(objects, image_size, rng, grid),
          caption[:start] + shape + caption[end:])


def make_example(seed: int, split: str, index: int, image_size: int,
                 grid: int = 3, max_objects: int = 3) -> Dict[str, object]:
  """The example `index` of `split`: image, captions and objects."""
  rng = np.random.default_rng([seed, _SPLIT_IDS[split], index])
  objects = sample_objects(rng, grid, max_objects)
  return {
      'image': render(objects, image_size, rng, grid),
      'captions': make_captions(objects, rng),
      'objects': {k: [o[k] for o in objects]
                  for k in ('shape', 'colour', 'size', 'cell')},
      'image/id': index,
  }
