"""Can a config's D learn each Shapes caption attribute from real images?

  python -m benchmarks.d_probe --config=configs/shapes.py [--set FIELD=VALUE]

A D-only probe, no G and no hinge term: a fresh D of the config trains on
real Shapes training images (the config's task, batch, learning rate, Adam
betas and temperature) with the sentence NCE alone, every one-word swap of
each caption (data/shapes.WORD_CLASSES) as a hard negative. Every --eval_every
steps it scores the validation images as benchmarks.d_attributes does: per
word class, how often D's sentence score prefers the true caption over a
swap. It isolates D's architecture and optimiser from the GAN: a D that does
not learn circle from square here cannot teach G to draw them, and a setting
that learns it faster here is a candidate for the GAN (docs/shapes.md).
"""

import argparse
from typing import Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import common
from benchmarks import d_attributes
from xmcgan_jax import losses
from xmcgan_jax import models
from xmcgan_jax.data import shapes
from xmcgan_jax.eval import shapes_oracle
from xmcgan_jax.text import encoder as text_encoder
from xmcgan_jax.training import builders


def caption_features(captions: Sequence[str], encoder, max_tokens: int
                     ) -> Dict[str, np.ndarray]:
  """{caption: sentence feature} of the distinct captions."""
  unique = sorted(set(captions))
  out = {}
  for i in range(0, len(unique), 256):
    part = unique[i:i + 256]
    sentence = np.asarray(encoder.encode(*encoder.tokenize(part, max_tokens))[1])
    out.update(zip(part, sentence))
  return out


def swap_lists(captions: Sequence[str]) -> List[List[List[str]]]:
  """Per caption, per word class, its one-word swaps (d_attributes.swaps)."""
  return [[d_attributes.swaps(c, words.split()) for words in
           shapes.WORD_CLASSES] for c in captions]


def stack_features(captions, swapped, features):
  """(sentence (N, E), hard (N, K, E), valid (N, K), class of each k (K,))."""
  counts = [max(len(per[k]) for per in swapped)
            for k in range(len(shapes.WORD_CLASSES))]
  width = len(next(iter(features.values())))
  hard = np.zeros((len(captions), sum(counts), width), np.float32)
  valid = np.zeros((len(captions), sum(counts)), bool)
  for i, per in enumerate(swapped):
    at = 0
    for k, swaps in enumerate(per):
      for j, s in enumerate(swaps):
        hard[i, at + j], valid[i, at + j] = features[s], True
      at += counts[k]
  sentence = np.stack([features[c] for c in captions])
  return sentence, hard, valid, np.repeat(np.arange(len(counts)), counts)


def shape_table(captions: Sequence[str], swapped, wins: np.ndarray,
                classes: np.ndarray) -> str:
  """Shape swaps D ranks below the truth, by the captioned size and shape
  and the swapped-in shape (the first object of each caption)."""
  shape_k = shapes.WORD_CLASS_NAMES.index('shape')
  columns = np.nonzero(classes == shape_k)[0]
  counts = {}
  for caption, per, row in zip(captions, swapped, wins):
    size, _, shape, _ = sorted(shapes.parse_caption(caption))[0]
    for swap, column in zip(per[shape_k], columns):
      other, = set(swap.split()) - set(caption.split())
      key = (size, shape, other)
      won, seen = counts.get(key, (0, 0))
      counts[key] = (won + int(row[column]), seen + 1)
  lines = ['| size | captioned shape | swapped in | D prefers the truth % |',
           '|---|---|---|---|']
  for (size, shape, other), (won, seen) in sorted(counts.items()):
    lines.append(f'| {size} | {shape} | {other} | {100 * won / seen:.1f} |')
  return '\n'.join(lines) + '\n'


def main(argv: Optional[Sequence[str]] = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  common.add_probe_flags(parser)
  args = parser.parse_args(argv)
  c = common.probe_config(args)
  task = dict(image_size=c.image_size, grid=c.shapes_grid,
              max_objects=c.shapes_max_objects)
  train_x, _, train_c = shapes_oracle.generated_set('train', args.train_images,
                                                    **task)
  eval_x, _, eval_c = shapes_oracle.validation_set(args.eval_images, **task)
  encoder = text_encoder.load_text_encoder(c.text_encoder, c.text_pooling)
  train_s, eval_s = swap_lists(train_c), swap_lists(eval_c)
  features = caption_features(
      train_c + eval_c + [w for per in train_s + eval_s for s in per for w in s],
      encoder, c.max_tokens)
  train_f = stack_features(train_c, train_s, features)
  eval_f = stack_features(eval_c, eval_s, features)
  _, discriminator = models.build_models(c, encoder.width)
  variables = discriminator.init(jax.random.PRNGKey(c.seed),
                                 jnp.zeros((2,) + train_x.shape[1:]),
                                 jnp.zeros((2, encoder.width)), train=False)
  params, state = variables['params'], variables['spectral_norm_stats']
  _, tx = builders.build_optimizers(c)  # D's Adam, as training builds it.
  opt_state = tx.init(params)

  @jax.jit
  def step(params, state, opt_state, x, s, h, valid):
    def loss_fn(p):
      out, new = discriminator.apply(
          {'params': p, 'spectral_norm_stats': state}, x, s, train=True,
          hard_sentence_emb=h, mutable=['spectral_norm_stats'])
      loss = losses.contrastive_loss(out.pooled, out.projection,
                                     temperature=c.temperature,
                                     hard_negatives=out.hard_projection,
                                     hard_valid=valid)
      return loss, new['spectral_norm_stats']
    (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_state, opt_state, loss

  names = shapes.WORD_CLASS_NAMES
  probe = {'params': params, 'state': state, 'opt_state': opt_state}

  def train_step(rows):
    probe['params'], probe['state'], probe['opt_state'], loss = step(
        probe['params'], probe['state'], probe['opt_state'],
        train_x[rows].astype(np.float32) / 255.0,
        *(f[rows] for f in train_f[:3]))
    return loss

  def evaluate():
    true, other = d_attributes.sentence_scores(
        discriminator,
        {'params': probe['params'], 'spectral_norm_stats': probe['state']},
        eval_x, eval_f[0], eval_f[1])
    probe['wins'] = (true[:, None] > other) & eval_f[2]
    return [100 * probe['wins'][:, eval_f[3] == k].sum()
            / max(eval_f[2][:, eval_f[3] == k].sum(), 1)
            for k in range(len(names))]

  lines = ['| step | loss | ' + ' | '.join(names) + ' | ms/step |',
           '|---' * (len(names) + 3) + '|']
  lines += common.run_probe(len(train_x), c.batch_size, c.seed, args.steps,
                            args.eval_every, train_step, evaluate,
                            loss_digits=3)
  out = '\n'.join(lines) + '\n\n' + shape_table(
      eval_c, eval_s, probe['wins'], eval_f[3])
  print(out)
  return out


if __name__ == '__main__':
  main()
