"""FID Inception: parity with pytorch-fid, conversion checks, resize."""

import os

import numpy as np
import pytest

from xmcgan_jax.eval import convert_inception
from xmcgan_jax.eval import fid
from xmcgan_jax.eval import inception


def _pytorch_fid():
  """pytorch_fid.inception, or skip when it (or torch/torchvision) is not
  installed. A broken install (e.g. torchvision built for another torch)
  fails the test instead of skipping it."""
  return pytest.importorskip('pytorch_fid.inception')


def _random_fid_inception(pi, monkeypatch):
  """pytorch-fid's FID InceptionV3 with random weights and BN statistics.

  fid_inception_v3() builds the FID structure, then downloads weights: the
  download is replaced by the model's own random state dict. BatchNorm
  statistics are then measured on random images, so every layer sees
  normalised activations (a realistic numeric range through 90 layers).
  """
  import torch  # pylint: disable=g-import-not-at-top
  built = {}
  make = pi._inception_v3  # pylint: disable=protected-access

  def record(*args, **kwargs):
    built['model'] = make(*args, **kwargs)
    return built['model']

  monkeypatch.setattr(pi, '_inception_v3', record)
  monkeypatch.setattr(pi, 'load_state_dict_from_url',
                      lambda *a, **k: built['model'].state_dict())
  torch.manual_seed(0)
  model = pi.InceptionV3([pi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
  bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  with torch.no_grad():
    for bn in bns:
      bn.reset_running_stats()
      bn.momentum = None  # Cumulative average over the calibration batch.
      bn.weight.uniform_(0.5, 1.5)
      bn.bias.normal_(0.0, 0.2)
    model.train()
    model(torch.rand(8, 3, 299, 299))
    # Shrink the last block's outputs so FIDs land in the usual range
    # (tens, not tens of thousands) where a 1e-3 tolerance means something.
    last = model.blocks[3][2]  # Mixed_7c: scale the concatenated branches.
    for name in ('branch1x1', 'branch3x3_2a', 'branch3x3_2b',
                 'branch3x3dbl_3a', 'branch3x3dbl_3b', 'branch_pool'):
      getattr(last, name).bn.weight.mul_(0.03)
      getattr(last, name).bn.bias.mul_(0.03)
  model.eval()
  state = dict(built['model'].state_dict())
  return model, state


@pytest.fixture(scope='module')
def torch_and_flax(tmp_path_factory):
  pi = _pytorch_fid()
  import torch  # pylint: disable=g-import-not-at-top
  with pytest.MonkeyPatch.context() as monkeypatch:
    model, state = _random_fid_inception(pi, monkeypatch)
  # Through the converter, as users run it: a hub-style name whose suffix is
  # the file's digest.
  tmp = tmp_path_factory.mktemp('inception')
  raw = os.path.join(tmp, 'weights.pth')
  torch.save(state, raw)
  digest = convert_inception.sha256(raw)
  pth = os.path.join(tmp, f'pt_inception-test-{digest[:8]}.pth')
  os.rename(raw, pth)
  assert convert_inception.check_digest(pth) == digest
  npz = os.path.join(tmp, 'fid_inception.npz')
  loaded = torch.load(pth, map_location='cpu', weights_only=True)
  convert_inception.convert({k: v.numpy() for k, v in loaded.items()},
                            digest, npz)
  ours = inception.InceptionFeatures.from_npz(npz, batch_size=16)
  return model, ours, pth


def _torch_pool(model, images_uint8):
  import torch  # pylint: disable=g-import-not-at-top
  x = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float() / 255.0
  with torch.no_grad():
    return model(x)[0].squeeze(3).squeeze(2).numpy().astype(np.float64)


def _images(seed, n, size):
  """Smooth random images (blurred noise), as uint8."""
  rng = np.random.default_rng(seed)
  low = rng.random((n, size // 8, size // 8, 3))
  return (np.kron(low, np.ones((1, 8, 8, 1))) * 255).astype(np.uint8)


@pytest.mark.slow  # Builds pytorch-fid's Inception and ours: minutes.
def test_pool_features_and_fid_match_pytorch_fid(torch_and_flax):
  model, ours, _ = torch_and_flax
  # 64 -> 299 upsampling (downsampling: test_resize_matrix_...).
  feats = {}
  for name, seed in (('a', 0), ('b', 1)):
    images = _images(seed, 8, 64)
    theirs = _torch_pool(model, images)
    mine, probs = ours(images)
    rel = np.linalg.norm(mine - theirs) / np.linalg.norm(theirs)
    assert rel < 1e-4, rel
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    feats[name] = (theirs, mine)
  from pytorch_fid import fid_score  # pylint: disable=g-import-not-at-top
  stats = lambda f: (f.mean(axis=0), np.cov(f, rowvar=False))
  theirs = fid_score.calculate_frechet_distance(
      *stats(feats['a'][0]), *stats(feats['b'][0]))
  mine = fid.frechet_distance(*fid.statistics(feats['a'][1]),
                              *fid.statistics(feats['b'][1]))
  assert theirs > 0.1
  assert abs(mine - theirs) < 1e-3, (mine, theirs)


@pytest.mark.slow  # Builds pytorch-fid's Inception and ours: minutes.
def test_clean_mode_matches_clean_fid_pipeline(torch_and_flax):
  """fid_resize='clean': clean-fid's own resize, then its (x - 128) / 128,
  into the same network (pytorch-fid's, without its resize and scaling)."""
  resize = pytest.importorskip('cleanfid.resize')
  import torch  # pylint: disable=g-import-not-at-top
  model, _, pth = torch_and_flax
  ours = inception.InceptionFeatures.from_npz(
      os.path.join(os.path.dirname(pth), 'fid_inception.npz'), batch_size=16,
      resize='clean')
  images = _images(2, 4, 64)
  clean = resize.build_resizer('clean')
  x = np.stack([clean(image) for image in images])
  model.resize_input, model.normalize_input = False, False
  try:
    with torch.no_grad():
      theirs = model(torch.from_numpy((x - 128) / 128).permute(0, 3, 1, 2)
                     .float())[0].squeeze(3).squeeze(2).numpy()
  finally:
    model.resize_input, model.normalize_input = True, True
  mine, _ = ours(images)
  assert np.linalg.norm(mine - theirs) / np.linalg.norm(theirs) < 1e-4
  # And it is not the bilinear pipeline's answer.
  bilinear = _torch_pool(model, images)
  assert np.linalg.norm(bilinear - theirs) / np.linalg.norm(theirs) > 1e-3


@pytest.mark.slow  # Builds pytorch-fid's Inception and ours: minutes.
def test_converter_rejects_wrong_digest_and_foreign_weights(torch_and_flax,
                                                            tmp_path):
  _, _, pth = torch_and_flax
  renamed = tmp_path / 'pt_inception-2015-12-05-6726825d.pth'
  renamed.write_bytes(open(pth, 'rb').read())
  with pytest.raises(ValueError, match='does not start with 6726825d'):
    convert_inception.check_digest(str(renamed))
  state = {'Conv2d_1a_3x3.conv.weight': np.zeros((32, 3, 3, 3), np.float32)}
  with pytest.raises(ValueError, match='lack'):
    inception.params_from_torch_state(state)


def test_state_shape_and_unknown_key_errors():
  """A state dict of the right names and shapes loads; others are named."""
  state = {}
  flax_params = inception.jax.eval_shape(lambda: inception.FIDInceptionV3(
  ).init(inception.jax.random.PRNGKey(0), np.zeros((1, 299, 299, 3))))
  for path, leaf in inception.flax.traverse_util.flatten_dict(
      inception.flax.core.unfreeze(flax_params['params'])).items():
    if path[0] == 'fc':
      name = 'fc.weight' if path[-1] == 'kernel' else 'fc.bias'
      shape = leaf.shape[::-1]
      state[name] = np.zeros(shape, np.float32)
      continue
    prefix = '.'.join(path[:-2])
    if path[-1] == 'kernel':
      kh, kw, cin, cout = leaf.shape
      state[f'{prefix}.conv.weight'] = np.ones((cout, cin, kh, kw), np.float32)
      for field in ('weight', 'bias', 'running_mean', 'running_var'):
        state[f'{prefix}.bn.{field}'] = np.ones((cout,), np.float32)
  params = inception.params_from_torch_state(state)
  assert params['Mixed_7c']['branch_pool']['conv']['kernel'].shape == (
      1, 1, 2048, 192)
  bad = dict(state)
  bad['fc.weight'] = np.zeros((1000, 2048), np.float32)
  with pytest.raises(ValueError, match='fc/kernel has shape'):
    inception.params_from_torch_state(bad)
  extra = dict(state)
  extra['AuxLogits.fc.weight'] = np.zeros((1000, 768), np.float32)
  with pytest.raises(ValueError, match='Unexpected Inception weights'):
    inception.params_from_torch_state(extra)


def test_resize_matrix_matches_torch_interpolate():
  torch = pytest.importorskip('torch')
  x = np.random.default_rng(0).random((1, 1, 37, 5)).astype(np.float32)
  for out in (299, 16):
    theirs = torch.nn.functional.interpolate(
        torch.from_numpy(x), size=(out, 5), mode='bilinear',
        align_corners=False).numpy()[0, 0]
    mine = inception.resize_matrix(37, out) @ x[0, 0]
    np.testing.assert_allclose(mine, theirs, atol=1e-5)  # torch: f32 coords.
