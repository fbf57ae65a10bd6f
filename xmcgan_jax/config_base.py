"""The base experiment config every file in configs/ starts from, and its checks.

configs/*.py call `get_base_config()` and override fields; `validate` runs
before anything is compiled or read, so a bad field fails in a second with a
message naming it.
"""

import difflib
import importlib.util
import os
from typing import List, Optional, Sequence

import ml_collections

from xmcgan_jax import errors

DATASETS = ('shapes', 'coco', 'ln_coco', 'ln_openimages')
IMAGE_SIZES = (64, 128, 256)
IMAGE_ENCODERS = ('none', 'vgg19', 'resnet50')
# How FID's Inception sees images: pytorch-fid's bilinear resize inside the
# network, or clean-fid's antialiased PIL bicubic (eval/inception.py).
FID_RESIZE_MODES = ('pytorch_fid', 'clean')
PRDC_FEATURES = ('inception', 'dinov2')
EVAL_CAPTIONS = ('first', 'random')
EVAL_REAL_RESIZES = ('bilinear', 'center_crop_lanczos')
# eval/protocols.py's names (a test checks that they agree).
EVAL_PROTOCOLS = ('ours', 'release_2021', 'clean_fid_coco30k')
# models/layers.POOL_OPS (a test checks that they agree).
D_DOWNSAMPLES = ('avg', 'max', 'mixed')
# models/generator.ATTENTION_RESOLUTIONS (a test checks that they agree).
G_ATTENTION_RESOLUTIONS = (8, 16, 32)


def _loss_weights() -> ml_collections.ConfigDict:
  """Loss term weights; 0 switches a term off."""
  w = ml_collections.ConfigDict()
  w.adversarial = 1.0  # Hinge, D and G.
  w.sentence = 1.0  # Sentence-image NCE.
  w.word_region = 1.0  # Word-region NCE.
  w.image_d = 1.0  # Real-fake NCE on D features (G).
  w.image_pretrained = 1.0  # Real-fake NCE on a frozen encoder.
  # gamma of an R1 penalty on D's real images (not in the paper; 0 = off).
  w.r1 = 0.0
  return w


def _image_encoder() -> ml_collections.ConfigDict:
  """Frozen pretrained image encoder for loss_weights.image_pretrained."""
  e = ml_collections.ConfigDict()
  e.name = 'none'  # One of IMAGE_ENCODERS.
  e.weights = ''  # .h5 / .npz / .npy weight file.
  e.feature = ''  # '' = default (vgg19: fc7, resnet50: logits).
  e.preprocess = ''  # '' = as the weights need; or 'none', ...
  return e


def _add_text_encoder_fields(c: ml_collections.ConfigDict) -> None:
  """The frozen text encoder's fields (top level, as saved runs saw them)."""
  # Frozen BERT family, run inside the train step.
  c.text_encoder = 'bert-base-uncased'  # Local dir, package or HF cache name.
  # Sentence feature: 'mean' of real tokens, 'pooler', or 'release_sum' (the
  # 2021 release's bug: padding positions summed in; docs/fidelity.md).
  c.text_pooling = 'mean'
  # 'pretrained' weights, or 'random': the encoder's architecture and vocab
  # with frozen Flax-default weights (seed 0), a diagnostic (docs/ablation.md).
  c.text_encoder_weights = 'pretrained'
  # Encode every distinct training caption once at start-up and look the
  # features up in the step instead of running the encoder on each batch
  # (equal up to float rounding). Only for closed caption sets (Shapes);
  # a caption outside the set stops the run with an error naming it.
  c.text_feature_table = False


def _add_evaluation_fields(c: ml_collections.ConfigDict) -> None:
  """The eval job's fields (top level, as runs saved before saw them)."""
  # 'ours', 'release_2021' or 'clean_fid_coco30k' (eval/protocols.py): sets
  # the fields below that define a published number's protocol.
  c.eval_protocol = 'ours'
  c.eval_num_samples = 30_000  # Generated images for FID/IS (paper: 30k).
  c.eval_batch_size = 256  # Global batch of evaluation sampling.
  # Train-mode forwards of the EMA generator (64 captions each, fresh noise)
  # that give it its own BatchNorm statistics for sampling and evaluation.
  c.standing_stats_passes = 50
  # Caption of each eval image: 'first' of its captions or a 'random' one
  # (fixed by the data seed).
  c.eval_caption = 'first'
  # Real eval images: 'bilinear' (the pipeline's antialiased resize to
  # image_size, no crop) or 'center_crop_lanczos' (a centre square, PIL
  # Lanczos to eval_image_size; generated images get the same resize).
  c.eval_real_resize = 'bilinear'
  c.eval_image_size = 0  # Side of the images the metrics see; 0 = image_size.
  c.inception_score_splits = 10  # IS splits (the 2021 release: 1).
  c.inception_weights = ''  # FID-Inception .npz (see README, Evaluation).
  c.fid_stats_dir = ''  # Real-image FID statistics cache; '' = ~/.cache/xmcgan_jax.
  # 'pytorch_fid' (bilinear, TTUR/pytorch-fid numbers) or 'clean' (clean-fid's
  # antialiased bicubic, e.g. GigaGAN's FIDs).
  c.fid_resize = 'pytorch_fid'
  # Hugging Face CLIP directory (e.g. openai/clip-vit-base-patch32): adds
  # CLIP score and CLIP R-precision; '' = off.
  c.clip_weights = ''
  # Metric families of the eval job (eval/metrics): 'fid', 'clip',
  # 'shapes_oracle', 'cmmd', 'fd_dinov2', 'prdc'. () = those the weights
  # above enable, and the oracle on Shapes.
  c.eval_metrics = ()
  # Hugging Face directory of openai/clip-vit-large-patch14-336 for 'cmmd'.
  c.cmmd_clip_weights = ''
  # Hugging Face directory of a DINOv2 (facebook/dinov2-large, as dgm-eval)
  # for 'fd_dinov2'.
  c.dinov2_weights = ''
  c.prdc_k = 5  # Nearest neighbours of 'prdc' (5 as published).
  # Features of 'prdc': 'inception' (FID's pool3) or 'dinov2' (dgm-eval's).
  c.prdc_features = 'inception'


def _add_optimisation_fields(c: ml_collections.ConfigDict) -> None:
  """get_base_config's optimisation fields (batch, rates, losses' settings)."""
  c.batch_size = 256  # Global batch per sub-step (real images per D update).
  c.d_steps_per_g_step = 2  # D updates per G update (sub-batches per step).
  c.g_lr = 1e-4  # Generator Adam learning rate.
  c.d_lr = 4e-4  # Discriminator Adam learning rate.
  c.adam_b1 = 0.5  # Adam beta1 of both optimizers.
  c.adam_b2 = 0.999  # Adam beta2 of both optimizers.
  # Final G steps over which both rates fall linearly towards 0 (ending at
  # num_train_steps); 0 = constant rates, the paper's. Not in the paper.
  c.lr_decay_steps = 0
  c.ema_decay = 0.999  # EMA of generator params.
  c.contrastive_negatives = 'global'  # 'global' batch or 'local' (2021 code).
  c.bn_group = 'device'  # G BatchNorm stats: 'device', 'global' or N examples.
  c.temperature = 0.1  # NCE temperature of sentence/image losses.
  c.word_gammas = (5.0, 5.0, 50.0)  # DAMSM gamma1..3 of the word loss.
  # Hard negative captions (not in the paper): classes of interchangeable
  # one-piece words, e.g. ('circle square triangle', 'top bottom'). Each
  # caption gets one negative per class with a word of the class swapped;
  # the sentence and word-region NCE score every image against them too.
  # () = off; none are drawn while both those terms' weights are 0.
  c.hard_negative_words = ()
  c.num_train_steps = 500_000  # G updates.


def get_base_config() -> ml_collections.ConfigDict:
  """Paper defaults (COCO-like); each config file overrides what differs."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # Model init and noise; also the data order unless data_seed.
  # Data order, caption choice, flips; -1: seed (fixed: seeds of a study
  c.data_seed = -1  # differ in initialisation and noise only).

  # Data.
  c.dataset = 'shapes'  # One of DATASETS.
  c.data_dir = ''  # TFDS data_dir; '' = TFDS default (~/tensorflow_datasets).
  c.manual_dir = ''  # Localized Narratives: JSONL + images (see README).
  c.shapes_train_size = 20_000  # Shapes: generated training examples.
  c.shapes_eval_size = 2_000  # Shapes: generated validation examples.
  c.shapes_grid = 3  # Shapes: cells per side (3: 3x3 grid, 2: 2x2 grid).
  c.shapes_max_objects = 3  # Shapes: 1 to this many objects per image.
  c.image_size = 256  # 64, 128 or 256; sets the G/D channel schedules.
  c.max_tokens = 17  # T: word pieces incl. [CLS]/[SEP] (17 COCO, 64 LN).
  c.shuffle_buffer = 10_000  # tf.data shuffle buffer (examples per host).
  c.random_flip = True  # Train-time flips; off where captions say left/right.
  # Each training example followed by its mirror, 'left'/'right' swapped in
  # the caption: batches of pairs that differ only in side (needs an even
  # batch; halves the records per batch).
  c.mirror_pairs = False
  # (Shapes) Each training example followed by a sibling with one object's
  # shape changed (its shape word too): pairs that differ only in shape
  # (before mirror_pairs; halves the records per batch again).
  c.shape_pairs = False

  _add_text_encoder_fields(c)

  # Model.
  c.g_width = 96  # gf: generator base channels.
  c.d_width = 96  # df: discriminator base channels.
  c.z_dim = 128  # Noise size.
  c.attention_gamma = 15.0  # Word-region attention sharpness in G.
  c.dtype = 'bfloat16'  # Compute dtype; params stay float32.
  c.remat = False  # Recompute G/D block activations in backward: less memory.
  c.g_out_padded_channels = 16  # G's RGB conv computes this many (exact).
  c.g_stem_text = False  # G's stem sees [sentence, z], not z alone (paper).
  # Local CBN's 16x16 map at 32px and up: 'nearest' (paper) or 'bilinear'.
  c.g_cond_upsample = 'nearest'
  # G's word-region attention grid: 16 (paper), 8 or 32 (a study option).
  c.g_attention_resolution = 16
  c.d_downsample = 'avg'  # D's 2x2 pooling: 'avg' (paper), 'max', 'mixed'.
  c.d_downsample_from_step = 0  # G steps before it, D averages.

  _add_optimisation_fields(c)

  c.loss_weights = _loss_weights()
  c.image_encoder = _image_encoder()

  # Logging and checkpoints.
  c.log_every_steps = 100  # Scalars to TensorBoard and console.
  c.checkpoint_every_steps = 5_000  # Also saved at the end and on SIGTERM.
  c.keep_checkpoints = 3  # Most recent checkpoints kept.
  # JAX's persistent compilation cache: a restarted or resumed job loads its
  # compiled step instead of compiling again. '' = WORKDIR/jax_cache; the
  # JAX_COMPILATION_CACHE_DIR environment variable wins over both.
  c.compilation_cache_dir = ''
  c.sample_every_steps = 5_000  # Sample grids of fixed eval captions.
  c.num_sample_captions = 16  # Captions in the sample grid.

  _add_evaluation_fields(c)
  return c


def data_seed(config: ml_collections.ConfigDict) -> int:
  """The seed of the data order (config.data_seed; -1 or absent: config.seed).

  Configs built before the field existed (or by hand) have no data_seed.
  """
  seed = config.get('data_seed', -1)
  return config.seed if seed == -1 else seed


def _bad(field: str, value, message: str) -> None:
  raise errors.ConfigError(f'config.{field}={value!r}: {message}')


def pair_group_size(mirror_pairs: bool, shape_pairs: bool) -> int:
  """Examples each training record becomes (itself, its mirror and/or its
  shape sibling, and their mirrors): the batch must be a multiple."""
  return 2**(int(mirror_pairs) + int(shape_pairs))


def parse_hard_negative_words(classes) -> List[List[str]]:
  """config.hard_negative_words -> word lists; raises ConfigError naming a
  bad class (fewer than two distinct words, or a word in two classes)."""
  if isinstance(classes, str):
    _bad('hard_negative_words', classes, "a tuple of classes, e.g. "
         "('circle square triangle', 'top bottom').")
  parsed, seen = [], {}
  for i, text in enumerate(classes):
    words = str(text).split()
    if len(set(words)) < 2 or len(set(words)) != len(words):
      _bad(f'hard_negative_words[{i}]', text,
           'a class needs two or more distinct words, separated by spaces.')
    for word in words:
      if word in seen:
        _bad('hard_negative_words', tuple(classes),
             f'{word!r} is in class {seen[word]} and class {i}; a word may '
             'be in one class only.')
      seen[word] = i
    parsed.append(words)
  return parsed


def check_positive(field: str, value) -> None:
  """Raises ConfigError naming `field` unless value is an integer >= 1."""
  if int(value) < 1:
    _bad(field, value, 'must be a positive integer.')


def check_contrastive_negatives(value: str) -> None:
  """Raises ConfigError unless value is 'global' or 'local'."""
  if value not in ('global', 'local'):
    _bad('contrastive_negatives', value, "use 'global' or 'local'.")


def check_bn_group(value, local_batch: Optional[int] = None,
                   n_devices: Optional[int] = None) -> None:
  """Raises ConfigError for a bad generator BatchNorm group.

  Args:
    value: config.bn_group ('device', 'global' or an int number of examples).
    local_batch: the per-device batch; with n_devices, an int group must be
      a multiple of it that splits the devices into equal groups.
    n_devices: devices on the data axis.
  """
  if not (value in ('device', 'global') or
          (isinstance(value, int) and not isinstance(value, bool) and
           value > 0)):
    _bad('bn_group', value, "use 'device', 'global' or a positive int.")
  if isinstance(value, int) and local_batch and n_devices and (
      value % local_batch or n_devices % (value // local_batch)):
    _bad('bn_group', value,
         f'must be a multiple of the per-device batch {local_batch} and '
         f'split the {n_devices} devices into groups.')


# Fields renamed since runs were saved: old dotted name -> new one.
RENAMED_FIELDS = {'loss_weights.word': 'loss_weights.word_region'}


def upgrade(config: ml_collections.ConfigDict) -> None:
  """Renames, in place, fields of a config saved before a rename.

  A run's config.json keeps the names of the code that wrote it; the
  sampling and eval jobs read it through this (run_dir.read_config).
  """
  for old, new in RENAMED_FIELDS.items():
    old_parent, _, old_name = old.rpartition('.')
    new_parent, _, new_name = new.rpartition('.')
    holder = config[old_parent] if old_parent else config
    if old_name in holder:
      target = config[new_parent] if new_parent else config
      with holder.unlocked(), target.unlocked():
        target[new_name] = holder[old_name]
        del holder[old_name]


def _check_eval_fields(config: ml_collections.ConfigDict) -> None:
  """validate's checks of the eval job's fields (absent in old runs)."""
  bad = _bad
  if config.fid_resize not in FID_RESIZE_MODES:
    bad('fid_resize', config.fid_resize, f'choose from {FID_RESIZE_MODES}.')
  for field, choices in (('eval_caption', EVAL_CAPTIONS),
                         ('eval_real_resize', EVAL_REAL_RESIZES),
                         ('eval_protocol', EVAL_PROTOCOLS)):
    if config.get(field, choices[0]) not in choices:
      bad(field, config[field], f'choose from {choices}.')
  if config.get('inception_score_splits', 1) < 1:
    bad('inception_score_splits', config.inception_score_splits,
        'must be >= 1.')
  if config.get('eval_image_size', 0) < 0:
    bad('eval_image_size', config.eval_image_size, 'use 0 (= image_size) or '
        'a side in pixels.')
  if config.get('prdc_features', 'inception') not in PRDC_FEATURES:
    bad('prdc_features', config.prdc_features, f'choose from {PRDC_FEATURES}.')


def _check_model_and_optimiser_options(config: ml_collections.ConfigDict
                                       ) -> None:
  """validate's checks of the model's and the optimiser's option fields."""
  bad = _bad
  if config.g_cond_upsample not in ('nearest', 'bilinear'):
    bad('g_cond_upsample', config.g_cond_upsample,
        "use 'nearest' or 'bilinear'.")
  resolution = config.get('g_attention_resolution', 16)
  if (resolution not in G_ATTENTION_RESOLUTIONS or
      resolution >= config.image_size):
    bad('g_attention_resolution', resolution,
        f'use one of {G_ATTENTION_RESOLUTIONS} below image_size '
        f'({config.image_size}).')
  if config.get('d_downsample', 'avg') not in D_DOWNSAMPLES:
    bad('d_downsample', config.d_downsample, f'use one of {D_DOWNSAMPLES}.')
  if config.text_pooling not in ('mean', 'pooler', 'release_sum'):
    bad('text_pooling', config.text_pooling,
        "use 'mean', 'pooler' or 'release_sum'.")
  if not 0 <= config.get('lr_decay_steps', 0) <= config.num_train_steps:
    bad('lr_decay_steps', config.lr_decay_steps,
        f'use 0 (constant rates) to num_train_steps '
        f'({config.num_train_steps}).')
  if config.get('d_downsample_from_step', 0) < 0:
    bad('d_downsample_from_step', config.d_downsample_from_step,
        'use 0 (from the start) or a G step.')


def validate(config: ml_collections.ConfigDict,
             num_devices: Optional[int] = None) -> None:
  """Raises ValueError naming the first bad field of `config`.

  Args:
    config: an experiment config.
    num_devices: global device count, to check batch divisibility.
  """
  bad = _bad
  if config.dataset not in DATASETS:
    bad('dataset', config.dataset, f'unknown dataset; choose from {DATASETS}.')
  if config.image_size not in IMAGE_SIZES:
    bad('image_size', config.image_size,
        f'no channel schedule for this size; choose from {IMAGE_SIZES}.')
  if config.dataset == 'shapes' and config.shapes_grid not in (2, 3):
    bad('shapes_grid', config.shapes_grid, 'use 2 (2x2 cells) or 3 (3x3).')
  if config.dataset == 'shapes' and not (
      1 <= config.shapes_max_objects <= config.shapes_grid**2):
    bad('shapes_max_objects', config.shapes_max_objects,
        f'must be in [1, {config.shapes_grid**2}] (the cells of the grid).')
  if config.get('data_seed', -1) < -1:
    bad('data_seed', config.data_seed, 'use -1 (same as seed) or a seed >= 0.')
  if config.max_tokens < 3:
    bad('max_tokens', config.max_tokens, 'needs room for [CLS], a word, [SEP].')
  if config.dtype not in ('float32', 'bfloat16'):
    bad('dtype', config.dtype, "use 'float32' or 'bfloat16'.")
  _check_eval_fields(config)
  check_contrastive_negatives(config.contrastive_negatives)
  _check_model_and_optimiser_options(config)
  for field in ('batch_size', 'd_steps_per_g_step', 'num_train_steps',
                'log_every_steps', 'checkpoint_every_steps',
                'keep_checkpoints', 'sample_every_steps', 'g_width',
                'd_width', 'z_dim', 'standing_stats_passes'):
    check_positive(field, config[field])
  if num_devices and config.batch_size % num_devices:
    bad('batch_size', config.batch_size,
        f'not divisible by the {num_devices} devices (each sub-step batch '
        'splits evenly over devices; the step takes d_steps_per_g_step='
        f'{config.d_steps_per_g_step} of them, '
        f'{config.batch_size * config.d_steps_per_g_step} images).')
  group = pair_group_size(config.mirror_pairs, config.shape_pairs)
  if config.batch_size % group:
    bad('batch_size', config.batch_size,
        f'mirror_pairs={config.mirror_pairs} and shape_pairs='
        f'{config.shape_pairs} need a batch divisible by {group} (examples '
        'come in groups of that size).')
  if config.hard_negative_words:
    parse_hard_negative_words(config.hard_negative_words)
  if config.shape_pairs and config.dataset != 'shapes':
    bad('shape_pairs', True, "draws Shapes images; config.dataset is "
        f'{config.dataset!r}.')
  check_bn_group(config.bn_group,
                 config.batch_size // num_devices if num_devices else None,
                 num_devices)
  for name, weight in config.loss_weights.items():
    if weight < 0:
      bad(f'loss_weights.{name}', weight, 'use 0 (off) or a positive weight.')
  if config.image_encoder.name not in IMAGE_ENCODERS:
    bad('image_encoder.name', config.image_encoder.name,
        f'choose from {IMAGE_ENCODERS}.')
  if (config.image_encoder.name == 'none' and
      config.loss_weights.image_pretrained > 0):
    bad('loss_weights.image_pretrained', config.loss_weights.image_pretrained,
        "the term needs a frozen image encoder but image_encoder.name='none'"
        ': set image_encoder.name and .weights, or this weight to 0.')
  if config.image_encoder.name != 'none' and not config.image_encoder.weights:
    bad('image_encoder.weights', config.image_encoder.weights,
        f'image_encoder.name={config.image_encoder.name!r} needs a weight '
        'file path.')
  if config.dataset.startswith('ln_') and not config.manual_dir:
    bad('manual_dir', config.manual_dir,
        f'dataset {config.dataset!r} needs the Localized Narratives JSONL and '
        'images in a manual directory (see README, Data).')


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """get_config() of a config file (configs/*.py; `path:arg` not supported).

  Raises:
    MissingFileError: no such file.
  """
  if not os.path.isfile(path):
    raise errors.MissingFileError(f'--config={path}: file not found (from '
                                  f'{os.getcwd()}).')
  spec = importlib.util.spec_from_file_location('_xmcgan_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def field_names(config: ml_collections.ConfigDict, prefix: str = ''
                ) -> List[str]:
  """Every field of `config` as a dotted name ('loss_weights.word_region',
  ...)."""
  names = []
  for key, value in config.items():
    names.append(prefix + key)
    if isinstance(value, ml_collections.ConfigDict):
      names.extend(field_names(value, prefix + key + '.'))
  return names


def check_overrides(config_path: str, keys: Sequence[str]) -> None:
  """Raises ConfigError for a --config.KEY that names no field of the file.

  Args:
    config_path: the --config value (a `file.py:arg` suffix is ignored).
    keys: dotted override keys, e.g. ['batch_size',
      'loss_weights.word_region'].
  """
  path = config_path.split(':', 1)[0]
  config = load_config_file(path)
  known = field_names(config)
  for key in keys:
    if key not in known:
      close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
      hint = f'; did you mean --config.{close[0]}?' if close else '.'
      raise errors.ConfigError(
          f'--config.{key}: {path} has no field {key!r}{hint}')
