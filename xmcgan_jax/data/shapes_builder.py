"""The TFDS builder of Shapes (data/shapes.py draws the examples).

`tfds.builder`'s name for it is 'shapes'; its cache lives under
<data_dir>/shapes/<config name>/<version>, one per image size, layout, split
sizes and seed (the config's name encodes them).
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from xmcgan_jax.data import shapes


@dataclasses.dataclass
class ShapesConfig(tfds.core.BuilderConfig):
  """Image size, layout, split sizes and seed of a generated Shapes dataset."""
  image_size: int = 64
  grid: int = 3
  max_objects: int = 3
  train_size: int = 20_000
  eval_size: int = 2_000
  seed: int = 0


def shapes_config(image_size: int = 64, train_size: int = 20_000,
                  eval_size: int = 2_000, seed: int = 0,
                  grid: int = 3, max_objects: int = 3) -> ShapesConfig:
  """A ShapesConfig whose name encodes its parameters (one cache each)."""
  shapes.grid_cells(grid)  # Validates.
  if not 1 <= max_objects <= grid * grid:
    raise ValueError(f'Shapes max_objects={max_objects} must be in '
                     f'[1, {grid * grid}] for a {grid}x{grid} grid.')
  return ShapesConfig(
      name=(f'{image_size}px_grid{grid}_max{max_objects}_{train_size}_'
            f'{eval_size}_seed{seed}'),
      image_size=image_size, grid=grid, max_objects=max_objects,
      train_size=train_size, eval_size=eval_size, seed=seed)


class Shapes(tfds.core.GeneratorBasedBuilder):
  """Captioned coloured shapes on a grid (see module docstring)."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.',
                   '1.1.0': 'Grid (2x2 or 3x3) and object count in the config.'}
  # The embedded default (configs/shapes.py) and the full 3x3 task.
  BUILDER_CONFIGS = [shapes_config(grid=2, max_objects=1), shapes_config()]

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    return tfds.core.DatasetInfo(
        builder=self,
        description=shapes.__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(size, size, 3),
                                         encoding_format='png'),
            'image/id': np.int64,
            'captions': tfds.features.Sequence(tfds.features.Text()),
            'objects': tfds.features.Sequence({
                'shape': tfds.features.ClassLabel(names=shapes.SHAPES),
                'colour': tfds.features.ClassLabel(names=shapes.COLOUR_NAMES),
                'size': tfds.features.ClassLabel(names=shapes.SIZES),
                'cell': tfds.features.ClassLabel(
                    names=shapes.grid_cells(self.builder_config.grid)),
            }),
        }),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    c = self.builder_config
    return {'train': self._generate_examples('train', c.train_size),
            'validation': self._generate_examples('validation', c.eval_size)}

  def _generate_examples(self, split: str, count: int):
    c = self.builder_config
    for index in range(count):
      yield index, shapes.make_example(c.seed, split, index, c.image_size,
                                       c.grid, c.max_objects)
