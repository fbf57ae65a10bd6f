"""WordPiece tokenization with tensorflow-text on a BERT vocab.

Captions become [CLS] w_1 .. w_n [SEP] [PAD].. with n <= T - 2, as int32 ids
and a bool mask of real tokens. The same TF ops run eagerly and inside a
tf.data map, so training batches and eager tokenization agree.
"""

from typing import List, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_text as tf_text


def _read_vocab(path: str) -> List[str]:
  with tf.io.gfile.GFile(path) as f:
    return [line.rstrip('\n') for line in f]


class Tokenizer:
  """BERT tokenizer: basic split (+ lower case and accent strip), WordPiece.

  Args:
    vocab_path: vocab.txt, one word piece per line, id = line number.
    lower_case: lower-case and strip accents first (uncased vocabs).
  """

  def __init__(self, vocab_path: str, lower_case: bool = True):
    vocab = _read_vocab(vocab_path)
    index = {token: i for i, token in enumerate(vocab)}
    for special in ('[CLS]', '[SEP]', '[UNK]'):
      if special not in index:
        raise ValueError(f'{vocab_path}: vocab lacks {special}.')
    self.cls_id = index['[CLS]']
    self.sep_id = index['[SEP]']
    self.pad_id = index.get('[PAD]', 0)
    self.vocab_size = len(vocab)
    table = tf.lookup.StaticVocabularyTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(vocab), tf.range(len(vocab), dtype=tf.int64)),
        num_oov_buckets=1)
    # tf_text's own lower_case also applies NFKC case folding (it turns
    # '…' into '...'), which the reference BERT tokenizer does not; so we
    # lower-case, decompose (NFD) and drop accents ourselves, as BERT does.
    self._lower_case = lower_case
    self._tokenizer = tf_text.BertTokenizer(
        table, lower_case=False, token_out_type=tf.int64,
        unknown_token='[UNK]', max_bytes_per_word=100)

  def tokenize(self, captions: tf.Tensor, max_len: int
               ) -> Tuple[tf.Tensor, tf.Tensor]:
    """Tokenizes a string tensor, scalar or (B,), in TF (tf.data friendly).

    Args:
      captions: tf.string scalar or vector.
      max_len: T, including [CLS] and [SEP].

    Returns:
      (ids int32, mask bool), shaped (..., max_len) like `captions`.
    """
    captions = tf.convert_to_tensor(captions, tf.string)
    scalar = captions.shape.rank == 0
    batch = tf.reshape(captions, [-1])
    if self._lower_case:
      batch = tf.strings.lower(batch, encoding='utf-8')
      batch = tf_text.normalize_utf8(batch, 'NFD')
      batch = tf.strings.regex_replace(batch, r'\p{Mn}', '')
    pieces = self._tokenizer.tokenize(batch).merge_dims(-2, -1)
    pieces = tf.cast(pieces[:, :max_len - 2], tf.int32)
    rows = tf.shape(batch)[0]
    cls = tf.fill([rows, 1], self.cls_id)
    sep = tf.fill([rows, 1], self.sep_id)
    ids = tf.concat([cls, pieces, sep], axis=1)
    lengths = ids.row_lengths()
    dense = ids.to_tensor(default_value=self.pad_id, shape=[rows, max_len])
    mask = tf.sequence_mask(lengths, max_len)
    if scalar:
      return dense[0], mask[0]
    return dense, mask

  def tokenize_numpy(self, captions: Sequence[str], max_len: int
                     ) -> Tuple[np.ndarray, np.ndarray]:
    """Eager tokenization of a list of strings to numpy (B, max_len)."""
    ids, mask = self.tokenize(tf.constant(list(captions), tf.string), max_len)
    return ids.numpy(), mask.numpy()
