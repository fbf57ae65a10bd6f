"""Frozen VGG-19 / ResNet-50: Keras parity, weight errors, gradients, step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fake_data
from xmcgan_jax import losses
from xmcgan_jax.models.convert_torchvision import convert_resnet50
from xmcgan_jax.models.convert_torchvision import convert_vgg19
from xmcgan_jax.models import Discriminator
from xmcgan_jax.models import Generator
from xmcgan_jax.models import image_encoders as ie
from xmcgan_jax import parallel
from xmcgan_jax.text import feature_table
from xmcgan_jax.training import train_step as ts

keras = pytest.importorskip('keras')


def _images(n=2, size=224, seed=0):
  return np.random.default_rng(seed).random((n, size, size, 3),
                                            dtype=np.float32)


def _randomise_batchnorm(model, seed=0):
  """Non-trivial moving statistics, so the BN mapping is really tested."""
  rng = np.random.default_rng(seed)
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      c = layer.get_weights()[0].shape[0]
      layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c),
                         rng.normal(0, 0.1, c), rng.uniform(0.5, 2.0, c)])


def _close(got, want, rtol=1e-4):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert np.max(np.abs(got - want)) <= rtol * np.max(np.abs(want)), (
      np.max(np.abs(got - want)), np.max(np.abs(want)))


@pytest.fixture(scope='module')
def keras_vgg19(tmp_path_factory):
  keras.utils.set_random_seed(0)
  model = keras.applications.VGG19(weights=None)
  path = str(tmp_path_factory.mktemp('vgg') / 'vgg19.h5')
  model.save(path)
  return model, path


def test_vgg19_matches_keras(keras_vgg19):
  model, path = keras_vgg19
  images = _images()
  keras_in = keras.applications.vgg19.preprocess_input(images * 255.0)
  for feature, layer in (('fc7', 'fc2'), ('pool5', 'flatten')):
    encoder = ie.load_image_encoder('vgg19', path, feature)
    want = keras.Model(model.inputs, model.get_layer(layer).output)(keras_in)
    _close(encoder.features_fn()(encoder.params, images), want)


@pytest.fixture(scope='module')
def keras_resnet50(tmp_path_factory):
  keras.utils.set_random_seed(1)
  model = keras.applications.ResNet50(weights=None)
  _randomise_batchnorm(model)
  path = str(tmp_path_factory.mktemp('resnet') / 'resnet50.h5')
  model.save(path)
  return model, path


def test_resnet50_matches_keras(keras_resnet50):
  model, path = keras_resnet50
  images = _images(seed=1)
  keras_in = keras.applications.resnet50.preprocess_input(images * 255.0)
  pooled = np.asarray(keras.Model(model.inputs,
                                  model.get_layer('avg_pool').output)(keras_in))
  kernel, bias = model.get_layer('predictions').get_weights()
  encoder = ie.load_image_encoder('resnet50', path, 'pool')
  _close(encoder.features_fn()(encoder.params, images), pooled)
  encoder = ie.load_image_encoder('resnet50', path)  # Default: logits.
  _close(encoder.features_fn()(encoder.params, images), pooled @ kernel + bias)


def test_bad_weight_files_are_named(keras_vgg19, tmp_path):
  _, path = keras_vgg19
  with pytest.raises(FileNotFoundError, match='missing.h5'):
    ie.load_image_encoder('vgg19', str(tmp_path / 'missing.h5'))
  with pytest.raises(ValueError, match="layer 'conv1_(bn|conv)' is missing"):
    ie.load_image_encoder('resnet50', path)
  table = ie.read_keras_h5(path)
  table['fc2'][0] = table['fc2'][0][:, :10]
  with pytest.raises(ValueError, match=r"'fc2' weight 'kernel'.*\(4096, 10\)"):
    ie.assign_params(ie.VGG19(), table, 'x.h5')


def test_torchvision_layout_converts_and_loads(tmp_path):
  """State dicts with torchvision names and shapes load through the .npz."""
  rng = np.random.default_rng(0)
  vgg = {}
  index = 0
  channels = [3] + [c for block in ie.VGG19_BLOCKS for c in block]
  for k in range(16):
    vgg[f'features.{index}.weight'] = rng.normal(
        size=(channels[k + 1], channels[k], 3, 3)).astype(np.float32)
    vgg[f'features.{index}.bias'] = np.zeros(channels[k + 1], np.float32)
    index += 2 if k not in (1, 3, 7, 11) else 3
  for i, (o, n) in {0: (4096, 25088), 3: (4096, 4096), 6: (1000, 4096)}.items():
    vgg[f'classifier.{i}.weight'] = np.zeros((o, n), np.float32)
    vgg[f'classifier.{i}.bias'] = np.zeros(o, np.float32)
  path = str(tmp_path / 'vgg.npz')
  np.savez(path, **convert_vgg19(vgg))
  encoder = ie.load_image_encoder('vgg19', path)
  assert encoder.preprocess == 'torch'
  # fc1 rows go from torch's (C, H, W) order to Flax's (H, W, C) order.
  w = rng.normal(size=(4096, 512, 7, 7)).astype(np.float32)
  vgg['classifier.0.weight'] = w.reshape(4096, -1)
  got = convert_vgg19(vgg)['fc1/0']
  np.testing.assert_array_equal(got[(2 * 7 + 3) * 512 + 5], w[:, 5, 2, 3])
  with pytest.raises(KeyError):
    convert_resnet50({'conv1.weight': np.zeros((64, 3, 7, 7))})


def test_gradients_reach_the_generator_not_the_encoder(keras_vgg19):
  _, path = keras_vgg19
  encoder = ie.load_image_encoder('vgg19', path)
  features = encoder.features_fn()
  real = jnp.asarray(_images(2, 64))
  fake = jnp.asarray(_images(2, 64, seed=3))

  def loss(params, fake):
    both = features(params, jnp.concatenate([real, fake]))
    return losses.contrastive_loss(both[:2], both[2:])

  g_params, g_images = jax.grad(loss, argnums=(0, 1))(encoder.params, fake)
  assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(g_params))
  assert float(jnp.abs(g_images).max()) > 0


@pytest.mark.parametrize('name', ['vgg19', 'resnet50'])
def test_bfloat16_encoder_computes_in_bfloat16_close_to_float32(
    name, keras_vgg19, keras_resnet50):
  _, path = {'vgg19': keras_vgg19, 'resnet50': keras_resnet50}[name]
  f32 = ie.load_image_encoder(name, path)
  bf16 = ie.load_image_encoder(name, path, dtype=jnp.bfloat16)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(bf16.params))
  images = jnp.asarray(_images(2, 64))
  jaxpr = str(jax.make_jaxpr(bf16.features_fn())(bf16.params, images))
  convs = [line for line in jaxpr.splitlines() if 'conv_general_dilated' in line]
  assert convs and all('bf16[' in line for line in convs)
  got = bf16.features_fn()(bf16.params, images)
  assert got.dtype == jnp.float32
  _close(got, f32.features_fn()(f32.params, images), rtol=5e-2)


@pytest.mark.slow  # A train step with ResNet-50 (half a minute): CI runs it.
def test_train_step_with_resnet50_on_eight_devices(keras_resnet50):
  _, path = keras_resnet50
  encoder = ie.load_image_encoder('resnet50', path)
  g = Generator(image_size=64, base_width=4, z_dim=8, text_dim=16,
                max_tokens=6)
  d = Discriminator(image_size=64, base_width=4, text_dim=16)
  g_tx, d_tx = fake_data.optimizers()
  mesh = parallel.make_mesh()
  step = ts.make_train_step(g, d, g_tx, d_tx, mesh,
                            fake_data.step_config(d_steps_per_g_step=1),
                            feature_table.lookup_fn(),
                            image_encoder=encoder.features_fn())
  state = ts.create_train_state(jax.random.PRNGKey(0), g, d, g_tx, d_tx, mesh)
  rng = np.random.default_rng(0)
  table, ids = feature_table.from_features(
      rng.normal(size=(8, 6, 16)), rng.normal(size=(8, 16)),
      np.ones((8, 6), bool))
  batch = {'image': rng.random((1, 8, 64, 64, 3), dtype=np.float32),
           'token_ids': ids[None], 'token_mask': np.ones((1, 8, 6), bool)}
  frozen = {'image_encoder': parallel.replicate(encoder.params, mesh),
            'text_encoder': table.params}
  before = jax.tree.map(np.asarray, encoder.params)
  _, metrics = step(state, batch, frozen)
  assert np.isfinite(float(metrics['g_image_pretrained']))
  assert float(metrics['g_image_pretrained_acc']) >= 0
  for a, b in zip(jax.tree.leaves(before),
                  jax.tree.leaves(frozen['image_encoder'])):
    np.testing.assert_array_equal(a, np.asarray(b))
