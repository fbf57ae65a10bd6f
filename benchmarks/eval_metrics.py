"""What each eval metric costs: its network at the published shape, per image.

  python -m benchmarks.eval_metrics [--images=16] [--networks=inception,...]

No weights can be downloaded here, and time does not depend on their values:
each network is built at the shape of the weights its metric loads (random
parameters) and fed uint8 images of the default's resolution (64 px) through
the metric's own preprocessing. Prints compile seconds, milliseconds per
image after warm-up, and the minutes that the Shapes default's eval (2,000
captions: raw and EMA G, plus the real images once) and a COCO eval (30,000)
would spend in it on this machine. The metrics' host arithmetic (Frechet
distance, MMD, PRDC) is timed on random features of the published widths.
"""

import argparse
import time
from typing import Callable, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from xmcgan_jax.eval import bicubic
from xmcgan_jax.eval import clip
from xmcgan_jax.eval import dinov2
from xmcgan_jax.eval import fid
from xmcgan_jax.eval import inception
from xmcgan_jax.eval.metrics import cmmd
from xmcgan_jax.eval.metrics import prdc

# The published shapes (Hugging Face config.json values).
_CLIP_B32 = dict(hidden_size=768, intermediate_size=3072,
                 num_attention_heads=12, num_hidden_layers=12, image_size=224,
                 patch_size=32)
_CLIP_L14_336 = dict(hidden_size=1024, intermediate_size=4096,
                     num_attention_heads=16, num_hidden_layers=24,
                     image_size=336, patch_size=14)
_DINOV2_L14 = dinov2.Dinov2Config(
    hidden_size=1024, num_layers=24, num_heads=16, mlp_size=4096,
    swiglu=False, layer_norm_eps=1e-6, image_size=518, patch_size=14)


def _clip_tower(vision: Dict[str, int]) -> Callable:
  """CLIP's image embedding at a published vision shape (text tower tiny)."""
  text = clip.TowerConfig(64, 128, 2, 1, 'quick_gelu', 1e-5, 77)
  tower = clip.TowerConfig(
      vision['hidden_size'], vision['intermediate_size'],
      vision['num_attention_heads'], vision['num_hidden_layers'],
      'quick_gelu', 1e-5, (vision['image_size'] // vision['patch_size'])**2
      + 1)
  config = clip.ClipConfig(tower, text, vision['image_size'],
                           vision['patch_size'], 49408, 768)
  model = clip.ClipModel(config)
  side = config.image_size
  params = jax.jit(lambda: model.init(
      jax.random.PRNGKey(0), jnp.zeros((1, side, side, 3)),
      jnp.zeros((1, 2), jnp.int32), jnp.ones((1,), jnp.int32)))()['params']
  return params, lambda p, x: model.apply({'params': p}, x,
                                          method=clip.ClipModel.embed_images)


def networks(batch: int
             ) -> Dict[str, Callable[[], Callable[[np.ndarray], object]]]:
  """name -> builder of (uint8 images -> features) with random weights, for
  calls of `batch` images."""

  def fid_inception():
    params = jax.jit(lambda: inception.FIDInceptionV3().init(
        jax.random.PRNGKey(0), jnp.zeros((1, 299, 299, 3))))()['params']
    # Its batches are padded to batch_size: the timed batch, not more.
    return inception.InceptionFeatures(params, batch_size=batch)

  def clip_b32():  # 'clip': CLIP's own PIL preprocessing.
    params, fn = _clip_tower(_CLIP_B32)
    jitted = jax.jit(fn)
    return lambda x: jitted(params, clip.preprocess(x, 224))

  def clip_l14_336():  # 'cmmd': torch bicubic to 336, CLIP mean/std.
    params, fn = _clip_tower(_CLIP_L14_336)
    jitted = jax.jit(fn)

    def features(x):
      pixels = bicubic.resize(x.astype(np.float32) / 255.0, 336)
      pixels = (pixels - np.float32(clip.IMAGE_MEAN)) / np.float32(
          clip.IMAGE_STD)
      return jitted(params, pixels)
    return features

  def dinov2_l14():  # 'fd_dinov2' and prdc_features='dinov2'.
    model = dinov2.Dinov2Model(_DINOV2_L14)
    params = jax.jit(lambda: model.init(
        jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3))))()['params']
    jitted = jax.jit(lambda p, x: model.apply({'params': p}, x))
    return lambda x: jitted(params, dinov2.preprocess(x))

  return {'fid_inception (fid, prdc)': fid_inception,
          'clip_vit_b32 (clip)': clip_b32,
          'clip_vit_l14_336 (cmmd)': clip_l14_336,
          'dinov2_vit_l14 (fd_dinov2)': dinov2_l14}


def _block(out):
  jax.tree.map(lambda a: np.asarray(a), out)


def time_network(build: Callable, images: np.ndarray, repeats: int
                 ) -> List[float]:
  """(compile + first call seconds, median ms per image)."""
  fn = build()
  start = time.perf_counter()
  _block(fn(images))
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    _block(fn(images))
    times.append(time.perf_counter() - start)
  return [first, 1e3 * float(np.median(times)) / len(images)]


def time_arithmetic(count: int = 2000) -> List[List[str]]:
  """Host-side metric arithmetic on random features of published widths."""
  rng = np.random.default_rng(0)
  rows = []
  for name, width, fn in (
      ('Frechet distance (fid, fd_dinov2)', 2048,
       lambda a, b: fid.frechet_distance(*fid.statistics(a),
                                         *fid.statistics(b))),
      ('MMD (cmmd)', 768, cmmd.mmd),
      ('PRDC, k=5 (prdc)', 2048, prdc.prdc)):
    a, b = rng.normal(size=(count, width)), rng.normal(size=(count, width))
    start = time.perf_counter()
    fn(a, b)
    rows.append([name, f'{count} x {width}',
                 f'{time.perf_counter() - start:.2f} s'])
  return rows


def main(argv: Optional[Sequence[str]] = None) -> None:
  p = argparse.ArgumentParser(prog='python -m benchmarks.eval_metrics',
                              description=__doc__)
  p.add_argument('--images', type=int, default=16,
                 help='images per timed call (64 px uint8)')
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--networks', default='',
                 help='comma-separated name prefixes (default: all)')
  p.add_argument('--no_arithmetic', action='store_true')
  args = p.parse_args(argv)
  images = np.random.default_rng(0).integers(
      0, 256, (args.images, 64, 64, 3), np.uint8)
  builders = networks(args.images)
  chosen = [n for n in builders if not args.networks or any(
      n.startswith(w) for w in args.networks.split(','))]
  rows = []
  for name in chosen:
    first, ms = time_network(builders[name], images, args.repeats)
    # Shapes default: raw + EMA generated, the reals once (then cached).
    rows.append([name, f'{first:.1f}', f'{ms:.1f}',
                 f'{3 * 2000 * ms / 6e4:.1f}', f'{3 * 30000 * ms / 6e4:.0f}'])
  print(f'{jax.devices()[0].device_kind}, {len(jax.devices())} device(s), '
        f'{args.images} images of 64 px per call')
  common.print_table(['network (metrics)', 'compile + first call s',
                      'ms / image', 'Shapes eval min (3 x 2,000)',
                      'COCO eval min (3 x 30,000)'], rows)
  if not args.no_arithmetic:
    print()
    common.print_table(['host arithmetic', 'features', 'time'],
                       time_arithmetic())


if __name__ == '__main__':
  main()
