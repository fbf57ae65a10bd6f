"""Frozen ImageNet encoders for the image-image contrastive loss.

VGG-19 (the paper) and ResNet-50 (the 2021 release: ResNet-50 logits) in
Flax, inference-mode BatchNorm, parameters named after the
`keras.applications` layers. Images in [0, 1] are resized to 224 (bilinear)
and normalised as the weights require:
  'caffe': x*255, RGB->BGR, minus the ImageNet BGR mean (Keras application
    weights of VGG19 and ResNet50);
  'torch': (x - mean) / std with the ImageNet RGB statistics (torchvision);
  'none':  [0, 1] unchanged (the 2021 release).

Weights load without torch from Keras application .h5 files (legacy layout:
`layer_names` and per-layer `weight_names`) or from .npz files converted from
torchvision state dicts by `python -m xmcgan_jax.models.convert_torchvision`
(keys '<keras layer>/<index>' in Keras weight order).
"""

import dataclasses
from typing import Any, Callable, Dict, List, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xmcgan_jax import errors

_BGR_MEAN = np.array([103.939, 116.779, 123.68], np.float32)
_RGB_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_RGB_STD = np.array([0.229, 0.224, 0.225], np.float32)
VGG19_BLOCKS = ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4)
VGG19_FEATURES = ('pool5', 'fc6', 'fc7', 'logits')
RESNET50_STAGES = ((64, 3), (128, 4), (256, 6), (512, 3))
RESNET50_FEATURES = ('pool', 'logits')


def preprocess(images: jax.Array, mode: str, size: int = 224) -> jax.Array:
  """Resizes [0, 1] images to `size` and normalises them for the weights."""
  images = images.astype(jnp.float32)
  if images.shape[1:3] != (size, size):
    images = jax.image.resize(images, images.shape[:1] + (size, size, 3),
                              'bilinear')
  if mode == 'caffe':
    return images[..., ::-1] * 255.0 - _BGR_MEAN
  if mode == 'torch':
    return (images - _RGB_MEAN) / _RGB_STD
  if mode == 'none':
    return images
  raise ValueError(f"preprocess mode {mode!r}; use 'caffe', 'torch' or 'none'.")


class FrozenBatchNorm(nn.Module):
  """Inference BatchNorm: (x - mean) / sqrt(var + eps) * scale + bias.

  Folded into one multiply-add in float32, applied in x's dtype.
  """
  epsilon: float = 1.001e-5

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (c,))
    bias = self.param('bias', nn.initializers.zeros, (c,))
    mean = self.param('mean', nn.initializers.zeros, (c,))
    var = self.param('var', nn.initializers.ones, (c,))
    factor = jax.lax.rsqrt(var + self.epsilon) * scale
    return x * factor.astype(x.dtype) + (bias - mean * factor).astype(x.dtype)


class VGG19(nn.Module):
  """VGG-19 returning `feature`: pool5 (flattened), fc6, fc7 or logits.

  Attributes:
    feature: the output.
    dtype: compute dtype (params stay float32).
  """
  feature: str = 'fc7'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(self.dtype)
    for b, channels in enumerate(VGG19_BLOCKS, 1):
      for i, c in enumerate(channels, 1):
        x = nn.relu(nn.Conv(c, (3, 3), padding='SAME', dtype=self.dtype,
                            name=f'block{b}_conv{i}')(x))
      x = nn.max_pool(x, (2, 2), (2, 2))
    x = x.reshape((x.shape[0], -1))  # (H, W, C) order, as Keras' Flatten.
    if self.feature == 'pool5':
      return x
    dense = lambda n, name: nn.Dense(n, dtype=self.dtype, name=name)
    x = nn.relu(dense(4096, 'fc1')(x))
    if self.feature == 'fc6':
      return x
    x = nn.relu(dense(4096, 'fc2')(x))
    if self.feature == 'fc7':
      return x
    return dense(1000, 'predictions')(x)  # Logits (no softmax).


class ResNet50(nn.Module):
  """ResNet-50 returning `feature`: 'pool' (2048-d) or 'logits'.

  Attributes:
    feature: the output.
    stride_in_1x1: v1 (Keras applications: the block's stride on its first
      1x1 conv) if True, v1.5 (torchvision: on the 3x3 conv) if False.
    conv_bias: convs carry biases (Keras) or not (torchvision).
    bn_epsilon: 1.001e-5 (Keras) or 1e-5 (torchvision).
    dtype: compute dtype (params stay float32).
  """
  feature: str = 'logits'
  stride_in_1x1: bool = True
  conv_bias: bool = True
  bn_epsilon: float = 1.001e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(self.dtype)
    conv = lambda c, k, s, name: nn.Conv(
        c, (k, k), (s, s), padding=[(k // 2, k // 2)] * 2,
        use_bias=self.conv_bias, dtype=self.dtype, name=name)
    bn = lambda name: FrozenBatchNorm(self.bn_epsilon, name=name)
    x = nn.relu(bn('conv1_bn')(conv(64, 7, 2, 'conv1_conv')(x)))
    # Zero padding == -inf padding after a ReLU.
    x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    for stage, (width, blocks) in enumerate(RESNET50_STAGES, 2):
      for block in range(1, blocks + 1):
        name = f'conv{stage}_block{block}'
        stride = 2 if block == 1 and stage > 2 else 1
        s1, s3 = (stride, 1) if self.stride_in_1x1 else (1, stride)
        h = nn.relu(bn(f'{name}_1_bn')(conv(width, 1, s1, f'{name}_1_conv')(x)))
        h = nn.relu(bn(f'{name}_2_bn')(conv(width, 3, s3, f'{name}_2_conv')(h)))
        h = bn(f'{name}_3_bn')(conv(4 * width, 1, 1, f'{name}_3_conv')(h))
        if block == 1:
          x = bn(f'{name}_0_bn')(conv(4 * width, 1, stride, f'{name}_0_conv')(x))
        x = nn.relu(x + h)
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))  # Sum in float32.
    if self.feature == 'pool':
      return x
    return nn.Dense(1000, dtype=self.dtype, name='predictions')(x)


# Flax param names per Keras layer kind, in Keras weight order.
_KERAS_ORDER = {'conv_or_dense': ('kernel', 'bias'),
                'bn': ('scale', 'bias', 'mean', 'var')}


def read_keras_h5(path: str) -> Dict[str, List[np.ndarray]]:
  """{layer name: [weights in Keras order]} of a legacy-layout Keras .h5.

  Keras application weight files and `model.save('x.h5')` use this layout
  (the weights under the root or a 'model_weights' group, with the
  attributes 'layer_names' and, per layer, 'weight_names').
  """
  import h5py  # pylint: disable=g-import-not-at-top
  out = {}
  with h5py.File(path, 'r') as f:
    root = f['model_weights'] if 'model_weights' in f else f
    if 'layer_names' not in root.attrs:
      raise ValueError(
          f'{path}: no "layer_names" attribute; expected a Keras application '
          'weight file or a model saved with model.save("x.h5").')
    for raw in root.attrs['layer_names']:
      name = raw.decode() if isinstance(raw, bytes) else str(raw)
      group = root[name]
      weight_names = [w.decode() if isinstance(w, bytes) else str(w)
                      for w in group.attrs.get('weight_names', [])]
      if weight_names:
        out[name] = [np.asarray(group[w]) for w in weight_names]
  return out


def read_npz(path: str) -> Dict[str, List[np.ndarray]]:
  """{layer name: [weights]} of an .npz with '<layer>/<index>' keys."""
  layers: Dict[str, Dict[int, np.ndarray]] = {}
  with np.load(path, allow_pickle=False) as data:
    for key in data.files:
      layer, index = key.rsplit('/', 1)
      layers.setdefault(layer, {})[int(index)] = data[key]
  return {k: [v[i] for i in sorted(v)] for k, v in layers.items()}


def assign_params(module: nn.Module, weights: Dict[str, List[np.ndarray]],
                  source: str) -> Dict[str, Any]:
  """Fills `module`'s params from per-layer weights, checking every shape.

  Raises:
    ValueError: naming the file, layer and expected shape on a mismatch.
  """
  abstract = jax.eval_shape(module.init, jax.random.PRNGKey(0),
                            jnp.zeros((1, 224, 224, 3)))['params']
  params = {}
  for layer, leaves in abstract.items():
    kind = 'bn' if 'mean' in leaves else 'conv_or_dense'
    names = [n for n in _KERAS_ORDER[kind] if n in leaves]
    if layer not in weights:
      raise ValueError(f'{source}: layer {layer!r} is missing (expected '
                       f'{[tuple(leaves[n].shape) for n in names]}).')
    got = weights[layer]
    if len(got) < len(names):
      raise ValueError(f'{source}: layer {layer!r} has {len(got)} weights, '
                       f'expected {len(names)} ({names}).')
    params[layer] = {}
    for name, value in zip(names, got):
      if tuple(value.shape) != tuple(leaves[name].shape):
        raise ValueError(f'{source}: layer {layer!r} weight {name!r} has shape '
                         f'{tuple(value.shape)}, expected '
                         f'{tuple(leaves[name].shape)}.')
      params[layer][name] = jnp.asarray(value, jnp.float32)
  return params


@dataclasses.dataclass
class ImageEncoder:
  """A loaded frozen image encoder: module, params and preprocessing."""
  module: nn.Module
  params: Any
  preprocess: str

  def features_fn(self) -> Callable[[Any, jax.Array], jax.Array]:
    """(params, images in [0, 1]) -> (N, F) float32 features.

    The params get no gradient (they are frozen); the images do, so the loss
    reaches the generator through the encoder.
    """
    module, mode = self.module, self.preprocess

    def features(params, images):
      x = preprocess(images, mode)
      out = module.apply({'params': jax.lax.stop_gradient(params)}, x)
      return out.astype(jnp.float32)

    return features


def build_image_encoder(name: str, feature: str = '', layout: str = 'keras',
                        dtype: Any = jnp.float32) -> Tuple[nn.Module, str]:
  """(module, default preprocessing) for 'vgg19' or 'resnet50'.

  Args:
    name: 'vgg19' or 'resnet50'.
    feature: '' for the default (vgg19: fc7, resnet50: logits).
    layout: 'keras' (Keras application weights) or 'torch' (torchvision).
    dtype: compute dtype (the run's: bfloat16 halves the encoder's cost on
      accelerators; its features feed a loss, not a measurement).

  Returns:
    The module and its default preprocessing mode.
  """
  if name == 'vgg19':
    feature = feature or 'fc7'
    if feature not in VGG19_FEATURES:
      raise errors.ConfigError(f'image_encoder.feature={feature!r}; VGG-19 offers '
                       f'{VGG19_FEATURES}.')
    return VGG19(feature, dtype), 'caffe' if layout == 'keras' else 'torch'
  if name == 'resnet50':
    feature = feature or 'logits'
    if feature not in RESNET50_FEATURES:
      raise errors.ConfigError(f'image_encoder.feature={feature!r}; ResNet-50 offers '
                       f'{RESNET50_FEATURES}.')
    if layout == 'keras':
      return ResNet50(feature, dtype=dtype), 'caffe'
    return ResNet50(feature, stride_in_1x1=False, conv_bias=False,
                    bn_epsilon=1e-5, dtype=dtype), 'torch'
  raise ValueError(f"image_encoder.name={name!r}; use 'vgg19' or 'resnet50'.")


def load_image_encoder(name: str, weights: str, feature: str = '',
                       preprocess_mode: str = '',
                       dtype: Any = jnp.float32) -> ImageEncoder:
  """Loads a frozen encoder from a Keras .h5 or a converted torchvision .npz.

  Args:
    name: 'vgg19' or 'resnet50'.
    weights: the weight file (.h5: Keras application layout; .npz: from
      xmcgan_jax.models.convert_torchvision).
    feature: which output (see build_image_encoder).
    preprocess_mode: override the normalisation ('caffe', 'torch', 'none').
    dtype: compute dtype; the params load as float32.

  Returns:
    The ImageEncoder.
  """
  import os  # pylint: disable=g-import-not-at-top
  if not os.path.exists(weights):
    raise errors.MissingFileError(
        f'Image encoder weights {weights!r} not found: expected a Keras '
        f'application file (e.g. {name}_weights_tf_dim_ordering_tf_kernels.h5)'
        ' or an .npz from `python -m xmcgan_jax.models.convert_torchvision`.')
  if weights.endswith('.npz'):
    layout, table = 'torch', read_npz(weights)
  elif weights.endswith(('.h5', '.hdf5')):
    layout, table = 'keras', read_keras_h5(weights)
  else:
    raise ValueError(f'{weights}: unknown weight format; use .h5 or .npz.')
  module, mode = build_image_encoder(name, feature, layout, dtype)
  params = assign_params(module, table, weights)
  return ImageEncoder(module, params, preprocess_mode or mode)
