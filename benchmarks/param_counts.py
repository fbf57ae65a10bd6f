"""Prints the parameter counts of G and D at gf = df = 96 (paper COCO sizes).

  python -m benchmarks.param_counts [--text_dim=768] [--max_tokens=17]

Shapes are traced with jax.eval_shape, so nothing is allocated.
"""

import argparse
from typing import Dict

import jax
import jax.numpy as jnp

from xmcgan_jax.models import Discriminator
from xmcgan_jax.models import Generator


def count_parameters(image_size: int, width: int = 96, z_dim: int = 128,
                     text_dim: int = 768, max_tokens: int = 17
                     ) -> Dict[str, int]:
  """Parameter counts {'generator': n, 'discriminator': n} for one size.

  Args:
    image_size: 64, 128 or 256.
    width: gf = df.
    z_dim: noise size.
    text_dim: text encoder width E.
    max_tokens: caption length T.

  Returns:
    The number of trainable parameters of each network.
  """
  g = Generator(image_size=image_size, base_width=width, z_dim=z_dim,
                text_dim=text_dim, max_tokens=max_tokens)
  d = Discriminator(image_size=image_size, base_width=width, text_dim=text_dim)
  z = jnp.zeros((1, z_dim))
  sentence = jnp.zeros((1, text_dim))
  words = jnp.zeros((1, max_tokens, text_dim))
  mask = jnp.ones((1, max_tokens), bool)
  images = jnp.zeros((1, image_size, image_size, 3))
  g_vars = jax.eval_shape(lambda: g.init(jax.random.key(0), z, sentence, words,
                                         mask, train=False))
  d_vars = jax.eval_shape(lambda: d.init(jax.random.key(0), images, sentence,
                                         train=False))
  size = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
  return {'generator': size(g_vars['params']),
          'discriminator': size(d_vars['params'])}


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--width', type=int, default=96)
  parser.add_argument('--text_dim', type=int, default=768)
  parser.add_argument('--max_tokens', type=int, default=17)
  args = parser.parse_args()
  print(f'gf = df = {args.width}, E = {args.text_dim}, T = {args.max_tokens}')
  print('| image size | G params | D params |')
  print('|---|---|---|')
  for size in (64, 128, 256):
    n = count_parameters(size, args.width, text_dim=args.text_dim,
                         max_tokens=args.max_tokens)
    print(f'| {size} | {n["generator"] / 1e6:.2f} M | '
          f'{n["discriminator"] / 1e6:.2f} M |')


if __name__ == '__main__':
  main()
