"""Pure-Python BERT tokenizer (basic split + WordPiece), no TensorFlow.

For sampling where TensorFlow is absent (a Colab TPU runtime); training uses
tensorflow-text (data/tokenizer.py), and a test checks that both give the
same ids. Follows the reference BERT rules: clean control characters, split
CJK characters, lower-case and strip accents for uncased vocabs, split on
whitespace and punctuation, greedy longest-match WordPiece with '##'
continuations, [UNK] for words over 100 characters or with no match.
"""

import unicodedata
from typing import List, Sequence, Tuple

import numpy as np

_MAX_WORD_CHARS = 100


def _is_punctuation(ch: str) -> bool:
  cp = ord(ch)
  if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
    return True
  return unicodedata.category(ch).startswith('P')


def _is_cjk(cp: int) -> bool:
  return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or
          0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B73F or
          0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF or
          0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def _is_whitespace(ch: str) -> bool:
  return ch in ' \t\n\r' or unicodedata.category(ch) == 'Zs'


def _is_control(ch: str) -> bool:
  if ch in '\t\n\r':
    return False
  return unicodedata.category(ch) in ('Cc', 'Cf')


class WordPieceTokenizer:
  """BERT tokenization on a vocab.txt, to numpy ids and masks.

  Args:
    vocab_path: one word piece per line (id = line number).
    lower_case: lower-case and strip accents (uncased vocabs).
  """

  def __init__(self, vocab_path: str, lower_case: bool = True):
    with open(vocab_path, encoding='utf-8') as f:
      tokens = [line.rstrip('\n') for line in f]
    self.vocab = {t: i for i, t in enumerate(tokens)}
    self.lower_case = lower_case
    self.cls_id, self.sep_id = self.vocab['[CLS]'], self.vocab['[SEP]']
    self.unk_id = self.vocab['[UNK]']
    self.pad_id = self.vocab.get('[PAD]', 0)

  def _words(self, text: str) -> List[str]:
    chars = []
    for ch in text:
      cp = ord(ch)
      if cp == 0 or cp == 0xFFFD or _is_control(ch):
        continue
      if _is_cjk(cp):
        chars.append(f' {ch} ')
      elif _is_whitespace(ch):
        chars.append(' ')
      else:
        chars.append(ch)
    text = ''.join(chars)
    if self.lower_case:
      text = unicodedata.normalize('NFD', text.lower())
      text = ''.join(c for c in text if unicodedata.category(c) != 'Mn')
    words = []
    for token in text.split():
      current = ''
      for ch in token:
        if _is_punctuation(ch):
          if current:
            words.append(current)
          words.append(ch)
          current = ''
        else:
          current += ch
      if current:
        words.append(current)
    return words

  def _pieces(self, word: str) -> List[int]:
    if len(word) > _MAX_WORD_CHARS:
      return [self.unk_id]
    ids, start = [], 0
    while start < len(word):
      end = len(word)
      while end > start:
        piece = word[start:end] if start == 0 else '##' + word[start:end]
        if piece in self.vocab:
          ids.append(self.vocab[piece])
          break
        end -= 1
      if end == start:
        return [self.unk_id]
      start = end
    return ids

  def encode(self, text: str, max_len: int) -> List[int]:
    """[CLS] pieces[:max_len - 2] [SEP] (unpadded)."""
    pieces = [i for w in self._words(text) for i in self._pieces(w)]
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
