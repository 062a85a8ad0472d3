"""A stand-in frozen text encoder for the 'precomputed' text path.

With ``config.model.text_encoder = 'precomputed'`` the U-Net does not learn a
text encoder: it reads token embeddings [..., L, D] made by a frozen encoder
(T5, CLIP, ...), projects them to its text width and cross-attends to them.
The encoder is a plain Python function named in the config,

    config.model.text_embedder = 'package.module:function'
    function(texts: list[str], max_length: int) -> (embeddings [B, L', D], mask [B, L'])

(numpy or anything np.asarray takes; L' <= max_length, shorter rows are
padded). vdm.models.tokenizer.Embedder wraps it with the run's L and D, so
training, sampling prompts and evaluation all turn captions into the net's
text input the same way (vdm.models.tokenizer.from_model_config).
prepare.py --text_embeddings stores each caption's embeddings in the
dataset once, so training then runs no encoder (config.data.text_embedding_key).

Padding is all zero, and that is how the net finds it again: a token is real
where its embedding is not the zero vector. The null text of classifier-free
guidance is the empty caption, which the Embedder maps to all zeros whatever
the function returns for it (a T5 gives '' an end-of-text token).

``hashed_words`` is a stand-in with this interface that needs no download
(no encoder weights can be fetched here): a fixed random vector per word,
drawn from a hash of the word, plus a position code. It tells captions apart
word by word, as a frozen encoder does, but knows nothing of meaning.
docs/text.md says how to plug in a T5 checkpoint.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

from vdm.models import tokenizer as tokenizer_lib

HASHED_WORDS_WIDTH = 64  # D of hashed_words.


def hashed_words(texts: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
  """The stand-in frozen encoder: one fixed vector per word, plus its position.

  Word w's vector is N(0, I / D) drawn from a seed that is a hash of w, so
  every process and every run gives a word the same vector; a sinusoidal code
  of the word's position (amplitude 0.1) keeps the order.

  Args:
    texts: B captions.
    max_length: L; a caption of more words is an error.

  Returns:
    (float32 [B, L, 64], bool [B, L]).
  """
  d = HASHED_WORDS_WIDTH
  out = np.zeros((len(texts), max_length, d), np.float32)
  mask = np.zeros((len(texts), max_length), bool)
  freqs = np.exp(-np.log(100.0) * np.arange(d // 2) / (d // 2))
  for i, text in enumerate(texts):
    words = tokenizer_lib.words(text)
    if len(words) > max_length:
      raise ValueError(f'{text!r} has {len(words)} words, more than the {max_length} of '
                       'config.model.text_max_length.')
    for j, word in enumerate(words):
      seed = int.from_bytes(hashlib.blake2b(word.encode('utf-8'), digest_size=8).digest(), 'little')
      position = 0.1 * np.concatenate([np.sin(j * freqs), np.cos(j * freqs)])
      out[i, j] = np.random.default_rng(seed).normal(size=d) / np.sqrt(d) + position
      mask[i, j] = True
  return out, mask
