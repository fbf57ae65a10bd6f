"""Helpers shared by the benchmarks: config loading, synthetic batches, tables."""

import argparse
import ast
import importlib.util
import os
import time
from typing import Any, Callable, Dict, List, Sequence, Tuple

import jax
import numpy as np

from xmcgan_jax.text import feature_table


def load_config(path: str):
  """Runs `get_config()` of a configs/*.py file given by path or name."""
  if not path.endswith('.py'):
    path = os.path.join(os.path.dirname(__file__), '..', 'configs',
                        path + '.py')
  spec = importlib.util.spec_from_file_location('bench_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def set_field(config, field: str, value: str) -> None:
  """Sets a dotted config field from a string, typed as the field's value."""
  *parents, name = field.split('.')
  node = config
  for parent in parents:
    node = node[parent]
  old = node[name]
  if isinstance(old, bool):
    node[name] = value.lower() in ('1', 'true', 'yes')
  elif isinstance(old, int):
    node[name] = int(float(value))
  elif isinstance(old, float):
    node[name] = float(value)
  elif isinstance(old, tuple):  # A Python literal, e.g. "('a b', 'c d')".
    node[name] = tuple(ast.literal_eval(value))
  else:
    node[name] = value


def add_probe_flags(parser: argparse.ArgumentParser) -> None:
  """The flags the Shapes probes (d_probe, g_probe) share."""
  parser.add_argument('--config', default='configs/shapes.py')
  parser.add_argument('--set', action='append', default=[],
                      metavar='FIELD=VALUE', help='a config override')
  parser.add_argument('--steps', type=int, default=3500)
  parser.add_argument('--eval_every', type=int, default=500)
  parser.add_argument('--train_images', type=int, default=20_000)
  parser.add_argument('--eval_images', type=int, default=1_000)


def probe_config(args: argparse.Namespace):
  """The config of --config with each --set FIELD=VALUE applied."""
  config = load_config(args.config)
  for item in args.set:
    set_field(config, *item.split('=', 1))
  return config


def run_probe(num_examples: int, batch_size: int, seed: int, steps: int,
              eval_every: int, train_step: Callable[[np.ndarray], Any],
              evaluate: Callable[[], List[float]], loss_digits: int = 4
              ) -> List[str]:
  """The probes' loop: random batches, an evaluation every `eval_every` steps.

  Args:
    num_examples: training examples the batches are drawn from.
    batch_size: examples per step, drawn without replacement.
    seed: seed of the batch order.
    steps: training steps; the last one is always evaluated.
    eval_every: steps between evaluations.
    train_step: takes the batch's row indices, updates the probe and returns
      that step's loss (a device scalar; its readiness marks the step done).
    evaluate: returns the table cells of the probe as it stands.
    loss_digits: decimals of the loss column.

  Returns:
    One markdown row per evaluation, printed as it is made: step, mean loss of
    the last 100 steps, the evaluation's cells, and ms per training step with
    the evaluations' time left out.
  """
  rng = np.random.default_rng(seed)
  rows, losses_seen, evaluating = [], [], 0.0
  start = time.perf_counter()
  for i in range(1, steps + 1):
    losses_seen.append(train_step(rng.choice(num_examples, batch_size,
                                             replace=False)))
    if i % eval_every and i != steps:
      continue
    jax.block_until_ready(losses_seen[-1])
    ms = 1000 * (time.perf_counter() - start - evaluating) / i
    began = time.perf_counter()
    cells = evaluate()
    loss = float(np.mean(losses_seen[-100:]))
    rows.append(f'| {i} | {loss:.{loss_digits}f} | '
                + ' | '.join(f'{v:.1f}' for v in cells) + f' | {ms:.0f} |')
    print(rows[-1], flush=True)
    evaluating += time.perf_counter() - began
  return rows


def synthetic_token_batch(rng: np.random.Generator, shape: Sequence[int],
                          max_tokens: int, text_dim: int
                          ) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
  """(token_ids and token_mask, the feature table's params) of random text
  features for a (d_steps, batch) batch: the step looks them up."""
  text = synthetic_text_batch(rng, shape, max_tokens, text_dim)
  flat = lambda x: x.reshape((-1,) + x.shape[len(shape):])
  table, ids = feature_table.from_features(
      flat(text['word_emb']), flat(text['sentence_emb']),
      flat(text['word_mask']))
  return ({'token_ids': ids.reshape(tuple(shape) + (max_tokens,)),
           'token_mask': text['word_mask']}, table.params)


def synthetic_text_batch(rng: np.random.Generator, shape: Sequence[int],
                         max_tokens: int, text_dim: int) -> Dict[str, np.ndarray]:
  """Random text features for a (d_steps, batch) batch, real-looking masks."""
  lengths = rng.integers(3, max_tokens + 1, size=tuple(shape))
  mask = np.arange(max_tokens) < lengths[..., None]
  return {
      'sentence_emb': rng.standard_normal(tuple(shape) + (text_dim,),
                                          dtype=np.float32),
      'word_emb': rng.standard_normal(tuple(shape) + (max_tokens, text_dim),
                                      dtype=np.float32),
      'word_mask': mask,
  }


def peak_memory_gib(device: jax.Device):
  """Peak bytes in use on `device` in GiB, or None where not reported."""
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except
    return None
  if not stats or 'peak_bytes_in_use' not in stats:
    return None
  return stats['peak_bytes_in_use'] / 2**30


def print_table(header: List[str], rows: List[List[str]]) -> None:
  """Prints a markdown table."""
  print('| ' + ' | '.join(header) + ' |')
  print('|' + '---|' * len(header))
  for row in rows:
    print('| ' + ' | '.join(str(x) for x in row) + ' |')
