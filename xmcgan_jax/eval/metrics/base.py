"""The interface of the eval job's metric plug-ins, their registry and cache.

A metric family is a class registered by name (`register`). The eval job
builds the ones `config.eval_metrics` names (`build`), once per job: each
loads its network, checks its weights and computes (or reads from the cache)
what it needs of the real images. Then, for each generator (raw and EMA G),
the job hands every generated uint8 batch to `features` and the collected
features to `scores`, whose keys it prefixes with 'raw/' or 'ema/';
`reference` gives the real images' own scores (ceilings) under 'real/'.
"""

import dataclasses
import datetime
import hashlib
import io
import json
import os
from typing import (Any, Callable, Dict, Iterator, List, Optional, Sequence,
                    Tuple)

from absl import logging
import numpy as np
import tensorflow as tf

from xmcgan_jax import errors


@dataclasses.dataclass
class EvalInputs:
  """What a metric may use: the run's config and the fixed eval examples.

  Attributes:
    config: the run's config (eval fields set the protocol).
    workdir: the run's directory (the Shapes oracle is cached there).
    captions: the N eval captions; generated image i is of caption i.
    real_images: a fresh iterator of the N real images (uint8 batches).
    truth: Shapes objects of the captions (None elsewhere).
    options: plug-in specific objects given by API users (for example a
      features function in place of the FID Inception, as tests do).
  """
  config: Any
  workdir: str
  captions: List[str]
  real_images: Callable[[], Iterator[np.ndarray]]
  truth: Optional[np.ndarray] = None
  options: Dict[str, Any] = dataclasses.field(default_factory=dict)


class Metric:
  """One metric family. Subclasses override what they use.

  Attributes:
    name: set by `register`.
    weights: (config field, file inside it or '') of the network's weights,
      checked by `build` before any metric is built; None: no weights.
    replaced_by: an EvalInputs.options key that stands in for the weights.
  """
  name = ''
  weights: Optional[Tuple[str, str]] = None
  replaced_by = ''

  @classmethod
  def weights_for(cls, config) -> Tuple[Optional[Tuple[str, str]], str]:
    """(weights, replaced_by) under this config (the class attributes,
    unless the config picks the network)."""
    del config  # The network is fixed.
    return cls.weights, cls.replaced_by

  def features(self, images: np.ndarray) -> Any:
    """What `scores` needs of one batch of generated uint8 images."""
    raise NotImplementedError

  def scores(self, features: Sequence[Any]) -> Dict[str, float]:
    """Keys of one generator from the features of all its batches."""
    raise NotImplementedError

  def reference(self) -> Dict[str, float]:
    """The real images' own scores (the ceilings); none by default."""
    return {}


_REGISTRY: Dict[str, Callable[[EvalInputs], Metric]] = {}


def register(name: str):
  """Class decorator: makes a Metric subclass available as `name`."""

  def add(cls):
    cls.name = name
    _REGISTRY[name] = cls
    return cls

  return add


def names() -> List[str]:
  """Every registered metric family."""
  return sorted(_REGISTRY)


def default_metrics(config) -> List[str]:
  """The families an empty config.eval_metrics selects: those whose weights
  the config names, and the oracle on Shapes (the job before the field)."""
  chosen = ['shapes_oracle'] if config.dataset == 'shapes' else []
  for field, name in (('inception_weights', 'fid'), ('clip_weights', 'clip'),
                      ('cmmd_clip_weights', 'cmmd'),
                      ('dinov2_weights', 'fd_dinov2')):
    if config.get(field):
      chosen.append(name)
  return chosen


def build(inputs: EvalInputs, chosen: Sequence[str] = ()) -> List[Metric]:
  """The metric plug-ins named (default: config.eval_metrics, or when that
  is empty `default_metrics`), built in order.

  Raises:
    errors.ConfigError: an unknown name, or none that this config can run.
    errors.MissingFileError: a named network's weights are missing (before
      any image is generated).
  """
  config = inputs.config
  chosen = (list(chosen) or list(config.eval_metrics) or
            default_metrics(config))
  unknown = [n for n in chosen if n not in _REGISTRY]
  if unknown:
    raise errors.ConfigError(
        f'config.eval_metrics names {unknown}; the metrics are {names()}.')
  if not chosen:
    raise errors.ConfigError(
        'no metric to run: config.eval_metrics is empty and so are '
        'inception_weights, clip_weights, cmmd_clip_weights and '
        'dinov2_weights (each enables its metric; see README, Evaluation); '
        'only Shapes runs can be evaluated without weights.')
  for name in chosen:  # Every missing weight file first: a one-line error.
    weights, replaced_by = _REGISTRY[name].weights_for(config)
    if weights and replaced_by not in inputs.options:
      require_file(config, *weights, what=name)
  return [_REGISTRY[name](inputs) for name in chosen]


def require_file(config, field: str, inside: str = '',
                 what: str = '') -> None:
  """A one-line error naming the config field when its weights are absent.

  Args:
    config: the run's config.
    field: the field holding the weights' path.
    inside: a file that must exist inside that directory ('' = the path
      itself is the file).
    what: the metric that needs it (for the message).
  """
  path = config[field]
  if not path:
    raise errors.ConfigError(
        f"config.{field} is empty: the metric {what!r} needs it (see README, "
        'Evaluation, for the download).')
  full = os.path.join(path, inside) if inside else path
  if not tf.io.gfile.exists(full):
    raise errors.MissingFileError(
        f'config.{field}: {full} not found (the metric {what!r} needs it).')


def directory_digest(directory: str) -> str:
  """SHA-256 over a Hugging Face directory's config and safetensors files."""
  h = hashlib.sha256()
  for name in sorted(tf.io.gfile.listdir(directory)):
    if name == 'config.json' or name.endswith('.safetensors'):
      with tf.io.gfile.GFile(os.path.join(directory, name), 'rb') as f:
        for block in iter(lambda: f.read(1 << 22), b''):
          h.update(block)
  return h.hexdigest()


def cached_real(config, name: str, provenance: Dict[str, Any],
                compute: Callable[[], Dict[str, np.ndarray]]
                ) -> Dict[str, np.ndarray]:
  """Arrays of the real eval images, computed once per cache file name.

  Args:
    config: the run's config (fid_stats_dir: the cache directory).
    name: the file name; it holds everything the arrays depend on.
    provenance: written beside the arrays (and logged when read).
    compute: makes the arrays when the file does not exist.

  Returns:
    The arrays.
  """
  cache_dir = config.fid_stats_dir or os.path.join(
      os.path.expanduser('~'), '.cache', 'xmcgan_jax', 'fid_stats')
  path = os.path.join(cache_dir, name)
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path, 'rb') as f:
      cached = np.load(io.BytesIO(f.read()))
      logging.info('Real statistics from %s (%s).', path,
                   cached['provenance'])
      return {k: cached[k] for k in cached.files if k != 'provenance'}
  arrays = compute()
  provenance = dict(provenance, eval_protocol=config.eval_protocol,
                    eval_real_resize=config.eval_real_resize,
                    eval_image_size=config.eval_image_size or
                    config.image_size, created=datetime.datetime.now(
      datetime.timezone.utc).isoformat())
  tf.io.gfile.makedirs(cache_dir)
  buffer = io.BytesIO()
  np.savez(buffer, provenance=np.array(json.dumps(provenance)), **arrays)
  with tf.io.gfile.GFile(path, 'wb') as f:
    f.write(buffer.getvalue())
  logging.info('Wrote real statistics %s.', path)
  return arrays


def real_cache_name(config, metric: str, count: int, digest: str,
                    resize: str) -> str:
  """'[metric_]dataset_split_Spx[_realresize]_N_digest_resize.npz' (FID's
  has no prefix, as its caches had before the plug-ins)."""
  from xmcgan_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  split = pipeline.DATASETS[config.dataset].eval_split.replace('+', '_')
  prefix = f'{metric}_' if metric else ''
  side = f'{config.eval_image_size or config.image_size}px'
  if config.eval_real_resize != 'bilinear':  # How the reals got that side.
    side += f'_{config.eval_real_resize}'
  return (f'{prefix}{config.dataset}_{split}_{side}_{count}_'
          f'{digest[:8]}_{resize}.npz')
