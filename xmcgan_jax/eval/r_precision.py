"""R-precision: does an image-text encoder rank the true caption first?

For each generated image, its own caption and `num_distractors` captions of
other images are scored by cosine similarity in a joint image-text embedding
space; R-precision (R = 1) is the fraction of images whose true caption
scores highest. Any encoder pair works (CLIP, the DAMSM encoders of AttnGAN,
our Shapes oracle): pass their embeddings.
"""

from typing import Optional, Protocol, Sequence

import numpy as np

NUM_DISTRACTORS = 99  # The standard: the true caption among 100.


class ImageTextEncoder(Protocol):
  """What R-precision needs from a joint image-text embedding model."""

  def embed_images(self, images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, D)."""

  def embed_texts(self, captions: Sequence[str]) -> np.ndarray:
    """N captions -> (N, D)."""


def r_precision_of(encoder: ImageTextEncoder, images: np.ndarray,
                   captions: Sequence[str],
                   num_distractors: int = NUM_DISTRACTORS,
                   seed: int = 0) -> float:
  """R-precision of generated images (image i from caption i) under an
  encoder; see `r_precision`."""
  return r_precision(encoder.embed_images(images),
                     encoder.embed_texts(captions), num_distractors, seed)


def r_precision(image_embeddings: np.ndarray, text_embeddings: np.ndarray,
                num_distractors: int = NUM_DISTRACTORS, seed: int = 0,
                distractors: Optional[np.ndarray] = None) -> float:
  """Top-1 retrieval accuracy of the true caption among distractors.

  Args:
    image_embeddings: (N, D), row i generated from caption i.
    text_embeddings: (N, D) embeddings of the N captions.
    num_distractors: other captions per image (the standard 99).
    seed: picks the distractors when they are not given.
    distractors: optional (N, num_distractors) indices of other captions.

  Returns:
    The fraction in [0, 1].
  """
  images = np.asarray(image_embeddings, np.float64)
  texts = np.asarray(text_embeddings, np.float64)
  n = images.shape[0]
  if texts.shape[0] != n:
    raise ValueError(f'{n} images but {texts.shape[0]} captions.')
  if n <= num_distractors:
    raise ValueError(f'Need more than {num_distractors} captions, got {n}.')
  if distractors is None:
    rng = np.random.default_rng(seed)
    # Draw from the other N - 1 captions: skip index i by shifting.
    draws = np.stack([rng.choice(n - 1, num_distractors, replace=False)
                      for _ in range(n)])
    distractors = draws + (draws >= np.arange(n)[:, None])
  images /= np.linalg.norm(images, axis=1, keepdims=True) + 1e-12
  texts /= np.linalg.norm(texts, axis=1, keepdims=True) + 1e-12
  true_score = np.sum(images * texts, axis=1)
  other = np.einsum('nd,nkd->nk', images, texts[distractors])
  return float(np.mean(true_score > other.max(axis=1)))
