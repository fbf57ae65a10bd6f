"""CLIP (eval/clip.py) against transformers, and clean-fid's resize.

No weights can be downloaded here: the transformers references are random
CLIPModels saved with save_pretrained (the real directory layout), with a
BPE vocabulary learned by fake_data in CLIP's file formats.
"""

import json
import os
import shutil

import jax
import numpy as np
import pytest

import fake_data
from xmcgan_jax import errors
from xmcgan_jax.eval import clip
from xmcgan_jax.eval import inception

# Punctuation, clitics, case, whitespace runs, accents, CJK, emoji, digits,
# empty, and two captions past 77 tokens (cut, end token kept).
AWKWARD_CAPTIONS = [
    'A red circle.', '', '  Two   SPACES\tand\nnewlines ',
    "there's a dog's ball, isn't it?", 'Café naïve — 東京 🚀 emoji!',
    '!!!???...', 'pi is 3.14159, not 22/7', 'a ' * 100,
    ' '.join(fake_data.CLIP_CORPUS) * 2,
]


def _rel(ours, theirs) -> float:
  """Largest absolute difference relative to the reference's scale."""
  theirs = np.asarray(theirs, np.float64)
  return float(np.max(np.abs(np.asarray(ours, np.float64) - theirs)) /
               np.max(np.abs(theirs)))


@pytest.fixture(scope='module')
def vocab_dir(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp('clip_vocab'))
  fake_data.write_clip_vocab(directory)
  return directory


@pytest.fixture(scope='module')
def hf_clip(tmp_path_factory, vocab_dir):
  """A random transformers.CLIPModel saved as a Hugging Face directory."""
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  with open(os.path.join(vocab_dir, 'vocab.json')) as f:
    vocab = json.load(f)
  text = dict(fake_data.TINY_CLIP_CONFIG['text_config'],
              vocab_size=len(vocab), eos_token_id=vocab['<|endoftext|>'],
              bos_token_id=vocab['<|startoftext|>'], pad_token_id=0)
  config = transformers.CLIPConfig(
      text_config=text,
      vision_config=fake_data.TINY_CLIP_CONFIG['vision_config'],
      projection_dim=fake_data.TINY_CLIP_CONFIG['projection_dim'])
  torch.manual_seed(0)
  model = transformers.CLIPModel(config).eval()
  # Initialisation leaves LayerNorms at 1/0 and the logit scale at its
  # default: move every tensor so that each one's mapping is tested.
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  directory = str(tmp_path_factory.mktemp('hf_clip'))
  model.save_pretrained(directory, safe_serialization=True)
  for name in ('vocab.json', 'merges.txt'):
    shutil.copy(os.path.join(vocab_dir, name), directory)
  return torch, model, directory


def test_tokenizer_matches_transformers(vocab_dir):
  transformers = pytest.importorskip('transformers')
  theirs = transformers.CLIPTokenizer.from_pretrained(vocab_dir)(
      AWKWARD_CAPTIONS, truncation=True, max_length=77)['input_ids']
  ids, lengths = clip.tokenize(clip.make_tokenizer(vocab_dir),
                               AWKWARD_CAPTIONS)
  assert ids.shape == (len(AWKWARD_CAPTIONS), 77)
  for row, n, want in zip(ids, lengths, theirs):
    assert row[:n].tolist() == want
    assert not row[n:].any()  # Padded with 0.
  assert lengths[1] == 2 and lengths[-1] == lengths[-2] == 77


def test_embeddings_and_logits_match_transformers(hf_clip):
  torch, model, directory = hf_clip
  ours = clip.Clip(directory, batch_size=8)  # 8 per call: 9 captions pad.
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (len(AWKWARD_CAPTIONS), 64, 64, 3), np.uint8)
  pixels = clip.preprocess(images, ours.config.image_size)
  ids, lengths = clip.tokenize(ours.tokenizer, AWKWARD_CAPTIONS)
  mask = np.arange(ids.shape[1])[None] < lengths[:, None]
  with torch.no_grad():
    inputs = dict(pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2)),
                  input_ids=torch.from_numpy(ids).long(),
                  attention_mask=torch.from_numpy(mask).long())
    out = model(**inputs)
    # Unnormalised embeddings (transformers 5 returns a pooled output).
    pooled = lambda o: getattr(o, 'pooler_output', o).numpy()
    want_images = pooled(model.get_image_features(inputs['pixel_values']))
    want_texts = pooled(model.get_text_features(
        input_ids=inputs['input_ids'], attention_mask=inputs['attention_mask']))
  image_embeddings = ours.embed_images(images)
  text_embeddings = ours.embed_texts(AWKWARD_CAPTIONS)
  assert _rel(image_embeddings, want_images) < 1e-4
  assert _rel(text_embeddings, want_texts) < 1e-4
  _, _, logits = clip.ClipModel(ours.config).apply(
      {'params': clip.load_params(directory, ours.config)}, pixels, ids,
      lengths)
  assert _rel(logits, out.logits_per_image) < 1e-4
  # The metric from transformers' own embeddings, by hand.
  a, b = want_images, want_texts
  cos = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
  metrics = clip.clip_metrics(image_embeddings, text_embeddings)
  assert metrics['clip_score_cosine'] == pytest.approx(cos.mean(), abs=1e-5)
  assert metrics['clip_score'] == pytest.approx(
      np.mean(100 * np.maximum(cos, 0)), abs=1e-3)


def test_preprocess_matches_clip_image_processor():
  pytest.importorskip('transformers')
  from transformers.models.clip import image_processing_pil_clip  # pylint: disable=g-import-not-at-top
  processor = image_processing_pil_clip.CLIPImageProcessorPil(
      size={'shortest_edge': 224}, crop_size={'height': 224, 'width': 224})
  rng = np.random.default_rng(1)
  for shape in ((128, 128, 3), (256, 256, 3), (200, 300, 3)):
    images = rng.integers(0, 256, (2,) + shape, np.uint8)
    want = processor(images=list(images), return_tensors='np')['pixel_values']
    np.testing.assert_allclose(clip.preprocess(images, 224),
                               want.transpose(0, 2, 3, 1), atol=1e-5)


def test_clip_score_by_hand():
  images = np.array([[1, 0], [0, 1], [1, 1], [1, -1]], np.float32)
  texts = np.array([[2, 0], [1, 0], [1, 0], [-1, 1]], np.float32)
  # Cosines 1, 0, 1/sqrt(2), -1.
  metrics = clip.clip_metrics(images, texts)
  assert metrics['clip_score_cosine'] == pytest.approx(
      (1 + 0 + 2**-0.5 - 1) / 4)
  assert metrics['clip_score'] == pytest.approx(100 * (1 + 2**-0.5) / 4)
  assert 'clip_r_precision' not in metrics  # Needs 100+ captions.
  rng = np.random.default_rng(0)
  texts = rng.normal(size=(150, 16))
  perfect = clip.clip_metrics(texts * 3, texts, seed=1)
  assert perfect['clip_r_precision'] == 1.0
  assert perfect['clip_score_cosine'] == pytest.approx(1.0)


@pytest.mark.parametrize('vision,text,projection', [
    # ViT-B/32 and ViT-L/14 as openai/clip-vit-*'s config.json give them.
    (dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
          num_hidden_layers=12, patch_size=32),
     dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8,
          num_hidden_layers=12), 512),
    (dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
          num_hidden_layers=24, patch_size=14),
     dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
          num_hidden_layers=12), 768),
    # ViT-L/14@336 (CMMD's): 577 positions.
    (dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
          num_hidden_layers=24, patch_size=14, image_size=336),
     dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
          num_hidden_layers=12), 768),
], ids=['ViT-B-32', 'ViT-L-14', 'ViT-L-14-336'])
def test_published_shapes_map_onto_flax(tmp_path, vision, text, projection):
  """Every tensor of a transformers CLIPModel of the published shapes (built
  on the meta device: no memory) maps onto our parameters with its shape."""
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  config = transformers.CLIPConfig(text_config=text, vision_config=vision,
                                   projection_dim=projection)
  config.save_pretrained(str(tmp_path))
  with torch.device('meta'):
    hf_shapes = {k: tuple(v.shape) for k, v in
                 transformers.CLIPModel(config).state_dict().items()
                 if not k.endswith('position_ids')}
  ours = clip.read_config(str(tmp_path / 'config.json'))
  side = vision.get('image_size', 224)
  assert ours.image_size == side and ours.vocab_size == 49408
  flat = jax.tree_util.tree_flatten_with_path(jax.eval_shape(
      lambda: clip.ClipModel(ours).init(
          jax.random.PRNGKey(0), np.zeros((1, side, side, 3), np.float32),
          np.zeros((1, 2), np.int32), np.ones((1,), np.int32)))['params'])[0]
  flax_shapes = {tuple(k.key for k in path): v.shape for path, v in flat}
  names = clip.tensor_names(ours)
  assert {n for n, _, _ in names} == set(hf_shapes)
  assert {p for _, p, _ in names} == set(flax_shapes)
  for hf_name, path, (to_flax, to_hf) in names:
    zeros = np.zeros(hf_shapes[hf_name], np.int8)
    assert to_flax(zeros).shape == flax_shapes[path], hf_name
    assert to_hf(to_flax(zeros)).shape == hf_shapes[hf_name], hf_name


def test_layouts_round_trip_and_errors_name_the_tensor(tmp_path):
  directory = fake_data.write_random_clip(str(tmp_path / 'clip'))
  config = clip.read_config(os.path.join(directory, 'config.json'))
  params = clip.load_params(directory, config)
  again = clip.load_params(directory, config)
  jax.tree.map(np.testing.assert_array_equal, params, again)
  from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
  path = os.path.join(directory, 'model.safetensors')
  tensors = safetensors_numpy.load_file(path)
  name = 'text_model.encoder.layers.1.mlp.fc1.weight'
  tensors[name] = tensors[name][:, :-1]
  safetensors_numpy.save_file(tensors, path)
  with pytest.raises(ValueError, match=f'model.safetensors: tensor {name!r} '
                     r'has shape \(64, 31\)'):
    clip.load_params(directory, config)
  del tensors[name]
  safetensors_numpy.save_file(tensors, path)
  with pytest.raises(ValueError, match=f'{name!r} is missing'):
    clip.load_params(directory, config)
  with open(path, 'wb') as f:
    f.write(b'\x10\x00\x00')
  with pytest.raises(ValueError, match='model.safetensors: not a readable'):
    clip.load_params(directory, config)
  os.remove(os.path.join(directory, 'merges.txt'))
  with pytest.raises(errors.MissingFileError, match='merges.txt not found'):
    clip.make_tokenizer(directory)
  with pytest.raises(errors.MissingFileError, match='config.json not found'):
    clip.Clip(str(tmp_path))


def test_clean_resize_matches_clean_fid():
  resize = pytest.importorskip('cleanfid.resize')
  clean = resize.build_resizer('clean')
  rng = np.random.default_rng(2)
  images = rng.integers(0, 256, (3, 64, 64, 3), np.uint8)
  images[0] = 255 * (np.indices((64, 64)).sum(0) % 2)[..., None]  # Ringing.
  ours = inception.clean_resize(images)
  assert ours.shape == (3, 299, 299, 3) and ours.dtype == np.float32
  for image, resized in zip(images, ours):
    np.testing.assert_array_equal(resized, clean(image))
