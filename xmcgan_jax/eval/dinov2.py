"""DINOv2 in Flax, the feature network of FD-DINOv2 (Stein et al., 2023).

The DINOv2 ViTs (S/14, B/14, L/14, g/14, any shape a `config.json` gives)
loaded from a Hugging Face `Dinov2Model` directory, without torch:

  huggingface-cli download facebook/dinov2-large --local-dir DIR

DIR holds config.json and model.safetensors (or shards with
model.safetensors.index.json) in the published layout, which is also what
transformers' save_pretrained writes. Images are preprocessed as dgm-eval
(the benchmark that published FD-DINOv2) does: PIL bicubic resize of the
uint8 image to 224 x 224 (no crop), scaled to [0, 1], ImageNet mean and std.
The feature is the class token after the final LayerNorm (the release's
`x_norm_clstoken`, transformers' `pooler_output`).

At 224 px the 37 x 37 position embeddings of the 518 px checkpoints are
resized to 16 x 16 by torch's bicubic interpolation. The DINOv2 release
(torch.hub, what dgm-eval runs) asks torch for a scale factor of
(16 + 0.1) / 37, transformers for an output size of 16: the sampling
points move by 0.01 to 0.22 of a cell (edge to edge), so the features differ
(not measured on the published weights here). `position_offset` picks one
(0.1: the release, the default; 0: transformers).
"""

import dataclasses
import json
from typing import Dict, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import tensorflow as tf

from xmcgan_jax import errors
from xmcgan_jax.eval import batched
from xmcgan_jax.eval import bicubic
from xmcgan_jax.eval import hf_weights

IMAGE_MEAN = (0.485, 0.456, 0.406)  # ImageNet's, as dgm-eval normalises.
IMAGE_STD = (0.229, 0.224, 0.225)
INPUT_SIZE = 224  # dgm-eval's resize.
RELEASE_OFFSET = 0.1  # The DINOv2 release's interpolate_offset.
# Full float32 matmuls: TPU and GPU default to bf16 passes (see eval/clip.py).
_PRECISION = jax.lax.Precision.HIGHEST
# transformers' Dinov2Config defaults, for config.json files that omit one.
_DEFAULTS = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 mlp_ratio=4, hidden_act='gelu', layer_norm_eps=1e-6,
                 image_size=224, patch_size=14, qkv_bias=True,
                 use_swiglu_ffn=False)
# In the checkpoint, unused for features (masked-token pretraining only).
UNUSED_TENSORS = ('embeddings.mask_token',)


@dataclasses.dataclass(frozen=True)
class Dinov2Config:
  """The shapes of a DINOv2 ViT (from a Hugging Face config.json)."""
  hidden_size: int
  num_layers: int
  num_heads: int
  mlp_size: int  # Hidden units of the MLP (of each SwiGLU half).
  swiglu: bool  # ViT-g's gated MLP instead of fc1 -> GELU -> fc2.
  layer_norm_eps: float
  image_size: int  # The position embeddings' resolution.
  patch_size: int

  @property
  def grid(self) -> int:
    """Patches a side at image_size."""
    return self.image_size // self.patch_size


def read_config(path: str) -> Dinov2Config:
  """Dinov2Config of a Hugging Face config.json (omitted fields take
  transformers' defaults).

  Raises:
    errors.ConfigError: not a plain DINOv2 (registers, no query/key/value
      bias, another activation).
  """
  with tf.io.gfile.GFile(path) as f:
    raw = {**_DEFAULTS, **json.load(f)}
  if raw.get('model_type', 'dinov2') != 'dinov2':
    raise errors.ConfigError(f'{path}: model_type {raw["model_type"]!r}; '
                             "FD-DINOv2 uses 'dinov2' (no registers).")
  if raw['hidden_act'] != 'gelu' or not raw['qkv_bias']:
    raise errors.ConfigError(f'{path}: hidden_act={raw["hidden_act"]!r}, '
                             f'qkv_bias={raw["qkv_bias"]}; the published '
                             "DINOv2s use 'gelu' and biases.")
  size = [raw['image_size']] * 2 if isinstance(
      raw['image_size'], int) else list(raw['image_size'])
  patch = [raw['patch_size']] * 2 if isinstance(
      raw['patch_size'], int) else list(raw['patch_size'])
  if size[0] != size[1] or patch[0] != patch[1]:
    raise errors.ConfigError(f'{path}: image_size {size} / patch_size '
                             f'{patch}; only square ones are supported.')
  mlp = int(raw['hidden_size'] * raw['mlp_ratio'])
  if raw['use_swiglu_ffn']:  # transformers' Dinov2SwiGLUFFN width.
    mlp = (int(mlp * 2 / 3) + 7) // 8 * 8
  return Dinov2Config(
      hidden_size=raw['hidden_size'], num_layers=raw['num_hidden_layers'],
      num_heads=raw['num_attention_heads'], mlp_size=mlp,
      swiglu=bool(raw['use_swiglu_ffn']),
      layer_norm_eps=raw['layer_norm_eps'], image_size=size[0],
      patch_size=patch[0])


def _layer_norm(eps: float, name: str) -> nn.LayerNorm:
  # Two-pass variance, as torch: DINOv2's tokens have large means.
  return nn.LayerNorm(eps, use_fast_variance=False, name=name)


def interpolate_positions(table: jax.Array, patches: int,
                          offset: float) -> jax.Array:
  """Position embeddings (1 + G*G, D) for a patches x patches grid.

  Args:
    table: the class token's row, then a G x G grid's rows.
    patches: patches a side of the input.
    offset: RELEASE_OFFSET: torch's bicubic with scale (patches + offset) /
      G, as the DINOv2 release; 0: with output size patches (transformers).

  Returns:
    (1 + patches**2, D): the table itself when patches == G.
  """
  grid = int(round((table.shape[0] - 1)**0.5))
  if patches == grid:
    return table
  scale = (patches + offset) / grid if offset else None
  m = jnp.asarray(bicubic.matrix(grid, patches, scale), jnp.float32)
  rows = table[1:].reshape(grid, grid, -1)
  rows = jnp.einsum('oh,hwd,pw->opd', m, rows, m, precision=_PRECISION)
  return jnp.concatenate([table[:1], rows.reshape(patches**2, -1)])


class _Layer(nn.Module):
  """Pre-LayerNorm block with LayerScale on both residual branches."""
  config: Dinov2Config

  @nn.compact
  def __call__(self, x):
    c = self.config
    y = _layer_norm(c.layer_norm_eps, 'norm1')(x)
    y = nn.MultiHeadDotProductAttention(
        c.num_heads, qkv_features=c.hidden_size, out_features=c.hidden_size,
        precision=_PRECISION, name='attention')(y)
    x = x + y * self.param('layer_scale1', nn.initializers.ones,
                           (c.hidden_size,))
    y = _layer_norm(c.layer_norm_eps, 'norm2')(x)
    if c.swiglu:
      y = nn.Dense(2 * c.mlp_size, precision=_PRECISION, name='weights_in')(y)
      gate, up = jnp.split(y, 2, axis=-1)
      y = nn.Dense(c.hidden_size, precision=_PRECISION,
                   name='weights_out')(nn.silu(gate) * up)
    else:
      y = nn.Dense(c.mlp_size, precision=_PRECISION, name='fc1')(y)
      y = nn.Dense(c.hidden_size, precision=_PRECISION,
                   name='fc2')(nn.gelu(y, approximate=False))
    return x + y * self.param('layer_scale2', nn.initializers.ones,
                              (c.hidden_size,))


class Dinov2Model(nn.Module):
  """Preprocessed (B, S, S, 3) images -> (B, hidden) class-token features.

  Attributes:
    config: the network's shapes.
    position_offset: see the module docstring (0.1 release, 0 transformers).
  """
  config: Dinov2Config
  position_offset: float = RELEASE_OFFSET

  @nn.compact
  def __call__(self, pixels: jax.Array) -> jax.Array:
    c = self.config
    if pixels.shape[1] != pixels.shape[2] or pixels.shape[1] % c.patch_size:
      raise ValueError(f'images of {pixels.shape[1:3]}: DINOv2 needs square '
                       f'sides divisible by {c.patch_size}.')
    x = nn.Conv(c.hidden_size, (c.patch_size,) * 2, strides=c.patch_size,
                padding='VALID', precision=_PRECISION,
                name='patch_embedding')(pixels)
    x = x.reshape(x.shape[0], -1, c.hidden_size)
    cls = self.param('cls_token', nn.initializers.normal(0.02),
                     (c.hidden_size,))
    x = jnp.concatenate(
        [jnp.broadcast_to(cls, (x.shape[0], 1, c.hidden_size)), x], axis=1)
    table = self.param('position_embeddings', nn.initializers.normal(0.02),
                       (c.grid**2 + 1, c.hidden_size))
    x = x + interpolate_positions(table, pixels.shape[1] // c.patch_size,
                                  self.position_offset)
    for i in range(c.num_layers):
      x = _Layer(c, name=f'layer_{i}')(x)
    return _layer_norm(c.layer_norm_eps, 'layernorm')(x[:, 0])


def tensor_names(config: Dinov2Config) -> hf_weights.Names:
  """(Hugging Face tensor name, Flax parameter path, layout) of every weight."""
  same, linear = hf_weights.SAME, hf_weights.LINEAR

  def affine(hf, path):
    return [(f'{hf}.weight', path + ('scale',), same),
            (f'{hf}.bias', path + ('bias',), same)]

  def dense(hf, path, layout=linear):
    return [(f'{hf}.weight', path + ('kernel',), layout),
            (f'{hf}.bias', path + ('bias',), same)]

  position: hf_weights.Layout = (lambda w: w.reshape(w.shape[-2:]),
                                 lambda w: w[None])
  names = [('embeddings.cls_token', ('cls_token',),
            (lambda w: w.reshape(-1), lambda w: w.reshape(1, 1, -1))),
           ('embeddings.position_embeddings', ('position_embeddings',),
            position),
           ('embeddings.patch_embeddings.projection.weight',
            ('patch_embedding', 'kernel'), hf_weights.CONV),
           ('embeddings.patch_embeddings.projection.bias',
            ('patch_embedding', 'bias'), same)]
  names += affine('layernorm', ('layernorm',))
  for i in range(config.num_layers):
    hf, fx = f'encoder.layer.{i}', (f'layer_{i}',)
    for module in ('norm1', 'norm2'):
      names += affine(f'{hf}.{module}', fx + (module,))
    for module in ('layer_scale1', 'layer_scale2'):
      names.append((f'{hf}.{module}.lambda1', fx + (module,), same))
    qkv = hf_weights.heads(config.num_heads, output=False)
    for proj, flax_name in (('query', 'query'), ('key', 'key'),
                            ('value', 'value')):
      names += [(f'{hf}.attention.attention.{proj}.{field}',
                 fx + ('attention', flax_name, flax_field), qkv)
                for field, flax_field in (('weight', 'kernel'),
                                          ('bias', 'bias'))]
    names += dense(f'{hf}.attention.output.dense', fx + ('attention', 'out'),
                   hf_weights.heads(config.num_heads, output=True))
    mlp = ('weights_in', 'weights_out') if config.swiglu else ('fc1', 'fc2')
    for module in mlp:
      names += dense(f'{hf}.mlp.{module}', fx + (module,))
  return names


def _expected_shapes(config: Dinov2Config) -> Dict[Tuple[str, ...],
                                                   Tuple[int, ...]]:
  side = config.image_size
  shapes = jax.eval_shape(lambda: Dinov2Model(config).init(
      jax.random.PRNGKey(0), jnp.zeros((1, side, side, 3))))['params']
  return {k: v.shape for k, v in
          flax.traverse_util.flatten_dict(shapes).items()}


def load_params(directory: str, config: Dinov2Config) -> Dict:
  """Flax parameters of Dinov2Model(config) from a Hugging Face checkpoint.

  Raises:
    MissingFileError / ValueError naming the file and, for a missing or
    misshapen tensor, the tensor and both shapes.
  """
  tensors, source = hf_weights.read_tensors(
      directory, 'a DINOv2 directory needs config.json and model.safetensors')
  # A Dinov2ForImageClassification keeps the backbone under 'dinov2.'.
  tensors = {k[len('dinov2.'):] if k.startswith('dinov2.') else k: v
             for k, v in tensors.items()}
  return hf_weights.to_flax(tensors, source, tensor_names(config),
                            _expected_shapes(config), 'Dinov2Model')


def to_hugging_face(params: Dict, config: Dinov2Config
                    ) -> Dict[str, np.ndarray]:
  """The inverse of load_params: Hugging Face names and layouts (float32)."""
  return hf_weights.to_hugging_face(params, tensor_names(config))


def preprocess(images: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
  """dgm-eval's DINOv2 preprocessing: uint8 (N, H, W, 3) -> float32
  (N, size, size, 3), PIL bicubic to size x size, / 255, ImageNet mean/std."""
  out = np.empty((len(images), size, size, 3), np.float32)
  for i, image in enumerate(np.asarray(images, np.uint8)):
    out[i] = np.asarray(Image.fromarray(image).resize((size, size),
                                                      Image.BICUBIC))
  return (out / 255.0 - np.float32(IMAGE_MEAN)) / np.float32(IMAGE_STD)


class Dinov2:
  """A loaded DINOv2 computing class-token features of uint8 images.

  Args:
    directory: a Hugging Face Dinov2Model directory (module docstring).
    batch_size: images per device call.
    position_offset: RELEASE_OFFSET (dgm-eval's numbers) or 0
      (transformers').
  """

  def __init__(self, directory: str, batch_size: int = 256,
               position_offset: float = RELEASE_OFFSET):
    config_path = hf_weights.config_path(directory, 'dinov2_weights', 'DINOv2')
    self.directory = directory
    self.config = read_config(config_path)
    model = Dinov2Model(self.config, position_offset)
    self._apply = batched.BatchedApply(
        lambda p, x: model.apply({'params': p}, x),
        load_params(directory, self.config), batch_size)

  def features(self, images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, hidden) float32."""
    return self._apply(preprocess(images))[0]
