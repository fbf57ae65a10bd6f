"""Times the real compiled train step of a config on synthetic inputs.

  python -m benchmarks.train_step --configs=tiny --steps=5
  python -m benchmarks.train_step --configs=coco,coco_128 --per_device_batch=32
  python -m benchmarks.train_step --configs=coco_128,coco --per_device_batch=32 \
      --bert --flops_only --json_out=benchmarks/flops.json   # the committed FLOPs
  python -m benchmarks.train_step --configs=coco --bert --max_batch=64,128,256

Prints one markdown table row per config: device, batch, median step time,
real images/s (every sub-batch's real images count), model TFLOP per step,
MFU and peak device memory. Model FLOPs come from the CPU backend's XLA cost
analysis of the same step (GPU cost analysis omits cuDNN convolutions: it
reported 0.24 TFLOP for a 62 TFLOP step on an H100); MFU divides them by the measured step time and the
peak (989 TFLOP/s bf16 dense on H100/H200).
"""

import argparse
import json
import statistics
import time
from typing import Callable, Dict, List, Optional

import jax
import numpy as np
from jax.sharding import NamedSharding

from benchmarks import common
from xmcgan_jax import models
from xmcgan_jax import parallel
from xmcgan_jax.text import encoder as text_encoder_lib
from xmcgan_jax.text import feature_table
from xmcgan_jax.training import builders
from xmcgan_jax.training import train_step as train_step_lib

PEAK_TFLOPS = {'gpu': 989.0}


def _bert(config, text_dim: int):
  """A random BERT-base-shaped encoder of width text_dim (timing only)."""
  bert = text_encoder_lib.BertConfig(
      hidden_size=text_dim, intermediate_size=4 * text_dim,
      num_attention_heads=max(1, text_dim // 64))
  module = text_encoder_lib.BertEncoder(bert, dtype=np.dtype(
      'float32') if config.dtype == 'float32' else jax.numpy.bfloat16)
  params = module.init(jax.random.PRNGKey(0),
                       np.zeros((1, config.max_tokens), np.int32),
                       np.ones((1, config.max_tokens), bool))['params']
  return text_encoder_lib.TextEncoder(module, params, '', True)


def _make_step(config, text_dim: int, mesh, with_bert: bool):
  """The real train step of a config and what it was built from."""
  generator, discriminator = models.build_models(config, text_dim)
  g_tx, d_tx = builders.build_optimizers(config)
  encoder = _bert(config, text_dim) if with_bert else None
  step = train_step_lib.make_train_step(
      generator, discriminator, g_tx, d_tx, mesh,
      builders.build_step_config(config),
      text_encoder=(encoder.features_fn() if encoder else
                    feature_table.lookup_fn()))
  init = lambda mesh=None: train_step_lib.create_train_state(
      jax.random.PRNGKey(config.seed), generator, discriminator, g_tx, d_tx,
      mesh)
  return step, init, encoder


def _synthetic_batch(config, text_dim: int, batch_size: int, encoder):
  """(a random (d_steps, batch_size, ...) numpy batch, the step's text
  params): random token ids for an encoder in the step, else token rows of
  a table of random text features."""
  rng = np.random.default_rng(0)
  shape = (config.d_steps_per_g_step, batch_size)
  batch, text_params = common.synthetic_token_batch(
      rng, shape, config.max_tokens, text_dim)
  if encoder:
    batch['token_ids'] = rng.integers(1000, 20000, size=shape + (
        config.max_tokens,)).astype(np.int32)
    text_params = encoder.params
  size = config.image_size
  batch['image'] = rng.random(shape + (size, size, 3), dtype=np.float32)
  return batch, text_params


def build(config, text_dim: int, mesh, with_bert: bool = False):
  """The step function, initial state, synthetic global batch, frozen params.

  With `with_bert` the step runs a BERT-base-shaped text encoder on token
  ids, as training does; otherwise it looks random text features up
  (config.text_feature_table's path).
  """
  step, init, encoder = _make_step(config, text_dim, mesh, with_bert)
  state = init(mesh)
  batch, text_params = _synthetic_batch(config, text_dim, config.batch_size,
                                        encoder)
  frozen = {'text_encoder': parallel.replicate(text_params, mesh)}
  return step, state, parallel.shard_batch(batch, mesh), frozen


def model_tflop(config, text_dim: int, n_devices: int,
                with_bert: bool = False) -> Dict[str, float]:
  """TFLOP of one step (all devices) and GiB of one device's buffers, from
  the CPU backend's cost and memory analyses of the per-device program,
  with the seconds that program took to lower and compile on the CPU.

  The memory is XLA's buffer assignment (arguments + outputs + temporaries
  - donated aliases) on the CPU: an estimate of the device footprint that
  shows how activations scale with the batch and with remat.
  """
  cpu = jax.devices('cpu')[:1]
  mesh = parallel.make_mesh(cpu)
  per_device = config.batch_size // n_devices
  config = config.copy_and_resolve_references()
  config.batch_size = per_device
  step, init, encoder = _make_step(config, text_dim, mesh, with_bert)
  replicated = NamedSharding(mesh, parallel.REPLICATED)
  sharded = NamedSharding(mesh, parallel.BATCH_SPEC)
  abstract = lambda tree, sharding: jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      tree)
  state = abstract(jax.eval_shape(init), replicated)
  batch, text_params = _synthetic_batch(config, text_dim, per_device, encoder)
  batch = abstract(batch, sharded)
  frozen = {'text_encoder': abstract(text_params, replicated)}
  compiled, lower_s, compile_s = lower_and_compile(step, state, batch, frozen)
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  memory = compiled.memory_analysis()
  gib = (memory.argument_size_in_bytes + memory.output_size_in_bytes +
         memory.temp_size_in_bytes - memory.alias_size_in_bytes) / 2**30
  return {'tflop': float(cost['flops']) * n_devices / 1e12, 'xla_gib': gib,
          'cpu_lower_s': lower_s, 'cpu_compile_s': compile_s}


def lower_and_compile(step, state, batch, frozen):
  """(compiled step, seconds to trace and lower, seconds for XLA to compile).

  Tracing + lowering is JAX's Python side (grows with the program's op
  count); compiling is XLA's (optimisation passes, autotuning on GPU).
  """
  start = time.perf_counter()
  lowered = step.jitted.lower(state, batch, frozen)
  lowered_at = time.perf_counter()
  compiled = lowered.compile()
  return compiled, lowered_at - start, time.perf_counter() - lowered_at


def _configure(name: str, args):
  config = common.load_config(name)
  n = jax.device_count()
  if args.per_device_batch:
    config.batch_size = args.per_device_batch * n
  if args.image_size:
    config.image_size = args.image_size
  if args.dtype:
    config.dtype = args.dtype
  config.remat = args.remat
  return config, n


def flops_from_json(record: dict, path: str) -> Optional[dict]:
  """Model FLOPs for `record` from a JSON of `--flops_only` records.

  Looks up the record of the same config, image size and text encoder and
  scales its FLOPs per real image to `record`'s images per step (exact when
  the per-device batch is the same; the contrastive terms grow with the
  batch squared, a small share). Returns {'tflop', 'flops_from'} or None.
  """
  with open(path) as f:
    known = json.load(f)
  for other in known:
    if (other['config'], other['px'], other['text_encoder']) == (
        record['config'], record['px'], record['text_encoder']) and (
            other.get('tflop')):
      per_image = other['tflop'] / other['images_per_step']
      return {'tflop': per_image * record['images_per_step'],
              'flops_from': f'{path} (batch {other["batch"]})'}
  return None


def _base_record(name: str, config, n: int, args) -> dict:
  return {'config': name + (' +remat' if args.remat else ''),
          'px': config.image_size, 'dtype': config.dtype,
          'devices': f'{n}x {jax.devices()[0].device_kind}',
          'batch': f'{config.batch_size // n}x{config.d_steps_per_g_step}',
          'images_per_step': config.batch_size * config.d_steps_per_g_step,
          'n_devices': n, 'platform': jax.devices()[0].platform,
          'jax': jax.__version__,
          'text_encoder': 'bert-in-step' if args.bert else 'features',
          'remat': args.remat}


def run(name: str, args,
        save: Callable[[dict], None] = lambda record: None) -> dict:
  """Times one config; returns a result record.

  `save(record)` is called after the compile and again at the end, so that a
  process stopped while timing keeps its compile time.
  """
  config, n = _configure(name, args)
  record = _base_record(name, config, n, args)
  if args.flops_only:
    record.update(model_tflop(config, args.text_dim, n, args.bert))
    save(record)
    return record
  mesh = parallel.make_mesh()
  step, state, batch, frozen = build(config, args.text_dim, mesh, args.bert)
  compiled, record['lower_s'], record['compile_s'] = lower_and_compile(
      step, state, batch, frozen)
  save(record)
  for _ in range(args.warmup):
    state, metrics = compiled(state, batch, frozen)
  jax.block_until_ready(state)
  times = []
  for _ in range(args.steps):
    start = time.perf_counter()
    state, metrics = compiled(state, batch, frozen)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  record['step_s'] = statistics.median(times)
  record['peak_gib'] = common.peak_memory_gib(jax.devices()[0])
  if args.flops_json:
    record.update(flops_from_json(record, args.flops_json) or {})
  elif args.flops:
    record.update(model_tflop(config, args.text_dim, n, args.bert))
  save(record)
  return record


def largest_batch(name: str, args, per_device_batches: List[int],
                  save: Callable[[dict], None]) -> dict:
  """The largest per-device batch of `per_device_batches` whose step runs.

  Tries them in increasing order, each compiled and run for one step, and
  stops at the first that does not fit in device memory (XLA's
  RESOURCE_EXHAUSTED). `save(record)` after every try.
  """
  record = None
  for per_device in sorted(per_device_batches):
    args.per_device_batch = per_device
    config, n = _configure(name, args)
    if record is None:
      record = _base_record(name, config, n, args)
      record.update({'fits': [], 'does_not_fit': None})
    try:
      mesh = parallel.make_mesh()
      step, state, batch, frozen = build(config, args.text_dim, mesh,
                                         args.bert)
      compiled, _, compile_s = lower_and_compile(step, state, batch, frozen)
      state, metrics = compiled(state, batch, frozen)
      jax.block_until_ready(metrics)
    except Exception as e:  # pylint: disable=broad-except
      if 'RESOURCE_EXHAUSTED' not in str(e) and 'out of memory' not in str(
          e).lower():
        raise
      record['does_not_fit'] = per_device
      save(record)
      break
    record['fits'].append(per_device)
    record['batch'] = f'{per_device}x{config.d_steps_per_g_step}'
    record['compile_s'] = compile_s
    record['peak_gib'] = common.peak_memory_gib(jax.devices()[0])
    save(record)
    del step, state, batch, frozen, compiled, metrics
  return record


def table_row(record: dict) -> list:
  """Formats a record (timing and/or FLOPs) as a table row."""
  step_s, tflop = record.get('step_s'), record.get('tflop')
  peak = PEAK_TFLOPS.get(record['platform'])
  mfu = (f'{100 * tflop / step_s / record["n_devices"] / peak:.1f}%'
         if step_s and tflop and peak else '-')
  fmt = lambda v, f: f.format(v) if v is not None else '-'
  return [record['config'], record['px'], record['dtype'], record['devices'],
          record['batch'], record['text_encoder'],
          fmt(step_s and 1e3 * step_s, '{:.1f}'),
          fmt(step_s and record['images_per_step'] / step_s, '{:.0f}'),
          fmt(tflop, '{:.3g}'),
          fmt(tflop and 1e3 * tflop / record['images_per_step'], '{:.3g}'),
          mfu, fmt(record.get('peak_gib'), '{:.1f}'),
          fmt(record.get('xla_gib'), '{:.1f}'),
          fmt(record.get('lower_s'), '{:.1f}'),
          fmt(record.get('compile_s'), '{:.1f}'),
          fmt(record.get('cpu_lower_s'), '{:.1f}'),
          fmt(record.get('cpu_compile_s'), '{:.1f}')]


# GFLOP/img: model FLOPs per real image (every sub-batch's real images).
# lower/compile s: this device's trace+lower and XLA compile of the step;
# CPU lower/compile s: the same for the cost analysis' CPU program.
HEADER = ['config', 'px', 'dtype', 'devices', 'batch/dev x sub', 'text',
          'step ms', 'real img/s', 'TFLOP/step', 'GFLOP/img', 'MFU',
          'peak GiB', 'XLA GiB/dev', 'lower s', 'compile s', 'CPU lower s',
          'CPU compile s']


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--configs', default='tiny',
                      help='comma-separated config names or paths')
  parser.add_argument('--per_device_batch', type=int, default=0,
                      help='override: images per device per sub-step')
  parser.add_argument('--image_size', type=int, default=0)
  parser.add_argument('--dtype', default='')
  parser.add_argument('--text_dim', type=int, default=768,
                      help='E of the text features / encoder')
  parser.add_argument('--bert', action='store_true',
                      help='run a BERT-base-shaped encoder inside the step')
  parser.add_argument('--remat', action='store_true',
                      help='config.remat: recompute G/D block activations')
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--no_flops', dest='flops', action='store_false',
                      help='skip the CPU cost analysis (slow at 256px)')
  parser.add_argument('--flops_only', action='store_true',
                      help='only the CPU cost analysis (run it beside a GPU '
                      'timing process)')
  parser.add_argument('--flops_json', default='',
                      help='take model FLOPs from these --flops_only records '
                      '(no CPU compile; benchmarks/flops.json)')
  parser.add_argument('--max_batch', default='',
                      help='comma-separated per-device batches: report the '
                      'largest whose step runs (first config only)')
  parser.add_argument('--json_out', default='',
                      help='write records here, each as soon as it exists')
  parser.add_argument('--combine', nargs='*', default=None,
                      help='JSON files of timings and FLOPs: print the table')
  args = parser.parse_args()
  if args.combine is not None:
    records = {}
    for path in args.combine:
      for r in json.load(open(path)):
        key = (r['config'], r['px'], r['batch'], r['text_encoder'])
        merged = records.setdefault(key, {})
        merged.update({k: v for k, v in r.items()
                       if v is not None and not (k in ('platform', 'devices',
                                                       'n_devices') and
                                                 r.get('tflop') and
                                                 'step_s' not in r)})
    common.print_table(HEADER, [table_row(r) for r in records.values()])
    return
  done: List[dict] = []

  def save(record: dict) -> None:
    if args.json_out:
      with open(args.json_out, 'w') as f:
        json.dump(done + [record], f, indent=1)

  names = args.configs.split(',')
  if args.max_batch:
    record = largest_batch(names[0], args,
                           [int(b) for b in args.max_batch.split(',')], save)
    print(f'{record["config"]} {record["px"]}px on {record["devices"]}: '
          f'per-device batches that ran {record["fits"]}, first that did '
          f'not fit {record["does_not_fit"]}')
    return
  for name in names:
    done.append(run(name, args, save))
  common.print_table(HEADER, [table_row(r) for r in done])


if __name__ == '__main__':
  main()
