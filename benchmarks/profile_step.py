"""Where a config's train step spends its time, part by part, on this machine.

  python -m benchmarks.profile_step --config=configs/shapes.py

Times, on the real text encoder of the config and the default's batch, each
part of the step as its own compiled function (median of --steps calls after
--warmup): the whole step as training runs it (token ids in, the text encoder
inside), the step with the text features looked up
(config.text_feature_table), the text encoder alone, G and D forward and
forward+backward, each contrastive term forward+backward on
realistic shapes, the spectral-norm power iterations, the two Adam updates
and the EMA; then the input pipeline (next batch) and the training loop's
host work around a step (sharding the batch, metrics kept on the device).

Parts are timed separately, so they do not add up to the step exactly (XLA
fuses across part boundaries inside the step); the table gives each as a
share of the whole step to show where the time goes.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import statistics
import tempfile
import time
from typing import Callable, Dict, List

import jax
import jax.numpy as jnp

from benchmarks import common
from xmcgan_jax import losses
from xmcgan_jax import models
from xmcgan_jax import parallel
from xmcgan_jax.data import pipeline
from xmcgan_jax.text import feature_table
from xmcgan_jax.text import tokenizer as tokenizer_lib
from xmcgan_jax.training import builders
from xmcgan_jax.training import train as train_lib
from xmcgan_jax.training import train_step as train_step_lib


def _median_ms(fn: Callable[[], object], steps: int, warmup: int) -> float:
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def _source_of(op_name: str) -> str:
  """'jit(step)/transpose(jvp(Generator))/block2/conv1/...' -> 'bwd
  Generator/block2'; an einsum keeps its spec; other loss arithmetic and
  glue (slices, gathers, casts) is one group."""
  direction = 'bwd' if 'transpose(' in op_name else 'fwd'
  path = re.sub(r'jit\(\w+\)/|transpose\(|jvp\(|vmap\(|\)', '', op_name)
  parts = [p for p in path.split('/') if p]
  if not parts:
    return f'{direction} (no op_name: layout copies, weight-gradient fusions)'
  if parts[0] in ('Generator', 'Discriminator'):
    # A submodule when more follows it, else a primitive of the top level.
    return f'{direction} {parts[0]}/{parts[1] if len(parts) > 2 else "top"}'
  if '->' in parts[0]:
    return f'{direction} einsum {parts[0]}'
  return f'{direction} other loss arithmetic and glue'


def trace_ops(call: Callable[[], object], hlo_text: str, steps: int
              ) -> List[List[str]]:
  """Rows (source, ms per step, share) of a profiler trace of `steps` calls.

  Each XLA op executed (a Perfetto trace event named like an instruction of
  the compiled step) is charged to the op_name metadata XLA kept for it,
  grouped by _source_of: which G or D block, which einsum, forward or
  backward.
  """
  metadata = {}
  for m in re.finditer(r'\n\s*(?:ROOT )?%?([\w.\-]+) = [^\n]*', hlo_text):
    found = re.search(r'op_name="([^"]*)"', m.group(0))
    metadata.setdefault(m.group(1), found.group(1) if found else '')
  jax.block_until_ready(call())
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      for _ in range(steps):
        jax.block_until_ready(call())
    path, = glob.glob(os.path.join(trace_dir, '**', '*.trace.json.gz'),
                      recursive=True)
    with gzip.open(path) as f:
      events = json.load(f)
  events = events['traceEvents'] if isinstance(events, dict) else events
  groups = collections.Counter()
  for e in events:
    if e.get('ph') == 'X' and e.get('name') in metadata:
      groups[_source_of(metadata[e['name']])] += e['dur']
  total = sum(groups.values())
  rows, rest = [], 0
  for name, us in groups.most_common():
    if us < total / 100:  # Below 1% each: one row.
      rest += us
    else:
      rows.append([name, f'{us / steps / 1e3:.1f}', f'{100 * us / total:.0f}%'])
  rows.append(['the rest (each under 1%)', f'{rest / steps / 1e3:.1f}',
               f'{100 * rest / total:.0f}%'])
  rows.append(['all XLA ops', f'{total / steps / 1e3:.1f}', '100%'])
  return rows


def _grad_of(fn: Callable[..., jax.Array], argnums=0):
  """A jitted forward+backward of a scalar function."""
  return jax.jit(jax.value_and_grad(fn, argnums=argnums))


def _parts(config, text, generator, discriminator, batch, state
           ) -> Dict[str, Callable[[], object]]:
  """name -> a no-argument call of one compiled part."""
  b = config.batch_size
  sub = {k: v[-1] for k, v in batch.items()}
  encode = jax.jit(text.features_fn())
  words, sentence = encode(text.params, sub['token_ids'], sub['token_mask'])
  mask = sub['token_mask'].astype(bool)
  z = jax.random.normal(jax.random.PRNGKey(1), (b, config.z_dim))
  d_vars = {'params': state.d_params, 'spectral_norm_stats': state.d_state}

  def g_forward(g_params):
    images, _ = generator.apply(
        {'params': g_params, 'batch_stats': state.g_state}, z, sentence,
        words, mask, train=True, mutable=['batch_stats'])
    return images

  g_forward_jit = jax.jit(g_forward)
  fake = g_forward_jit(state.g_params)
  images = jnp.concatenate([sub['image'], fake])
  sentences = jnp.concatenate([sentence, sentence])

  def d_forward(d_params):
    out, _ = discriminator.apply(
        {'params': d_params, 'spectral_norm_stats': state.d_state}, images,
        sentences, train=True, mutable=['spectral_norm_stats'])
    return out

  d_forward_jit = jax.jit(d_forward)
  out = d_forward_jit(state.d_params)
  d_eval = jax.jit(lambda v: discriminator.apply(v, images, sentences,
                                                 train=False))
  step_config = builders.build_step_config(config)
  gammas = step_config.loss.word_gammas
  regions, pooled, projection = (out.regions[:b], out.pooled[:b],
                                 out.projection[:b])
  nce = lambda a, c: losses.contrastive_loss(a, c, temperature=0.1)
  word = lambda r, w: losses.word_region_loss(r, w, mask, gamma1=gammas[0],
                                              gamma2=gammas[1],
                                              gamma3=gammas[2])
  g_tx, d_tx = builders.build_optimizers(config)
  g_adam = jax.jit(lambda g, s, p: g_tx.update(g, s, p))
  d_adam = jax.jit(lambda g, s, p: d_tx.update(g, s, p))
  ema = jax.jit(lambda e, p: train_step_lib.ema_update(e, p,
                                                       config.ema_decay))
  sentence_grad = _grad_of(lambda a: nce(a, projection))
  word_grad = _grad_of(lambda r: word(r, words))
  g_fb = _grad_of(lambda p: jnp.mean(g_forward(p)))
  d_fb = _grad_of(lambda p: jnp.mean(d_forward(p).logits))
  return {
      'text encoder (forward, one sub-batch)':
          lambda: encode(text.params, sub['token_ids'], sub['token_mask']),
      'G forward (train)': lambda: g_forward_jit(state.g_params),
      'G forward + backward': lambda: g_fb(state.g_params),
      'D forward on [real; fake] (train, SN update)':
          lambda: d_forward_jit(state.d_params),
      'D forward (eval: u refined, not stored)': lambda: d_eval(d_vars),
      'D forward + backward': lambda: d_fb(state.d_params),
      'sentence NCE forward + backward': lambda: sentence_grad(pooled),
      'image NCE (D features) forward + backward': lambda: sentence_grad(
          out.pooled[b:]),
      'word-region NCE forward + backward': lambda: word_grad(regions),
      'Adam, G': lambda: g_adam(state.g_params, state.g_opt_state,
                                state.g_params),
      'Adam, D': lambda: d_adam(state.d_params, state.d_opt_state,
                                state.d_params),
      'EMA of G': lambda: ema(state.ema_g_params, state.g_params),
  }


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default='configs/shapes.py')
  parser.add_argument('--steps', type=int, default=30)
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--pipeline_batches', type=int, default=200)
  parser.add_argument('--set', action='append', default=[],
                      help='FIELD=VALUE config override (repeatable), e.g. '
                      'g_width=16')
  parser.add_argument('--whole_step_only', action='store_true',
                      help='time only the whole step (study candidates)')
  parser.add_argument('--trace_ops', action='store_true',
                      help='instead: the text-feature-table step\'s XLA ops '
                      'from a profiler trace of --steps steps, summed by '
                      'source (G/D block, einsum, forward or backward)')
  args = parser.parse_args(argv)
  config = common.load_config(args.config)
  for item in args.set:
    field, value = item.split('=', 1)
    common.set_field(config, field, value)
  text = train_lib.load_text_encoder(config)
  mesh = parallel.make_mesh()
  generator, discriminator = models.build_models(config, text.width)
  g_tx, d_tx = builders.build_optimizers(config)
  state = train_step_lib.create_train_state(
      jax.random.PRNGKey(0), generator, discriminator, g_tx, d_tx, mesh)
  # A real batch of the config's input pipeline (data prepared on demand).
  tokenizer = tokenizer_lib.Tokenizer(text.vocab_path, text.lower_case)
  word_classes = train_lib.hard_negative_classes(config, tokenizer)
  step_config = builders.build_step_config(config, word_classes)
  token_step = train_step_lib.make_train_step(
      generator, discriminator, g_tx, d_tx, mesh, step_config,
      text_encoder=text.features_fn())

  data = pipeline.create_input_pipeline(config, tokenizer, 0, 1)
  batches = pipeline.as_numpy(data.train_dataset(
      config.batch_size, config.d_steps_per_g_step, 0))
  batch = next(batches)
  batch.pop('next_position')
  batch = {k: batch[k] for k in train_step_lib.BATCH_KEYS}
  frozen = {'text_encoder': parallel.replicate(text.params, mesh)}
  sharded = parallel.shard_batch(batch, mesh)

  # config.text_feature_table: every training caption's features, looked up
  # (the step without the encoder's arithmetic).
  table = feature_table.build(
      text.features_fn(), text.params,
      *train_lib.step_caption_tokens(data, word_classes))
  table_step, plain_table_step = (train_step_lib.make_train_step(
      generator, discriminator, g_tx, d_tx, mesh, c,
      text_encoder=feature_table.lookup_fn()) for c in (
          step_config, builders.build_step_config(config)))
  table_frozen = {'text_encoder': parallel.replicate(table.params, mesh)}
  holder = {'state': state}

  def run(step_fn, b, frozen_params=frozen):
    def call():
      holder['state'], metrics = step_fn(holder['state'], b, frozen_params)
      return metrics
    return call

  if args.trace_ops:
    hlo = table_step.jitted.lower(holder['state'], sharded,
                                  table_frozen).compile().as_text()
    rows = trace_ops(run(table_step, sharded, table_frozen), hlo, args.steps)
    print(f'config {args.config} {" ".join(args.set)}: XLA ops of the step '
          f'(text feature table), {args.steps} steps traced, '
          f'{jax.device_count()} {jax.default_backend()} device(s)')
    common.print_table(['source', 'ms per step', 'of the ops\' time'], rows)
    return
  rows: List[List[str]] = []
  step_ms = _median_ms(run(token_step, sharded), args.steps, args.warmup)
  rows.append(['whole step (token ids in, text encoder inside)',
               f'{step_ms:.1f}', '100%'])
  timed = {
      f'whole step, text feature table ({len(table.token_ids)} captions)':
          run(table_step, sharded, table_frozen)}
  if word_classes:  # What the hard negative captions cost.
    timed['whole step, text feature table, no hard negatives'] = run(
        plain_table_step, sharded, table_frozen)
  if not args.whole_step_only:
    # A copy: the steps above donate (delete) the state they are given.
    parts = _parts(config, text, generator, discriminator, batch,
                   jax.tree.map(jnp.copy, holder['state']))
    timed.update(parts)

  def host_work():
    b = parallel.shard_batch(batch, mesh)
    return b
  timed['host: shard the numpy batch onto the mesh'] = host_work

  def pipeline_next():
    nxt = next(batches)
    return nxt['image']
  for name, fn in timed.items():
    n = args.pipeline_batches if name.startswith('host') else args.steps
    ms = _median_ms(fn, n, args.warmup)
    rows.append([name, f'{ms:.1f}', f'{100 * ms / step_ms:.0f}%'])
  # The pipeline: mean over many batches (its prefetch hides some of it).
  start = time.perf_counter()
  for _ in range(args.pipeline_batches):
    pipeline_next()
  ms = 1e3 * (time.perf_counter() - start) / args.pipeline_batches
  rows.append(['input pipeline: next batch (mean, prefetching)', f'{ms:.1f}',
               f'{100 * ms / step_ms:.0f}%'])
  print(f'config {args.config} {" ".join(args.set)}: batch '
        f'{config.batch_size} x '
        f'{config.d_steps_per_g_step} sub-batches, {config.image_size}px, '
        f'gf {config.g_width} df {config.d_width}, text encoder '
        f'{config.text_encoder}, {jax.device_count()} {jax.default_backend()} '
        f'device(s), jax {jax.__version__}')
  common.print_table(['part', 'ms (median)', 'of the whole step'], rows)


if __name__ == '__main__':
  main()
