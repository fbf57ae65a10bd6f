"""train: the training loop around the compiled train step.

(Evaluation is its own job, eval/evaluate.py, run on the checkpoints.)

Every process runs this same function. It validates the config, loads the
frozen text encoder, prepares the data (process 0) and builds this process's
input pipeline, restores the newest readable checkpoint, then steps, logs,
samples and checkpoints until config.num_train_steps, a non-finite loss (the
run stops; the last good checkpoint stays), or SIGTERM (a final checkpoint is
saved at the step reached).
"""

import dataclasses
import os
import signal
import time
from typing import Any, Dict, List, Optional

from absl import logging
from clu import metric_writers
from clu import periodic_actions
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import numpy as np

from xmcgan_jax import config_base
from xmcgan_jax.data import pipeline
from xmcgan_jax import errors
from xmcgan_jax import models
from xmcgan_jax.models import image_encoders
from xmcgan_jax import parallel
from xmcgan_jax import run_dir
from xmcgan_jax.sampling import generate
from xmcgan_jax.sampling import visualize
from xmcgan_jax.text import encoder as text_encoder_lib
from xmcgan_jax.text import feature_table
from xmcgan_jax.text import hard_negatives
from xmcgan_jax.text import tokenizer as tokenizer_lib
from xmcgan_jax.training import builders
from xmcgan_jax.training import train_step as train_step_lib

# Token row length when checking that a hard negative word is one piece.
_WORD_TOKENS = 8


class _Preemption:
  """Records SIGTERM so the loop can save and stop at a step boundary."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # Not the main thread: rely on the sync point only.
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM: saving a checkpoint at the next step boundary.')
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      # All hosts agree on the same step (needs jax.distributed).
      return (self.requested or
              multihost_utils.reached_preemption_sync_point(step))
    return self.requested


def load_text_encoder(config) -> text_encoder_lib.TextEncoder:
  """The frozen text encoder of a config, checked against max_tokens."""
  encoder = text_encoder_lib.load_text_encoder(
      config.text_encoder, pooling=config.text_pooling,
      dtype=jnp.dtype(config.dtype),
      weights=config.get('text_encoder_weights', 'pretrained'))
  limit = encoder.module.config.max_position_embeddings
  if config.max_tokens > limit:
    raise errors.ConfigError(
        f'config.max_tokens={config.max_tokens} exceeds the text encoder\'s '
        f'max_position_embeddings={limit}.')
  return encoder


def _duration(seconds: float) -> str:
  """'1h 02m', '3m 05s' or '12s'."""
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  if hours:
    return f'{hours}h {minutes:02d}m'
  return f'{minutes}m {seconds:02d}s' if minutes else f'{seconds}s'


def _all_positions(position: int) -> List[int]:
  """Data positions of every process, in process order."""
  if jax.process_count() == 1:
    return [position]
  gathered = multihost_utils.process_allgather(np.asarray(position, np.int64))
  return [int(p) for p in np.asarray(gathered).reshape(-1)]


def _fixed_samples(data: pipeline.InputPipeline, count: int
                   ) -> Dict[str, np.ndarray]:
  """The first `count` eval examples: the fixed captions of sample grids."""
  batch = next(pipeline.as_numpy(data.eval_dataset(count, count)))
  return {k: batch[k][:count] for k in ('image', 'token_ids', 'token_mask',
                                         'caption')}


def _write_samples(writer, workdir: str, step: int, grids: Dict[str, Any],
                   captions) -> None:
  texts = [c.decode('utf-8', 'replace') if isinstance(c, bytes) else c
           for c in captions]
  images = {}
  for name, pixels in grids.items():
    grid = visualize.make_grid(visualize.to_uint8(pixels), texts)
    images[f'samples/{name}'] = grid[None]
    visualize.save_png(
        os.path.join(workdir, run_dir.SAMPLES_DIR, f'{name}_{step:08d}.png'),
        grid)
  writer.write_images(step, images)
  writer.write_texts(step, {'samples/captions': ' | '.join(texts)})


@dataclasses.dataclass
class TrainingRun:
  """What the loop needs, built (and restored) by `setup`."""
  config: Any
  workdir: str
  mesh: Any
  data: pipeline.InputPipeline
  text: text_encoder_lib.TextEncoder
  generator: Any
  steps: builders.StepSchedule
  frozen: Dict[str, Any]
  state: train_step_lib.TrainState
  checkpointer: run_dir.Checkpointer
  position: int  # This process's position in its data order.
  # With config.text_feature_table: the captions' features the step looks up.
  table: Optional[feature_table.FeatureTable] = None


def setup(config, workdir: str) -> TrainingRun:
  """Validates the config; builds data, models, the step; restores state.

  Raises:
    errors.UserError: a bad config value, a missing file or a checkpoint
      that this process layout cannot resume, before any compilation.
  """
  process_index, process_count = jax.process_index(), jax.process_count()
  workdir = run_dir.resolve(workdir)
  config = run_dir.resolve_config(config)  # Written resolved to config.json.
  config_base.validate(config, jax.device_count())
  if config.batch_size % process_count:
    raise errors.ConfigError(
        f'config.batch_size={config.batch_size} is not divisible by the '
        f'{process_count} processes.')
  run_dir.check_files(config)
  text = load_text_encoder(config)
  tokenizer = tokenizer_lib.Tokenizer(text.vocab_path, text.lower_case)
  if process_index == 0:
    pipeline.prepare(pipeline.make_builder(config), config.manual_dir)
  if process_count > 1:
    multihost_utils.sync_global_devices('data prepared')
  data = pipeline.create_input_pipeline(config, tokenizer, process_index,
                                        process_count, prepare_data=False)

  mesh = parallel.make_mesh()
  generator, discriminator = models.build_models(config, text.width)
  g_tx, d_tx = builders.build_optimizers(config)
  image_encoder = None
  if config.image_encoder.name != 'none':
    image_encoder = image_encoders.load_image_encoder(
        config.image_encoder.name, config.image_encoder.weights,
        config.image_encoder.feature, config.image_encoder.preprocess,
        dtype=jnp.dtype(config.dtype))
  word_classes = hard_negative_classes(config, tokenizer)
  text_fn, text_params, table = _step_text_encoder(config, text, data,
                                                   word_classes)
  make_step = lambda d: train_step_lib.make_train_step(
      generator, d, g_tx, d_tx, mesh,
      builders.build_step_config(config, word_classes), text_encoder=text_fn,
      image_encoder=image_encoder.features_fn() if image_encoder else None)
  steps = builders.build_step_schedule(config, discriminator, make_step)
  frozen = {'text_encoder': parallel.replicate(text_params, mesh)}
  if image_encoder is not None:
    frozen['image_encoder'] = parallel.replicate(image_encoder.params, mesh)
  state = train_step_lib.create_train_state(
      jax.random.PRNGKey(config.seed), generator, discriminator, g_tx, d_tx,
      mesh)
  checkpointer = run_dir.Checkpointer(
      os.path.join(workdir, run_dir.CHECKPOINT_DIR),
      keep=config.keep_checkpoints)
  state, position = _restore(checkpointer, state, workdir)
  return TrainingRun(config, workdir, mesh, data, text, generator, steps,
                     frozen, state, checkpointer, position, table)


def hard_negative_classes(config, tokenizer: tokenizer_lib.Tokenizer
                          ) -> hard_negatives.WordClasses:
  """config.hard_negative_words as token ids of the run's tokenizer.

  Returns:
    One tuple of token ids per class; () when the sentence and word-region
    weights are both 0 (no term would score the negatives).

  Raises:
    errors.ConfigError: a bad class, or a word that is not one word piece.
  """
  if not (config.loss_weights.sentence or config.loss_weights.word_region):
    return ()
  return hard_negatives.word_class_ids(
      config.hard_negative_words,
      lambda words: tokenizer.tokenize_numpy(words, _WORD_TOKENS))


def step_caption_tokens(data: pipeline.InputPipeline,
                        word_classes: hard_negatives.WordClasses):
  """(ids, mask) of every caption the step can see: the training captions
  and every hard negative the step can make of one (a text feature table's
  rows)."""
  ids, mask = data.train_caption_tokens()
  if not word_classes:
    return ids, mask
  swapped_ids, swapped_mask = hard_negatives.all_swaps(ids, mask, word_classes)
  return (np.concatenate([ids, swapped_ids]),
          np.concatenate([mask, swapped_mask]))


def _step_text_encoder(config, text: text_encoder_lib.TextEncoder,
                       data: pipeline.InputPipeline,
                       word_classes: hard_negatives.WordClasses):
  """(features function, its frozen params, the FeatureTable or None) that
  the step runs on the batch's token ids: the text encoder itself, or with
  config.text_feature_table its features of every training caption (and of
  every hard negative the step can make of one), computed here once."""
  if not config.text_feature_table:
    return text.features_fn(), text.params, None
  table = feature_table.build(text.features_fn(), text.params,
                              *step_caption_tokens(data, word_classes))
  logging.info('Text features of %d distinct training captions computed '
               'once (config.text_feature_table).', len(table.token_ids))
  return feature_table.lookup_fn(), table.params, table


def _restore(checkpointer: run_dir.Checkpointer,
             state: train_step_lib.TrainState, workdir: str):
  """(state, this process's data position) of the newest readable
  checkpoint, or the initial ones."""
  restored = checkpointer.restore_latest(state)
  if restored is None:
    return state, 0
  step, state, positions = restored
  if len(positions) != jax.process_count():
    raise errors.UserError(
        f'The checkpoint of step {step} in {workdir} was written by '
        f'{len(positions)} processes and this run has {jax.process_count()}: '
        'each process resumes its own shard of the data, so the data order '
        f'cannot continue. Resume with {len(positions)} processes (as many '
        'hosts, or JAX_NUM_PROCESSES), or train in a new --workdir.')
  position = positions[jax.process_index()]
  logging.info('Resumed from step %d (data position %d).', step, position)
  return state, position


class _MetricLog:
  """Step metrics averaged between log points: checked, written, printed."""

  def __init__(self, run: TrainingRun, writer, start_step: int):
    self._run, self._writer = run, writer
    self._history: List[Dict[str, Any]] = []
    self._last_good_step = start_step
    self._start, self._start_step = time.perf_counter(), start_step

  def add(self, metrics: Dict[str, Any]) -> None:
    self._history.append(metrics)  # Device arrays: no transfer yet.

  def write(self, step: int) -> None:
    """Writes the mean since the last write.

    Raises:
      FloatingPointError: a non-finite D or G loss (the run stops; the last
        checkpoint is the last good one).
    """
    config = self._run.config
    fetched = jax.device_get(self._history)  # One transfer, not one a scalar.
    summary = {k: float(np.mean([m[k] for m in fetched]))
               for k in fetched[-1]}
    self._history = []
    bad = [k for k in ('d_loss', 'g_loss') if not np.isfinite(summary[k])]
    if bad:
      raise FloatingPointError(
          f'Non-finite {bad} at step {step} (last finite check at step '
          f'{self._last_good_step}); stopping. The checkpoint of step '
          f'{self._run.checkpointer.all_steps()[-1:] or "none"} is the last '
          'good one: lower the learning rates or check the data.')
    self._last_good_step = step
    seconds = time.perf_counter() - self._start
    steps_per_s = (step - self._start_step) / max(seconds, 1e-9)
    images_per_step = config.batch_size * config.d_steps_per_g_step
    summary.update(steps_per_second=steps_per_s,
                   images_per_second=steps_per_s * images_per_step)
    summary.update({f'skipped/{k}': v
                    for k, v in self._run.data.skipped.counts().items()})
    self._writer.write_scalars(step, summary)
    self._start, self._start_step = time.perf_counter(), step
    if jax.process_index() == 0:
      logging.info(
          'step %d/%d | d_loss %.3f g_loss %.3f d_adversarial %.3f '
          'g_adversarial %.3f | %.2f steps/s %.0f img/s | ETA %s', step,
          config.num_train_steps, summary['d_loss'], summary['g_loss'],
          summary.get('d_adversarial', 0), summary.get('g_adversarial', 0),
          steps_per_s, summary['images_per_second'],
          _duration((config.num_train_steps - step) / max(steps_per_s,
                                                          1e-9)))


class _SampleGrids:
  """Real, raw-G and EMA-G grids of fixed eval captions and noise.

  Both generated grids use the raw G's BatchNorm running statistics: the EMA
  weights with those statistics (as the 2021 release evaluates), which is
  cheap during training. `--mode=sample` and the eval job instead recompute
  standing statistics for the EMA weights (sampling/sample.py), so their EMA
  images can differ from these grids'.
  """

  def __init__(self, run: TrainingRun, writer):
    self._run, self._writer = run, writer
    self._fixed = _fixed_samples(run.data, run.config.num_sample_captions)
    self._generate = generate.make_generate_fn(run.generator,
                                               run.text.features_fn())
    self._z = generate.noise(run.config.seed + 1,
                             len(self._fixed['caption']), run.config.z_dim)

  def __call__(self, step: int, state: train_step_lib.TrainState) -> None:
    fixed = self._fixed
    grids = {'real': fixed['image']}
    for name, params in (('generated', state.g_params),
                         ('ema', state.ema_g_params)):
      grids[name] = np.asarray(self._generate(
          params, state.g_state, self._run.text.params, fixed['token_ids'],
          fixed['token_mask'], self._z))
    if jax.process_index() == 0:
      _write_samples(self._writer, self._run.workdir, step, grids,
                     fixed['caption'])


def train(config, workdir: str) -> train_step_lib.TrainState:
  """Trains (or resumes) the model of `config` in `workdir`.

  Args:
    config: an experiment config (see config_base.py).
    workdir: checkpoints, TensorBoard events and samples go here (local,
      relative or `~` paths are made absolute; gs:// works).

  Returns:
    The final TrainState.

  Raises:
    errors.UserError: a bad config value or a missing file, before any
      compilation.
    errors.CheckpointSaveError: a checkpoint could not be written.
  """
  run = setup(config, workdir)
  config, state, checkpointer = run.config, run.state, run.checkpointer
  step = start_step = int(state.step)
  writer = _open_writer(run, start_step)
  batches = pipeline.as_numpy(run.data.train_dataset(
      config.batch_size // jax.process_count(), config.d_steps_per_g_step,
      run.position))
  sample = _SampleGrids(run, writer)
  metric_log = _MetricLog(run, writer, start_step)
  report = periodic_actions.ReportProgress(
      num_train_steps=config.num_train_steps, writer=writer)
  position = run.position
  with _Preemption() as preemption:
    while step < config.num_train_steps:
      batch = next(batches)
      position = int(batch.pop('next_position'))
      if run.table is not None:
        run.table.check(batch['token_ids'], batch['token_mask'])
      state, metrics = run.steps.at(step)(
          state, parallel.shard_batch(batch, run.mesh), run.frozen)
      step += 1
      checkpointer.check()  # Stops at once if a background save failed.
      metric_log.add(metrics)
      report(step)
      is_last = step == config.num_train_steps
      preempted = preemption.reached(step)
      must_save = (step % config.checkpoint_every_steps == 0 or is_last or
                   preempted)
      if step % config.log_every_steps == 0 or is_last or must_save:
        metric_log.write(step)
      if step % config.sample_every_steps == 0 or is_last:
        sample(step, state)
      if must_save:
        checkpointer.save(step, state, _all_positions(position))
      if preempted and not is_last:
        logging.warning('Stopping at step %d after SIGTERM.', step)
        break
  checkpointer.wait_until_finished()
  writer.flush()
  return state


def _open_writer(run: TrainingRun, start_step: int):
  """The metric writer; process 0 also writes the resolved config.json."""
  if jax.process_index() == 0:  # For sampling and evaluation jobs.
    run_dir.write_config(run.workdir, run.config)
  writer = metric_writers.create_default_writer(
      run.workdir, just_logging=jax.process_index() > 0)
  if start_step == 0:
    writer.write_hparams({k: v for k, v in run.config.to_dict().items()
                          if isinstance(v, (int, float, str, bool))})
  return writer
