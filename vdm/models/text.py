"""Text conditioning: a byte tokenizer and a small transformer text encoder.

Every text encoder has one interface: ``encode(texts) -> (embeddings
[B, L, D], mask [B, L])``, the token embeddings that the U-Net's
cross-attention reads and which of them are real (False on padding).

The learned encoder (``config.model.text_encoder = 'learned'``) trains with
the diffusion model over the tokens of vdm.models.tokenizer (bytes or words).
With a frozen encoder outside the net (``'precomputed'``), the net learns only
a projection of its embeddings (``EmbeddingProjection``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vdm.models import layers
from vdm.models.tokenizer import PAD

class _Layer(nnx.Module):
  """A pre-LayerNorm transformer layer over tokens with a padding mask."""

  def __init__(self, width: int, num_heads: int, *, rngs: nnx.Rngs):
    self.norm1 = nnx.LayerNorm(width, rngs=rngs)
    self.qkv = layers.Dense(width, 3 * width, rngs=rngs)
    self.out = layers.Dense(width, width, rngs=rngs, logical_axes=('mlp', 'embed'))
    self.norm2 = nnx.LayerNorm(width, rngs=rngs)
    self.mlp1 = layers.Dense(width, 4 * width, rngs=rngs)
    self.mlp2 = layers.Dense(4 * width, width, rngs=rngs, logical_axes=('mlp', 'embed'))
    self.num_heads = num_heads

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    b, length, width = x.shape
    qkv = self.qkv(self.norm1(x)).reshape(b, length, 3, self.num_heads,
                                          width // self.num_heads)
    # A padding query attends to itself so that no softmax row is empty; its
    # output is never read (the mask drops it downstream).
    allowed = mask[:, None, None, :] | jnp.eye(length, dtype=bool)[None, None]  # [B, 1, L, L]
    y = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], mask=allowed)
    x = x + self.out(y.reshape(b, length, width))
    return x + self.mlp2(jax.nn.gelu(self.mlp1(self.norm2(x))))


class TextEncoder(nnx.Module):
  """Tokens -> token embeddings, a small transformer learned from scratch.

  Args:
    vocab_size: tokens of the tokenizer (PAD included).
    max_length: L, tokens per text.
    width: D, features per token.
    num_layers: transformer layers.
    num_heads: attention heads (width must divide by it).
    rngs: parameter initialisation keys.
  """

  def __init__(self, vocab_size: int, max_length: int, width: int, num_layers: int,
               num_heads: int, *, rngs: nnx.Rngs):
    if width % num_heads:
      raise ValueError(f'config.model.text_width={width} is not divisible by '
                       f'config.model.text_heads={num_heads}.')
    self.token_embed = layers.Embed(vocab_size, width, rngs=rngs)
    self.position = layers.param(rngs, jax.nn.initializers.normal(0.02),
                                 (max_length, width), ('vocab', 'mlp'))
    self.layers = nnx.List([_Layer(width, num_heads, rngs=rngs) for _ in range(num_layers)])
    self.norm = nnx.LayerNorm(width, rngs=rngs)
    self.max_length = max_length

  def __call__(self, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Encodes.

    Args:
      tokens: int [..., L] tokens (vdm.models.tokenizer).

    Returns:
      (embeddings float32 [..., L, D], mask bool [..., L]: True on real tokens).
    """
    if tokens.shape[-1] != self.max_length:
      raise ValueError(f'text tokens must be [..., {self.max_length}] '
                       f'(config.model.text_max_length); got shape {tokens.shape}.')
    lead = tokens.shape[:-1]
    tokens = tokens.reshape(-1, self.max_length)  # [B', L]
    mask = tokens != PAD
    # Token identity (N(0, 1) per feature) dominates the small position
    # embedding, so captions start far apart and the diffusion loss can tell
    # them apart from the first step.
    x = self.token_embed(tokens) + self.position[...][None]  # [B', L, D]
    for layer in self.layers:
      x = layer(x, mask)
    x = self.norm(x)
    return x.reshape(lead + x.shape[-2:]), mask.reshape(lead + mask.shape[-1:])


class EmbeddingProjection(nnx.Module):
  """A frozen encoder's token embeddings -> the net's text width (the 'precomputed' path).

  A linear map and a LayerNorm: the embeddings of an external encoder (T5's
  4,096 features, ...) come at their own scale, and the norm puts them at the
  scale the cross-attention and the pooled embedding were sized for.

  Args:
    in_width: D_in, features per token of the embeddings.
    width: D, features per token the net attends to.
    rngs: parameter initialisation keys.
  """

  def __init__(self, in_width: int, width: int, *, rngs: nnx.Rngs):
    self.proj = layers.Dense(in_width, width, rngs=rngs)
    self.norm = nnx.LayerNorm(width, rngs=rngs)
    self.in_width = in_width

  def __call__(self, embeddings: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Projects.

    Args:
      embeddings: float [..., L, D_in], all zero on padding tokens.

    Returns:
      (embeddings float32 [..., L, D], mask bool [..., L]: True on real tokens).
    """
    if embeddings.shape[-1] != self.in_width:
      raise ValueError(f'text embeddings must be [..., L, {self.in_width}] (config.model.'
                       f'text_embed_dim); got shape {embeddings.shape}.')
    mask = jnp.any(embeddings != 0, axis=-1)  # Padding is the zero vector.
    return self.norm(self.proj(embeddings.astype(jnp.float32))), mask
