"""The paper's ablation on a config: contrastive terms on and off, several seeds.

  python -m benchmarks.ablation --config=configs/shapes.py \
      --workdir=workdirs/ablation

Each run is the project's own command (`python -m xmcgan_jax.main` with
`--config.<field>=<value>` overrides), then `--mode=eval` on its final
checkpoint and `--mode=sample` for a grid of fixed captions. Runs keep their
workdirs (WORKDIR/<variant>/seed<k>); a run whose final step is evaluated is
skipped, and an unfinished one resumes from its checkpoint, so the study can
be stopped and continued (or moved to a faster machine) at any point.

Every run fixes `data_seed`: seeds change the initialisation and the noise,
never the data order. All runs are scored by one Shapes oracle (trained by
the first evaluation and copied to the others), so the metrics compare.

Writes WORKDIR/runs.csv (one row per finished run in WORKDIR, from this call
or an earlier one), WORKDIR/summary.csv and WORKDIR/summary.md (mean and
sample std over seeds per variant), and
WORKDIR/grids/<variant>.png (seed 0's raw G on the same captions and noise).
"""

import argparse
import csv
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

# Overrides of every contrastive weight (image_pretrained is 0 on Shapes).
_HINGE_ONLY = {'loss_weights.sentence': 0.0, 'loss_weights.word_region': 0.0,
               'loss_weights.image_d': 0.0,
               'loss_weights.image_pretrained': 0.0}
_PAPER_ARCH = {'mirror_pairs': False, 'g_stem_text': False}

# name -> (config overrides, default number of seeds). The order is the
# table's; runs go seed by seed, so seed 0 of every variant comes first.
VARIANTS: Dict[str, Tuple[Dict[str, object], int]] = {
    'full': ({}, 3),
    'hinge_only': (_HINGE_ONLY, 3),
    'no_sentence': ({'loss_weights.sentence': 0.0}, 1),
    'no_word_region': ({'loss_weights.word_region': 0.0}, 1),
    'no_image': ({'loss_weights.image_d': 0.0}, 1),
    'paper_arch_full': (_PAPER_ARCH, 1),
    'paper_arch_hinge_only': ({**_PAPER_ARCH, **_HINGE_ONLY}, 1),
}

# (results.jsonl key, table column, scale): the raw generator's numbers.
METRICS = [
    ('raw/oracle_colour_accuracy', 'colour in cell %', 100.0),
    ('raw/oracle_object_accuracy', 'object exact %', 100.0),
    ('raw/oracle_shape_accuracy', 'shape in cell %', 100.0),
    ('raw/oracle_size_accuracy', 'size in cell %', 100.0),
    ('raw/oracle_image_accuracy', 'image exact %', 100.0),
    ('raw/r_precision', 'R-precision %', 100.0),
    ('raw/oracle_frechet_distance', 'oracle FD', 1.0),
    ('steps_per_second', 'steps/s', 1.0),
]

# Sample-grid captions (2x2 Shapes, one object): every cell, colour and size.
GRID_CAPTIONS = (
    'a large red circle at the top left',
    'a small blue square in the bottom right',
    'a large green triangle at the top right',
    'a small yellow circle in the bottom left',
    'a large purple square at the top left',
    'a small orange triangle at the top right',
    'a large blue circle in the bottom right',
    'a small red square in the bottom left',
)

def _value(text: str) -> object:
  """A --set value as int, float, bool or str."""
  for cast in (int, float):
    try:
      return cast(text)
    except ValueError:
      pass
  return {'true': True, 'false': False}.get(text.lower(), text)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  """The command line (see the module docstring)."""
  p = argparse.ArgumentParser(
      prog='python -m benchmarks.ablation', description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--config', default='configs/shapes.py',
                 help='the config every variant starts from')
  p.add_argument('--workdir', default='workdirs/ablation',
                 help='one subdirectory per run, plus the tables')
  p.add_argument('--variants', default=','.join(VARIANTS),
                 help=f'comma-separated subset of {list(VARIANTS)}')
  p.add_argument('--seeds', type=int, default=0,
                 help='seeds per variant (0: 3 for full and hinge_only, 1 '
                 'for the others)')
  p.add_argument('--first_seed', type=int, default=0,
                 help='skip the seeds below this one (e.g. to add seeds 1-2 '
                 'to a study whose seed 0 ran elsewhere)')
  p.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE',
                 help='a config override for every run (e.g. '
                 'num_train_steps=2000); repeatable')
  p.add_argument('--variant', action='append', default=[],
                 metavar='NAME:FIELD=VALUE[,FIELD=VALUE]',
                 help='defines a further variant (one seed unless --seeds), '
                 'e.g. d16:d_width=16; name it in --variants too; repeatable')
  p.add_argument('--data_seed', type=int, default=0,
                 help='the data order shared by all runs')
  p.add_argument('--table_only', action='store_true',
                 help='write the tables from the finished runs; train nothing')
  args = p.parse_args(argv)
  for item in args.variant:
    name, _, fields = item.partition(':')
    if not name or '=' not in fields:
      p.error(f'--variant {item!r}: use NAME:FIELD=VALUE[,FIELD=VALUE]')
    # A comma starts a new field only before 'name=': tuple values such as
    # hard_negative_words=('circle square','top bottom') keep theirs.
    VARIANTS[name] = ({k: _value(v) for k, v in (
        f.split('=', 1) for f in re.split(r',(?=[\w.]+=)', fields))}, 1)
  unknown = [v for v in args.variants.split(',') if v not in VARIANTS]
  if unknown:
    p.error(f'unknown variants {unknown}; choose from {list(VARIANTS)}')
  for item in args.set:
    if '=' not in item:
      p.error(f'--set {item!r}: use FIELD=VALUE')
  return args


def plan(args: argparse.Namespace) -> List[Tuple[str, int, Dict[str, object]]]:
  """(variant, seed, overrides) of every run, seed 0 of all variants first."""
  common = {'data_seed': args.data_seed}
  for item in args.set:
    key, value = item.split('=', 1)
    common[key] = _value(value)
  runs = []
  names = args.variants.split(',')
  most = max(args.seeds or VARIANTS[n][1] for n in names)
  for seed in range(args.first_seed, most):
    for name in names:
      overrides, seeds = VARIANTS[name]
      if seed < (args.seeds or seeds):
        runs.append((name, seed, {**common, **overrides, 'seed': seed}))
  return runs


def _main_command(*flags: str) -> List[str]:
  return [sys.executable, '-m', 'xmcgan_jax.main', *flags]


def _run(command: List[str], log_path: str) -> float:
  """Runs a command, appending its output to log_path; returns seconds."""
  start = time.monotonic()
  with open(log_path, 'a') as log:
    log.write('$ ' + ' '.join(command) + '\n')
    log.flush()
    status = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
  if status:
    raise RuntimeError(f'{" ".join(command)} exited with {status}; see '
                       f'{log_path}')
  return time.monotonic() - start


def run_final_step(run_dir: str, default: int) -> int:
  """The run's own num_train_steps (its config.json), else default.

  A variant may train for another number of steps than the study's config
  (e.g. a larger batch for fewer steps in the same time).
  """
  path = os.path.join(run_dir, 'config.json')
  if not os.path.exists(path):
    return default
  with open(path) as f:
    return int(json.load(f).get('num_train_steps', default))


def final_result(run_dir: str, final_step: int) -> Optional[Dict[str, float]]:
  """The eval job's row of the final step, or None if not evaluated yet."""
  path = os.path.join(run_dir, 'eval', 'results.jsonl')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  rows = [r for r in rows if r['step'] == final_step]
  return rows[-1] if rows else None


def median_steps_per_second(run_dir: str) -> float:
  """Median of the training log's steps/s scalars (TensorBoard events).

  The median skips the first interval, which includes compilation.
  """
  from xmcgan_jax import console  # pylint: disable=g-import-not-at-top
  tf = console.import_tensorflow('cpu')
  values = []
  for name in sorted(os.listdir(run_dir)):
    if not name.startswith('events.out.tfevents'):
      continue
    for record in tf.data.TFRecordDataset(os.path.join(run_dir, name)):
      event = tf.compat.v1.Event.FromString(record.numpy())
      for v in event.summary.value:
        if v.tag == 'steps_per_second':
          values.append(float(tf.make_ndarray(v.tensor)))
  return statistics.median(values) if values else float('nan')


def run_one(args: argparse.Namespace, name: str, seed: int,
            overrides: Dict[str, object], final_step: int,
            grid: int) -> None:
  """Trains, evaluates and samples one run unless it is done already."""
  run_dir = os.path.join(args.workdir, name, f'seed{seed}')
  os.makedirs(run_dir, exist_ok=True)
  log_path = os.path.join(run_dir, 'ablation.log')
  final_step = int(overrides.get('num_train_steps', final_step))
  result = final_result(run_dir, final_step)
  if result is None:
    print(f'[{name} seed {seed}] training ({run_dir})', flush=True)
    flags = [f'--config.{k}={v}' for k, v in overrides.items()]
    train_s = _run(_main_command(f'--config={args.config}',
                                 f'--workdir={run_dir}', *flags), log_path)
    from xmcgan_jax.eval import shapes_oracle  # pylint: disable=g-import-not-at-top
    name_of_oracle = shapes_oracle.oracle_file_name(grid)  # The eval job's.
    shared = os.path.join(args.workdir, name_of_oracle)
    local = os.path.join(run_dir, name_of_oracle)
    if os.path.exists(shared) and not os.path.exists(local):
      shutil.copy(shared, local)  # One oracle scores every run.
    eval_s = _run(_main_command('--mode=eval', f'--workdir={run_dir}'),
                  log_path)
    if not os.path.exists(shared) and os.path.exists(local):
      shutil.copy(local, shared)
    result = final_result(run_dir, final_step)
    if result is None:
      raise RuntimeError(f'{run_dir}: no evaluation of step {final_step}.')
    print(f'[{name} seed {seed}] trained in {train_s / 60:.1f} min, '
          f'evaluated in {eval_s / 60:.1f} min', flush=True)
  png = os.path.join(args.workdir, 'grids', f'{name}.png')
  if seed == 0 and not os.path.exists(png):
    os.makedirs(os.path.dirname(png), exist_ok=True)
    _run(_main_command('--mode=sample', f'--workdir={run_dir}',
                       '--captions=' + '|'.join(GRID_CAPTIONS), '--seed=0',
                       f'--output={png}'), log_path)


def finished_rows(workdir: str, final_step: int) -> List[Dict[str, object]]:
  """One row per run in workdir evaluated at final_step, in table order.

  The tables cover every finished run, not only this call's, so a later call
  with `--variants=no_word_region` adds its rows to the study instead of
  replacing it.
  """
  rows = []
  for name in VARIANTS:
    variant_dir = os.path.join(workdir, name)
    entries = os.listdir(variant_dir) if os.path.isdir(variant_dir) else []
    seeds = [e[len('seed'):] for e in entries if e.startswith('seed')]
    for seed in sorted(int(s) for s in seeds if s.isdigit()):
      run_dir = os.path.join(variant_dir, f'seed{seed}')
      result = final_result(run_dir, run_final_step(run_dir, final_step))
      if result is None:
        continue  # Unfinished.
      row = {'variant': name, 'seed': seed, 'step': result['step']}
      row.update({k: result.get(k, float('nan')) for k, _, _ in METRICS
                  if k != 'steps_per_second'})
      row['steps_per_second'] = median_steps_per_second(run_dir)
      rows.append(row)
  return rows


def summarize(rows: List[Dict[str, object]]) -> List[Dict[str, object]]:
  """Mean and sample std (0 for one seed) over seeds, per variant."""
  out = []
  for name in VARIANTS:
    mine = [r for r in rows if r['variant'] == name]
    if not mine:
      continue
    entry = {'variant': name, 'seeds': len(mine)}
    for key, _, scale in METRICS:
      values = [float(r[key]) * scale for r in mine]
      if any(math.isnan(v) for v in values):  # A run lacks it (stdev raises).
        entry[f'{key}_mean'] = entry[f'{key}_std'] = float('nan')
        continue
      entry[f'{key}_mean'] = statistics.fmean(values)
      entry[f'{key}_std'] = statistics.stdev(values) if len(values) > 1 else 0.0
    out.append(entry)
  return out


def markdown(summary: List[Dict[str, object]]) -> str:
  """The summary as a markdown table, mean ± std."""
  header = ['variant', 'seeds'] + [title for _, title, _ in METRICS]
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for entry in summary:
    cells = [entry['variant'], str(entry['seeds'])]
    for key, _, _ in METRICS:
      mean, std = entry[f'{key}_mean'], entry[f'{key}_std']
      cells.append(f'{mean:.2f} ± {std:.2f}' if entry['seeds'] > 1
                   else f'{mean:.2f}')
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def _write_csv(path: str, rows: List[Dict[str, object]]) -> None:
  if not rows:
    return
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)


def write_tables(workdir: str, final_step: int) -> str:
  """Writes runs.csv, summary.csv and summary.md of every finished run.

  Args:
    workdir: the study's directory (WORKDIR/<variant>/seed<k> per run).
    final_step: the step whose evaluation a run's row reports.

  Returns:
    The summary as markdown.
  """
  rows = finished_rows(workdir, final_step)
  summary = summarize(rows)
  _write_csv(os.path.join(workdir, 'runs.csv'), rows)
  _write_csv(os.path.join(workdir, 'summary.csv'), summary)
  table = markdown(summary)
  with open(os.path.join(workdir, 'summary.md'), 'w') as f:
    f.write(table)
  return table


def main(argv: Optional[Sequence[str]] = None) -> None:
  args = parse_args(argv)
  args.workdir = os.path.abspath(os.path.expanduser(args.workdir))
  os.makedirs(args.workdir, exist_ok=True)
  from xmcgan_jax import config_base  # pylint: disable=g-import-not-at-top
  config = config_base.load_config_file(args.config)
  runs = plan(args)
  final_step = int(runs[0][2].get('num_train_steps', config.num_train_steps))
  grid = int(runs[0][2].get('shapes_grid', config.shapes_grid))
  if config.dataset != 'shapes':
    sys.exit(f'{args.config}: the ablation scores runs with the Shapes '
             f'oracle; dataset is {config.dataset!r}.')
  for name, seed, overrides in [] if args.table_only else runs:
    run_one(args, name, seed, overrides, final_step, grid)
    write_tables(args.workdir, final_step)  # A stopped study keeps its table.
  print(write_tables(args.workdir, final_step))


if __name__ == '__main__':
  main()
