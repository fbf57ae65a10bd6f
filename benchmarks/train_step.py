"""Times the real compiled train step of a config on synthetic inputs.

  python -m benchmarks.train_step --configs=tiny --steps=5
  python -m benchmarks.train_step --configs=coco,coco_128 --per_device_batch=32

Prints one markdown table row per config: device, batch, median step time,
real images/s (every sub-batch's real images count), model TFLOP per step,
MFU and peak device memory. Model FLOPs come from the CPU backend's XLA cost
analysis of the same step (GPU cost analysis omits cuDNN convolutions; see
DESIGN.md section 6); MFU divides them by the measured step time and the
peak (989 TFLOP/s bf16 dense on H100/H200).
"""

import argparse
import statistics
import time

import jax
import numpy as np
from jax.sharding import NamedSharding

from benchmarks import common
from xmcgan_jax import builders
from xmcgan_jax import parallel
from xmcgan_jax import train_step as train_step_lib

PEAK_TFLOPS = {'gpu': 989.0}


def build(config, text_dim: int, mesh):
  """The step function, initial state and a synthetic global batch."""
  generator, discriminator = builders.build_models(config, text_dim)
  g_tx, d_tx = builders.build_optimizers(config)
  step = train_step_lib.make_train_step(
      generator, discriminator, g_tx, d_tx, mesh,
      builders.build_step_config(config))
  state = train_step_lib.create_train_state(
      jax.random.PRNGKey(config.seed), generator, discriminator, g_tx, d_tx,
      mesh)
  rng = np.random.default_rng(0)
  shape = (config.d_steps_per_g_step, config.batch_size)
  batch = common.synthetic_text_batch(rng, shape, config.max_tokens, text_dim)
  size = config.image_size
  batch['image'] = rng.random(shape + (size, size, 3), dtype=np.float32)
  return step, state, parallel.shard_batch(batch, mesh)


def model_tflop(config, text_dim: int, n_devices: int) -> float:
  """TFLOP of one step from the CPU backend's cost analysis (all devices)."""
  cpu = jax.devices('cpu')[:1]
  mesh = parallel.make_mesh(cpu)
  per_device = config.batch_size // n_devices
  config = config.copy_and_resolve_references()
  config.batch_size = per_device
  generator, discriminator = builders.build_models(config, text_dim)
  g_tx, d_tx = builders.build_optimizers(config)
  step = train_step_lib.make_train_step(
      generator, discriminator, g_tx, d_tx, mesh,
      builders.build_step_config(config))
  state = jax.eval_shape(lambda: train_step_lib.create_train_state(
      jax.random.PRNGKey(0), generator, discriminator, g_tx, d_tx))
  replicated = NamedSharding(mesh, parallel.REPLICATED)
  state = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
      state)
  shape = (config.d_steps_per_g_step, per_device)
  batch = common.synthetic_text_batch(np.random.default_rng(0), shape,
                                      config.max_tokens, text_dim)
  size = config.image_size
  batch['image'] = np.zeros(shape + (size, size, 3), np.float32)
  sharded = NamedSharding(mesh, parallel.BATCH_SPEC)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharded)
           for k, v in batch.items()}
  compiled = step.jitted.lower(state, batch, {}).compile()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost['flops']) * n_devices / 1e12


def run(name: str, args) -> list:
  config = common.load_config(name)
  n = jax.device_count()
  if args.per_device_batch:
    config.batch_size = args.per_device_batch * n
  if args.image_size:
    config.image_size = args.image_size
  if args.dtype:
    config.dtype = args.dtype
  mesh = parallel.make_mesh()
  step, state, batch = build(config, args.text_dim, mesh)
  compile_start = time.perf_counter()
  state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - compile_start
  for _ in range(args.warmup):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(args.steps):
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  median = statistics.median(times)
  images = config.batch_size * config.d_steps_per_g_step
  tflop = model_tflop(config, args.text_dim, n) if args.flops else None
  platform = jax.devices()[0].platform
  peak = PEAK_TFLOPS.get(platform)
  mfu = (f'{100 * tflop / median / n / peak:.1f}%'
         if tflop is not None and peak else '-')
  memory = common.peak_memory_gib(jax.devices()[0])
  return [name, config.image_size, config.dtype,
          f'{n}x {jax.devices()[0].device_kind}',
          f'{config.batch_size // n}x{config.d_steps_per_g_step}',
          f'{1e3 * median:.1f}', f'{images / median:.1f}',
          f'{tflop:.3g}' if tflop is not None else '-', mfu,
          f'{memory:.1f}' if memory is not None else '-', f'{compile_s:.0f}']


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--configs', default='tiny',
                      help='comma-separated config names or paths')
  parser.add_argument('--per_device_batch', type=int, default=0,
                      help='override: images per device per sub-step')
  parser.add_argument('--image_size', type=int, default=0)
  parser.add_argument('--dtype', default='')
  parser.add_argument('--text_dim', type=int, default=768,
                      help='E of the synthetic text features')
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--no_flops', dest='flops', action='store_false',
                      help='skip the CPU cost analysis (slow at 256px)')
  args = parser.parse_args()
  rows = [run(name, args) for name in args.configs.split(',')]
  common.print_table(
      ['config', 'px', 'dtype', 'devices', 'batch/dev x sub', 'step ms',
       'real img/s', 'TFLOP/step', 'MFU', 'peak GiB', 'compile s'], rows)


if __name__ == '__main__':
  main()
