"""Tokens of text: what a caption becomes before any network sees it.

Two tokenizers (``config.model.text_tokenizer``), both padding with PAD = 0:

* 'bytes': the UTF-8 bytes of the text (byte b is token b + 1). No
  vocabulary, no download, no unknown word, and a round trip gives the text
  back; but a word is spread over several tokens, which a text encoder learned
  from scratch must first learn to put together.
* 'words': one token per word or punctuation mark, lower-cased, from a
  vocabulary of the words of the training captions (``build_vocabulary``;
  training fills ``config.model.text_vocabulary`` when it starts). A word
  outside it becomes UNK = 1, and the tokenizer says which words did, once
  per word. A word's embedding then learns directly from every caption that
  holds it, as a class label's does.

An empty text tokenizes to all padding: the null text of classifier-free
guidance. Plain numpy, so the input pipeline's workers tokenize without
importing JAX.
"""

from __future__ import annotations

import re
import sys
from typing import Iterable, Sequence, Union

import numpy as np

PAD = 0
UNK = 1  # 'words': a word outside the vocabulary.
TOKENIZERS = ('bytes', 'words')
BYTE_VOCAB_SIZE = 257  # Byte b is token b + 1.

_WORD = re.compile(r"[\w']+|[^\w\s]")
_REPORTED_UNKNOWN = set()  # Unknown words already named (each is said once).

Text = Union[str, bytes]


def _as_str(text: Text) -> str:
  return text.decode('utf-8') if isinstance(text, bytes) else str(text)


def words(text: Text) -> list[str]:
  """The lower-cased words and punctuation marks of a text, in order."""
  return _WORD.findall(_as_str(text).lower())


def build_vocabulary(captions: Iterable[Text]) -> tuple[str, ...]:
  """The sorted distinct words of the captions (the 'words' tokenizer's vocabulary)."""
  return tuple(sorted({w for c in captions for w in words(c)}))


class Tokenizer:
  """Texts -> int32 tokens [B, L] and back.

  Args:
    kind: one of TOKENIZERS.
    max_length: L, tokens per text.
    vocabulary: the words of 'words' (token i + 2 is vocabulary[i]).
  """

  def __init__(self, kind: str, max_length: int, vocabulary: Sequence[str] = ()):
    if kind not in TOKENIZERS:
      raise ValueError(f'config.model.text_tokenizer={kind!r} is unknown; choose one of '
                       f'{TOKENIZERS}.')
    if kind == 'words' and not vocabulary:
      raise ValueError("text_tokenizer='words' needs config.model.text_vocabulary (training "
                       'fills it from the train split\'s captions when it starts).')
    self.kind, self.max_length = kind, int(max_length)
    self.vocabulary = tuple(vocabulary)
    self._ids = {w: i + 2 for i, w in enumerate(self.vocabulary)}

  @property
  def vocab_size(self) -> int:
    return BYTE_VOCAB_SIZE if self.kind == 'bytes' else len(self.vocabulary) + 2

  def unknown_words(self, texts: Iterable[Text]) -> list[str]:
    """The distinct words of ``texts`` outside the vocabulary ('words' only)."""
    if self.kind == 'bytes':
      return []
    return sorted({w for t in texts for w in words(t) if w not in self._ids})

  def _ids_of(self, text: Text) -> list[int]:
    if self.kind == 'bytes':
      data = text if isinstance(text, bytes) else str(text).encode('utf-8')
      return [b + 1 for b in data]
    return [self._ids.get(w, UNK) for w in words(text)]

  def __call__(self, texts: Sequence[Text]) -> np.ndarray:
    """Tokens of each text, padded with PAD.

    Args:
      texts: B strings (or UTF-8 bytes, as TFDS returns a Text feature).

    Returns:
      int32 [B, L].

    Raises:
      ValueError: a text has more than L tokens (naming it and the key that
        sets L).
    """
    out = np.zeros((len(texts), self.max_length), np.int32)
    for i, text in enumerate(texts):
      ids = self._ids_of(text)
      if len(ids) > self.max_length:
        raise ValueError(f'{_as_str(text)!r} is {len(ids)} {self.kind} tokens, more than the '
                         f'{self.max_length} of config.model.text_max_length; shorten it or '
                         'train a model with a larger text_max_length.')
      out[i, :len(ids)] = ids
    new = [w for w in self.unknown_words(texts) if w not in _REPORTED_UNKNOWN]
    if new:
      _REPORTED_UNKNOWN.update(new)
      print(f'warning: words outside the training captions\' vocabulary become the unknown '
            f'token: {new}', file=sys.stderr, flush=True)
    return out

  def decode(self, tokens: np.ndarray) -> list[str]:
    """The texts of int [..., L] tokens (words joined by spaces; UNK as '<unk>')."""
    tokens = np.asarray(tokens)
    rows = tokens.reshape(-1, tokens.shape[-1])
    if self.kind == 'bytes':
      return [bytes((r[r != PAD] - 1).astype(np.uint8).tolist()).decode('utf-8') for r in rows]
    names = ('', '<unk>') + self.vocabulary
    return [' '.join(names[i] for i in r[r != PAD]) for r in rows]


def from_model_config(model) -> Tokenizer:
  """The tokenizer of a ``config.model`` section."""
  return Tokenizer(str(model.get('text_tokenizer', 'bytes')), int(model.text_max_length),
                   tuple(model.get('text_vocabulary', ()) or ()))


def from_config(config) -> Tokenizer:
  """The tokenizer of a full config (its ``model`` section)."""
  return from_model_config(config.model)
