"""--mode=eval: the paper's evaluation of a run's checkpoints, beside training.

  python -m xmcgan_jax.main --mode=eval --workdir=DIR [--eval_poll]

For each checkpoint it evaluates (the newest; with --eval_poll it keeps
waiting for new ones until the run's last step), raw G and EMA G (EMA with
standing BatchNorm statistics) each generate `eval_num_samples` images from
the eval split's captions with fixed noise, then:
  - with `inception_weights`: FID against the real eval images (statistics
    cached per dataset, split, resolution, count and resize, with their
    provenance) and the Inception Score (10 splits), as pytorch-fid (or,
    with fid_resize='clean', clean-fid) and improved-GAN compute them;
  - with `clip_weights`: CLIP score (torchmetrics' 100 * max(cos, 0) and the
    raw mean cosine) and CLIP R-precision, also for the real images (the
    ceiling);
  - on Shapes: the oracle's caption alignment, its Frechet distance, and
    R-precision with the oracle as image-text encoder.
Results go to TensorBoard (WORKDIR/eval) and to WORKDIR/eval/results.jsonl
and results.csv, one row per checkpoint.
"""

import csv
import datetime
import io
import json
import os
import time
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

from absl import logging
import jax
import numpy as np
import tensorflow as tf
from clu import metric_writers

from xmcgan_jax import config_base
from xmcgan_jax.data import pipeline
from xmcgan_jax import errors
from xmcgan_jax.eval import clip as clip_lib
from xmcgan_jax.eval import fid
from xmcgan_jax.eval import inception
from xmcgan_jax.eval import r_precision
from xmcgan_jax.eval import shapes_oracle
from xmcgan_jax import run_dir
from xmcgan_jax.sampling import sample as sample_lib
from xmcgan_jax.text import encoder as text_encoder_lib
from xmcgan_jax.text import tokenizer as tokenizer_lib

RESULTS_JSONL = 'results.jsonl'
RESULTS_CSV = 'results.csv'
_RESIZE_PROVENANCE = {
    'pytorch_fid': 'bilinear to 299 (pytorch-fid)',
    'clean': 'PIL bicubic with antialias to 299, float (clean-fid clean)',
}


class EvalSet(NamedTuple):
  """The eval examples: captions, token ids, a stream of real images."""
  captions: List[str]
  # (ids, mask) (N, T) as the pipeline tokenized them; None: the sampler
  # tokenizes the captions (Shapes, read from its generator).
  tokens: Optional[Tuple[np.ndarray, np.ndarray]]
  images: Callable[[], Iterator[np.ndarray]]  # uint8 batches, re-readable.
  truth: Optional[np.ndarray]  # Shapes objects, for the oracle.


def eval_set(config, count: int,
             tokenizer: Optional[tokenizer_lib.Tokenizer] = None) -> EvalSet:
  """The first `count` eval examples of a run's dataset.

  Args:
    config: the run's config (dataset, data_dir, image_size, ...).
    count: at most this many eval examples.
    tokenizer: for the pipeline; default: the run's text encoder's vocab.

  Shapes reads its generator directly (with the objects, for the oracle);
  other datasets come through the eval pipeline, read twice (captions and
  token ids now, images only if their statistics are not cached) rather
  than held in memory.
  """
  if config.dataset == 'shapes':
    count = min(count, config.shapes_eval_size)
    real, truth, captions = shapes_oracle.validation_set(
        count, config.image_size, grid=config.shapes_grid,
        max_objects=config.shapes_max_objects)
    return EvalSet(captions, None,
                   lambda: iter(np.array_split(real, -(-count // 500))), truth)
  if tokenizer is None:  # The run's vocab, as training tokenized.
    directory = text_encoder_lib.resolve_text_encoder_dir(config.text_encoder)
    tokenizer = tokenizer_lib.Tokenizer(
        os.path.join(directory, 'vocab.txt'),
        text_encoder_lib.vocab_is_lower_case(directory))
  data = pipeline.create_input_pipeline(config, tokenizer)
  dataset = data.eval_dataset(config.eval_batch_size, count)
  text = [b for b in pipeline.as_numpy(dataset.map(lambda ex: {
      k: ex[k] for k in ('caption', 'token_ids', 'token_mask', 'valid')}))]
  valid = lambda key: np.concatenate([b[key][b['valid']] for b in text])
  captions = [c.decode() for c in valid('caption')]
  tokens = (valid('token_ids'), valid('token_mask').astype(bool))

  def images():
    for b in pipeline.as_numpy(dataset):
      yield np.round(b['image'][b['valid']] * 255).astype(np.uint8)
  return EvalSet(captions, tokens, images, None)


def real_statistics(config, features: Callable[[np.ndarray], Tuple[
    np.ndarray, np.ndarray]], weights_digest: str, count: int, images: Iterator[np.ndarray]
                    ) -> Tuple[np.ndarray, np.ndarray]:
  """Inception (mu, sigma) of the real eval images, cached with provenance.

  The cache file name holds everything the numbers depend on: dataset,
  split, resolution, image count, the Inception weights' digest and the
  resize (config.fid_resize).
  """
  split = pipeline.DATASETS[config.dataset].eval_split.replace('+', '_')
  resize = config.fid_resize
  name = (f'{config.dataset}_{split}_{config.image_size}px_{count}_'
          f'{weights_digest[:8]}_{resize}.npz')
  cache_dir = config.fid_stats_dir or os.path.join(
      os.path.expanduser('~'), '.cache', 'xmcgan_jax', 'fid_stats')
  path = os.path.join(cache_dir, name)
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path, 'rb') as f:
      cached = np.load(io.BytesIO(f.read()))
      logging.info('Real statistics from %s (%s).', path,
                   cached['provenance'])
      return cached['mu'], cached['sigma']
  pools = [features(batch)[0] for batch in images]
  pool = np.concatenate(pools)
  mu, sigma = fid.statistics(pool)
  provenance = json.dumps({
      'dataset': config.dataset, 'split': split, 'image_size':
      config.image_size, 'images': len(pool), 'inception_sha256':
      weights_digest, 'resize': 'dataset pipeline to image_size, uint8, then '
      + _RESIZE_PROVENANCE[resize], 'created':
      datetime.datetime.now(datetime.timezone.utc).isoformat()})
  tf.io.gfile.makedirs(cache_dir)
  buffer = io.BytesIO()
  np.savez(buffer, mu=mu, sigma=sigma, provenance=np.array(provenance))
  with tf.io.gfile.GFile(path, 'wb') as f:
    f.write(buffer.getvalue())
  logging.info('Wrote real statistics %s.', path)
  return mu, sigma


def _weights_digest(path: str) -> str:
  with open(path, 'rb') as f:
    data = np.load(f)
    if 'meta/source_sha256' in data.files:
      return str(data['meta/source_sha256'])
  from xmcgan_jax.eval import convert_inception  # pylint: disable=g-import-not-at-top
  return convert_inception.sha256(path)


class Evaluator:
  """Evaluates checkpoints of one run with fixed captions, noise and metrics.

  Args:
    workdir: the training run's directory.
    config: its config (default WORKDIR/config.json); eval_* fields,
      inception_weights, fid_resize, fid_stats_dir and clip_weights set the
      protocol.
    features: uint8 images -> (FID features, IS class probabilities);
      default: the FID Inception of config.inception_weights.
    features_digest: names `features` in the real-statistics cache (default:
      the Inception weights' SHA-256).
  """

  def __init__(self, workdir: str, config=None,
               features: Optional[Callable[[np.ndarray], Tuple[
                   np.ndarray, np.ndarray]]] = None,
               features_digest: str = ''):
    self.workdir = workdir = run_dir.resolve(workdir)
    self.config = run_dir.resolve_config(
        config or run_dir.read_config(workdir))
    c = self.config
    count = c.eval_num_samples
    examples = eval_set(c, count)
    self.captions, self.tokens = examples.captions, examples.tokens
    real_images, self.truth = examples.images, examples.truth
    self.oracle = None
    self.inception = None
    # Loaded first: a bad CLIP directory fails before the slow parts.
    self.clip = (clip_lib.Clip(c.clip_weights, c.eval_batch_size)
                 if c.clip_weights else None)
    self._sampler = None  # Made by the first evaluate() call.
    if c.dataset == 'shapes':
      self.oracle = shapes_oracle.ShapesOracle.load_or_train(
          os.path.join(workdir, shapes_oracle.oracle_file_name(c.shapes_grid)),
          image_size=c.image_size, grid=c.shapes_grid)
      # Caption embeddings for R-precision: fixed, so computed once.
      self.caption_embeddings = shapes_oracle.OracleImageTextEncoder(
          self.oracle).embed_texts(self.captions)
      self.real_oracle_labels, real_features = self.oracle.predict(
          np.concatenate(list(real_images())))
      self.real_oracle_stats = fid.statistics(real_features)
    if features is None and c.inception_weights:
      features = inception.InceptionFeatures.from_npz(
          c.inception_weights, c.eval_batch_size, resize=c.fid_resize)
      features_digest = _weights_digest(c.inception_weights)
    if features is not None:
      self.inception = features
      self.real_stats = real_statistics(c, features, features_digest,
                                        len(self.captions), real_images())
    elif self.oracle is None and self.clip is None:
      raise errors.ConfigError(
          'config.inception_weights and config.clip_weights are empty: FID/IS '
          'need the FID Inception weights, CLIP metrics a CLIP directory (see '
          'README, Evaluation); only Shapes runs can be evaluated without '
          'either.')
    if self.clip is not None:  # Fixed: caption embeddings and the ceiling.
      self.clip_captions = self.clip.embed_texts(self.captions)
      self.real_clip = clip_lib.clip_metrics(
          np.concatenate([self.clip.embed_images(b) for b in real_images()]),
          self.clip_captions, seed=config_base.data_seed(c))

  def evaluate(self, step: Optional[int] = None) -> Dict[str, float]:
    """Metrics of raw and EMA G at a checkpoint step (default: newest)."""
    c = self.config
    if self._sampler is None:  # Text encoder loaded, G compiled, once.
      self._sampler = sample_lib.Sampler.from_workdir(self.workdir,
                                                      step=step, config=c)
    else:
      self._sampler.load_step(step)
    sampler = self._sampler
    out = {'step': sampler.step}
    ids, mask = self.tokens or sampler.tokenize(self.captions)
    for name, ema in (('raw', False), ('ema', True)):
      labels, oracle_features, pools, probs, clip_images = [], [], [], [], []
      for images in sampler.sample_token_batches(
          ids, mask, seed=c.seed + 2, ema=ema, batch_size=c.eval_batch_size):
        if self.oracle is not None:
          predicted, feats = self.oracle.predict(images)
          labels.append(predicted)
          oracle_features.append(feats)
        if self.clip is not None:
          clip_images.append(self.clip.embed_images(images))
        if self.inception is not None:
          pool, prob = self.inception(images)
          pools.append(pool)
          probs.append(prob)
      if self.oracle is not None:
        labels = np.concatenate(labels)
        for k, v in shapes_oracle.generated_metrics(
            labels, np.concatenate(oracle_features), self.truth,
            self.real_oracle_stats).items():
          out[f'{name}/oracle_{k}'] = v
        if len(self.captions) > 100:
          out[f'{name}/r_precision'] = r_precision.r_precision(
              shapes_oracle.embed_labels(labels),
              self.caption_embeddings, seed=config_base.data_seed(c))
      if self.inception is not None:
        out[f'{name}/fid'] = fid.frechet_distance(
            *self.real_stats, *fid.statistics(np.concatenate(pools)))
        out[f'{name}/inception_score'], out[f'{name}/inception_score_std'] = (
            fid.inception_score(np.concatenate(probs)))
      if self.clip is not None:
        for k, v in clip_lib.clip_metrics(
            np.concatenate(clip_images), self.clip_captions,
            seed=config_base.data_seed(c)).items():
          out[f'{name}/{k}'] = v
    if self.clip is not None:
      out.update({f'real/{k}': v for k, v in self.real_clip.items()})
    if self.oracle is not None:  # The ceilings, from the real images.
      for k, v in shapes_oracle.alignment(self.real_oracle_labels,
                                          self.truth).items():
        out[f'real/oracle_{k}'] = v
      if len(self.captions) > 100:
        out['real/r_precision'] = r_precision.r_precision(
            shapes_oracle.embed_labels(self.real_oracle_labels),
            self.caption_embeddings, seed=config_base.data_seed(c))
    out['num_images'] = len(self.captions)
    return out


def _done_steps(eval_dir: str) -> List[int]:
  path = os.path.join(eval_dir, RESULTS_JSONL)
  if not tf.io.gfile.exists(path):
    return []
  with tf.io.gfile.GFile(path) as f:
    return [json.loads(line)['step'] for line in f if line.strip()]


def _append(eval_dir: str, result: Dict[str, float]) -> None:
  """Adds a row to results.jsonl and rewrites results.csv from it."""
  tf.io.gfile.makedirs(eval_dir)
  path = os.path.join(eval_dir, RESULTS_JSONL)
  rows = []
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path) as f:
      rows = [json.loads(line) for line in f if line.strip()]
  rows.append(result)
  with tf.io.gfile.GFile(path, 'w') as f:
    f.write(''.join(json.dumps(r) + '\n' for r in rows))
  fields = sorted({k for r in rows for k in r}, key=lambda k: (k != 'step', k))
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=fields)
  writer.writeheader()
  writer.writerows(rows)
  with tf.io.gfile.GFile(os.path.join(eval_dir, RESULTS_CSV), 'w') as f:
    f.write(buffer.getvalue())


def run(workdir: str, config=None, poll: bool = False,
        poll_interval_s: float = 60.0, timeout_s: float = 6 * 3600.0,
        evaluator: Optional[Evaluator] = None) -> List[Dict[str, float]]:
  """Evaluates the newest checkpoint, or (poll) each new one as it lands.

  Args:
    workdir: the training run's --workdir.
    config: default WORKDIR/config.json.
    poll: keep waiting for new checkpoints until the run's final step is
      evaluated, or `timeout_s` passes without a new checkpoint. Without it,
      the newest checkpoint is evaluated unless results.jsonl has it.
    poll_interval_s: seconds between looks at the checkpoint directory.
    timeout_s: give up after this long without a new checkpoint.
    evaluator: default Evaluator(workdir, config).

  Returns:
    The results of this call, one dict per evaluated checkpoint.
  """
  workdir = run_dir.resolve(workdir)
  evaluator = evaluator or Evaluator(workdir, config)
  final_step = evaluator.config.num_train_steps
  eval_dir = os.path.join(workdir, run_dir.EVAL_DIR)
  writer = metric_writers.create_default_writer(
      eval_dir, just_logging=jax.process_index() > 0)
  checkpointer = run_dir.Checkpointer(
      os.path.join(workdir, run_dir.CHECKPOINT_DIR), asynchronous=False)
  results, waiting_since = [], time.monotonic()
  # Read once: this job is the only writer of results.jsonl while it runs.
  done = set(_done_steps(eval_dir))
  while True:
    steps = checkpointer.all_steps()
    if not steps and not poll:
      raise errors.MissingFileError(
          f'No checkpoint under {workdir}/checkpoints: train first.')
    if steps and steps[-1] not in done:
      # The newest only: an eval job that falls behind skips to the present.
      result = evaluator.evaluate(steps[-1])
      _append(eval_dir, result)
      writer.write_scalars(result['step'], {
          k: v for k, v in result.items() if k != 'step'})
      writer.flush()
      logging.info('Evaluated step %d: %s', result['step'], result)
      results.append(result)
      done.add(result['step'])
      waiting_since = time.monotonic()
    elif steps:
      logging.info('Step %d is evaluated already (%s).', steps[-1],
                   os.path.join(eval_dir, RESULTS_JSONL))
    finished = steps and steps[-1] >= final_step and steps[-1] in done
    if not poll or finished or time.monotonic() - waiting_since > timeout_s:
      break
    time.sleep(poll_interval_s)
    checkpointer.reload()
  checkpointer.close()
  return results
