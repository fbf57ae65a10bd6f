"""Which caption attributes a Shapes run's D tells apart, word class by class.

  python -m benchmarks.d_attributes --workdir=workdirs/shapes

G can only learn what D rewards. For the first --count validation images of
the run's Shapes task, each caption is swapped one word at a time within
each word class (shape, colour, size, row, column: data/shapes.WORD_CLASSES,
every other word of the class), and D of the newest checkpoint scores the
image against the true caption and against each swap with the sentence
term's score, cos(D's pooled image feature, D's projection of the caption).
The table gives, per class, how often D ranks the true caption above the
swap: on the real images, and on raw G's images of the same captions (one
noise seed). 50% is chance; a class D does not tell apart on real images
gives G no reason to draw it.
"""

import argparse
import functools
from typing import Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from xmcgan_jax import models
from xmcgan_jax import run_dir
from xmcgan_jax.data import shapes
from xmcgan_jax.eval import shapes_oracle
from xmcgan_jax.sampling import sample


def swaps(caption: str, words: Sequence[str]) -> List[str]:
  """The caption with its first word of the class replaced by each other
  word of the class, in the class's order; [] without a word of the class."""
  tokens = caption.split(' ')
  at = next((i for i, t in enumerate(tokens) if t in words), None)
  if at is None:
    return []
  return [' '.join(tokens[:at] + [w] + tokens[at + 1:])
          for w in words if w != tokens[at]]


def restore_discriminator(sampler: sample.Sampler, text_width: int):
  """(D module, {'params', 'spectral_norm_stats'}) of the checkpoint the
  sampler's G came from."""
  _, discriminator = models.build_models(sampler.config, text_width)
  size = sampler.config.image_size
  shapes_of = jax.eval_shape(lambda: discriminator.init(
      jax.random.PRNGKey(0), jnp.zeros((2, size, size, 3)),
      jnp.zeros((2, text_width)), train=False))
  weights = sampler.restore_fields(sample.on_one_device(
      {'d_params': shapes_of['params'],
       'd_state': shapes_of['spectral_norm_stats']}))
  return discriminator, {'params': weights['d_params'],
                         'spectral_norm_stats': weights['d_state']}


# D is a static argument (Flax modules hash by their fields) and the weights
# are traced, so a probe that scores its D every few hundred steps compiles
# this once instead of once per call with the weights baked in.
@functools.partial(jax.jit, static_argnums=0)
def _scores(discriminator, variables, x, s, h):
  """(true (n,), swapped (n, K)) cosines of one batch; see sentence_scores."""
  out = discriminator.apply(variables, x, s, train=False, hard_sentence_emb=h)
  unit = lambda v: v / jnp.linalg.norm(v, axis=-1, keepdims=True)
  pooled = unit(out.pooled.astype(jnp.float32))
  true = jnp.sum(pooled * unit(out.projection.astype(jnp.float32)), -1)
  other = jnp.einsum('nc,nkc->nk', pooled,
                     unit(out.hard_projection.astype(jnp.float32)))
  return true, other


def sentence_scores(discriminator, variables, images: np.ndarray,
                    sentence: np.ndarray, swapped: np.ndarray,
                    batch: int = 100) -> Tuple[np.ndarray, np.ndarray]:
  """D's sentence-term scores of images against their captions and swaps.

  The score is the sentence NCE's cosine between D's pooled image feature and
  D's projection of the caption; the swaps go through D's hard-negative input
  (the shared text head, one call).

  Args:
    discriminator, variables: D and its weights.
    images: (N, S, S, 3) uint8.
    sentence: (N, E) the captions' sentence features.
    swapped: (N, K, E) the swaps' sentence features.
    batch: images per D call.

  Returns:
    (true (N,), swapped (N, K)) float32 cosines.
  """
  parts = [jax.device_get(_scores(
      discriminator, variables, images[i:i + batch].astype(np.float32) / 255.0,
      sentence[i:i + batch], swapped[i:i + batch]))
           for i in range(0, len(images), batch)]
  return (np.concatenate([p[0] for p in parts]),
          np.concatenate([p[1] for p in parts]))


def table(rows: Dict[str, Tuple[int, float, float]]) -> str:
  lines = ['| word class | swaps per caption | D prefers the true caption, '
           'real images % | the same, raw G images % |', '|---|---|---|---|']
  for name, (count, real, fake) in rows.items():
    lines.append(f'| {name} | {count} | {100 * real:.1f} | {100 * fake:.1f} |')
  return '\n'.join(lines) + '\n'


def main(argv: Optional[Sequence[str]] = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--count', type=int, default=1000,
                      help='validation images')
  args = parser.parse_args(argv)
  workdir = run_dir.resolve(args.workdir)
  sampler = sample.Sampler.from_workdir(workdir)
  c = sampler.config
  if c.dataset != 'shapes':
    raise SystemExit(f'{args.workdir} trained on {c.dataset!r}, not Shapes.')
  real, _, captions = shapes_oracle.validation_set(
      min(args.count, c.shapes_eval_size), c.image_size, grid=c.shapes_grid,
      max_objects=c.shapes_max_objects)
  fake = sampler.sample(captions, seed=0, ema=False)
  _, sentence = sampler.text_features(captions)
  discriminator, variables = restore_discriminator(sampler,
                                                   sentence.shape[-1])
  rows = {}
  for name, words in zip(shapes.WORD_CLASS_NAMES, shapes.WORD_CLASSES):
    words = words.split()
    swapped = [swaps(caption, words) for caption in captions]
    keep = [i for i, s in enumerate(swapped) if s]
    if not keep:
      continue
    k = len(words) - 1
    flat = [s for i in keep for s in swapped[i]]
    swapped_features = sampler.text_features(flat)[1].reshape(len(keep), k, -1)
    preferred = []
    for images in (real, fake):
      true, other = sentence_scores(discriminator, variables, images[keep],
                                    sentence[keep], swapped_features)
      preferred.append(float(np.mean(true[:, None] > other)))
    rows[name] = (k, *preferred)
  sampler.close()
  out = table(rows)
  print(out)
  return out


if __name__ == '__main__':
  main()
