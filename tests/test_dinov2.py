"""DINOv2 (eval/dinov2.py) against transformers and torchvision.

No weights can be downloaded here: the references are random transformers
Dinov2Models saved with save_pretrained (the published directory layout),
every tensor perturbed so that each one's mapping is tested.
"""

import json
import os

import jax
import numpy as np
import pytest

from xmcgan_jax import errors
from xmcgan_jax.eval import dinov2

# Published configs (facebook/dinov2-{small,base,large,giant} config.json).
PUBLISHED = {
    'ViT-S-14': dict(hidden_size=384, num_hidden_layers=12,
                     num_attention_heads=6),
    'ViT-B-14': dict(hidden_size=768, num_hidden_layers=12,
                     num_attention_heads=12),
    'ViT-L-14': dict(hidden_size=1024, num_hidden_layers=24,
                     num_attention_heads=16),
    'ViT-g-14': dict(hidden_size=1536, num_hidden_layers=40,
                     num_attention_heads=24, use_swiglu_ffn=True),
}
# transformers 5 names its modules apart from the files it reads and writes
# (its conversion mapping); the files' names, for the meta-device models.
_FILE_NAMES = (('attention.q_proj', 'attention.attention.query'),
               ('attention.k_proj', 'attention.attention.key'),
               ('attention.v_proj', 'attention.attention.value'),
               ('attention.o_proj', 'attention.output.dense'),
               ('mlp.down_proj', 'mlp.weights_out'))


def _rel(ours, theirs) -> float:
  theirs = np.asarray(theirs, np.float64)
  return float(np.max(np.abs(np.asarray(ours, np.float64) - theirs)) /
               np.max(np.abs(theirs)))


def _file_shapes(state_shapes):
  """transformers 5 state-dict names and shapes -> the checkpoint file's."""
  out = {}
  for name, shape in state_shapes.items():
    for new, old in _FILE_NAMES:
      name = name.replace(new, old)
    if '.mlp.gate_proj.' in name:  # gate and up are one (2H, ...) tensor.
      name = name.replace('.mlp.gate_proj.', '.mlp.weights_in.')
      shape = (2 * shape[0],) + tuple(shape[1:])
    elif '.mlp.up_proj.' in name:
      continue
    out[name] = tuple(shape)
  return out


@pytest.fixture(scope='module', params=['mlp', 'swiglu'])
def hf_dinov2(request, tmp_path_factory):
  """A random transformers Dinov2Model (518 px positions) saved to disk."""
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  config = transformers.Dinov2Config(
      hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
      image_size=518, patch_size=14,
      use_swiglu_ffn=request.param == 'swiglu')
  torch.manual_seed(0)
  model = transformers.Dinov2Model(config).eval()
  with torch.no_grad():  # LayerNorms, LayerScales and biases move too.
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  directory = str(tmp_path_factory.mktemp(f'dinov2_{request.param}'))
  model.save_pretrained(directory, safe_serialization=True)
  return torch, model, directory


def test_features_match_transformers(hf_dinov2):
  """The class token after the final norm equals transformers'
  pooler_output at 224 px (interpolated positions) and at 518 px (the
  table itself), within 1e-4 relative."""
  torch, model, directory = hf_dinov2
  ours = dinov2.Dinov2(directory, batch_size=2, position_offset=0.0)
  images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3),
                                             dtype=np.uint8)
  pixels = dinov2.preprocess(images)
  with torch.no_grad():
    want = model(torch.from_numpy(pixels.transpose(0, 3, 1, 2))
                 ).pooler_output.numpy()
  assert _rel(ours.features(images), want) < 1e-4
  big = np.random.default_rng(1).normal(size=(1, 518, 518, 3))
  big = big.astype(np.float32)
  flax_model = dinov2.Dinov2Model(ours.config, 0.0)
  params = dinov2.load_params(directory, ours.config)
  got = flax_model.apply({'params': params}, big)
  with torch.no_grad():
    want = model(torch.from_numpy(big.transpose(0, 3, 1, 2))
                 ).pooler_output.numpy()
  assert _rel(got, want) < 1e-4


def test_release_positions_match_torch_scale_factor(hf_dinov2):
  """position_offset=0.1 resizes the 37 x 37 table as the DINOv2 release
  asks torch to: scale factor (16 + 0.1) / 37."""
  torch, model, directory = hf_dinov2
  table = model.embeddings.position_embeddings.detach()  # (1, 1 + 37^2, D)
  grid = table[:, 1:].reshape(1, 37, 37, -1).permute(0, 3, 1, 2)
  want = torch.nn.functional.interpolate(
      grid, scale_factor=(16.1 / 37, 16.1 / 37), mode='bicubic',
      align_corners=False).permute(0, 2, 3, 1).reshape(256, -1).numpy()
  got = dinov2.interpolate_positions(table[0].numpy(), 16,
                                     dinov2.RELEASE_OFFSET)
  np.testing.assert_allclose(got[1:], want, atol=1e-5)
  np.testing.assert_array_equal(got[0], table[0, 0].numpy())
  config = dinov2.read_config(os.path.join(directory, 'config.json'))
  params = dinov2.load_params(directory, config)
  pixels = np.zeros((1, 224, 224, 3), np.float32)
  release = dinov2.Dinov2Model(config).apply({'params': params}, pixels)
  sized = dinov2.Dinov2Model(config, 0.0).apply({'params': params}, pixels)
  assert 0 < _rel(release, sized) < 0.1  # Close, and not the same.


def test_preprocess_matches_dgm_eval_transform():
  """torchvision's Resize((224, 224), BICUBIC) on the PIL image, ToTensor,
  ImageNet Normalize: dgm-eval's DINOv2 transform."""
  pytest.importorskip('torch')
  transforms = pytest.importorskip('torchvision.transforms')
  from PIL import Image  # pylint: disable=g-import-not-at-top
  images = np.random.default_rng(2).integers(0, 256, (2, 64, 48, 3),
                                             dtype=np.uint8)
  pipeline = transforms.Compose([
      transforms.Resize((224, 224), transforms.InterpolationMode.BICUBIC),
      transforms.ToTensor(),
      transforms.Normalize(dinov2.IMAGE_MEAN, dinov2.IMAGE_STD)])
  want = np.stack([pipeline(Image.fromarray(i)).numpy().transpose(1, 2, 0)
                   for i in images])
  np.testing.assert_allclose(dinov2.preprocess(images), want, atol=1e-5)


@pytest.mark.parametrize('name', list(PUBLISHED))
def test_published_shapes_map_both_ways(tmp_path, name):
  """Every tensor of a transformers Dinov2Model of the published shapes
  (meta device: no memory) maps onto our parameters and back."""
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  config = transformers.Dinov2Config(image_size=518, patch_size=14,
                                     **PUBLISHED[name])
  config.save_pretrained(str(tmp_path))
  with torch.device('meta'):
    file_shapes = _file_shapes({k: v.shape for k, v in transformers
                                .Dinov2Model(config).state_dict().items()})
  ours = dinov2.read_config(str(tmp_path / 'config.json'))
  flax_shapes = dinov2._expected_shapes(ours)  # pylint: disable=protected-access
  names = dinov2.tensor_names(ours)
  assert ({n for n, _, _ in names} | set(dinov2.UNUSED_TENSORS) ==
          set(file_shapes))
  assert {p for _, p, _ in names} == set(flax_shapes)
  for hf_name, path, (to_flax, to_hf) in names:
    shape = jax.eval_shape(to_flax, jax.ShapeDtypeStruct(
        file_shapes[hf_name], np.float32)).shape
    assert shape == flax_shapes[path], hf_name
    back = jax.eval_shape(to_hf, jax.ShapeDtypeStruct(shape, np.float32))
    assert back.shape == file_shapes[hf_name], hf_name


def test_errors_name_the_problem(tmp_path, hf_dinov2):
  _, _, directory = hf_dinov2
  with pytest.raises(errors.MissingFileError, match='config.json not found'):
    dinov2.Dinov2(str(tmp_path))
  config_path = tmp_path / 'config.json'
  with open(os.path.join(directory, 'config.json')) as f:
    raw = json.load(f)
  config_path.write_text(json.dumps(dict(raw, model_type=
                                         'dinov2_with_registers')))
  with pytest.raises(errors.ConfigError, match='no registers'):
    dinov2.read_config(str(config_path))
  config_path.write_text(json.dumps(dict(raw, num_hidden_layers=3)))
  with pytest.raises(ValueError, match="'encoder.layer.2.norm1.weight' is "
                     'missing'):
    dinov2.load_params(directory, dinov2.read_config(str(config_path)))
  config_path.write_text(json.dumps(dict(raw, hidden_size=48)))
  with pytest.raises(ValueError, match='model.safetensors: tensor '
                     "'embeddings.cls_token' has shape"):
    dinov2.load_params(directory, dinov2.read_config(str(config_path)))
