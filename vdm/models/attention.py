"""Spatial and temporal self-attention of the factorized space-time U-Net.

Spatial attention mixes the H*W positions of one frame; temporal attention then
mixes the T frames at each spatial position. Temporal attention knows frame
order only through a learned relative position bias (T5-style buckets), so the
network has no absolute frame index and runs on any number of frames.

Joint image-video training appends independent images to each video along
time. ``is_image`` [T] marks them: an image frame attends only to itself, video
frames never attend to image frames, and relative positions count video frames
only, so appending images leaves the video frames' computation unchanged.
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from vdm.models import layers


def relative_position_bucket(relative_position: jax.Array, num_buckets: int,
                             max_distance: int) -> jax.Array:
  """Maps signed distances (key - query) to bidirectional buckets.

  Half of the buckets hold each direction. Within a direction, the first half
  of its buckets are exact distances and the rest are log-spaced up to
  ``max_distance``, beyond which everything shares the last bucket.

  Args:
    relative_position: int array of key_pos - query_pos.
    num_buckets: total number of buckets (even, >= 4).
    max_distance: distance from which all positions share one bucket.

  Returns:
    int32 bucket ids in [0, num_buckets), same shape.
  """
  half = num_buckets // 2
  exact = max(half // 2, 1)
  direction = jnp.where(relative_position > 0, half, 0)
  n = jnp.abs(relative_position)
  ratio = jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / exact) / math.log(
      max(max_distance / exact, 1.0 + 1e-6))
  far = exact + (ratio * (half - exact)).astype(jnp.int32)
  far = jnp.minimum(far, half - 1)
  return (direction + jnp.where(n < exact, n, far)).astype(jnp.int32)


def video_positions(is_image: Optional[jax.Array], num_frames: int) -> jax.Array:
  """Frame positions counted over video frames only: [T] int32."""
  if is_image is None:
    return jnp.arange(num_frames, dtype=jnp.int32)
  return jnp.cumsum(~is_image).astype(jnp.int32) - 1


def temporal_attention_mask(is_image: Optional[jax.Array], num_frames: int) -> Optional[jax.Array]:
  """Which frames may attend to which: [T, T] bool, or None for all.

  Video frames attend to video frames; an image frame only to itself.
  """
  if is_image is None:
    return None
  video = ~is_image
  return (video[:, None] & video[None, :]) | jnp.eye(num_frames, dtype=bool)


class _SelfAttention(nnx.Module):
  """Pre-norm multi-head self-attention with a zero-initialised output."""

  def __init__(self, channels: int, num_heads: int, head_dim: int, *,
               norm_groups: int, rngs: nnx.Rngs, dtype, attn_dtype):
    self.norm = layers.GroupNorm(channels, norm_groups, rngs=rngs, dtype=dtype)
    inner = num_heads * head_dim
    self.qkv = layers.Dense(channels, 3 * inner, rngs=rngs, dtype=dtype)
    # Zero init: every attention block starts as the identity, as in DDPM.
    self.out = layers.Dense(inner, channels, rngs=rngs, init_scale=0.0,
                            dtype=dtype, logical_axes=('mlp', 'embed'))
    self.num_heads = num_heads
    self.head_dim = head_dim
    self.attn_dtype = attn_dtype

  def _qkv(self, x):
    qkv = self.qkv(self.norm(x)).astype(self.attn_dtype)
    qkv = qkv.reshape(x.shape[:-1] + (3, self.num_heads, self.head_dim))
    return qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]


class SpatialAttention(_SelfAttention):
  """Self-attention among the H*W positions of each frame."""

  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, h, w, c = x.shape
    q, k, v = self._qkv(x)  # each [B, T, H, W, N, D]
    fold = lambda a: a.reshape(b * t, h * w, self.num_heads, self.head_dim)
    y = jax.nn.dot_product_attention(fold(q), fold(k), fold(v))  # [B*T, HW, N, D]
    y = y.reshape(b, t, h, w, self.num_heads * self.head_dim)
    return x + self.out(y).astype(x.dtype)


class TemporalAttention(_SelfAttention):
  """Self-attention along time at each spatial position, with relative bias."""

  def __init__(self, channels: int, num_heads: int, head_dim: int, *,
               norm_groups: int, rngs: nnx.Rngs, dtype, attn_dtype,
               num_buckets: int, max_distance: int):
    super().__init__(channels, num_heads, head_dim, norm_groups=norm_groups,
                     rngs=rngs, dtype=dtype, attn_dtype=attn_dtype)
    self.rel_bias = layers.param(rngs, jax.nn.initializers.normal(0.02),
                                 (num_buckets, num_heads), ('rel_buckets', 'heads'))
    self.num_buckets = num_buckets
    self.max_distance = max_distance

  def position_bias(self, is_image: Optional[jax.Array], num_frames: int) -> jax.Array:
    """The additive attention bias [N, T, T] from relative video positions."""
    pos = video_positions(is_image, num_frames)
    buckets = relative_position_bucket(pos[None, :] - pos[:, None],
                                       self.num_buckets, self.max_distance)
    return jnp.transpose(jnp.take(self.rel_bias[...], buckets, axis=0), (2, 0, 1))

  def __call__(self, x: jax.Array, is_image: Optional[jax.Array] = None) -> jax.Array:
    b, t, h, w, c = x.shape
    q, k, v = self._qkv(x)  # each [B, T, H, W, N, D]
    # [B*H*W, T, N, D]: every spatial position is an independent sequence.
    fold = lambda a: jnp.moveaxis(a, 1, 3).reshape(b * h * w, t, self.num_heads, self.head_dim)
    bias = self.position_bias(is_image, t)[None].astype(q.dtype)  # [1, N, T, T]
    mask = temporal_attention_mask(is_image, t)
    if mask is not None:
      mask = mask[None, None]  # [1, 1, T, T]
    y = jax.nn.dot_product_attention(fold(q), fold(k), fold(v), bias=bias, mask=mask)
    y = y.reshape(b, h, w, t, self.num_heads * self.head_dim)
    y = jnp.moveaxis(y, 3, 1)  # [B, T, H, W, N*D]
    return x + self.out(y).astype(x.dtype)


class CrossAttention(nnx.Module):
  """Multi-head attention of every query token over its own short context.

  Each query position (any leading shape) attends over the L context tokens
  stored beside it, not over other positions: TRIP's noise fusion lets each
  pixel of each frame choose between its image noise prior and its residual
  noise (L = 2). Keys and values may be different views of the context
  (e.g. normalised features for the keys, raw values for the values).

  Args:
    query_dim: features of the queries.
    key_dim: features of the key tokens.
    value_dim: features of the value tokens.
    out_dim: features of the output.
    num_heads, head_dim: attention heads and features per head.
    rngs: parameter initialisation keys.
  """

  def __init__(self, query_dim: int, key_dim: int, value_dim: int, out_dim: int,
               num_heads: int, head_dim: int, *, rngs: nnx.Rngs):
    inner = num_heads * head_dim
    self.query = layers.Dense(query_dim, inner, rngs=rngs)
    self.key = layers.Dense(key_dim, inner, rngs=rngs)
    self.value = layers.Dense(value_dim, inner, rngs=rngs)
    self.out = layers.Dense(inner, out_dim, rngs=rngs, logical_axes=('mlp', 'embed'))
    self.num_heads = num_heads
    self.head_dim = head_dim

  def __call__(self, x: jax.Array, keys: jax.Array, values: jax.Array,
               bias: Optional[jax.Array] = None) -> jax.Array:
    """Attends.

    Args:
      x: queries [..., query_dim].
      keys: [..., L, key_dim], the context of every query position.
      values: [..., L, value_dim].
      bias: optional additive logits [num_heads, L] (the same for every
        position).

    Returns:
      [..., out_dim].
    """
    lead = x.shape[:-1]
    n = math.prod(lead)
    length = keys.shape[-2]
    q = self.query(x).reshape(n, 1, self.num_heads, self.head_dim)
    k = self.key(keys).reshape(n, length, self.num_heads, self.head_dim)
    v = self.value(values).reshape(n, length, self.num_heads, self.head_dim)
    if bias is not None:
      bias = bias[None, :, None, :]  # [1, N, 1, L]
    y = jax.nn.dot_product_attention(q, k, v, bias=bias)  # [n, 1, N, D]
    return self.out(y.reshape(lead + (self.num_heads * self.head_dim,)))


class TextCrossAttention(nnx.Module):
  """Cross-attention from every pixel of a frame to that frame's text tokens.

  A learned null token is always in the context, so a frame without text
  (padding only: the null text of classifier-free guidance) attends to it
  alone and every softmax row is defined.

  Args:
    channels: C of the video features (queries).
    text_width: D of the text token embeddings (keys and values).
    num_heads, head_dim: attention heads and features per head.
    norm_groups, rngs, dtype, attn_dtype: as the self-attention blocks.
  """

  def __init__(self, channels: int, text_width: int, num_heads: int, head_dim: int, *,
               norm_groups: int, rngs: nnx.Rngs, dtype, attn_dtype):
    inner = num_heads * head_dim
    self.norm = layers.GroupNorm(channels, norm_groups, rngs=rngs, dtype=dtype)
    self.query = layers.Dense(channels, inner, rngs=rngs, dtype=dtype)
    self.key_value = layers.Dense(text_width, 2 * inner, rngs=rngs, dtype=dtype)
    self.null = layers.param(rngs, jax.nn.initializers.normal(1.0), (1, text_width),
                             ('vocab', 'mlp'))
    # Zero init: a model gaining text starts as the one without.
    self.out = layers.Dense(inner, channels, rngs=rngs, init_scale=0.0, dtype=dtype,
                            logical_axes=('mlp', 'embed'))
    self.num_heads = num_heads
    self.head_dim = head_dim
    self.attn_dtype = attn_dtype

  def __call__(self, x: jax.Array, text: jax.Array, mask: jax.Array) -> jax.Array:
    """Attends.

    Args:
      x: video features [B, T, H, W, C].
      text: token embeddings [B, T', L, D], T' = 1 (one text per video) or T
        (one per frame: appended images carry their own source video's).
      mask: bool [B, T', L], True on real tokens.

    Returns:
      [B, T, H, W, C].
    """
    b, t, h, w, c = x.shape
    tt, length = text.shape[1], text.shape[2]
    null = jnp.broadcast_to(self.null[...], (b, tt, 1, text.shape[-1]))
    text = jnp.concatenate([null.astype(text.dtype), text], axis=2)  # [B, T', L+1, D]
    mask = jnp.concatenate([jnp.ones((b, tt, 1), bool), mask], axis=2)  # [B, T', L+1]
    text = jnp.broadcast_to(text, (b, t) + text.shape[2:])
    mask = jnp.broadcast_to(mask, (b, t, length + 1))
    q = self.query(self.norm(x)).astype(self.attn_dtype)
    q = q.reshape(b * t, h * w, self.num_heads, self.head_dim)
    kv = self.key_value(text).astype(self.attn_dtype)
    kv = kv.reshape(b * t, length + 1, 2, self.num_heads, self.head_dim)
    y = jax.nn.dot_product_attention(q, kv[:, :, 0], kv[:, :, 1],
                                     mask=mask.reshape(b * t, 1, 1, length + 1))
    y = y.reshape(b, t, h, w, self.num_heads * self.head_dim)  # [B, T, H, W, N*D]
    return x + self.out(y).astype(x.dtype)
