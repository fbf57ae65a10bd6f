"""BERT tokenization without TensorFlow, for sampling (a Colab TPU runtime).

Training tokenizes inside tf.data with tensorflow-text (tokenizer.py);
sampling uses Hugging Face `tokenizers` (Rust, no torch or TensorFlow) on the
same vocab.txt, and a test checks that both give the same ids.
"""

from typing import List, Sequence, Tuple

import numpy as np
import tokenizers


class WordPieceTokenizer:
  """BERT tokenization on a vocab.txt, to numpy ids and masks.

  Args:
    vocab_path: one word piece per line (id = line number).
    lower_case: lower-case and strip accents (uncased vocabs).
  """

  def __init__(self, vocab_path: str, lower_case: bool = True):
    # The reference BERT rules: clean control characters, split CJK
    # characters, lower-case and strip accents for uncased vocabs, split on
    # whitespace and punctuation, greedy longest-match WordPiece.
    self._tokenizer = tokenizers.BertWordPieceTokenizer(
        vocab_path, clean_text=True, handle_chinese_chars=True,
        strip_accents=lower_case, lowercase=lower_case)
    vocab = self._tokenizer.get_vocab()
    self.cls_id, self.sep_id = vocab['[CLS]'], vocab['[SEP]']
    self.pad_id = vocab.get('[PAD]', 0)

  def encode(self, text: str, max_len: int) -> List[int]:
    """[CLS] pieces[:max_len - 2] [SEP] (unpadded)."""
    pieces = self._tokenizer.encode(text, add_special_tokens=False).ids
    return [self.cls_id] + pieces[:max_len - 2] + [self.sep_id]

  def tokenize(self, captions: Sequence[str], max_len: int
               ) -> Tuple[np.ndarray, np.ndarray]:
    """(ids (B, max_len) int32, mask (B, max_len) bool)."""
    ids = np.full((len(captions), max_len), self.pad_id, np.int32)
    mask = np.zeros((len(captions), max_len), bool)
    for row, caption in enumerate(captions):
      encoded = self.encode(caption, max_len)
      ids[row, :len(encoded)] = encoded
      mask[row, :len(encoded)] = True
    return ids, mask
