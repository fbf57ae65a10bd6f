"""Images per second of the tf.data training pipeline on COCO-like JPEGs.

  python -m benchmarks.input_pipeline [--image_size=128] [--num_images=512]

Writes 640x480 JPEGs with one-sentence narratives in the LN-COCO manual layout
to a temporary directory, builds the dataset with our TFDS builder, and times
the real training pipeline (decode, resize, flip, caption pick, tokenize,
batch) after a warm-up. Prints a one-row table.
"""

import argparse
import json
import os
import tempfile
import time

import ml_collections
import numpy as np
import tensorflow as tf

from benchmarks import common
from xmcgan_jax.data import pipeline
from xmcgan_jax.text import encoder as text_encoder
from xmcgan_jax.text import tokenizer as tokenizer_lib


def write_images(manual_dir: str, count: int, seed: int = 0) -> None:
  """count noisy-but-smooth 640x480 JPEGs and their narratives (LN-COCO)."""
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.join(manual_dir, 'train2017'), exist_ok=True)
  os.makedirs(os.path.join(manual_dir, 'val2017'), exist_ok=True)
  lines = []
  for i in range(count):
    low = rng.integers(0, 256, size=(30, 40, 3)).astype(np.float32)
    image = tf.image.resize(low[None], (480, 640))[0]
    image += rng.normal(0, 12, size=(480, 640, 3))  # Photo-like entropy.
    data = tf.io.encode_jpeg(tf.cast(tf.clip_by_value(image, 0, 255),
                                     tf.uint8), quality=90).numpy()
    folders = ('train2017', 'val2017') if i == 0 else ('train2017',)
    for folder in folders:
      with open(os.path.join(manual_dir, folder, f'{i:012d}.jpg'), 'wb') as f:
        f.write(data)
    lines.append(json.dumps({
        'dataset_id': 'mscoco_train2017', 'image_id': str(i),
        'annotator_id': 1, 'caption': f'In this picture we can see object {i} '
                                      'on a table near a window.'}))
  with open(os.path.join(manual_dir, 'coco_train_localized_narratives.jsonl'),
            'w') as f:
    f.write('\n'.join(lines) + '\n')
  with open(os.path.join(manual_dir, 'coco_val_localized_narratives.jsonl'),
            'w') as f:
    f.write(lines[0] + '\n')


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--image_size', type=int, default=128)
  parser.add_argument('--num_images', type=int, default=512)
  parser.add_argument('--batch', type=int, default=32,
                      help='per-process batch per sub-step')
  parser.add_argument('--batches', type=int, default=40)
  parser.add_argument('--text_encoder', default='all-MiniLM-L6-v2')
  args = parser.parse_args()
  workdir = tempfile.mkdtemp(prefix='xmcgan_input_bench_')
  manual = os.path.join(workdir, 'manual')
  write_images(manual, args.num_images)
  config = ml_collections.ConfigDict(dict(
      dataset='ln_coco', data_dir=os.path.join(workdir, 'tfds'),
      manual_dir=manual, image_size=args.image_size, max_tokens=64, seed=0,
      shuffle_buffer=1000, random_flip=True, mirror_pairs=False,
      shape_pairs=False, shapes_grid=3,
      shapes_train_size=0, shapes_eval_size=0))
  vocab = os.path.join(
      text_encoder.resolve_text_encoder_dir(args.text_encoder), 'vocab.txt')
  p = pipeline.create_input_pipeline(config, tokenizer_lib.Tokenizer(vocab))
  batches = pipeline.as_numpy(p.train_dataset(args.batch, 2))
  for _ in range(5):  # Warm-up: fill the prefetch buffers.
    next(batches)
  start = time.perf_counter()
  for _ in range(args.batches):
    next(batches)
  seconds = time.perf_counter() - start
  images = args.batches * args.batch * 2
  common.print_table(
      ['pipeline', 'px', 'source', 'CPU cores', 'images/s'],
      [['train (decode, resize, flip, tokenize)', args.image_size,
        '640x480 JPEG', os.cpu_count(), f'{images / seconds:.0f}']])


if __name__ == '__main__':
  main()
