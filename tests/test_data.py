"""Datasets and the tf.data pipeline on small data in the real formats."""

import dataclasses
import pathlib

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tests import fake_data
from xmcgan_jax.data import localized_narratives
from xmcgan_jax.data import pipeline
from xmcgan_jax.data import shapes
from xmcgan_jax.data import shapes_builder
from xmcgan_jax.eval import shapes_oracle
from xmcgan_jax.text import tokenizer as tokenizer_lib

WORDS = ('[PAD] [UNK] [CLS] [SEP] [MASK] . , ! a the an image of with and at '
         'in on there is has picture grey background caption').split()
VOCAB_WORDS = (WORDS + list(shapes.SHAPES) + list(shapes.COLOUR_NAMES) +
               list(shapes.SIZES) + 'top middle bottom left right center'
               .split() + [str(i) for i in range(20)] + ['##s'])


@pytest.fixture(scope='module')
def tokenizer(tmp_path_factory):
  path = tmp_path_factory.mktemp('vocab') / 'vocab.txt'
  path.write_text('\n'.join(VOCAB_WORDS) + '\n')
  return tokenizer_lib.Tokenizer(str(path))


def _config(**kw):
  c = ml_collections.ConfigDict(dict(
      dataset='shapes', data_dir='', manual_dir='', image_size=64,
      shapes_train_size=24, shapes_eval_size=10, shapes_grid=3,
      shapes_max_objects=3,
      max_tokens=40, seed=0,
      shuffle_buffer=32, random_flip=True, mirror_pairs=False,
      shape_pairs=False))
  c.update(kw)
  return c


@pytest.fixture(scope='module')
def shapes_pipeline(tmp_path_factory, tokenizer):
  config = _config(data_dir=str(tmp_path_factory.mktemp('tfds')))
  return pipeline.create_input_pipeline(config, tokenizer)


@pytest.mark.parametrize('grid,max_objects', [(3, 3), (2, 3), (2, 1)])
def test_shapes_examples_are_deterministic_and_captions_match_truth(
    grid, max_objects):
  cells_seen, counts = set(), set()
  for index in range(40):
    a = shapes.make_example(0, 'train', index, 64, grid, max_objects)
    b = shapes.make_example(0, 'train', index, 64, grid, max_objects)
    np.testing.assert_array_equal(a['image'], b['image'])
    assert a['captions'] == b['captions']
    truth = set(zip(a['objects']['size'], a['objects']['colour'],
                    a['objects']['shape'], a['objects']['cell']))
    counts.add(len(truth))
    assert len(a['captions']) == 5
    for caption in a['captions']:
      assert shapes.parse_caption(caption) == truth, caption
    # The pixel at each object's cell centre has the object's colour.
    for colour, cell in zip(a['objects']['colour'], a['objects']['cell']):
      y, x = shapes.cell_centre(cell, 64, grid)
      np.testing.assert_array_equal(a['image'][int(y), int(x)],
                                    shapes.COLOURS[colour])
    cells_seen.update(a['objects']['cell'])
    empty = set(shapes.grid_cells(grid)) - set(a['objects']['cell'])
    for cell in empty:
      y, x = shapes.cell_centre(cell, 64, grid)
      np.testing.assert_array_equal(a['image'][int(y), int(x)],
                                    shapes.BACKGROUND)
    labels = shapes_oracle.cell_labels(a['objects'], grid)
    assert labels.shape == (grid * grid, 3)
    assert (labels[:, 0] > 0).sum() == len(truth)
  assert cells_seen == set(shapes.grid_cells(grid))
  assert counts == set(range(1, max_objects + 1))
  other = shapes.make_example(1, 'train', 0, 64, grid, max_objects)
  assert other['captions'] != shapes.make_example(0, 'train', 0, 64, grid,
                                                  max_objects)['captions']


def test_shapes_grid_errors_name_the_problem():
  with pytest.raises(ValueError, match='grid=4'):
    shapes_builder.shapes_config(grid=4)
  with pytest.raises(ValueError, match=r'max_objects=5 must be in \[1, 4\]'):
    shapes_builder.shapes_config(grid=2, max_objects=5)
  with pytest.raises(ValueError, match="'center' is not in the 2x2 grid"):
    shapes_oracle.cell_labels({'shape': ['circle'], 'colour': ['red'],
                               'size': ['small'], 'cell': ['center']}, 2)


def test_shapes_builder_and_training_batches(shapes_pipeline):
  builder = shapes_pipeline.builder
  assert builder.info.splits['train'].num_examples == 24
  ex = next(iter(tfds.as_numpy(builder.as_dataset(split='validation'))))
  want = shapes.make_example(0, 'validation', int(ex['image/id']), 64)
  np.testing.assert_array_equal(ex['image'], want['image'])
  batch = next(pipeline.as_numpy(shapes_pipeline.train_dataset(4, 2)))
  assert batch['image'].shape == (2, 4, 64, 64, 3)
  assert batch['image'].dtype == np.float32
  assert 0.0 <= batch['image'].min() and batch['image'].max() <= 1.0
  assert batch['token_ids'].shape == (2, 4, 40)
  assert batch['token_mask'].dtype == bool
  assert (batch['token_ids'][..., 0] == 2).all()  # [CLS]
  assert int(batch['next_position']) == 8


def test_shapes_builder_takes_the_grid_and_object_count(tmp_path):
  builder = pipeline.make_builder(_config(
      data_dir=str(tmp_path), shapes_train_size=4, shapes_eval_size=3,
      shapes_grid=2, shapes_max_objects=1))
  assert builder.builder_config.name == '64px_grid2_max1_4_3_seed0'
  pipeline.prepare(builder)
  assert builder.info.features['objects']['cell'].names == list(
      shapes.grid_cells(2))
  for ex in tfds.as_numpy(builder.as_dataset(split='validation')):
    want = shapes.make_example(0, 'validation', int(ex['image/id']), 64, 2, 1)
    np.testing.assert_array_equal(ex['image'], want['image'])
    assert len(ex['objects']['cell']) == 1


def test_resumed_pipeline_sees_the_same_data(shapes_pipeline):
  """Batches from position p equal the tail of a run from 0, across epochs."""
  run = pipeline.as_numpy(shapes_pipeline.train_dataset(4, 1))
  straight = [next(run) for _ in range(9)]  # 36 records: epoch 2 begins.
  resume_at = int(straight[4]['next_position'])
  resumed = pipeline.as_numpy(shapes_pipeline.train_dataset(4, 1, resume_at))
  for want in straight[5:]:
    got = next(resumed)
    for key in ('image', 'token_ids', 'token_mask', 'next_position'):
      np.testing.assert_array_equal(got[key], want[key])
  # A new epoch is a new order.
  first = np.concatenate([b['token_ids'][0] for b in straight[:6]])[:24]
  second = np.concatenate([b['token_ids'][0] for b in straight[6:]])
  assert not np.array_equal(first[:12], second[:12])


def test_mirror_pairs_swap_sides_in_image_and_caption(shapes_pipeline,
                                                      tokenizer):
  # The mirror of a Shapes image is the image its swapped caption describes.
  for index in range(12):
    ex = shapes.make_example(0, 'train', index, 64)
    mirror = ex['image'][:, ::-1]
    for caption in pipeline.swap_left_right(ex['captions']).numpy():
      for _, colour, _, cell in shapes.parse_caption(caption.decode()):
        y, x = shapes.cell_centre(cell, 64)
        np.testing.assert_array_equal(mirror[int(y), int(x)],
                                      shapes.COLOURS[colour])
  assert pipeline.swap_left_right(tf.constant(
      'Left of the top left, upright leftmost right')).numpy() == (
          b'Right of the top right, upright leftmost left')

  paired = dataclasses.replace(shapes_pipeline, mirror_pairs=True,
                               random_flip=False)
  straight = pipeline.as_numpy(paired.train_dataset(4, 2))
  batches = [next(straight) for _ in range(4)]
  left, right = (VOCAB_WORDS.index(w) for w in ('left', 'right'))
  for batch in batches:
    images, ids = batch['image'], batch['token_ids']
    np.testing.assert_array_equal(images[:, 1::2], images[:, 0::2, :, ::-1])
    swapped = np.where(ids[:, 0::2] == left, right,
                       np.where(ids[:, 0::2] == right, left, ids[:, 0::2]))
    np.testing.assert_array_equal(ids[:, 1::2], swapped)
  assert [int(b['next_position']) for b in batches] == [4, 8, 12, 16]
  resumed = next(pipeline.as_numpy(paired.train_dataset(4, 2, 8)))
  np.testing.assert_array_equal(resumed['image'], batches[2]['image'])
  with pytest.raises(ValueError, match='per-process batch divisible by 2'):
    paired.train_dataset(3, 1)


def test_shape_pairs_differ_in_one_shape_in_image_and_caption(
    shapes_pipeline, tokenizer):
  """Groups of 4: a record, its mirror, its shape sibling, the sibling's
  mirror; the sibling's caption and image give one object another shape."""
  paired = dataclasses.replace(shapes_pipeline, mirror_pairs=True,
                               shape_pairs=True, random_flip=False)
  straight = pipeline.as_numpy(paired.train_dataset(8, 2))
  batches = [next(straight) for _ in range(3)]
  ids, mask = paired.train_caption_tokens()
  table = {tuple(np.where(m, i, -1)) for i, m in zip(ids, mask)}
  changed_shapes = set()
  words = lambda row, m: [VOCAB_WORDS[i] for i in row[m]][1:-1]
  for batch in batches:
    images = batch['image'].reshape((-1, 4) + batch['image'].shape[2:])
    ids_4 = batch['token_ids'].reshape(-1, 4, 40)
    mask_4 = batch['token_mask'].reshape(-1, 4, 40)
    for group, row, m in zip(images, ids_4, mask_4):
      np.testing.assert_array_equal(group[1], group[0][:, ::-1])
      np.testing.assert_array_equal(group[3], group[2][:, ::-1])
      texts = [words(row[k], m[k]) for k in (0, 2)]
      record, sibling = (shapes.parse_caption(' '.join(t)) for t in texts)
      assert len(record) == len(sibling)
      (old,), (new,) = record - sibling, sibling - record
      assert old[:2] + old[3:] == new[:2] + new[3:] and old[2] != new[2]
      changed_shapes.add((old[2], new[2]))
      # The same words apart from that shape word.
      assert [(a, b) for a, b in zip(*texts) if a != b] == [(old[2], new[2])]
      # The sibling's image draws its caption (colour at each cell centre).
      for _, colour, _, cell in sibling:
        y, x = shapes.cell_centre(cell, 64)
        np.testing.assert_allclose(group[2][int(y), int(x)],
                                   np.array(shapes.COLOURS[colour]) / 255)
    for row_ids, row_mask in zip(batch['token_ids'].reshape(-1, 40),
                                 batch['token_mask'].reshape(-1, 40)):
      assert tuple(np.where(row_mask, row_ids, -1)) in table
  assert len(changed_shapes) > 2  # Random choices of object and shape.
  assert [int(b['next_position']) for b in batches] == [4, 8, 12]
  resumed = next(pipeline.as_numpy(paired.train_dataset(8, 2, 8)))
  np.testing.assert_array_equal(resumed['image'], batches[2]['image'])
  with pytest.raises(ValueError, match='per-process batch divisible by 4'):
    paired.train_dataset(6, 1)
  with pytest.raises(ValueError, match="names no object"):
    shapes.shape_sibling('a grey background', [0, 0], 64, 3)


def test_two_processes_get_disjoint_shards_covering_the_split(
    shapes_pipeline, tokenizer):
  captions = []
  for index in range(2):
    p = pipeline.InputPipeline(
        shapes_pipeline.builder, pipeline.DATASETS['shapes'], tokenizer,
        image_size=64, max_tokens=40, process_index=index, process_count=2)
    eval_batches = list(pipeline.as_numpy(p.eval_dataset(3)))
    got = [c for b in eval_batches for c, v in zip(b['caption'], b['valid'])
           if v]
    assert len(eval_batches) == 2  # ceil(ceil(10 / 2) / 3) on both.
    captions.append(set(got))
    train = pipeline.as_numpy(p.train_dataset(12, 1))
    assert p.num_examples('train') == 12
    next(train)
  assert not captions[0] & captions[1]
  every = {ex['captions'][0] for ex in tfds.as_numpy(
      shapes_pipeline.builder.as_dataset(split='validation'))}
  assert captions[0] | captions[1] == every


def test_coco_captions_builder_offline(tmp_path, monkeypatch, tokenizer):
  root = str(tmp_path / 'coco')
  captions = fake_data.write_coco2014(root)
  fake_data.redirect_coco_downloads(monkeypatch, root)
  config = _config(dataset='coco', data_dir=str(tmp_path / 'tfds'),
                   max_tokens=17)
  p = pipeline.create_input_pipeline(config, tokenizer)
  splits = p.builder.info.splits
  assert splits['train'].num_examples == 6
  assert (splits['val'].num_examples, splits['test'].num_examples,
          splits['restval'].num_examples) == (1, 1, 2)
  batch = next(pipeline.as_numpy(p.train_dataset(3, 2)))
  assert batch['image'].shape == (2, 3, 64, 64, 3)
  # Images are solid colours: the resized image keeps the colour.
  assert np.ptp(batch['image'][0, 0], axis=(0, 1)).max() < 0.05
  evaluated = list(pipeline.as_numpy(p.eval_dataset(8)))
  assert len(evaluated) == 1 and evaluated[0]['valid'].sum() == 4
  want = {c.encode() for s in ('val', 'test', 'restval') for c in captions[s]}
  assert set(evaluated[0]['caption'][:4]) == want
  # The eval job's view: captions, streamed uint8 images, cached statistics.
  from xmcgan_jax.eval import evaluate  # pylint: disable=g-import-not-at-top
  from xmcgan_jax.eval.metrics import fid_is  # pylint: disable=g-import-not-at-top
  config.eval_batch_size = 3
  config.update(eval_protocol='ours', eval_caption='first',  # The defaults.
                eval_real_resize='bilinear', eval_image_size=0,
                eval_num_samples=10, inception_score_splits=10)
  config.fid_stats_dir = str(tmp_path / 'stats')
  config.fid_resize = 'pytorch_fid'
  texts, (ids, mask), images, truth = evaluate.eval_set(config, 10,
                                                        tokenizer)
  assert truth is None and {t.encode() for t in texts} == want
  want_ids, want_mask = tokenizer.tokenize_numpy(texts, config.max_tokens)
  np.testing.assert_array_equal(ids, want_ids)  # The pipeline's own ids.
  np.testing.assert_array_equal(mask, want_mask)
  batches = list(images())
  assert [b.shape for b in batches] == [(3, 64, 64, 3), (1, 64, 64, 3)]
  assert all(b.dtype == np.uint8 for b in batches)
  mean_colour = lambda x: (x.reshape(len(x), -1, 3).mean(axis=1), x[:, :1, 0, 0])
  mu, _ = fid_is.real_statistics(config, mean_colour, 'fake', len(texts),
                                 images())
  np.testing.assert_allclose(mu, np.concatenate(batches).reshape(
      4, -1, 3).mean(axis=(0, 1)), rtol=1e-6)
  cached = list((tmp_path / 'stats').glob('coco_val_test_restval_64px_4_fake_pytorch_fid.npz'))
  assert len(cached) == 1
  again, _ = fid_is.real_statistics(config, None, 'fake', len(texts),
                                    iter([]))
  np.testing.assert_array_equal(again, mu)
  # clean_fid_coco30k's view: a random caption of each image (fixed by the
  # data seed), the centre square resized to 256 by PIL's Lanczos.
  from xmcgan_jax.eval import protocols  # pylint: disable=g-import-not-at-top
  config.eval_protocol = 'clean_fid_coco30k'
  clean = protocols.apply(config)
  assert (clean.eval_num_samples, clean.eval_image_size) == (30_000, 256)
  texts, _, images, _ = evaluate.eval_set(clean, 10, tokenizer)
  all_captions = {f'image {i} caption {k}' for i in range(7, 11)
                  for k in range(5)}
  assert set(texts) <= all_captions and set(texts) != {
      w.decode() for w in want}
  assert texts == evaluate.eval_set(clean, 10, tokenizer).captions
  got = np.concatenate(list(images()))
  assert got.shape == (4, 256, 256, 3) and got.dtype == np.uint8
  first = sorted((pathlib.Path(root) / 'val2014').glob('*.jpg'))[0]
  decoded = tf.io.decode_image(first.read_bytes(), channels=3).numpy()
  np.testing.assert_array_equal(
      got[0], pipeline.center_crop_lanczos(decoded, 256))


def test_center_crop_lanczos_is_pil_crop_then_resize():
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), np.uint8)
  want = Image.fromarray(image).crop((8, 0, 56, 48)).resize((20, 20),
                                                            Image.LANCZOS)
  np.testing.assert_array_equal(pipeline.center_crop_lanczos(image, 20),
                                np.asarray(want))


def test_localized_narratives_builders_skip_missing_images(tmp_path, caplog):
  for coco, cls in ((True, localized_narratives.LnCoco),
                    (False, localized_narratives.LnOpenImages)):
    manual = str(tmp_path / f'manual_{coco}')
    ids = ['139', '285', '632'] if coco else ['0a1b', '0c2d', 'ff00']
    fake_data.write_ln(manual, {
        'train': [{'image_id': i, 'caption': f'In this image a thing {i}.'}
                  for i in ids],
        'validation': [{'image_id': ids[0], 'caption': 'A view.'}]},
        coco=coco, images={ids[1]: None})  # ids[1] is missing.
    builder = cls(data_dir=str(tmp_path / 'tfds'))
    with caplog.at_level('WARNING'):
      pipeline.prepare(builder, manual)
    assert builder.info.splits['train'].num_examples == 2
    assert builder.info.splits['validation'].num_examples == 1
    assert builder.missing_images['train'] == 1
    assert '1 of 3 narratives skipped' in caplog.text
    got = {ex['image/id'].decode() for ex in
           tfds.as_numpy(builder.as_dataset(split='train'))}
    assert got == {ids[0], ids[2]}


def test_missing_manual_files_are_named(tmp_path):
  builder = localized_narratives.LnCoco(data_dir=str(tmp_path / 'tfds'))
  with pytest.raises(Exception, match='coco_train_localized_narratives.jsonl'):
    pipeline.prepare(builder, str(tmp_path / 'empty'))


def test_bad_records_are_skipped_and_counted(tmp_path, tokenizer):
  """Truncated, grayscale, CMYK, 1x1 images; empty and huge captions."""
  good = fake_data.jpeg_bytes()
  rows = [
      ('1', 'a red circle', good),
      ('2', 'truncated image', good[:len(good) // 3]),
      ('3', 'grayscale image', fake_data.jpeg_bytes(mode='L')),
      ('4', 'cmyk image', fake_data.jpeg_bytes(mode='CMYK')),
      ('5', 'one pixel', fake_data.jpeg_bytes(size=(1, 1))),
      ('6', '   ', good),
      ('7', 'red ' * 500, good),
      ('8', 'a blue square', good),
  ]
  manual = str(tmp_path / 'manual')
  records = [{'image_id': i, 'caption': c} for i, c, _ in rows]
  fake_data.write_ln(manual, {'train': records, 'validation': records},
                     images={i: data for i, _, data in rows})
  config = _config(dataset='ln_coco', data_dir=str(tmp_path / 'tfds'),
                   manual_dir=manual, max_tokens=12, shuffle_buffer=1)
  # One finite pass (the eval split holds the same rows): exact counts.
  p = pipeline.create_input_pipeline(config, tokenizer)
  evaluated = list(pipeline.as_numpy(p.eval_dataset(8)))
  assert sum(b['valid'].sum() for b in evaluated) == 6
  assert p.skipped.counts() == {'undecodable_image': 1, 'empty_caption': 1}
  # Training repeats forever and its parallel map reads ahead into the next
  # epoch, so its counts after a batch are only lower bounds; the batch's
  # next position (8) shows it took the 6 good records of the first epoch.
  p = pipeline.create_input_pipeline(config, tokenizer)
  batch = next(pipeline.as_numpy(p.train_dataset(6, 1)))
  assert batch['image'].shape == (1, 6, 64, 64, 3)
  assert batch['next_position'] == 8
  assert np.isfinite(batch['image']).all()
  assert batch['token_mask'].sum(-1).max() == 12  # Long caption truncated.
  assert all(n >= 1 for n in p.skipped.counts().values())
  centres = batch['image'][0, :, 32, 32]
  # The CMYK image (pure red) decodes to red, the grayscale one to grey.
  assert (np.abs(centres - [1.0, 0.0, 0.0]).max(axis=-1) < 0.1).sum() == 1
  assert (np.ptp(centres, axis=-1) < 0.02).sum() == 1


def test_every_configurable_dataset_has_a_spec():
  """config_base.DATASETS (validation, no TensorFlow) names exactly the
  datasets the pipeline can build."""
  from xmcgan_jax import config_base  # pylint: disable=g-import-not-at-top
  assert set(config_base.DATASETS) == set(pipeline.DATASETS)
  config = config_base.get_base_config()
  config.dataset = 'no_such_dataset'
  with pytest.raises(ValueError, match="dataset='no_such_dataset'.*shapes"):
    pipeline.make_builder(config)
