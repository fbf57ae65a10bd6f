"""Hard negative captions: a caption with one word swapped within its class.

`config.hard_negative_words` names classes of interchangeable words, e.g.
('circle square triangle', 'top bottom'). For every caption of a batch the
train step makes one negative per class: one word of the class that the
caption contains (picked at random) is replaced by another word of the class
(picked at random). The sentence-image and word-region contrastive terms
then score each image against these captions as well as against the batch's
(image-to-caption direction only: the negatives have no images): a caption that
differs only in shape or only in row is a negative that a batch of 8 random
captions rarely holds (docs/shapes.md).

The swap works on token ids inside the compiled step (no extra input data),
so each word must be a single word piece of the tokenizer. Without a word of
its class a caption has no negative of that class (`valid` is False there and
the loss leaves it out).
"""

from typing import Callable, List, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from xmcgan_jax import config_base
from xmcgan_jax import errors

# Word classes as token ids: one tuple of ids per class.
WordClasses = Tuple[Tuple[int, ...], ...]


def word_class_ids(classes: Sequence[str],
                   tokenize: Callable[[List[str]], Tuple[np.ndarray,
                                                         np.ndarray]]
                   ) -> WordClasses:
  """The token ids of each class's words.

  Args:
    classes: config.hard_negative_words.
    tokenize: words -> (ids, mask), (N, T) rows with [CLS] and [SEP] (the
      run's tokenizer, e.g. Tokenizer.tokenize_numpy with T >= 3).

  Returns:
    One tuple of token ids per class, in the classes' word order.

  Raises:
    errors.ConfigError: a bad class, or a word that is not one word piece.
  """
  parsed = config_base.parse_hard_negative_words(classes)
  ids, mask = tokenize([w for words in parsed for w in words])
  lengths = np.asarray(mask).sum(axis=-1)
  out, row = [], 0
  for words in parsed:
    class_ids = []
    for word in words:
      if lengths[row] != 3:  # [CLS] word [SEP].
        raise errors.ConfigError(
            f'config.hard_negative_words: {word!r} is {lengths[row] - 2} word '
            'pieces for this tokenizer; the swap needs words of one piece.')
      class_ids.append(int(ids[row][1]))
      row += 1
    if len(set(class_ids)) != len(class_ids):
      raise errors.ConfigError(f'config.hard_negative_words: {words} map to '
                               'repeated token ids for this tokenizer.')
    out.append(tuple(class_ids))
  return tuple(out)


def swap_words(key: jax.Array, token_ids: jax.Array, token_mask: jax.Array,
               classes: WordClasses
               ) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """One negative per class for every caption: a word of the class swapped.

  Args:
    key: PRNG key of the random picks.
    token_ids: (..., T) int token rows.
    token_mask: (..., T) bool, True on real tokens.
    classes: word_class_ids' output (K classes).

  Returns:
    (ids (..., K, T), mask (..., K, T), valid (..., K) bool): the negatives'
    tokens (the mask is the caption's: a swap keeps the length) and whether
    the caption has a word of the class (where not, the row is the caption
    itself and must not be used).
  """
  token_ids = jnp.asarray(token_ids, jnp.int32)
  mask = jnp.asarray(token_mask, bool)
  negatives, valid = [], []
  for class_key, members in zip(jax.random.split(key, len(classes)),
                                classes):
    members = jnp.asarray(members, jnp.int32)
    n = members.shape[0]
    where = (token_ids[..., None] == members) & mask[..., None]  # (..., T, n)
    in_class = jnp.any(where, axis=-1)  # (..., T)
    member_index = jnp.argmax(where, axis=-1)  # (..., T)
    pick_key, offset_key = jax.random.split(class_key)
    # A uniformly random position among the class's words in the caption.
    scores = jnp.where(in_class,
                       jax.random.uniform(pick_key, in_class.shape), -1.0)
    position = jnp.argmax(scores, axis=-1)  # (...,)
    current = jnp.take_along_axis(member_index, position[..., None], -1)[..., 0]
    # Another member: the current one plus 1..n-1 (mod n), uniformly.
    offset = jax.random.randint(offset_key, current.shape, 1, n)
    new_id = members[(current + offset) % n]
    has_word = jnp.any(in_class, axis=-1)
    at = ((jnp.arange(token_ids.shape[-1]) == position[..., None])
          & has_word[..., None])
    negatives.append(jnp.where(at, new_id[..., None], token_ids))
    valid.append(has_word)
  ids = jnp.stack(negatives, axis=-2)
  return (ids, jnp.broadcast_to(mask[..., None, :], ids.shape),
          jnp.stack(valid, axis=-1))


def all_swaps(token_ids: np.ndarray, token_mask: np.ndarray,
              classes: WordClasses) -> Tuple[np.ndarray, np.ndarray]:
  """Every row `swap_words` can make from the given rows (host side).

  The text feature table adds these rows, so the step's lookup finds every
  negative.

  Args:
    token_ids, token_mask: (N, T) rows.
    classes: word_class_ids' output.

  Returns:
    (ids, mask) of the swapped rows, (M, T), duplicates possible.
  """
  token_ids = np.asarray(token_ids, np.int32)
  token_mask = np.asarray(token_mask, bool)
  out_ids, out_mask = [], []
  for members in classes:
    for member in members:
      rows, cols = np.nonzero((token_ids == member) & token_mask)
      for other in members:
        if other == member:
          continue
        swapped = token_ids[rows].copy()
        swapped[np.arange(len(rows)), cols] = other
        out_ids.append(swapped)
        out_mask.append(token_mask[rows])
  if not out_ids:
    empty = np.zeros((0, token_ids.shape[-1]))
    return empty.astype(np.int32), empty.astype(bool)
  return np.concatenate(out_ids), np.concatenate(out_mask)
