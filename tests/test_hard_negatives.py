"""Hard negative captions: word swaps, the loss with them, D and the step."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fake_data
from xmcgan_jax import config_base
from xmcgan_jax import errors
from xmcgan_jax import losses
from xmcgan_jax.data import shapes
from xmcgan_jax.models import Discriminator
from xmcgan_jax import parallel
from xmcgan_jax.text import hard_negatives
from xmcgan_jax.training import builders
from xmcgan_jax.training import train
from xmcgan_jax.training import train_step as ts



@pytest.fixture(scope='module')
def tokenizer(tmp_path_factory):
  from test_data import VOCAB_WORDS  # pylint: disable=g-import-not-at-top
  from xmcgan_jax.text import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  path = tmp_path_factory.mktemp('vocab') / 'vocab.txt'
  path.write_text('\n'.join(VOCAB_WORDS + ['shape', '##lier']) + '\n')
  return tokenizer_lib.Tokenizer(str(path))


def _classes(tokenizer, classes=shapes.WORD_CLASSES):
  return hard_negatives.word_class_ids(
      classes, lambda words: tokenizer.tokenize_numpy(words, 8))


def _captions(count=64, grid=2):
  rng = np.random.default_rng(0)
  return [shapes.make_captions(shapes.sample_objects(rng, grid, 1), rng, 1)[0]
          for _ in range(count)]


def test_each_negative_swaps_one_word_of_its_class(tokenizer):
  classes = _classes(tokenizer)
  captions = _captions()
  ids, mask = tokenizer.tokenize_numpy(captions, 16)
  neg_ids, neg_mask, valid = hard_negatives.swap_words(
      jax.random.PRNGKey(0), ids, mask, classes)
  neg_ids, valid = np.asarray(neg_ids), np.asarray(valid)
  assert neg_ids.shape == (len(captions), len(classes), 16)
  np.testing.assert_array_equal(np.asarray(neg_mask),
                                np.repeat(mask[:, None], len(classes), 1))
  assert valid.all()  # Every one-object caption names all five attributes.
  vocab = {i: w for w, i in zip(
      *[sum((c.split() for c in shapes.WORD_CLASSES), []), sum(classes, ())])}
  for n, caption in enumerate(captions):
    for k, members in enumerate(classes):
      changed = np.nonzero(neg_ids[n, k] != ids[n])[0]
      assert len(changed) == 1, (caption, k)
      old, new = ids[n, changed[0]], neg_ids[n, k, changed[0]]
      assert old in members and new in members and old != new
      # The swapped caption is a Shapes caption of another object.
      swapped = caption.split()
      swapped[swapped.index(vocab[old])] = vocab[new]
      assert shapes.parse_caption(' '.join(swapped)) != shapes.parse_caption(
          caption)


def test_swaps_are_random_and_cover_all_swaps(tokenizer):
  classes = _classes(tokenizer)
  ids, mask = tokenizer.tokenize_numpy(_captions(8), 16)
  seen = set()
  for seed in range(40):
    neg, _, _ = hard_negatives.swap_words(jax.random.PRNGKey(seed), ids, mask,
                                          classes)
    seen.update(row.tobytes() for row in np.asarray(neg).reshape(-1, 16))
  every, _ = hard_negatives.all_swaps(ids, mask, classes)
  # One object: shape 2 + colour 5 + size 1 + row 1 + column 1 swaps.
  assert len({row.tobytes() for row in every}) == 8 * 10
  assert seen == {row.tobytes() for row in every.astype(np.int32)}


def test_a_caption_without_the_class_has_no_valid_negative(tokenizer):
  classes = _classes(tokenizer, ('circle square', 'left right'))
  ids, mask = tokenizer.tokenize_numpy(['a red circle at the top', 'a square'],
                                       10)
  neg, _, valid = hard_negatives.swap_words(jax.random.PRNGKey(0), ids, mask,
                                            classes)
  np.testing.assert_array_equal(np.asarray(valid), [[True, False],
                                                    [True, False]])
  np.testing.assert_array_equal(np.asarray(neg)[:, 1], ids)  # Unchanged.


def test_bad_word_classes_are_named(tokenizer):
  with pytest.raises(errors.ConfigError, match='two or more distinct'):
    config_base.parse_hard_negative_words(('circle',))
  with pytest.raises(errors.ConfigError, match="'red' is in class 0"):
    config_base.parse_hard_negative_words(('red blue', 'red green'))
  with pytest.raises(errors.ConfigError, match='a tuple of classes'):
    config_base.parse_hard_negative_words('circle square')
  with pytest.raises(errors.ConfigError, match="'shapelier' is 2 word pieces"):
    _classes(tokenizer, ('circle shapelier',))
  config = fake_data.base_config(hard_negative_words=('circle square',),
                                 **{'loss_weights.sentence': 0.0,
                                    'loss_weights.word_region': 0.0,
                                    'loss_weights.image_pretrained': 0.0})
  # Hinge only: valid, and no negatives are drawn (no term would score them).
  config_base.validate(config, 1)
  assert train.hard_negative_classes(config, tokenizer) == ()
  config.loss_weights.word_region = 1.0
  assert len(train.hard_negative_classes(config, tokenizer)) == 1


def _np_ce(logits, label):
  logits = logits - logits.max()
  return np.log(np.exp(logits).sum()) - logits[label]


def test_contrastive_loss_adds_hard_negatives_to_the_image_rows():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
  hard = rng.normal(size=(4, 3, 6))
  valid = np.array([[1, 1, 1], [1, 0, 1], [0, 0, 0], [1, 1, 0]], bool)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  scores = unit(a) @ unit(b).T / 0.1
  extra = np.einsum('bd,bkd->bk', unit(a), unit(hard)) / 0.1
  want = np.mean([_np_ce(np.concatenate([scores[i], extra[i][valid[i]]]), i)
                  for i in range(4)])
  want += np.mean([_np_ce(scores[:, i], i) for i in range(4)])
  got = losses.contrastive_loss(a, b, temperature=0.1, hard_negatives=hard,
                                hard_valid=valid)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
  none_valid = losses.contrastive_loss(a, b, temperature=0.1,
                                       hard_negatives=hard,
                                       hard_valid=np.zeros((4, 3), bool))
  np.testing.assert_allclose(float(none_valid),
                             float(losses.contrastive_loss(a, b)), rtol=1e-6)
  grad = jax.grad(lambda h: losses.contrastive_loss(
      a, b, hard_negatives=h, hard_valid=valid))(jnp.asarray(hard))
  assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[~valid] == 0)


def test_word_region_loss_adds_hard_negatives_to_the_image_rows():
  rng = np.random.default_rng(1)
  regions = rng.normal(size=(3, 4, 5))
  words = rng.normal(size=(3, 6, 5))
  mask = np.arange(6)[None] < np.array([[3], [6], [2]])
  hard_words = rng.normal(size=(3, 2, 6, 5))
  hard_mask = np.repeat(mask[:, None], 2, 1)
  valid = np.array([[1, 1], [0, 1], [1, 0]], bool)
  s = 50.0 * np.asarray(losses.word_region_scores(regions, words, mask))
  extra = 50.0 * np.stack([np.asarray(losses.word_region_scores(
      regions[i:i + 1], hard_words[i], hard_mask[i]))[0] for i in range(3)])
  want = np.mean([_np_ce(np.concatenate([s[i], extra[i][valid[i]]]), i)
                  for i in range(3)])
  want += np.mean([_np_ce(s[:, i], i) for i in range(3)])
  got = losses.word_region_loss(regions, words, mask, hard_words=hard_words,
                                hard_mask=hard_mask, hard_valid=valid)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_word_region_hard_negatives_gradient_equals_per_image_scores():
  """The batched hard-negative scores (one einsum over each image's own
  captions) give the gradient of scoring each image alone."""
  rng = np.random.default_rng(2)
  regions = jnp.asarray(rng.normal(size=(4, 6, 5)), jnp.float32)
  words = jnp.asarray(rng.normal(size=(4, 7, 5)), jnp.float32)
  mask = jnp.asarray(np.arange(7)[None] < np.array([[3], [7], [2], [5]]))
  hard_words = jnp.asarray(rng.normal(size=(4, 3, 7, 5)), jnp.float32)
  hard_mask = jnp.repeat(mask[:, None], 3, 1)
  valid = jnp.asarray(rng.random((4, 3)) > 0.3)

  def per_image(r):
    s = 50.0 * losses.word_region_scores(r, words, mask)
    extra = 50.0 * jnp.stack([losses.word_region_scores(
        r[i:i + 1], hard_words[i], hard_mask[i])[0] for i in range(4)])
    rows = jnp.concatenate([s, jnp.where(valid, extra, -1e9)], axis=1)
    ce = lambda logits, i: jax.nn.logsumexp(logits) - logits[i]
    return (jnp.mean(jnp.stack([ce(rows[i], i) for i in range(4)]))
            + jnp.mean(jnp.stack([ce(s[:, i], i) for i in range(4)])))

  got = jax.grad(lambda r: losses.word_region_loss(
      r, words, mask, hard_words=hard_words, hard_mask=hard_mask,
      hard_valid=valid))(regions)
  np.testing.assert_allclose(got, jax.grad(per_image)(regions), rtol=1e-4,
                             atol=1e-6)


def test_discriminator_projects_hard_negatives_as_captions():
  d = Discriminator(image_size=64, base_width=4, text_dim=16)
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(3, 64, 64, 3)).astype(np.float32)
  sentence = rng.normal(size=(3, 16)).astype(np.float32)
  hard = rng.normal(size=(3, 2, 16)).astype(np.float32)
  variables = d.init(jax.random.PRNGKey(0), images, sentence, train=False)
  plain = d.apply(variables, images, sentence, train=False)
  both = d.apply(variables, images, sentence, train=False,
                 hard_sentence_emb=hard)
  assert plain.hard_projection is None
  np.testing.assert_allclose(both.projection, plain.projection, rtol=1e-6)
  np.testing.assert_allclose(both.logits, plain.logits, rtol=1e-6)
  as_captions = d.apply(variables, np.repeat(images, 2, 0),
                        hard.reshape(6, 16), train=False)
  np.testing.assert_allclose(both.hard_projection.reshape(6, -1),
                             as_captions.projection, rtol=1e-5, atol=1e-6)


def _embedding_encoder(params, ids, mask):
  """A deterministic text encoder: token embeddings and their masked mean."""
  words = params['embedding'][ids]
  m = mask[..., None].astype(words.dtype)
  return words, (words * m).sum(-2) / jnp.maximum(m.sum(-2), 1)


def test_step_with_hard_negatives_is_device_count_invariant():
  from test_train_step import _models  # pylint: disable=g-import-not-at-top
  g, d = _models()  # text_dim 16, max_tokens 6, 64 px.
  g_tx, d_tx = fake_data.optimizers()
  rng = np.random.default_rng(0)
  batch = {'image': rng.uniform(size=(1, 16, 64, 64, 3)).astype(np.float32),
           'token_ids': rng.integers(0, 12, size=(1, 16, 6)).astype(np.int32),
           'token_mask': np.ones((1, 16, 6), bool)}
  frozen = {'text_encoder': {'embedding': rng.normal(size=(12, 16)).astype(
      np.float32)}}
  results = {}
  for n_devices, classes in ((8, ((1, 2, 3), (4, 5))), (1, ((1, 2, 3), (4, 5))),
                             (8, ())):
    mesh = parallel.make_mesh(jax.devices()[:n_devices])
    config = builders.build_step_config(
        fake_data.base_config(d_steps_per_g_step=1, bn_group='global'),
        classes)
    step = ts.make_train_step(g, d, g_tx, d_tx, mesh, config,
                              _embedding_encoder)
    state = ts.create_train_state(jax.random.PRNGKey(0), g, d, g_tx, d_tx,
                                  mesh)
    state, metrics = step(state, batch, frozen)
    results[n_devices, classes] = (
        [np.asarray(x) for x in jax.tree.leaves(state.d_params)],
        {k: float(v) for k, v in metrics.items()})
  with_8, with_1 = results[8, ((1, 2, 3), (4, 5))], results[1, ((1, 2, 3),
                                                                (4, 5))]
  without = results[8, ()]
  for a, b in zip(with_8[0], with_1[0]):  # Relative L2 error of each leaf.
    assert np.linalg.norm(a - b) < 1e-5 * np.linalg.norm(b)
  for k, v in with_1[1].items():
    np.testing.assert_allclose(with_8[1][k], v, rtol=1e-4, atol=1e-5)
    assert np.isfinite(v), k
  # More negatives: a larger sentence loss than with the batch's alone.
  for term in ('d_sentence', 'g_sentence', 'd_word_region', 'g_word_region'):
    assert with_8[1][term] > without[1][term], term


def test_default_config_swaps_every_shapes_attribute():
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  config = common.load_config(os.path.join(
      os.path.dirname(os.path.abspath(__file__)), '..', 'configs', 'shapes.py'))
  assert tuple(config.hard_negative_words) == shapes.WORD_CLASSES
