"""Screens Shapes settings on an accelerator without TensorFlow, many at once.

The study command (benchmarks/ablation.py) trains through the real input
pipeline and scores with the eval job, one run at a time: 25-30 minutes a run
on a 2-core CPU. This harness screens candidate settings of a one-object
Shapes config in parallel on a GPU machine whose Python has JAX, Flax, Optax
and ml_collections but no TensorFlow, in two steps:

  # 1. Here (TensorFlow installed): every caption the runs can draw,
  #    tokenized, and its frozen text features (the table of
  #    config.text_feature_table), into one .npz.
  python -m benchmarks.shapes_sweep export --config=configs/shapes.py \
      --out=sweep_data/captions.npz
  # 2. There: each variant trained by the real train step, models and
  #    optimizers, scored at the given steps by the Shapes oracle as the eval
  #    job scores raw G; JSON lines and the final sample grids.
  python -m benchmarks.shapes_sweep run --config=configs/shapes.py \
      --data=sweep_data/captions.npz --out=$OUT --parallel=8 \
      --variant full: --variant bilinear:g_cond_upsample=bilinear

What differs from a real run, so a finding here is confirmed with the study
command before a default moves: batches are drawn by NumPy (uniform epochs,
one of the five captions at random, the mirror pairs of the pipeline), not in
tf.data's order; the text features travel as float16 (relative rounding
about 5e-4); the eval noise is drawn once per run (the eval job draws it per
batch). As in a real run: the hard negative captions (exported with the
captions: every swap has a table row) and D's pooling switch
(d_downsample_from_step). Needs a config whose captions form a closed set
(one object).
"""

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import time
from typing import Callable, Dict, List, Sequence, Tuple

import jax
import numpy as np

from xmcgan_jax import config_base
from xmcgan_jax import models
from xmcgan_jax import parallel
from xmcgan_jax.data import shapes
from xmcgan_jax.eval import fid
from xmcgan_jax.eval import r_precision
from xmcgan_jax.eval import shapes_oracle
from xmcgan_jax.sampling import generate
from xmcgan_jax.sampling import visualize
from xmcgan_jax.text import feature_table
from xmcgan_jax.text import hard_negatives
from xmcgan_jax.training import builders
from xmcgan_jax.training import train_step as train_step_lib

_SHAPES_SEED = 0  # The TFDS builder's generation seed (data/shapes_builder).
_GRID_CAPTIONS = 16  # Validation captions drawn in each variant's grid.


def _captions(config, split: str, count: int) -> List[List[str]]:
  return [shapes.make_example(_SHAPES_SEED, split, i, config.image_size,
                              config.shapes_grid,
                              config.shapes_max_objects)['captions']
          for i in range(count)]


def export(config, out: str) -> None:
  """Writes every caption's token row and frozen features to `out` (.npz)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from xmcgan_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from xmcgan_jax.text import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  from xmcgan_jax.training import train  # pylint: disable=g-import-not-at-top
  names = set()
  for split, count in (('train', config.shapes_train_size),
                       ('validation', config.shapes_eval_size)):
    for five in _captions(config, split, count):
      names.update(five)
  swapped = pipeline.swap_left_right(tf.constant(sorted(names))).numpy()
  names = sorted(names | {s.decode() for s in swapped})
  swap = pipeline.swap_left_right(tf.constant(names)).numpy()
  index = {n: i for i, n in enumerate(names)}
  text = train.load_text_encoder(config)
  tokenizer = tokenizer_lib.Tokenizer(text.vocab_path, text.lower_case)
  ids, mask = tokenizer.tokenize_numpy(names, config.max_tokens)
  # The hard negatives the step makes of these captions need table rows too.
  word_classes = train.hard_negative_classes(config, tokenizer)
  table_ids, table_mask = ids, mask
  if word_classes:
    swapped_ids, swapped_mask = hard_negatives.all_swaps(ids, mask,
                                                         word_classes)
    table_ids = np.concatenate([ids, swapped_ids])
    table_mask = np.concatenate([mask, swapped_mask])
  table = feature_table.build(text.features_fn(), text.params, table_ids,
                              table_mask)
  class_ids = np.full((len(word_classes),
                       max(map(len, word_classes), default=0)), -1, np.int32)
  for row, members in zip(class_ids, word_classes):
    row[:len(members)] = members
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  np.savez_compressed(
      out, captions=np.array(names), token_ids=ids.astype(np.int32),
      token_mask=mask.astype(bool),
      swapped=np.array([index[s.decode()] for s in swap], np.int32),
      table_token_ids=table.token_ids, table_words=table.words.astype(
          np.float16), table_sentence=table.sentence.astype(np.float16),
      text_encoder=np.array(config.text_encoder),
      max_tokens=np.array(config.max_tokens),
      hard_negative_words=np.array(
          list(config.hard_negative_words) if word_classes else [], str),
      word_class_ids=class_ids)
  print(f'{len(names)} captions, {len(table.token_ids)} token rows -> {out} '
        f'({os.path.getsize(out) / 2**20:.1f} MiB)')


class _Captions:
  """The exported captions: token rows, mirror swaps, features table."""

  def __init__(self, path: str, config):
    data = np.load(path)
    if (str(data['text_encoder']) != config.text_encoder or
        int(data['max_tokens']) != config.max_tokens):
      raise ValueError(
          f'{path} was exported for text_encoder={data["text_encoder"]}, '
          f'max_tokens={data["max_tokens"]}; the config has '
          f'{config.text_encoder}, {config.max_tokens}.')
    self.index = {str(n): i for i, n in enumerate(data['captions'])}
    self.ids, self.mask = data['token_ids'], data['token_mask']
    self.swapped = data['swapped']
    self.table = {'token_ids': data['table_token_ids'],
                  'words': data['table_words'].astype(np.float32),
                  'sentence': data['table_sentence'].astype(np.float32)}
    self.hard_negative_words = tuple(str(w) for w in
                                     data['hard_negative_words'])
    self.word_classes = tuple(tuple(int(i) for i in row if i >= 0)
                              for row in data['word_class_ids'])
    self._path = path

  def word_classes_for(self, config) -> hard_negatives.WordClasses:
    """The hard negative classes a variant's step uses (as the trainer's
    hard_negative_classes): the exported ones, or none."""
    if not (config.loss_weights.sentence or config.loss_weights.word_region):
      return ()
    words = tuple(config.hard_negative_words)
    if not words:
      return ()
    if words == self.hard_negative_words:
      return self.word_classes
    raise ValueError(
        f'{self._path} was exported for hard_negative_words='
        f'{self.hard_negative_words}; the variant has {words}: export with '
        'them (table rows of every swap).')

  def rows(self, captions: Sequence[str]) -> np.ndarray:
    missing = [c for c in captions if c not in self.index]
    if missing:
      raise ValueError(f'caption {missing[0]!r} was not exported: export '
                       'with the same config.')
    return np.array([self.index[c] for c in captions], np.int32)


class _Batches:
  """Training batches as the pipeline makes them, drawn by NumPy.

  Each epoch is a permutation of the split; each record gives one of its five
  captions at random; with mirror_pairs the record is followed by its mirror
  image and left/right-swapped caption.
  """

  def __init__(self, config, captions: _Captions, images: np.ndarray,
               seed: int):
    self._images, self._captions = images, captions
    rows = [captions.rows(five) for five in _captions(
        config, 'train', config.shapes_train_size)]
    self._rows = np.stack(rows)
    self._rng = np.random.default_rng(seed)
    self._order, self._next = self._rng.permutation(len(images)), 0
    self._d_steps, self._batch = config.d_steps_per_g_step, config.batch_size
    self._mirror = config.mirror_pairs
    if config.shape_pairs:  # Its siblings are rendered, not in the table.
      raise ValueError('shapes_sweep does not draw shape_pairs batches; '
                       'train with the pipeline (benchmarks/ablation.py).')

  def _records(self, count: int) -> np.ndarray:
    out = []
    while count:
      if self._next == len(self._order):
        self._order, self._next = self._rng.permutation(len(self._order)), 0
      take = self._order[self._next:self._next + count]
      self._next += len(take)
      count -= len(take)
      out.append(take)
    return np.concatenate(out)

  def __next__(self) -> Dict[str, np.ndarray]:
    n = self._d_steps * self._batch
    records = self._records(n // 2 if self._mirror else n)
    rows = self._rows[records, self._rng.integers(5, size=len(records))]
    images = self._images[records]
    if self._mirror:  # Record, mirror, record, mirror, ...
      images = np.stack([images, images[:, :, ::-1]], 1).reshape(
          (n,) + images.shape[1:])
      rows = np.stack([rows, self._captions.swapped[rows]], 1).reshape(n)
    shape = (self._d_steps, self._batch)
    return {'image': (images.astype(np.float32) / 255.0).reshape(
                shape + images.shape[1:]),
            'token_ids': self._captions.ids[rows].reshape(shape + (-1,)),
            'token_mask': self._captions.mask[rows].reshape(shape + (-1,))}


def _score(config, oracle, captions: _Captions, count: int):
  """A function (state) -> (metrics, grid images) of raw G, as the eval job
  scores it: oracle alignment and FD, R-precision with the oracle."""
  count = min(count, config.shapes_eval_size)  # As the eval job.
  real, truth, names = shapes_oracle.validation_set(
      count, config.image_size, grid=config.shapes_grid,
      max_objects=config.shapes_max_objects)
  real_labels, real_features = oracle.predict(real)
  real_stats = fid.statistics(real_features)
  caption_embeddings = shapes_oracle.OracleImageTextEncoder(
      oracle).embed_texts(names)
  rows = captions.rows(names)
  generator, _ = models.build_models(config, captions.table['words'].shape[-1])
  gen = generate.make_generate_fn(generator, feature_table.lookup_fn())
  z = generate.noise(config.seed + 2, count, config.z_dim)
  seed = config_base.data_seed(config)
  # As the eval job: R-precision needs more captions than distractors.
  with_r_precision = count > r_precision.NUM_DISTRACTORS
  ceiling = shapes_oracle.alignment(real_labels, truth)
  if with_r_precision:
    ceiling['r_precision'] = r_precision.r_precision(
        shapes_oracle.embed_labels(real_labels), caption_embeddings,
        seed=seed)

  def score(state):
    images = []
    for start in range(0, count, 500):
      part = rows[start:start + 500]
      images.append(visualize.to_uint8(np.asarray(gen(
          state.g_params, state.g_state, captions.table,
          captions.ids[part], captions.mask[part], z[start:start + 500]))))
    images = np.concatenate(images)
    labels, features = oracle.predict(images)
    out = shapes_oracle.generated_metrics(labels, features, truth, real_stats)
    if with_r_precision:
      out['r_precision'] = r_precision.r_precision(
          shapes_oracle.embed_labels(labels), caption_embeddings, seed=seed)
    return out, images[:_GRID_CAPTIONS]

  return score, ceiling, names[:_GRID_CAPTIONS]


def run_one(config, data: str, oracle_path: str, images_path: str,
            eval_at: Sequence[int], eval_count: int,
            report: Callable[[Dict, np.ndarray], None]) -> None:
  """Trains one config and scores raw G at `eval_at` steps.

  Args:
    config: the run's config (one-object Shapes).
    data: the exported captions (.npz).
    oracle_path: the Shapes oracle's cache (trained there if missing).
    images_path: the training split's images (.npy, uint8).
    eval_at: G steps at which raw G is scored; the largest ends the run.
    eval_count: validation captions scored.
    report: called after each score with (result, grid images): result holds
      step, train_s (compilation included), d_loss, the oracle metrics,
      r_precision, the real-image ceiling and the grid's captions.
  """
  captions = _Captions(data, config)
  config_base.validate(config, jax.device_count())
  mesh = parallel.make_mesh()
  generator, discriminator = models.build_models(
      config, captions.table['words'].shape[-1])
  g_tx, d_tx = builders.build_optimizers(config)
  step_config = builders.build_step_config(config,
                                           captions.word_classes_for(config))
  steps = builders.build_step_schedule(
      config, discriminator, lambda d: train_step_lib.make_train_step(
          generator, d, g_tx, d_tx, mesh, step_config,
          text_encoder=feature_table.lookup_fn()))
  frozen = {'text_encoder': parallel.replicate(captions.table, mesh)}
  state = train_step_lib.create_train_state(
      jax.random.PRNGKey(config.seed), generator, discriminator, g_tx, d_tx,
      mesh)
  oracle = shapes_oracle.ShapesOracle.load_or_train(
      oracle_path, image_size=config.image_size, grid=config.shapes_grid)
  score, ceiling, grid_names = _score(config, oracle, captions, eval_count)
  batches = _Batches(config, captions, np.load(images_path, mmap_mode='r'),
                     config_base.data_seed(config))
  train_s, step = 0.0, 0
  for target in sorted(eval_at):
    start = time.perf_counter()
    while step < target:
      state, metrics = steps.at(step)(
          state, parallel.shard_batch(next(batches), mesh), frozen)
      step += 1
    loss = float(metrics['d_loss'])  # Waits for the last step.
    train_s += time.perf_counter() - start
    out, grid = score(state)
    report({'step': step, 'train_s': round(train_s, 1), 'd_loss': loss,
            **out, 'real': ceiling, 'grid_captions': grid_names}, grid)


def _parse_variant(text: str) -> Tuple[str, Dict[str, str]]:
  name, _, fields = text.partition(':')
  overrides = dict(f.split('=', 1) for f in fields.split(',') if f)
  return name, overrides


def _child(args) -> None:
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  config = common.load_config(args.config)
  name, overrides = _parse_variant(args.variant[0])
  steps = int(overrides.pop('steps', args.steps))
  for field, value in overrides.items():
    common.set_field(config, field, value)
  eval_at = sorted({int(s) for s in args.eval_at.split(',')
                    if int(s) < steps} | {steps})
  config.num_train_steps = steps
  path = os.path.join(args.work, f'{name}.jsonl')
  open(path, 'w').close()

  def report(result, grid):  # Written as it comes: a killed run keeps it.
    np.save(os.path.join(args.work, f'{name}.grid.npy'), grid)
    with open(path, 'a') as f:
      f.write(json.dumps({'variant': name, **overrides, **result}) + '\n')

  run_one(config, args.data, args.oracle, args.images, eval_at,
          args.eval_count, report)


def _parent(args) -> None:
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  config = common.load_config(args.config)
  os.makedirs(args.out, exist_ok=True)
  work = args.work or os.path.join(args.out, 'work')
  os.makedirs(work, exist_ok=True)
  oracle = os.path.join(work, shapes_oracle.oracle_file_name(
      config.shapes_grid))
  if args.oracle:
    oracle = args.oracle
  shapes_oracle.ShapesOracle.load_or_train(
      oracle, image_size=config.image_size, grid=config.shapes_grid)
  images = os.path.join(work, 'train_images.npy')
  if not os.path.exists(images):
    np.save(images, np.stack([shapes.make_example(
        _SHAPES_SEED, 'train', i, config.image_size, config.shapes_grid,
        config.shapes_max_objects)['image']
                              for i in range(config.shapes_train_size)]))
  env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE='false')
  began = time.perf_counter()

  def launch(variant: str) -> str:
    name = _parse_variant(variant)[0]
    cmd = [sys.executable, '-m', 'benchmarks.shapes_sweep', 'child',
           '--config', args.config, '--data', args.data, '--out', args.out,
           '--work', work,
           '--oracle', oracle, '--images', images, '--variant', variant,
           '--eval_at', args.eval_at, '--steps', str(args.steps),
           '--eval_count', str(args.eval_count)]
    start = time.perf_counter()
    left = args.deadline_s - (start - began)
    if left < 60:
      return f'{name}: skipped, {left:.0f} s of --deadline_s left'
    with open(os.path.join(work, f'{name}.log'), 'w') as log:
      try:
        rc = subprocess.run(cmd, env=env, stdout=log,
                            stderr=subprocess.STDOUT, check=False,
                            timeout=left).returncode
      except subprocess.TimeoutExpired:
        rc = 'timeout (--deadline_s)'
    line = f'{name}: rc={rc} in {time.perf_counter() - start:.0f} s'
    print(line, flush=True)
    return line

  with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
    for line in pool.map(launch, args.variant):
      if 'skipped' in line:
        print(line, flush=True)
  _combine(args.variant, work, args.out)


def _combine(variants: Sequence[str], work: str, out: str) -> None:
  """results.jsonl, grids.npz (uint8 per variant) and a table, in `out`."""
  rows, grids = [], {}
  for variant in variants:
    name = _parse_variant(variant)[0]
    path = os.path.join(work, f'{name}.jsonl')
    if not os.path.exists(path):
      print(f'{name}: no results (see {name}.log)')
      continue
    with open(path) as f:
      rows.extend(json.loads(line) for line in f)
    grid = os.path.join(work, f'{name}.grid.npy')
    if os.path.exists(grid):
      grids[name] = np.load(grid)
  with open(os.path.join(out, 'results.jsonl'), 'w') as f:
    f.write(''.join(json.dumps(r) + '\n' for r in rows))
  if grids:
    np.savez_compressed(os.path.join(out, 'grids.npz'), **grids)
  print('| variant | step | train s | colour in cell % | object exact % | '
        'R-precision % | oracle FD |')
  print('|---|---|---|---|---|---|---|')
  for r in rows:
    print(f"| {r['variant']} | {r['step']} | {r['train_s']} | "
          f"{100 * r['colour_accuracy']:.1f} | "
          f"{100 * r['object_accuracy']:.1f} | "
          f"{100 * r.get('r_precision', np.nan):.1f} | "
          f"{r['frechet_distance']:.2f} |")


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('mode', choices=('export', 'run', 'child'))
  p.add_argument('--config', default='configs/shapes.py')
  p.add_argument('--out', required=True,
                 help='export: the .npz; run: the results folder')
  p.add_argument('--data', help='the exported .npz (run)')
  p.add_argument('--variant', action='append', default=[],
                 help='NAME:FIELD=VALUE,... (repeatable; NAME: alone is the '
                      'config as it is; steps=N sets that run\'s G steps)')
  p.add_argument('--steps', type=int, default=5000,
                 help='G steps of a run (a variant\'s steps=N wins)')
  p.add_argument('--eval_at', default='1000,2500,5000',
                 help='G steps at which raw G is scored (and at the end)')
  p.add_argument('--eval_count', type=int, default=2000,
                 help='validation captions scored (the eval job: 2,000)')
  p.add_argument('--parallel', type=int, default=4,
                 help='runs at once (one process each)')
  p.add_argument('--oracle', default='',
                 help='oracle cache (.msgpack); trained there if missing')
  p.add_argument('--work', default='',
                 help='logs and partial results (default OUT/work)')
  p.add_argument('--deadline_s', type=float, default=float('inf'),
                 help='runs still going this long after the start are '
                      'stopped (their scores so far are kept)')
  p.add_argument('--images', help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.mode == 'export':
    from benchmarks import common  # pylint: disable=g-import-not-at-top
    export(common.load_config(args.config), args.out)
  elif args.mode == 'run':
    _parent(args)
  else:
    _child(args)


if __name__ == '__main__':
  main()
