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



# Captions the fake CLIP vocabulary learns its merges from.
CLIP_CORPUS = [
    'a red circle in the top left', 'two blue squares and a green triangle',
    'a man riding a horse on the beach', 'the cat is sitting on a laptop',
    'a plate of food with broccoli and rice', "there's a dog's ball",
    'people are walking down the street in the rain',
]
# A small CLIP, config.json fields as transformers writes them.
TINY_CLIP_CONFIG = {
    'projection_dim': 24,
    'text_config': {'hidden_size': 32, 'intermediate_size': 64,
                    'num_attention_heads': 4, 'num_hidden_layers': 2,
                    'max_position_embeddings': 77},
    'vision_config': {'hidden_size': 32, 'intermediate_size': 48,
                      'num_attention_heads': 2, 'num_hidden_layers': 2,
                      'image_size': 32, 'patch_size': 8},
}


def write_clip_vocab(directory: str, num_merges: int = 300) -> int:
  """vocab.json and merges.txt in CLIP's layout, BPE learned on CLIP_CORPUS.

  CLIP's vocabulary order: the 256 byte symbols, the same with '</w>', the
  merged tokens in merge order, then <|startoftext|> and <|endoftext|>.

  Returns:
    The vocabulary size.
  """
  import collections  # pylint: disable=g-import-not-at-top
  import tokenizers  # pylint: disable=g-import-not-at-top
  alphabet = sorted(tokenizers.pre_tokenizers.ByteLevel.alphabet())
  vocab = alphabet + [a + '</w>' for a in alphabet]
  byte_level = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  words = collections.Counter(
      w for caption in CLIP_CORPUS for text in caption.lower().split()
      for w, _ in byte_level.pre_tokenize_str(text))
  words = {tuple(w[:-1]) + (w[-1] + '</w>',): n for w, n in words.items()}
  merges = []
  for _ in range(num_merges):
    pairs = collections.Counter()
    for word, count in words.items():
      for pair in zip(word, word[1:]):
        pairs[pair] += count
    if not pairs:
      break
    best = min(pairs, key=lambda p: (-pairs[p], p))
    merges.append(best)
    vocab.append(best[0] + best[1])
    merged = {}
    for word, count in words.items():
      out, i = [], 0
      while i < len(word):
        if word[i:i + 2] == best:
          out.append(best[0] + best[1])
          i += 2
        else:
          out.append(word[i])
          i += 1
      merged[tuple(out)] = count
    words = merged
  vocab += ['<|startoftext|>', '<|endoftext|>']
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, 'vocab.json'), 'w') as f:
    json.dump({token: i for i, token in enumerate(vocab)}, f)
  with open(os.path.join(directory, 'merges.txt'), 'w') as f:
    f.write('#version: 0.2\n' + ''.join(f'{a} {b}\n' for a, b in merges))
  return len(vocab)


def write_random_clip(directory: str, seed: int = 0) -> str:
  """A random TINY_CLIP_CONFIG CLIP in the Hugging Face directory layout
  (config.json, model.safetensors, vocab.json, merges.txt), without torch."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
  from xmcgan_jax.eval import clip  # pylint: disable=g-import-not-at-top
  vocab_size = write_clip_vocab(directory)
  raw = json.loads(json.dumps(TINY_CLIP_CONFIG))
  raw['text_config']['vocab_size'] = vocab_size
  raw['architectures'] = ['CLIPModel']
  with open(os.path.join(directory, 'config.json'), 'w') as f:
    json.dump(raw, f)
  config = clip.read_config(os.path.join(directory, 'config.json'))
  size = config.image_size
  params = clip.ClipModel(config).init(
      jax.random.PRNGKey(seed), np.zeros((1, size, size, 3), np.float32),
      np.zeros((1, 2), np.int32), np.ones((1,), np.int32))['params']
  safetensors_numpy.save_file(clip.to_hugging_face(params, config),
                              os.path.join(directory, 'model.safetensors'))
  return directory


TINY_DINOV2_CONFIG = {  # Published layout (518 px positions), tiny widths.
    'model_type': 'dinov2', 'hidden_size': 32, 'num_hidden_layers': 2,
    'num_attention_heads': 4, 'mlp_ratio': 4, 'image_size': 518,
    'patch_size': 14, 'layer_norm_eps': 1e-6, 'hidden_act': 'gelu',
    'architectures': ['Dinov2Model'],
}


def write_random_dinov2(directory: str, seed: int = 0) -> str:
  """A random TINY_DINOV2_CONFIG DINOv2 in the Hugging Face directory layout
  (config.json, model.safetensors with the mask token), without torch."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
  from xmcgan_jax.eval import dinov2  # pylint: disable=g-import-not-at-top
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, 'config.json')
  with open(path, 'w') as f:
    json.dump(TINY_DINOV2_CONFIG, f)
  config = dinov2.read_config(path)
  params = dinov2.Dinov2Model(config).init(
      jax.random.PRNGKey(seed),
      np.zeros((1, 28, 28, 3), np.float32))['params']
  tensors = dinov2.to_hugging_face(params, config)
  tensors['embeddings.mask_token'] = np.zeros((1, config.hidden_size),
                                              np.float32)
  safetensors_numpy.save_file(tensors,
                              os.path.join(directory, 'model.safetensors'))
  return directory


def base_config(**overrides):
  """config_base's defaults with dotted-field overrides
  ('loss_weights.word_region': 0.0, d_steps_per_g_step=1, ...)."""
  from xmcgan_jax import config_base  # pylint: disable=g-import-not-at-top
  config = config_base.get_base_config()
  for field, value in overrides.items():
    *parents, name = field.split('.')
    holder = config
    for parent in parents:
      holder = holder[parent]
    holder[name] = value
  return config


def step_config(**overrides):
  """The train step's StepConfig of the base config with overrides."""
  from xmcgan_jax.training import builders  # pylint: disable=g-import-not-at-top
  return builders.build_step_config(base_config(**overrides))


def optimizers(**overrides):
  """The G and D optimizers of the base config with overrides."""
  from xmcgan_jax.training import builders  # pylint: disable=g-import-not-at-top
  return builders.build_optimizers(base_config(**overrides))
