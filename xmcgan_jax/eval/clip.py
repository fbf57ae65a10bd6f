"""CLIP in Flax, for the CLIP score and CLIP R-precision of generated images.

The OpenAI CLIP ViTs (ViT-B/32, ViT-L/14, any shape a `config.json` gives)
loaded from a Hugging Face checkpoint directory, without torch:

  huggingface-cli download openai/clip-vit-base-patch32 --local-dir DIR

DIR holds config.json, model.safetensors (or sharded with
model.safetensors.index.json), vocab.json and merges.txt. Images are
preprocessed as CLIP's own pipeline does (PIL bicubic resize of the short
side, centre crop, CLIP's mean/std); captions are tokenized with CLIP's BPE
through Hugging Face `tokenizers` (what transformers' CLIPTokenizer runs),
cut at 77 tokens as `clip.tokenize(truncate=True)` does. OpenAI's tokenizer
also runs ftfy and HTML unescaping, which changes only mis-encoded or
HTML-escaped captions.

Metrics (`clip_metrics`), for image i generated from caption i:
  clip_score         mean of 100 * max(cos(image_i, caption_i), 0)
                     (torchmetrics' CLIPScore; StyleGAN-T),
  clip_score_cosine  mean of cos(image_i, caption_i) (GALIP's and
                     GigaGAN's "CLIP score", e.g. 0.3338 with ViT-B/32),
  clip_r_precision   top-1 rank of caption i among it and 99 random other
                     captions of the eval set (fixed seed).
"""

import dataclasses
import json
import os
from typing import Dict, Sequence, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import tensorflow as tf
import tokenizers

from xmcgan_jax import errors
from xmcgan_jax.eval import batched
from xmcgan_jax.eval import hf_weights
from xmcgan_jax.eval import r_precision

CONTEXT_LENGTH = 77  # CLIP's text context, start and end tokens included.
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
_START, _END = '<|startoftext|>', '<|endoftext|>'
# Full float32 matmuls: TPU and GPU default to bf16 passes, which move the
# embeddings by ~1e-3, far more than metrics compared across papers allow.
_PRECISION = jax.lax.Precision.HIGHEST
# Hugging Face CLIPTextConfig / CLIPVisionConfig defaults (ViT-B/32), for
# config.json files that leave a field out.
_TEXT_DEFAULTS = dict(hidden_size=512, intermediate_size=2048,
                      num_attention_heads=8, num_hidden_layers=12,
                      max_position_embeddings=77, vocab_size=49408,
                      hidden_act='quick_gelu', layer_norm_eps=1e-5)
_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072,
                        num_attention_heads=12, num_hidden_layers=12,
                        image_size=224, patch_size=32,
                        hidden_act='quick_gelu', layer_norm_eps=1e-5)
_ACTIVATIONS = {
    'quick_gelu': lambda x: x * jax.nn.sigmoid(1.702 * x),
    'gelu': lambda x: jax.nn.gelu(x, approximate=False),
}


@dataclasses.dataclass(frozen=True)
class TowerConfig:
  """One transformer tower (image or text)."""
  hidden_size: int
  intermediate_size: int
  num_heads: int
  num_layers: int
  activation: str
  layer_norm_eps: float
  positions: int  # Text: max tokens; image: patches + 1 (the class token).


@dataclasses.dataclass(frozen=True)
class ClipConfig:
  """The shapes of a CLIP model (from a Hugging Face config.json)."""
  vision: TowerConfig
  text: TowerConfig
  image_size: int
  patch_size: int
  vocab_size: int
  projection_dim: int


def read_config(path: str) -> ClipConfig:
  """ClipConfig of a Hugging Face CLIP config.json (fields it omits take
  transformers' defaults; `*_config_dict` entries win, as they do there)."""
  with tf.io.gfile.GFile(path) as f:
    raw = json.load(f)
  text = {**_TEXT_DEFAULTS, **(raw.get('text_config') or {}),
          **(raw.get('text_config_dict') or {})}
  vision = {**_VISION_DEFAULTS, **(raw.get('vision_config') or {}),
            **(raw.get('vision_config_dict') or {})}
  for name, tower in (('text_config', text), ('vision_config', vision)):
    if tower['hidden_act'] not in _ACTIVATIONS:
      raise errors.ConfigError(
          f'{path}: {name}.hidden_act={tower["hidden_act"]!r} is not one of '
          f'{sorted(_ACTIVATIONS)}.')

  def tower(t, positions):
    return TowerConfig(t['hidden_size'], t['intermediate_size'],
                       t['num_attention_heads'], t['num_hidden_layers'],
                       t['hidden_act'], t['layer_norm_eps'], positions)
  patches = (vision['image_size'] // vision['patch_size'])**2
  return ClipConfig(
      vision=tower(vision, patches + 1),
      text=tower(text, text['max_position_embeddings']),
      image_size=vision['image_size'], patch_size=vision['patch_size'],
      vocab_size=text['vocab_size'],
      projection_dim=raw.get('projection_dim', 512))


class _EncoderLayer(nn.Module):
  """Pre-LayerNorm transformer block (attention, then a 2-layer MLP)."""
  config: TowerConfig
  causal: bool

  @nn.compact
  def __call__(self, x):
    c = self.config
    y = nn.LayerNorm(c.layer_norm_eps, name='layer_norm1')(x)
    mask = nn.make_causal_mask(jnp.ones(x.shape[:2])) if self.causal else None
    x = x + nn.MultiHeadDotProductAttention(
        c.num_heads, qkv_features=c.hidden_size, out_features=c.hidden_size,
        precision=_PRECISION, name='self_attn')(y, mask=mask)
    y = nn.LayerNorm(c.layer_norm_eps, name='layer_norm2')(x)
    y = nn.Dense(c.intermediate_size, precision=_PRECISION, name='fc1')(y)
    y = _ACTIVATIONS[c.activation](y)
    return x + nn.Dense(c.hidden_size, precision=_PRECISION, name='fc2')(y)


class _Tower(nn.Module):
  """Position embeddings, the transformer blocks; the caller pools."""
  config: TowerConfig
  causal: bool

  @nn.compact
  def __call__(self, x):
    c = self.config
    positions = self.param('position_embedding',
                           nn.initializers.normal(0.02),
                           (c.positions, c.hidden_size))
    x = x + positions[:x.shape[1]]
    if not self.causal:  # The image tower normalises before its blocks.
      x = nn.LayerNorm(c.layer_norm_eps, name='pre_layernorm')(x)
    for i in range(c.num_layers):
      x = _EncoderLayer(c, self.causal, name=f'layers_{i}')(x)
    return x


class ClipModel(nn.Module):
  """CLIP's two towers with projections; embeddings are not normalised."""
  config: ClipConfig

  def setup(self):
    c = self.config
    v, t = c.vision, c.text
    self.patch_embedding = nn.Conv(
        v.hidden_size, (c.patch_size, c.patch_size),
        strides=(c.patch_size, c.patch_size), padding='VALID',
        use_bias=False, precision=_PRECISION)
    self.class_embedding = self.param(
        'class_embedding', nn.initializers.normal(0.02), (v.hidden_size,))
    self.vision = _Tower(v, causal=False)
    self.post_layernorm = nn.LayerNorm(v.layer_norm_eps)
    self.token_embedding = nn.Embed(c.vocab_size, t.hidden_size)
    self.text = _Tower(t, causal=True)
    self.final_layer_norm = nn.LayerNorm(t.layer_norm_eps)
    self.visual_projection = nn.Dense(c.projection_dim, use_bias=False,
                                      precision=_PRECISION)
    self.text_projection = nn.Dense(c.projection_dim, use_bias=False,
                                    precision=_PRECISION)
    self.logit_scale = self.param('logit_scale',
                                  nn.initializers.constant(np.log(1 / 0.07)),
                                  ())

  def embed_images(self, pixels: jax.Array) -> jax.Array:
    """(B, S, S, 3) preprocessed images -> (B, projection_dim)."""
    x = self.patch_embedding(pixels)
    x = x.reshape(x.shape[0], -1, x.shape[-1])
    cls = jnp.broadcast_to(self.class_embedding, (x.shape[0], 1, x.shape[-1]))
    x = self.vision(jnp.concatenate([cls, x], axis=1))
    return self.visual_projection(self.post_layernorm(x[:, 0]))

  def embed_texts(self, ids: jax.Array, lengths: jax.Array) -> jax.Array:
    """(B, T) token ids with their lengths -> (B, projection_dim).

    Pooled at each caption's end token (position length - 1); the causal
    mask keeps padding after it out of that position.
    """
    x = self.final_layer_norm(self.text(self.token_embedding(ids)))
    return self.text_projection(x[jnp.arange(x.shape[0]), lengths - 1])

  def __call__(self, pixels, ids, lengths):
    """(image embeddings, text embeddings, logits per image)."""
    images, texts = self.embed_images(pixels), self.embed_texts(ids, lengths)
    unit = lambda e: e / jnp.linalg.norm(e, axis=-1, keepdims=True)
    logits = jnp.exp(self.logit_scale) * jnp.einsum(
        'id,td->it', unit(images), unit(texts), precision=_PRECISION)
    return images, texts, logits


# Layouts of Hugging Face tensors (hf_weights).
_SAME, _LINEAR, _CONV = hf_weights.SAME, hf_weights.LINEAR, hf_weights.CONV


def _tower_names(prefix: str, flax_tower: str, config: TowerConfig
                 ) -> hf_weights.Names:
  names = []
  for i in range(config.num_layers):
    hf, fx = f'{prefix}.encoder.layers.{i}', (flax_tower, f'layers_{i}')
    for proj, flax_name in (('q_proj', 'query'), ('k_proj', 'key'),
                            ('v_proj', 'value'), ('out_proj', 'out')):
      layout = hf_weights.heads(config.num_heads, proj == 'out_proj')
      for field, flax_field in (('weight', 'kernel'), ('bias', 'bias')):
        names.append((f'{hf}.self_attn.{proj}.{field}',
                      fx + ('self_attn', flax_name, flax_field),
                      layout if field == 'weight' or proj != 'out_proj'
                      else _SAME))
    for module in ('layer_norm1', 'layer_norm2'):
      names.append((f'{hf}.{module}.weight', fx + (module, 'scale'), _SAME))
      names.append((f'{hf}.{module}.bias', fx + (module, 'bias'), _SAME))
    for module in ('fc1', 'fc2'):
      names.append((f'{hf}.mlp.{module}.weight', fx + (module, 'kernel'),
                    _LINEAR))
      names.append((f'{hf}.mlp.{module}.bias', fx + (module, 'bias'), _SAME))
  names.append((f'{prefix}.embeddings.position_embedding.weight',
                (flax_tower, 'position_embedding'), _SAME))
  return names


def tensor_names(config: ClipConfig) -> hf_weights.Names:
  """(Hugging Face tensor name, Flax parameter path, layout) of every weight."""
  def norm(hf, flax_name):
    return [(f'{hf}.weight', (flax_name, 'scale'), _SAME),
            (f'{hf}.bias', (flax_name, 'bias'), _SAME)]
  return (
      _tower_names('vision_model', 'vision', config.vision) +
      _tower_names('text_model', 'text', config.text) +
      # 'pre_layrnorm' (sic) is Hugging Face's name; ours is in the tower.
      [(f'vision_model.pre_layrnorm.{f}', ('vision', 'pre_layernorm', g),
        _SAME) for f, g in (('weight', 'scale'), ('bias', 'bias'))] +
      norm('vision_model.post_layernorm', 'post_layernorm') +
      norm('text_model.final_layer_norm', 'final_layer_norm') +
      [('vision_model.embeddings.patch_embedding.weight',
        ('patch_embedding', 'kernel'), _CONV),
       ('vision_model.embeddings.class_embedding', ('class_embedding',),
        _SAME),
       ('text_model.embeddings.token_embedding.weight',
        ('token_embedding', 'embedding'), _SAME),
       ('visual_projection.weight', ('visual_projection', 'kernel'), _LINEAR),
       ('text_projection.weight', ('text_projection', 'kernel'), _LINEAR),
       ('logit_scale', ('logit_scale',), _SAME)])


def load_params(directory: str, config: ClipConfig) -> Dict:
  """Flax parameters of ClipModel(config) from a Hugging Face checkpoint.

  Raises:
    MissingFileError / ValueError naming the file and, for a missing or
    misshapen tensor, the tensor and both shapes.
  """
  tensors, source = hf_weights.read_tensors(
      directory, 'a CLIP directory needs config.json, model.safetensors, '
      'vocab.json and merges.txt')
  # A saved CLIPTextModel/CLIPVisionModel alone, or a CLIPModel: the
  # prefixes are those of CLIPModel either way.
  expected = flax.traverse_util.flatten_dict(jax.eval_shape(
      lambda: ClipModel(config).init(
          jax.random.PRNGKey(0), jnp.zeros((1, config.image_size,
                                            config.image_size, 3)),
          jnp.zeros((1, 2), jnp.int32), jnp.ones((1,), jnp.int32)))['params'])
  return hf_weights.to_flax(tensors, source, tensor_names(config),
                            {k: v.shape for k, v in expected.items()},
                            'CLIPModel')


def to_hugging_face(params: Dict, config: ClipConfig) -> Dict[str, np.ndarray]:
  """The inverse of load_params: Hugging Face names and layouts (float32)."""
  return hf_weights.to_hugging_face(params, tensor_names(config))


def make_tokenizer(directory: str) -> tokenizers.Tokenizer:
  """CLIP's BPE tokenizer from vocab.json and merges.txt.

  The pipeline of CLIP's tokenizer in `tokenizers` terms: NFC, whitespace
  runs to one space, lower case; split into letter runs, single digits,
  punctuation runs and English clitics; byte-level BPE whose word-final
  pieces end in '</w>'; <|startoftext|> ... <|endoftext|> around each
  caption, cut to CONTEXT_LENGTH tokens (the end token kept), padded with 0.
  """
  paths = {n: os.path.join(directory, n) for n in ('vocab.json', 'merges.txt')}
  for path in paths.values():
    if not tf.io.gfile.exists(path):
      raise errors.MissingFileError(f'{path} not found (CLIP tokenizer).')
  with tf.io.gfile.GFile(paths['vocab.json']) as f:
    vocab = json.load(f)
  with tf.io.gfile.GFile(paths['merges.txt']) as f:
    merges = [tuple(line.split()) for line in f.read().splitlines()
              if line and not line.startswith('#version')]
  for token in (_START, _END):
    if token not in vocab:
      raise ValueError(f'{paths["vocab.json"]}: no {token} token.')
  tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE(
      vocab, merges, continuing_subword_prefix='', end_of_word_suffix='</w>',
      unk_token=_END, fuse_unk=False))
  normalizers = tokenizers.normalizers
  tokenizer.normalizer = normalizers.Sequence([
      normalizers.NFC(), normalizers.Replace(tokenizers.Regex(r'\s+'), ' '),
      normalizers.Lowercase()])
  pieces = (r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|"""
            r'[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+')
  pre = tokenizers.pre_tokenizers
  tokenizer.pre_tokenizer = pre.Sequence([
      pre.Split(tokenizers.Regex(pieces), behavior='removed', invert=True),
      pre.ByteLevel(add_prefix_space=False)])
  tokenizer.post_processor = tokenizers.processors.TemplateProcessing(
      single=f'{_START} $A {_END}',
      special_tokens=[(_START, vocab[_START]), (_END, vocab[_END])])
  tokenizer.enable_truncation(CONTEXT_LENGTH)
  tokenizer.enable_padding(pad_id=0, pad_token='!', length=CONTEXT_LENGTH)
  return tokenizer


def tokenize(tokenizer: tokenizers.Tokenizer, captions: Sequence[str]
             ) -> Tuple[np.ndarray, np.ndarray]:
  """Captions -> (ids (N, 77) int32, lengths (N,) int32, end token included)."""
  encodings = tokenizer.encode_batch(list(captions))
  ids = np.array([e.ids for e in encodings], np.int32).reshape(-1,
                                                               CONTEXT_LENGTH)
  lengths = np.array([sum(e.attention_mask) for e in encodings], np.int32)
  return ids, lengths


def preprocess(images: np.ndarray, size: int) -> np.ndarray:
  """CLIP's image preprocessing: uint8 (N, H, W, 3) -> float32 (N, S, S, 3).

  As CLIP's torchvision pipeline: the short side resized to `size` (PIL
  bicubic, antialiased, back to uint8), a centre crop of size x size, then
  scaled to [0, 1] and normalised with CLIP's mean and std.
  """
  out = np.empty((len(images), size, size, 3), np.float32)
  for i, image in enumerate(np.asarray(images, np.uint8)):
    h, w = image.shape[:2]
    short, long = min(h, w), max(h, w)
    long = int(size * long / short)
    new_w, new_h = (size, long) if w <= h else (long, size)
    resized = Image.fromarray(image).resize((new_w, new_h), Image.BICUBIC)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    out[i] = np.asarray(resized, np.float32)[top:top + size,
                                             left:left + size] / 255.0
  return (out - np.float32(IMAGE_MEAN)) / np.float32(IMAGE_STD)


class Clip:
  """A loaded CLIP model embedding uint8 images and captions on device.

  Satisfies r_precision.ImageTextEncoder.

  Args:
    directory: a Hugging Face CLIP directory (see the module docstring).
    batch_size: images or captions per device call.
  """

  def __init__(self, directory: str, batch_size: int = 256):
    config_path = hf_weights.config_path(directory, 'clip_weights', 'CLIP')
    self.directory = directory
    self.config = config = read_config(config_path)
    self.tokenizer = make_tokenizer(directory)
    if self.tokenizer.get_vocab_size() > config.vocab_size:
      raise ValueError(f'{directory}: vocab.json has '
                       f'{self.tokenizer.get_vocab_size()} tokens, config.json '
                       f'vocab_size {config.vocab_size}.')
    params = load_params(directory, config)
    model = ClipModel(config)
    self.logit_scale = float(np.exp(params['logit_scale']))
    self._images = batched.BatchedApply(
        lambda p, x: model.apply({'params': p}, x,
                                 method=ClipModel.embed_images),
        params, batch_size)
    self._texts = batched.BatchedApply(
        lambda p, ids, n: model.apply({'params': p}, ids, n,
                                      method=ClipModel.embed_texts),
        params, batch_size)

  def embed_images(self, images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, projection_dim), not normalised."""
    return self.embed_pixels(preprocess(images, self.config.image_size))

  def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
    """Preprocessed (N, S, S, 3) float32 (S = config.image_size, CLIP's
    mean/std applied) -> (N, projection_dim), not normalised."""
    return self._images(pixels)[0]

  def embed_texts(self, captions: Sequence[str]) -> np.ndarray:
    """N captions -> (N, projection_dim), not normalised."""
    return self._texts(*tokenize(self.tokenizer, captions))[0]


def cosines(image_embeddings: np.ndarray, text_embeddings: np.ndarray
            ) -> np.ndarray:
  """Row-wise cosine of image i and caption i: (N,)."""
  a = np.asarray(image_embeddings, np.float64)
  b = np.asarray(text_embeddings, np.float64)
  return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) *
                                  np.linalg.norm(b, axis=1))


def clip_metrics(image_embeddings: np.ndarray, text_embeddings: np.ndarray,
                 seed: int = 0) -> Dict[str, float]:
  """CLIP score (two conventions) and, given 100+ pairs, CLIP R-precision.

  Args:
    image_embeddings: (N, D), image i generated from (or real for) caption i.
    text_embeddings: (N, D) of the N captions.
    seed: picks R-precision's 99 distractor captions per image.

  Returns:
    {'clip_score': mean 100 * max(cos, 0), 'clip_score_cosine': mean cos,
    'clip_r_precision': top-1 accuracy among 100 (only when N > 99)}.
  """
  cos = cosines(image_embeddings, text_embeddings)
  out = {'clip_score': float(np.mean(100.0 * np.maximum(cos, 0.0))),
         'clip_score_cosine': float(np.mean(cos))}
  if len(cos) > r_precision.NUM_DISTRACTORS:
    out['clip_r_precision'] = r_precision.r_precision(
        image_embeddings, text_embeddings, seed=seed)
  return out
