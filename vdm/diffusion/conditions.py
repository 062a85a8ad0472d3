"""What a denoiser is conditioned on, and its null: labels, text, or both.

A condition is one of
  * None: an unconditional network;
  * an int array of class labels, [B] (per video) or [B, T] (per frame);
  * a dict with 'label' (as above) and/or 'text': int tokens
    (vdm.models.tokenizer: [B, L] per video or [B, T, L] per frame) or a
    frozen encoder's float embeddings ([B, L, D] or [B, T, L, D]).
Its null, the input of the unconditional branch of classifier-free guidance,
is NULL_LABEL for labels and all padding for text (PAD tokens, or zero
embeddings). A guidance-distilled
network also takes the guidance weight w [B] under GUIDANCE_WEIGHT: it has no
null (a nulled condition keeps its w) and no frame axis. Training drops label and
text together (one draw per video frame set and per appended image), so the
network learns one unconditional model that guidance on both at once needs.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp

# Label value that means "no condition": the model maps it to its learned null
# embedding. Condition dropout writes it; classifier-free guidance passes it.
NULL_LABEL = -1
NULL_TEXT_TOKEN = 0  # vdm.models.tokenizer.PAD (and the zero embedding): a text of padding only is the null text.

GUIDANCE_WEIGHT = 'guidance_weight'

Condition = Any  # None, an int label array, or {'label': ..., 'text': ..., 'guidance_weight': ...}.


def make(label: Optional[jax.Array] = None, text: Optional[jax.Array] = None) -> Condition:
  """The condition of a label and/or text (a plain label array when no text)."""
  if text is None:
    return label
  return {'text': text} if label is None else {'label': label, 'text': text}


def with_guidance_weight(condition: Condition, guidance_weight: jax.Array) -> Condition:
  """``condition`` with w [B] for a network that takes it (unet3d's guidance_embed)."""
  if condition is None:
    raise ValueError('a guidance weight needs a condition (labels or text) to guide on.')
  parts = dict(condition) if isinstance(condition, Mapping) else {'label': condition}
  return {**parts, GUIDANCE_WEIGHT: jnp.asarray(guidance_weight, jnp.float32)}


def split_guidance_weight(condition: Condition) -> tuple[Condition, Optional[jax.Array]]:
  """(``condition`` without its w, that w or None)."""
  if not isinstance(condition, Mapping) or GUIDANCE_WEIGHT not in condition:
    return condition, None
  rest = {k: v for k, v in condition.items() if k != GUIDANCE_WEIGHT}
  return (rest['label'] if set(rest) == {'label'} else rest), condition[GUIDANCE_WEIGHT]


def network_kwargs(condition: Condition) -> dict:
  """The keyword arguments (label=, text=, guidance_weight=) a network takes for ``condition``."""
  if condition is None:
    return {}
  if isinstance(condition, Mapping):
    return dict(condition)
  return {'label': condition}


def frames_shape(condition: Condition) -> tuple[int, ...]:
  """[B] (one condition per video) or [B, T] (per frame)."""
  if isinstance(condition, Mapping):
    if 'label' in condition:
      return tuple(jnp.shape(condition['label']))
    text = condition['text']
    return tuple(jnp.shape(text))[:-_text_token_dims(text)]
  return tuple(jnp.shape(condition))


def _text_token_dims(text) -> int:
  """Trailing dims of one caption: 1 for tokens [.., L], 2 for embeddings [.., L, D]."""
  return 2 if jnp.issubdtype(jnp.result_type(text), jnp.floating) else 1


def where_null(null: jax.Array, condition: Condition) -> Condition:
  """``condition`` with the entries where ``null`` ([B] or [B, T]) is True nulled."""
  def one(key, x):
    if key == GUIDANCE_WEIGHT:
      return x
    if key == 'text':
      return jnp.where(null.reshape(null.shape + (1,) * _text_token_dims(x)), NULL_TEXT_TOKEN, x)
    return jnp.where(null, NULL_LABEL, x)
  if isinstance(condition, Mapping):
    return {k: one(k, v) for k, v in condition.items()}
  return one('label', condition)


def null(condition: Condition) -> Condition:
  """The null condition shaped like ``condition``."""
  return where_null(jnp.ones(frames_shape(condition), bool), condition)


def as_int(condition: Condition) -> Condition:
  """Labels and tokens as int32 (w and text embeddings, if any, stay float)."""
  def one(key, v):
    if key == GUIDANCE_WEIGHT or (key == 'text' and _text_token_dims(v) == 2):
      return jnp.asarray(v, jnp.float32)
    return jnp.asarray(v, jnp.int32)
  if isinstance(condition, Mapping):
    return {k: one(k, v) for k, v in condition.items()}
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.int32), condition)


def concatenate(a: Condition, b: Condition) -> Condition:
  """[a; b] along the batch axis."""
  return jax.tree.map(lambda x, y: jnp.concatenate([x, y]), a, b)


def per_frame(condition: Condition) -> bool:
  """Whether ``condition`` has one entry per frame ([B, T] labels, [B, T, L(, D)] text)."""
  return condition is not None and len(frames_shape(condition)) == 2


def map_frames(fn, condition: Condition) -> Condition:
  """``fn`` applied to the frame axis (axis 1) of a per-frame condition's parts;
  a per-video (or absent) condition is returned as it is, since it holds for
  any frames."""
  if not per_frame(condition):
    return condition
  if isinstance(condition, Mapping):
    return {k: v if k == GUIDANCE_WEIGHT else fn(v) for k, v in condition.items()}
  return fn(condition)
