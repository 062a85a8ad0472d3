"""Tokens of text: what a caption becomes before any network sees it.

A model that learns its text encoder (config.model.text_encoder = 'learned')
takes tokens; one that reads a frozen encoder's embeddings ('precomputed')
takes those, made by ``Embedder`` from the function config.model.text_embedder
names (vdm.models.text_embedders has a stand-in). ``from_model_config`` gives
whichever the config asks for; both are called the same way.

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

import importlib
import re
import sys
from typing import Callable, Iterable, Sequence, Union

import numpy as np

PAD = 0
UNK = 1  # 'words': a word outside the vocabulary.
TOKENIZERS = ('bytes', 'words')
BYTE_VOCAB_SIZE = 257  # Byte b is token b + 1.

_WORD = re.compile(r"[\w']+|[^\w\s]")
_REPORTED_UNKNOWN = set()  # Unknown words already named (each is said once).

Text = Union[str, bytes]


def as_str(text: Text) -> str:
  return text.decode('utf-8') if isinstance(text, bytes) else str(text)


def words(text: Text) -> list[str]:
  """The lower-cased words and punctuation marks of a text, in order."""
  return _WORD.findall(as_str(text).lower())


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
        raise ValueError(f'{as_str(text)!r} is {len(ids)} {self.kind} tokens, more than the '
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


def from_model_config(model) -> Union[Tokenizer, 'Embedder']:
  """What turns captions into the text input of a ``config.model`` section's net:
  its tokenizer ('learned'), or its frozen encoder ('precomputed')."""
  if model.get('text_encoder', '') == 'precomputed':
    return Embedder(str(model.get('text_embedder', '')), int(model.text_max_length),
                    int(model.get('text_embed_dim', 0)))
  return Tokenizer(str(model.get('text_tokenizer', 'bytes')), int(model.text_max_length),
                   tuple(model.get('text_vocabulary', ()) or ()))


def from_config(config) -> Union[Tokenizer, 'Embedder']:
  """from_model_config of a full config (its ``model`` section)."""
  return from_model_config(config.model)


def resolve(name: str) -> Callable:
  """The function 'package.module:function' names."""
  module, sep, attr = str(name).partition(':')
  if not sep or not module or not attr:
    raise ValueError(f"config.model.text_embedder={name!r} must name a function as "
                     "'package.module:function', e.g. 'vdm.models.text_embedders:hashed_words'.")
  try:
    fn = getattr(importlib.import_module(module), attr)
  except (ImportError, AttributeError) as e:
    raise ValueError(f'config.model.text_embedder={name!r} cannot be loaded ({e}); it must '
                     'be importable from the working directory or the Python path.') from e
  if not callable(fn):
    raise ValueError(f'config.model.text_embedder={name!r} is not a function.')
  return fn


class Embedder:
  """Captions -> the frozen encoder's embeddings float32 [B, L, D], zero on padding.

  Stands where a learned model's tokenizer stands (same call), so the input
  pipeline, sample.py's prompts and evaluate.py's captions need no second
  path. Pickles as its name (the function is imported where it is called),
  so the input pipeline's worker processes can hold it.

  Args:
    name: 'package.module:function' (config.model.text_embedder).
    max_length: L (config.model.text_max_length).
    width: D (config.model.text_embed_dim).
  """

  def __init__(self, name: str, max_length: int, width: int):
    self.name, self.max_length, self.width = str(name), int(max_length), int(width)
    self._fn = None

  def __getstate__(self):
    return {'name': self.name, 'max_length': self.max_length, 'width': self.width}

  def record(self) -> dict:
    """What identifies its embeddings when prepare.py stores them (as float16)."""
    return dict(embedder=self.name, max_length=self.max_length, dim=self.width,
                dtype='float16')

  def __setstate__(self, state):
    self.__init__(**state)

  def __call__(self, texts: Sequence[Text]) -> np.ndarray:
    """Embeddings of B texts (str or UTF-8 bytes): float32 [B, L, D]; '' gives zeros.

    Raises:
      ValueError: the function returns another shape than [B, <= L, D] (naming
        the config keys that set L and D).
    """
    if self._fn is None:
      self._fn = resolve(self.name)
    texts = [as_str(t) for t in texts]
    out = np.zeros((len(texts), self.max_length, self.width), np.float32)
    # Each distinct caption once: a training row repeats its caption on every
    # frame. '' stays the all-zero null text.
    distinct = sorted({t for t in texts if t})
    if not distinct:
      return out
    n = len(distinct)
    emb, mask = self._fn(distinct, self.max_length)
    emb, mask = np.asarray(emb, np.float32), np.asarray(mask, bool)
    if (emb.ndim != 3 or emb.shape[0] != n or emb.shape[1] > self.max_length
        or emb.shape[2] != self.width or mask.shape != emb.shape[:2]):
      raise ValueError(
          f'config.model.text_embedder={self.name!r} returned embeddings {emb.shape} and mask '
          f'{mask.shape} for {n} texts; expected [{n}, <= {self.max_length}, '
          f'{self.width}] and [{n}, <= {self.max_length}] (L = config.model.'
          'text_max_length, D = config.model.text_embed_dim).')
    row = {t: i for i, t in enumerate(distinct)}
    rows = [i for i, t in enumerate(texts) if t]
    out[rows, :emb.shape[1]] = (emb * mask[..., None])[[row[texts[i]] for i in rows]]
    return out
