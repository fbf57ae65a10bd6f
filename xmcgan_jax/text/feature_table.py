"""Text features of a closed caption set: computed once, looked up in the step.

The frozen text encoder is a pure function of the token ids, so where the
training captions form a small closed set (one-object Shapes: 3,600 distinct
captions) its features can be computed once per distinct token row and the
step can look them up instead of running the encoder on every batch
(`config.text_feature_table`). The looked-up features are the encoder's
features of the same rows, computed in a different batch, so they equal the
in-step ones up to float rounding (tests/test_text_encoder.py).

The lookup runs inside the compiled step and cannot raise, so the training
loop checks each batch on the host first (`FeatureTable.check`): a row that
is not in the table is an error naming its caption.
"""

import dataclasses
from typing import Callable, Dict, Iterable, Tuple

import jax
import jax.numpy as jnp
import numpy as np

# (params, token ids, token mask) -> (word features, sentence features).
TextFeaturesFn = Callable[[Dict[str, jax.Array], jax.Array, jax.Array],
                          Tuple[jax.Array, jax.Array]]


def _row_key(ids: np.ndarray, mask: np.ndarray) -> bytes:
  return np.where(mask, ids, -1).astype(np.int32).tobytes()


@dataclasses.dataclass
class FeatureTable:
  """Distinct token rows and their frozen encoder features.

  Attributes:
    token_ids: (N, T) int32, padding positions set to -1 (the key compared).
    words: (N, T, E) float32 word features.
    sentence: (N, E) float32 sentence features.
  """
  token_ids: np.ndarray
  words: np.ndarray
  sentence: np.ndarray

  def __post_init__(self):
    self._keys = {row.tobytes() for row in self.token_ids.astype(np.int32)}

  @property
  def params(self) -> Dict[str, np.ndarray]:
    """What the step's lookup function takes as its frozen params."""
    return {'token_ids': self.token_ids, 'words': self.words,
            'sentence': self.sentence}

  def check(self, token_ids: np.ndarray, token_mask: np.ndarray,
            captions: Iterable[str] = ()) -> None:
    """Raises ValueError naming the first row of a batch not in the table.

    Args:
      token_ids, token_mask: (..., T) token rows of a batch.
      captions: the batch's captions in the same order (for the message).
    """
    ids = np.asarray(token_ids).reshape(-1, token_ids.shape[-1])
    mask = np.asarray(token_mask).reshape(ids.shape).astype(bool)
    names = list(captions)
    for i, (row, row_mask) in enumerate(zip(ids, mask)):
      if _row_key(row, row_mask) not in self._keys:
        caption = names[i] if i < len(names) else f'token ids {row.tolist()}'
        raise ValueError(
            f'config.text_feature_table=True, but the caption {caption!r} is '
            f'not among the {len(self.token_ids)} whose features were '
            'computed at start-up; set config.text_feature_table=False.')


def build(features: TextFeaturesFn, params, token_ids: np.ndarray,
          token_mask: np.ndarray, batch_size: int = 256) -> FeatureTable:
  """Encodes every distinct (ids, mask) row once.

  Args:
    features: the frozen encoder's (params, ids, mask) -> (words, sentence).
    params: its parameters.
    token_ids, token_mask: (M, T) rows, duplicates allowed.
    batch_size: rows per encoder call.

  Returns:
    The FeatureTable of the distinct rows.
  """
  token_mask = np.asarray(token_mask, bool)
  keyed = {}
  for ids, mask in zip(np.asarray(token_ids, np.int32), token_mask):
    keyed.setdefault(_row_key(ids, mask), (ids, mask))
  ids = np.stack([v[0] for v in keyed.values()])
  mask = np.stack([v[1] for v in keyed.values()])
  encode = jax.jit(features)
  words, sentence = [], []
  for start in range(0, len(ids), batch_size):
    w, s = encode(params, ids[start:start + batch_size],
                  mask[start:start + batch_size])
    words.append(np.asarray(w, np.float32))
    sentence.append(np.asarray(s, np.float32))
  return FeatureTable(np.where(mask, ids, -1).astype(np.int32),
                      np.concatenate(words), np.concatenate(sentence))


def from_features(words: np.ndarray, sentence: np.ndarray,
                  token_mask: np.ndarray) -> Tuple[FeatureTable, np.ndarray]:
  """A table of text features computed elsewhere, with made-up token rows.

  For features that do not come from a tokenizer and encoder in this run
  (cached to disk, or synthetic in tests and benchmarks): row i gets the
  token ids i + 1 on its mask, so the step's batch names each caption by
  its row and looks its features up.

  Args:
    words: (N, T, E) word features.
    sentence: (N, E) sentence features.
    token_mask: (N, T) bool, at least one True per row.

  Returns:
    (the FeatureTable, the (N, T) int32 token ids to put in batches).
  """
  token_mask = np.asarray(token_mask, bool)
  if not token_mask.any(axis=-1).all():
    raise ValueError('Every row of token_mask needs a real token.')
  ids = np.broadcast_to(np.arange(1, len(token_mask) + 1, dtype=np.int32)[
      :, None], token_mask.shape)
  ids = np.where(token_mask, ids, 0).astype(np.int32)
  table = FeatureTable(np.where(token_mask, ids, -1).astype(np.int32),
                       np.asarray(words, np.float32),
                       np.asarray(sentence, np.float32))
  return table, ids


def lookup_fn() -> TextFeaturesFn:
  """The step's text encoder over a FeatureTable's params.

  Each row of the batch is matched against the table's rows (N x T
  comparisons a row: N is small for a closed caption set) and its features
  gathered. Rows missing from the table get row 0's features: the training
  loop's host check (FeatureTable.check) stops a run before that happens.
  """

  def features(params, token_ids, token_mask):
    keys = jnp.where(token_mask.astype(bool), token_ids, -1)
    match = jnp.all(keys[:, None, :] == params['token_ids'][None], axis=-1)
    index = jnp.argmax(match, axis=-1)
    return (jnp.take(params['words'], index, axis=0),
            jnp.take(params['sentence'], index, axis=0))

  return features
