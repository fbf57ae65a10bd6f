"""TFDS builders for Localized Narratives on COCO-2017 and Open Images V6.

Localized Narratives (Pont-Tuset et al., ECCV 2020) pair images with long
spoken-then-transcribed descriptions. The annotations are JSONL files, one
narrative per line with the fields dataset_id, image_id, annotator_id,
caption, timed_caption, traces, voice_recording; the images come from COCO
or Open Images. Both must be downloaded by hand into a manual directory (see
MANUAL_DOWNLOAD_INSTRUCTIONS); each narrative becomes one example. A narrative
whose image file is missing is skipped, counted and reported, never fatal.
"""

import json
import os
from typing import Dict, Iterator, List, Tuple

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from xmcgan_jax import errors

_ANNOTATIONS_URL = 'https://google.github.io/localized-narratives/'


class _LocalizedNarratives(tfds.core.GeneratorBasedBuilder,
                           skip_registration=True):
  """Shared reader; subclasses name the JSONL files and image paths."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  # split name -> JSONL file names in the manual directory.
  JSONL_FILES: Dict[str, List[str]] = {}

  def image_path(self, manual_dir: str, split: str, image_id: str) -> str:
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3)),
            'image/id': tfds.features.Text(),
            'annotator_id': np.int64,
            'caption': tfds.features.Text(),
        }),
        homepage=_ANNOTATIONS_URL,
    )

  def _split_generators(self, dl_manager):
    manual_dir = os.fspath(dl_manager.manual_dir)
    splits = {}
    for split, files in self.JSONL_FILES.items():
      paths = [os.path.join(manual_dir, f) for f in files]
      missing = [p for p in paths if not tf.io.gfile.exists(p)]
      if missing:
        raise errors.MissingFileError(
            f'{self.name}: annotation file(s) {missing} not found. '
            + self.MANUAL_DOWNLOAD_INSTRUCTIONS)
      splits[split] = self._generate_examples(manual_dir, split, paths)
    return splits

  def _generate_examples(self, manual_dir: str, split: str,
                         paths: List[str]) -> Iterator[Tuple[str, dict]]:
    total = missing = 0
    first_missing = None
    for path in paths:
      with tf.io.gfile.GFile(path) as f:
        for line_number, line in enumerate(f):
          if not line.strip():
            continue
          total += 1
          record = json.loads(line)
          image_id = str(record['image_id'])
          image = self.image_path(manual_dir, split, image_id)
          if not tf.io.gfile.exists(image):
            missing += 1
            first_missing = first_missing or image
            continue
          key = f'{os.path.basename(path)}:{line_number}'
          yield key, {'image': image, 'image/id': image_id,
                      'annotator_id': int(record.get('annotator_id', -1)),
                      'caption': record.get('caption', '')}
    if missing:
      logging.warning('%s %s: %d of %d narratives skipped, image missing '
                      '(first: %s).', self.name, split, missing, total,
                      first_missing)
    self.missing_images = getattr(self, 'missing_images', {})
    self.missing_images[split] = missing


class LnCoco(_LocalizedNarratives):
  """Localized Narratives on COCO-2017 images (LN-COCO)."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Put into the manual directory (config.manual_dir):
    coco_train_localized_narratives.jsonl and
    coco_val_localized_narratives.jsonl from
    https://google.github.io/localized-narratives/ ;
    train2017/ and val2017/ with the COCO-2017 images (000000xxxxxx.jpg) from
    https://cocodataset.org/#download .
  """
  JSONL_FILES = {'train': ['coco_train_localized_narratives.jsonl'],
                 'validation': ['coco_val_localized_narratives.jsonl']}

  def image_path(self, manual_dir, split, image_id):
    folder = 'train2017' if split == 'train' else 'val2017'
    return os.path.join(manual_dir, folder, f'{int(image_id):012d}.jpg')


class LnOpenImages(_LocalizedNarratives):
  """Localized Narratives on Open Images V6 images (LN-OpenImages)."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Put into the manual directory (config.manual_dir):
    open_images_train_v6_localized_narratives-0000{0..9}-of-00010.jsonl and
    open_images_validation_localized_narratives.jsonl from
    https://google.github.io/localized-narratives/ ;
    train/ and validation/ with the Open Images V6 images (<image_id>.jpg),
    e.g. with the downloader of https://storage.googleapis.com/openimages/web/download_v6.html .
  """
  JSONL_FILES = {
      'train': [f'open_images_train_v6_localized_narratives-{i:05d}-of-00010'
                '.jsonl' for i in range(10)],
      'validation': ['open_images_validation_localized_narratives.jsonl'],
  }

  def image_path(self, manual_dir, split, image_id):
    return os.path.join(manual_dir, split, f'{image_id}.jpg')
