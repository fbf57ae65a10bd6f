"""Writes small datasets in the real on-disk layouts, for the data tests."""

import io
import json
import os
from typing import Dict, List, Optional

from PIL import Image


def jpeg_bytes(size=(48, 64), colour=(200, 30, 30), mode='RGB') -> bytes:
  """A JPEG of one colour; mode 'L' (grayscale) or 'CMYK' too."""
  h, w = size
  if mode == 'CMYK':
    image = Image.new('CMYK', (w, h), (0, 255, 255, 0))  # Red.
  else:
    image = Image.new('RGB', (w, h), colour).convert(mode)
  out = io.BytesIO()
  image.save(out, 'JPEG', quality=95)
  return out.getvalue()


def write(path: str, data: bytes) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(data)


def write_coco2014(root: str, num_train: int = 6, num_val: int = 4
                   ) -> Dict[str, List[str]]:
  """A tiny COCO-2014 tree + Karpathy split file, as TFDS coco_captions reads.

  Layout: root/{train2014,val2014}/COCO_*.jpg,
  root/annotations/instances_{train,val}2014.json,
  root/karpathy/dataset_coco.json. The val2014 images go to the Karpathy
  val, test and restval splits in turn.

  Returns:
    {karpathy split: [first caption of each image]}.
  """
  karpathy, captions = [], {'train': [], 'val': [], 'test': [], 'restval': []}
  # COCO has 80 categories (ids 1..90 with gaps); TFDS checks the count.
  categories = [{'id': i + 1, 'name': f'category_{i}'} for i in range(80)]
  image_id = 0
  for folder, count in (('train2014', num_train), ('val2014', num_val)):
    images, annotations = [], []
    for i in range(count):
      image_id += 1
      name = f'COCO_{folder}_{image_id:012d}.jpg'
      write(os.path.join(root, folder, name),
            jpeg_bytes(colour=(20 * i, 100, 250 - 20 * i)))
      images.append({'id': image_id, 'file_name': name, 'height': 48,
                     'width': 64})
      annotations.append({'id': 100 + image_id, 'image_id': image_id,
                          'area': 10.0, 'bbox': [1, 2, 10, 20],
                          'category_id': 1 + i % 2, 'iscrowd': 0})
      split = ('train' if folder == 'train2014' else
               ('val', 'test', 'restval', 'restval')[i % 4])
      sentences = [{'raw': f'image {image_id} caption {k}',
                    'sentid': image_id * 10 + k} for k in range(5)]
      karpathy.append({'filename': name, 'split': split,
                       'sentences': sentences})
      captions[split].append(sentences[0]['raw'])
    write(os.path.join(root, 'annotations', f'instances_{folder}.json'),
          json.dumps({'images': images, 'annotations': annotations,
                      'categories': categories}).encode())
  write(os.path.join(root, 'karpathy', 'dataset_coco.json'),
        json.dumps({'images': karpathy}).encode())
  return captions


def redirect_coco_downloads(monkeypatch, root: str) -> None:
  """Makes TFDS's download manager return the fake tree instead of the web."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  def download_and_extract(self, urls):
    del self
    local = lambda url: (os.path.join(root, 'karpathy')
                         if 'karpathy' in url else root)
    if isinstance(urls, dict):
      return {k: local(v) for k, v in urls.items()}
    return local(urls)

  monkeypatch.setattr(tfds.download.DownloadManager, 'download_and_extract',
                      download_and_extract)


def write_ln(root: str, records: Dict[str, List[dict]], coco: bool = True,
             images: Optional[Dict[str, bytes]] = None) -> None:
  """Localized Narratives JSONL + images in the manual-directory layout.

  Args:
    root: the manual directory.
    records: {split: [{'image_id', 'caption', ...}]}; 'train'/'validation'.
    coco: LN-COCO layout (else LN-OpenImages).
    images: {image_id: bytes} to write; ids without an entry get a JPEG,
      ids mapped to None are left missing.
  """
  images = images or {}
  for split, rows in records.items():
    if coco:
      jsonl = {'train': ['coco_train_localized_narratives.jsonl'],
               'validation': ['coco_val_localized_narratives.jsonl']}[split]
    elif split == 'train':
      jsonl = [f'open_images_train_v6_localized_narratives-{i:05d}-of-00010'
               '.jsonl' for i in range(10)]
    else:
      jsonl = ['open_images_validation_localized_narratives.jsonl']
    shards = [[] for _ in jsonl]
    for i, row in enumerate(rows):
      dataset_id = ('mscoco_' + ('train2017' if split == 'train' else 'val2017')
                    if coco else 'open_images_' + split)
      full = dict({'dataset_id': dataset_id, 'annotator_id': 7,
                   'timed_caption': [], 'traces': [],
                   'voice_recording': 'x.ogg'}, **row)
      shards[i % len(jsonl)].append(json.dumps(full))
      image_id = str(row['image_id'])
      if coco:
        folder = 'train2017' if split == 'train' else 'val2017'
        path = os.path.join(root, folder, f'{int(image_id):012d}.jpg')
      else:
        path = os.path.join(root, split, f'{image_id}.jpg')
      data = images.get(image_id, jpeg_bytes(colour=(10 * i % 250, 90, 160)))
      if data is not None:
        write(path, data)
    for name, lines in zip(jsonl, shards):
      write(os.path.join(root, name), '\n'.join(lines).encode() + b'\n')

