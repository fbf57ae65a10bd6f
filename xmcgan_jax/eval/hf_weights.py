"""Hugging Face safetensors checkpoints -> Flax parameters, and back.

The eval networks (CLIP, DINOv2) load Hugging Face model directories without
torch. Each network lists its weights as (Hugging Face tensor name, Flax
parameter path, layout) triples; this module reads the files (one
model.safetensors or shards named by model.safetensors.index.json), moves
every tensor into Flax layout and checks its shape against the model's own,
naming the file, the tensor and both shapes when one differs.
"""

import json
import os
from typing import Callable, Dict, List, Tuple

import flax
import numpy as np
from safetensors import numpy as safetensors_numpy
import tensorflow as tf

from xmcgan_jax import errors

# Hugging Face tensor layout -> Flax parameter layout, and back.
Layout = Tuple[Callable[[np.ndarray], np.ndarray],
               Callable[[np.ndarray], np.ndarray]]
Names = List[Tuple[str, Tuple[str, ...], Layout]]
SAME: Layout = (lambda w: w, lambda w: w)
LINEAR: Layout = (lambda w: w.T, lambda w: w.T)  # (out, in) <-> (in, out).
CONV: Layout = (lambda w: w.transpose(2, 3, 1, 0),  # OIHW <-> HWIO.
                lambda w: w.transpose(3, 2, 0, 1))


def heads(num_heads: int, output: bool) -> Layout:
  """Attention projections: (D, D) linear <-> Flax's per-head kernels.

  Args:
    num_heads: attention heads.
    output: the output projection (else query, key or value).

  Returns:
    The layout of its weight; a bias of query/key/value takes the same
    one ((D,) <-> (heads, head_dim)), the output's bias is SAME.
  """
  if output:  # (D_out, D_in) <-> (heads, head_dim, D_out).
    return (lambda w: w.T.reshape(num_heads, -1, w.shape[0]),
            lambda w: w.reshape(-1, w.shape[-1]).T)
  return (lambda w: (w.T.reshape(w.shape[1], num_heads, -1) if w.ndim == 2
                     else w.reshape(num_heads, -1)),
          lambda w: (w.reshape(w.shape[0], -1).T if w.ndim == 3
                     else w.reshape(-1)))


def config_path(directory: str, field: str, model: str) -> str:
  """DIRECTORY/config.json, or a MissingFileError naming the config field.

  Args:
    directory: a Hugging Face model directory.
    field: the config field that named it (for the message).
    model: what it should hold, e.g. 'CLIP' (for the message).
  """
  path = os.path.join(directory, 'config.json')
  if not tf.io.gfile.exists(path):
    raise errors.MissingFileError(
        f'{path} not found: config.{field} must be a Hugging Face {model} '
        'directory (see README, Evaluation).')
  return path


def read_tensors(directory: str, needs: str) -> Tuple[Dict[str, np.ndarray],
                                                      str]:
  """All tensors of model.safetensors (or its shards), and the file named.

  Args:
    directory: a Hugging Face model directory.
    needs: what the directory must hold, for the missing-file message.

  Raises:
    errors.MissingFileError: a weights file is absent.
    ValueError: a file is not safetensors.
  """
  index = os.path.join(directory, 'model.safetensors.index.json')
  if tf.io.gfile.exists(index):
    with tf.io.gfile.GFile(index) as f:
      files = sorted(set(json.load(f)['weight_map'].values()))
  else:
    files = ['model.safetensors']
  tensors = {}
  for name in files:
    path = os.path.join(directory, name)
    if not tf.io.gfile.exists(path):
      raise errors.MissingFileError(f'{path} not found: {needs} (see README, '
                                    'Evaluation).')
    with tf.io.gfile.GFile(path, 'rb') as f:
      try:
        tensors.update(safetensors_numpy.load(f.read()))
      except Exception as e:  # safetensors raises its own error types.
        raise ValueError(f'{path}: not a readable safetensors file ({e}).'
                         ) from e
  return tensors, os.path.join(directory, files[0] if len(files) == 1
                               else 'model.safetensors.index.json')


def to_flax(tensors: Dict[str, np.ndarray], source: str, names: Names,
            expected: Dict[Tuple[str, ...], Tuple[int, ...]],
            model: str) -> Dict:
  """Flax parameters from Hugging Face tensors, every shape checked.

  Args:
    tensors: Hugging Face name -> array (extra tensors are ignored).
    source: the file they came from (for messages).
    names: (Hugging Face name, Flax path, layout) of every parameter.
    expected: Flax path -> shape of the model the config implies.
    model: what the checkpoint should be (for messages).

  Raises:
    ValueError naming the file, the tensor and both shapes.
  """
  flat = {}
  for hf_name, flax_path, (forward, _) in names:
    if hf_name not in tensors:
      raise ValueError(f'{source}: tensor {hf_name!r} is missing; is this a '
                       f'{model} checkpoint matching its config.json?')
    value = forward(np.asarray(tensors[hf_name], np.float32))
    want = tuple(expected[flax_path])
    if value.shape != want:
      raise ValueError(
          f'{source}: tensor {hf_name!r} has shape '
          f'{np.shape(tensors[hf_name])}; config.json implies {want} in Flax '
          f'layout (got {value.shape}).')
    flat[flax_path] = value
  return flax.traverse_util.unflatten_dict(flat)


def to_hugging_face(params: Dict, names: Names) -> Dict[str, np.ndarray]:
  """The inverse of to_flax: Hugging Face names and layouts (float32)."""
  flat = flax.traverse_util.flatten_dict(params)
  return {hf_name: np.array(back(np.asarray(flat[flax_path], np.float32)),
                           order='C')
          for hf_name, flax_path, (_, back) in names}
