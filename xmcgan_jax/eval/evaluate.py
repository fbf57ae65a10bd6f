"""--mode=eval: the paper's evaluation of a run's checkpoints, beside training.

  python -m xmcgan_jax.main --mode=eval --workdir=DIR [--eval_poll]

For each checkpoint it evaluates (the newest; with --eval_poll it keeps
waiting for new ones until the run's last step), raw G and EMA G (EMA with
standing BatchNorm statistics) each generate `eval_num_samples` images from
the eval split's captions with fixed noise, and the metric plug-ins of
config.eval_metrics score them (eval/metrics: 'fid' FID and IS, 'clip' CLIP
score and R-precision, 'shapes_oracle' Shapes caption alignment, 'cmmd'
CMMD, 'prdc' precision/recall/density/coverage; by default those whose
weights the config names, and the oracle on Shapes). Real-image statistics
are cached per metric, dataset, split, resolution, count, weights and
resize. Results go to TensorBoard (WORKDIR/eval) and to WORKDIR/eval/results.jsonl
and results.csv, one row per checkpoint, with each metric's seconds on the
generated images (eval_seconds/<metric>: its network and arithmetic, not the
sampling).
"""

import csv
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

from xmcgan_jax.data import pipeline
from xmcgan_jax import errors
from xmcgan_jax.eval import metrics
from xmcgan_jax.eval import protocols
from xmcgan_jax.eval import shapes_oracle
from xmcgan_jax import run_dir
from xmcgan_jax.sampling import sample as sample_lib
from xmcgan_jax.text import encoder as text_encoder_lib
from xmcgan_jax.text import tokenizer as tokenizer_lib

RESULTS_JSONL = 'results.jsonl'
RESULTS_CSV = 'results.csv'


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
    if (config.eval_real_resize != 'bilinear' or
        config.eval_image_size not in (0, config.image_size)):
      raise errors.ConfigError(
          'Shapes evaluates at image_size: leave eval_real_resize='
          f"'bilinear' and eval_image_size=0 (got "
          f'{config.eval_real_resize!r}, {config.eval_image_size}).')
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
  dataset = data.eval_dataset(config.eval_batch_size, count,
                              caption=config.eval_caption,
                              resize=config.eval_real_resize,
                              size=config.eval_image_size)
  text = [b for b in pipeline.as_numpy(dataset.map(lambda ex: {
      k: ex[k] for k in ('caption', 'token_ids', 'token_mask', 'valid')}))]
  valid = lambda key: np.concatenate([b[key][b['valid']] for b in text])
  captions = [c.decode() for c in valid('caption')]
  tokens = (valid('token_ids'), valid('token_mask').astype(bool))

  def images():
    for b in pipeline.as_numpy(dataset):
      yield np.round(b['image'][b['valid']] * 255).astype(np.uint8)
  return EvalSet(captions, tokens, images, None)


def resize_generated(images: np.ndarray, config) -> np.ndarray:
  """Generated uint8 images at the side the real ones have (eval_image_size),
  by the real images' resize (centre crop and Lanczos, or bilinear)."""
  size = config.eval_image_size or config.image_size
  if size == images.shape[1]:
    return images
  if config.eval_real_resize == 'center_crop_lanczos':
    return np.stack([pipeline.center_crop_lanczos(i, size) for i in images])
  resized = tf.image.resize(images, [size, size], method='bilinear',
                            antialias=True)
  return np.round(np.clip(resized.numpy(), 0, 255)).astype(np.uint8)


class Evaluator:
  """Evaluates checkpoints of one run with fixed captions, noise and metrics.

  The metrics are the plug-ins of config.eval_metrics (eval/metrics), built
  once here, before any image is generated.

  Args:
    workdir: the training run's directory.
    config: its config (default WORKDIR/config.json); eval_* fields and the
      metrics' weight fields set the protocol.
    features: uint8 images -> (FID features, IS class probabilities), in
      place of the FID Inception of config.inception_weights ('fid' and
      'prdc').
    features_digest: names `features` in the real-statistics cache.
  """

  def __init__(self, workdir: str, config=None,
               features: Optional[Callable[[np.ndarray], Tuple[
                   np.ndarray, np.ndarray]]] = None,
               features_digest: str = ''):
    self.workdir = workdir = run_dir.resolve(workdir)
    self.config = protocols.apply(run_dir.resolve_config(
        config or run_dir.read_config(workdir)))
    c = self.config
    examples = eval_set(c, c.eval_num_samples)
    self.captions, self.tokens = examples.captions, examples.tokens
    options, chosen = {}, list(c.eval_metrics)
    if features is not None:
      options = {'fid_features': features,
                 'fid_features_digest': features_digest or 'custom'}
      if not chosen:  # A features function given through the API: FID.
        chosen = sorted(set(metrics.default_metrics(c)) | {'fid'})
    self.metrics = metrics.build(metrics.EvalInputs(
        c, workdir, self.captions, examples.images, examples.truth, options),
                                 chosen)
    self._sampler = None  # Made by the first evaluate() call.

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
    # Each metric's own time (features and scores of both generators), so
    # that a user sees what every metric costs on their machine.
    seconds = {metric.name: 0.0 for metric in self.metrics}
    for name, ema in (('raw', False), ('ema', True)):
      collected = [[] for _ in self.metrics]
      for images in sampler.sample_token_batches(
          ids, mask, seed=c.seed + 2, ema=ema, batch_size=c.eval_batch_size):
        images = resize_generated(images, c)
        for metric, features in zip(self.metrics, collected):
          start = time.perf_counter()
          features.append(metric.features(images))
          seconds[metric.name] += time.perf_counter() - start
      for metric, features in zip(self.metrics, collected):
        start = time.perf_counter()
        out.update({f'{name}/{k}': v
                    for k, v in metric.scores(features).items()})
        seconds[metric.name] += time.perf_counter() - start
    for metric in self.metrics:  # The ceilings, from the real images.
      out.update({f'real/{k}': v for k, v in metric.reference().items()})
    out['num_images'] = len(self.captions)
    out.update({f'eval_seconds/{k}': v for k, v in seconds.items()})
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
        evaluator: Optional[Evaluator] = None,
        every_checkpoint: bool = False) -> List[Dict[str, float]]:
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
    every_checkpoint: evaluate every kept checkpoint that results.jsonl does
      not have, oldest first (a run's curve), not only the newest.

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
    # By default the newest only: an eval job that falls behind skips to the
    # present.
    pending = [s for s in (steps if every_checkpoint else steps[-1:])
               if s not in done]
    for step in pending:
      result = evaluator.evaluate(step)
      _append(eval_dir, result)
      writer.write_scalars(result['step'], {
          k: v for k, v in result.items() if k != 'step'})
      writer.flush()
      logging.info('Evaluated step %d: %s', result['step'], result)
      results.append(result)
      done.add(result['step'])
      waiting_since = time.monotonic()
    if steps and not pending:
      logging.info('Step %d is evaluated already (%s).', steps[-1],
                   os.path.join(eval_dir, RESULTS_JSONL))
    finished = steps and steps[-1] >= final_step and steps[-1] in done
    if not poll or finished or time.monotonic() - waiting_since > timeout_s:
      break
    time.sleep(poll_interval_s)
    checkpointer.reload()
  checkpointer.close()
  return results
