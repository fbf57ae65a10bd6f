"""benchmarks/ablation.py: its plan, its tables and a study end to end."""

import csv
import json
import os
import sys

import pytest

import benchmark_process
from benchmarks import ablation

ROOT = benchmark_process.ROOT
_env = benchmark_process.env
_run = benchmark_process.run


def test_ablation_plan_runs_each_seed_once_from_first_seed():
  """seed 0 of every variant first; --first_seed drops the seeds below it."""
  args = ablation.parse_args(['--variants=full,hinge_only', '--seeds=3',
                              '--set', 'num_train_steps=7'])
  assert [(n, s) for n, s, _ in ablation.plan(args)] == [
      ('full', 0), ('hinge_only', 0), ('full', 1), ('hinge_only', 1),
      ('full', 2), ('hinge_only', 2)]
  args = ablation.parse_args(['--variants=hinge_only', '--seeds=3',
                              '--first_seed=1'])
  runs = ablation.plan(args)
  assert [(n, s) for n, s, _ in runs] == [('hinge_only', 1), ('hinge_only', 2)]
  assert runs[0][2]['seed'] == 1 and runs[0][2]['data_seed'] == 0
  assert runs[0][2]['loss_weights.sentence'] == 0.0


def test_ablation_help_documents_the_study():
  result = _run([sys.executable, '-m', 'benchmarks.ablation', '--help'],
                dict(os.environ, PYTHONPATH=ROOT), 120)
  for text in ('--variants', '--seeds', 'hinge_only', 'resumes',
               'summary.md'):
    assert text in result.stdout, text


def test_ablation_tables_every_finished_run_of_the_study(tmp_path,
                                                          monkeypatch):
  """A call for one variant tables the runs earlier calls finished too, in
  table order, and leaves out unfinished runs and other step counts."""
  def finish(variant, seed, step, colour):
    run_dir = tmp_path / variant / f'seed{seed}' / 'eval'
    run_dir.mkdir(parents=True)
    row = {'step': step, 'raw/oracle_colour_accuracy': colour}
    (run_dir / 'results.jsonl').write_text(json.dumps(row) + '\n')
  finish('no_word_region', 0, 2, 0.5)
  finish('full', 1, 2, 0.9)
  finish('full', 0, 2, 0.7)
  finish('hinge_only', 0, 5, 0.1)  # Another study length: not this table.
  # A variant trained for its own number of steps (config.json): its row.
  finish('no_image', 0, 3, 0.3)
  (tmp_path / 'no_image' / 'seed0' / 'config.json').write_text(
      json.dumps({'num_train_steps': 3}))
  (tmp_path / 'full' / 'seed2').mkdir()  # Started, never evaluated.
  monkeypatch.chdir(ROOT)
  ablation.main(['--config=configs/tiny.py', f'--workdir={tmp_path}',
                 '--variants=no_word_region', '--table_only',
                 '--set', 'num_train_steps=2'])
  with open(tmp_path / 'runs.csv') as f:
    rows = list(csv.DictReader(f))
  assert [(r['variant'], r['seed'], r['raw/oracle_colour_accuracy'])
          for r in rows] == [('full', '0', '0.7'), ('full', '1', '0.9'),
                             ('no_word_region', '0', '0.5'),
                             ('no_image', '0', '0.3')]
  table = (tmp_path / 'summary.md').read_text()
  assert '| full | 2 | 80.00 ± 14.14 |' in table
  assert '| no_word_region | 1 | 50.00 |' in table and 'hinge_only' not in table


@pytest.mark.slow
def test_ablation_two_variants_end_to_end(tmp_path):
  """Two variants, one seed, two steps of the tiny config: trained, scored by
  one (pre-placed, quick) oracle, tabled, with a grid each; a second call
  trains nothing."""
  from xmcgan_jax.eval import shapes_oracle  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / 'ablation'
  workdir.mkdir()
  shapes_oracle.ShapesOracle.load_or_train(
      str(workdir / shapes_oracle.oracle_file_name(2)), train_examples=64,
      steps=5, grid=2)
  command = [sys.executable, '-m', 'benchmarks.ablation',
             '--config=configs/tiny.py', f'--workdir={workdir}',
             '--variants=full,hinge_only', '--seeds=1',
             '--set', 'num_train_steps=2', '--set', 'eval_num_samples=16']
  # One compilation cache for the study: the second variant's eval and
  # sampling load the first's compiled G (its step differs: terms are off).
  env = _env(tmp_path, JAX_COMPILATION_CACHE_DIR=str(tmp_path / 'jax_cache'))
  _run(command, env, 900)
  with open(workdir / 'runs.csv') as f:
    rows = list(csv.DictReader(f))
  assert [(r['variant'], r['seed'], r['step']) for r in rows] == [
      ('full', '0', '2'), ('hinge_only', '0', '2')]
  for row in rows:
    assert 0 <= float(row['raw/oracle_colour_accuracy']) <= 1
    assert float(row['steps_per_second']) > 0
  table = (workdir / 'summary.md').read_text()
  assert '| full | 1 |' in table and '| hinge_only | 1 |' in table
  for name in ('full', 'hinge_only'):
    assert os.path.getsize(workdir / 'grids' / f'{name}.png') > 1000
  with open(workdir / 'hinge_only' / 'seed0' / 'config.json') as f:
    config = json.load(f)
  assert config['loss_weights']['sentence'] == 0.0 and config['seed'] == 0
  # A call for one variant trains nothing and keeps the other in the tables.
  second = _run([c.replace('full,hinge_only', 'hinge_only') for c in command],
                env, 300)
  assert 'training' not in second.stdout  # Finished runs are skipped.
  with open(workdir / 'runs.csv') as f:
    assert [r['variant'] for r in csv.DictReader(f)] == ['full', 'hinge_only']
  assert ablation.VARIANTS['full'][0] == {}
