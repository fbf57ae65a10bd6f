"""Which shape a Shapes run draws for each captioned shape, read by the oracle.

  python -m benchmarks.shapes_confusion --workdir=workdirs/shapes

The eval job's shape accuracy says how often the captioned cell holds the
captioned shape; this table says what is drawn instead. For each generator
(raw G with its running BatchNorm statistics, EMA G with standing ones, as
the eval job) it generates the first --count validation captions of the run's
Shapes task (one noise seed) and counts, per captioned shape, what the Shapes
oracle reads in the captioned cell: nothing, or a circle, square or triangle.
Then shape accuracy by captioned size. The oracle is the workdir's cached one
(trained on first use, as by the eval job).
"""

import argparse
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from xmcgan_jax.data import shapes
from xmcgan_jax.eval import shapes_oracle
from xmcgan_jax.sampling import sample


def confusion(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
  """(captioned shape, read shape) counts over the captioned cells.

  Args:
    predicted, truth: (N, cells, 3) oracle labels (shape_oracle.cell_labels).

  Returns:
    (len(SHAPE_CLASSES) - 1, len(SHAPE_CLASSES)) int counts: a row per
    captioned shape, a column per read class (the first: the cell is empty).
  """
  present = truth[..., 0] > 0
  captioned, read = truth[..., 0][present], predicted[..., 0][present]
  classes = len(shapes_oracle.SHAPE_CLASSES)
  counts = np.zeros((classes - 1, classes), np.int64)
  np.add.at(counts, (captioned - 1, read), 1)
  return counts


def table(counts: Dict[str, np.ndarray],
          by_size: Dict[str, Dict[str, float]]) -> str:
  """The confusion counts and per-size accuracies as markdown."""
  names = shapes_oracle.SHAPE_CLASSES
  lines = ['| generator | captioned | ' +
           ' | '.join(f'read {n}' for n in names) + ' | right % |',
           '|' + '---|' * (len(names) + 3)]
  for generator, matrix in counts.items():
    for i, row in enumerate(matrix):
      right = 100.0 * row[i + 1] / max(row.sum(), 1)
      lines.append(f'| {generator} | {names[i + 1]} | ' +
                   ' | '.join(str(int(v)) for v in row) + f' | {right:.1f} |')
  lines += ['', '| generator | ' + ' | '.join(
      f'shape right, {s} %' for s in next(iter(by_size.values()))) + ' |',
            '|' + '---|' * (len(next(iter(by_size.values()))) + 1)]
  for generator, sizes in by_size.items():
    lines.append(f'| {generator} | ' +
                 ' | '.join(f'{100 * v:.1f}' for v in sizes.values()) + ' |')
  return '\n'.join(lines) + '\n'


def main(argv: Optional[Sequence[str]] = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--count', type=int, default=1000,
                      help='validation captions (one image each)')
  parser.add_argument('--oracle_steps', type=int, default=None,
                      help="the oracle's training steps if it is not cached "
                      '(default: the eval job\'s)')
  args = parser.parse_args(argv)
  sampler = sample.Sampler.from_workdir(args.workdir)
  c = sampler.config
  if c.dataset != 'shapes':
    raise SystemExit(f'{args.workdir} trained on {c.dataset!r}, not Shapes.')
  _, truth, captions = shapes_oracle.validation_set(
      min(args.count, c.shapes_eval_size), c.image_size, grid=c.shapes_grid,
      max_objects=c.shapes_max_objects)
  oracle = shapes_oracle.ShapesOracle.load_or_train(
      os.path.join(args.workdir,
                   shapes_oracle.oracle_file_name(c.shapes_grid)),
      image_size=c.image_size, steps=args.oracle_steps, grid=c.shapes_grid)
  counts, by_size = {}, {}
  present = truth[..., 0] > 0
  sizes: List[str] = list(shapes.SIZES)
  for name, ema in (('raw', False), ('ema', True)):
    predicted, _ = oracle.predict(sampler.sample(captions, seed=0, ema=ema))
    counts[name] = confusion(predicted, truth)
    right = (predicted[..., 0] == truth[..., 0])[present]
    size = truth[..., 2][present]
    by_size[name] = {s: float(right[size == k].mean()) if np.any(size == k)
                     else float('nan') for k, s in enumerate(sizes)}
  sampler.close()
  out = table(counts, by_size)
  print(out)
  return out


if __name__ == '__main__':
  main()
