"""Can a config's G draw each Shapes caption when it is told the image?

  python -m benchmarks.g_probe --config=configs/shapes.py [--set FIELD=VALUE]

A G-only probe, no D: a fresh G of the config (its width, text features,
stem, modulation, learning rate and Adam betas) is trained by regression, the
L1 distance between G(z, caption) and the caption's real training image. Every
--eval_every steps it draws one image per validation caption (raw G, running
BatchNorm statistics, as the eval job scores it) and the Shapes oracle reads
them: colour, size and shape in the captioned cell, object exact, and how
often each captioned shape is drawn right. The real image's jitter (a few
pixels) is not in the caption; L1 regresses to its per-pixel median, which is
the shape at the cell's centre with sharp edges.

It isolates G's architecture and optimiser from the GAN's signal: a G that
learns circle from square here in a few hundred steps has the capacity, and a
GAN run whose G draws them alike is short of signal, not of G
(docs/shapes.md).
"""

import argparse
from typing import Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image

from benchmarks import common
from xmcgan_jax import models
from xmcgan_jax.data import shapes
from xmcgan_jax.eval import shapes_oracle
from xmcgan_jax.models import generator as generator_lib
from xmcgan_jax.sampling import visualize
from xmcgan_jax.text import encoder as text_encoder
from xmcgan_jax.training import builders


def text_features(captions: Sequence[str], encoder, max_tokens: int
                  ) -> Dict[str, np.ndarray]:
  """(word features (N, T, E), word mask (N, T), sentence features (N, E))."""
  words, masks, sentences = [], [], []
  for i in range(0, len(captions), 256):
    ids, mask = encoder.tokenize(captions[i:i + 256], max_tokens)
    w, s = encoder.encode(ids, mask)
    words.append(np.asarray(w))
    masks.append(np.asarray(mask, bool))
    sentences.append(np.asarray(s))
  return {'word_emb': np.concatenate(words),
          'word_mask': np.concatenate(masks),
          'sentence_emb': np.concatenate(sentences)}


def shape_rows(predicted: np.ndarray, truth: np.ndarray) -> List[float]:
  """% of captioned circles, squares, triangles drawn as such in their cell."""
  present = truth[..., 0] > 0
  out = []
  for k in range(1, len(shapes.SHAPES) + 1):
    mine = present & (truth[..., 0] == k)
    out.append(100 * float((predicted[..., 0] == k)[mine].mean())
               if mine.any() else float('nan'))
  return out


def parse_args(argv: Optional[Sequence[str]] = None
               ) -> Tuple[argparse.Namespace, object]:
  """(the flags, the config they give); exits on a non-Shapes config."""
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  common.add_probe_flags(parser)
  parser.add_argument('--loss', choices=('l1', 'l2'), default='l2',
                      help='l2 regresses to the mean over the jitter (a '
                      'shape with soft edges), l1 to the median (sharp); l1 '
                      'first settles on the grey background')
  parser.add_argument('--save', default='',
                      help='a .png of the last evaluation\'s first 16 images')
  parser.add_argument('--oracle', default='',
                      help="the oracle's msgpack cache ('' trains one, "
                      'about a minute for the 2x2 task)')
  parser.add_argument('--oracle_steps', type=int, default=None,
                      help="training steps of a new oracle (default: the "
                      "eval job's)")
  args = parser.parse_args(argv)
  c = common.probe_config(args)
  if c.dataset != 'shapes':
    parser.error(f'the G probe needs a Shapes config; {args.config} has '
                 f'dataset={c.dataset!r}.')
  return args, c


def main(argv: Optional[Sequence[str]] = None) -> str:
  args, c = parse_args(argv)
  task = dict(image_size=c.image_size, grid=c.shapes_grid,
              max_objects=c.shapes_max_objects)
  oracle = shapes_oracle.ShapesOracle.load_or_train(
      args.oracle, image_size=c.image_size, steps=args.oracle_steps,
      grid=c.shapes_grid)
  train_x, _, train_c = shapes_oracle.generated_set('train', args.train_images,
                                                    **task)
  eval_x, eval_truth, eval_c = shapes_oracle.validation_set(args.eval_images,
                                                            **task)
  del eval_x  # Only the captions and their labels are needed.
  encoder = text_encoder.load_text_encoder(c.text_encoder, c.text_pooling)
  train_t = text_features(train_c, encoder, c.max_tokens)
  eval_t = text_features(eval_c, encoder, c.max_tokens)
  generator, _ = models.build_models(c, encoder.width)
  variables = generator.init(jax.random.PRNGKey(c.seed),
                             *generator_lib.dummy_inputs(generator),
                             train=False)
  params, state = variables['params'], variables['batch_stats']
  tx, _ = builders.build_optimizers(c)  # G's Adam, as training builds it.
  opt_state = tx.init(params)

  @jax.jit
  def step(params, state, opt_state, key, x, text):
    z = jax.random.normal(key, (x.shape[0], c.z_dim))

    def loss_fn(p):
      images, new = generator.apply(
          {'params': p, 'batch_stats': state}, z, text['sentence_emb'],
          text['word_emb'], text['word_mask'], train=True,
          mutable=['batch_stats'])
      error = images - x
      loss = jnp.abs(error) if args.loss == 'l1' else jnp.square(error)
      return jnp.mean(loss), new['batch_stats']

    (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_state, opt_state, loss

  @jax.jit
  def draw(params, state, key, text):
    z = jax.random.normal(key, (text['sentence_emb'].shape[0], c.z_dim))
    return generator.apply({'params': params, 'batch_stats': state}, z,
                           text['sentence_emb'], text['word_emb'],
                           text['word_mask'], train=False)

  probe = {'params': params, 'state': state, 'opt_state': opt_state,
           'key': jax.random.PRNGKey(c.seed + 1)}

  def train_step(rows):
    probe['key'], sub = jax.random.split(probe['key'])
    probe['params'], probe['state'], probe['opt_state'], loss = step(
        probe['params'], probe['state'], probe['opt_state'], sub,
        train_x[rows].astype(np.float32) / 255.0,
        {k: v[rows] for k, v in train_t.items()})
    return loss

  def evaluate():
    probe['images'] = np.concatenate([
        np.asarray(draw(probe['params'], probe['state'], jax.random.PRNGKey(j),
                        {k: v[j:j + 100] for k, v in eval_t.items()}))
        for j in range(0, len(eval_c), 100)])
    predicted, _ = oracle.predict(probe['images'])
    found = shapes_oracle.alignment(predicted, eval_truth)
    values = [100 * found[k] for k in ('colour_accuracy', 'size_accuracy',
                                        'shape_accuracy', 'object_accuracy')]
    return values + shape_rows(predicted, eval_truth)

  names = ['colour', 'size', 'shape', 'object exact'] + [
      f'{s} right' for s in shapes.SHAPES]
  lines = [f'| step | {args.loss} loss | ' + ' | '.join(names) + ' | ms/step |',
           '|---' * (len(names) + 3) + '|']
  lines += common.run_probe(len(train_x), c.batch_size, c.seed, args.steps,
                            args.eval_every, train_step, evaluate)
  if args.save:
    grid = visualize.make_grid(visualize.to_uint8(probe['images'][:16]),
                               eval_c[:16])
    Image.fromarray(grid).save(args.save)
  out = '\n'.join(lines) + '\n'
  print(out)
  return out


if __name__ == '__main__':
  main()
