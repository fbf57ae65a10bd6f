"""Images per second of EMA-generator sampling (G in eval mode).

  python -m benchmarks.sample --configs=tiny --batch=16
  python -m benchmarks.sample --configs=coco,coco_128 --batch=256

Random weights of the config's shapes; with --bert a BERT-base-shaped text
encoder runs on token ids in the same jitted call (captions in, images out).
"""

import argparse
import json
import statistics
import time

import jax
import numpy as np

from benchmarks import common
from benchmarks import train_step as train_step_bench
from xmcgan_jax import models
from xmcgan_jax.sampling import generate


def run(name: str, args) -> list:
  config = common.load_config(name)
  if args.image_size:
    config.image_size = args.image_size
  if args.dtype:
    config.dtype = args.dtype
  generator, _ = models.build_models(config, args.text_dim)
  rng = np.random.default_rng(0)
  batch = common.synthetic_text_batch(rng, (args.batch,), config.max_tokens,
                                      args.text_dim)
  z = generate.noise(0, args.batch, config.z_dim)
  variables = generator.init(jax.random.PRNGKey(0), z, batch['sentence_emb'],
                             batch['word_emb'], batch['word_mask'],
                             train=False)
  if args.bert:
    encoder = train_step_bench._bert(config, args.text_dim)  # pylint: disable=protected-access
    fn = generate.make_generate_fn(generator, encoder.features_fn())
    ids = rng.integers(1000, 20000, size=(args.batch, config.max_tokens))
    inputs = (variables['params'], variables['batch_stats'], encoder.params,
              ids.astype(np.int32), batch['word_mask'], z)
  else:
    fn = jax.jit(lambda p, s, e, w, m, z: generator.apply(
        {'params': p, 'batch_stats': s}, z, e, w, m, train=False))
    inputs = (variables['params'], variables['batch_stats'],
              batch['sentence_emb'], batch['word_emb'], batch['word_mask'], z)
  inputs = jax.device_put(inputs)
  start = time.perf_counter()
  jax.block_until_ready(fn(*inputs))
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(args.steps):
    start = time.perf_counter()
    jax.block_until_ready(fn(*inputs))
    times.append(time.perf_counter() - start)
  median = statistics.median(times)
  return [name, config.image_size, config.dtype,
          f'{jax.device_count()}x {jax.devices()[0].device_kind}',
          args.batch, 'bert-in-call' if args.bert else 'features',
          f'{1e3 * median:.1f}', f'{args.batch / median:.0f}',
          f'{compile_s:.0f}', jax.__version__]


HEADER = ['config', 'px', 'dtype', 'devices', 'batch', 'text', 'ms/batch',
          'images/s', 'compile s', 'jax']


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--configs', default='tiny')
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--image_size', type=int, default=0)
  parser.add_argument('--dtype', default='')
  parser.add_argument('--text_dim', type=int, default=768)
  parser.add_argument('--bert', action='store_true')
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--json_out', default='',
                      help='write the rows here, each as soon as it exists')
  args = parser.parse_args()
  rows = []
  for name in args.configs.split(','):
    rows.append(run(name, args))
    if args.json_out:
      with open(args.json_out, 'w') as f:
        json.dump([dict(zip(HEADER, row)) for row in rows], f, indent=1)
  common.print_table(HEADER, rows)


if __name__ == '__main__':
  main()
