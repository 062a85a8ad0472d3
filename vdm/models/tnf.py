"""TRIP's Temporal Noise Fusion module (Zhang et al., CVPR 2024; docs/trip.md).

For every noisy frame i of an image-to-video clip, TNF fuses two noise
estimates into the one the sampler uses: the image noise prior
eps^{i->1} = (z_t^i - alpha_t x^1) / sigma_t (computed, exact for a frame
equal to the given first frame x^1) and the residual noise d_eps^i of the
space-time U-Net. As in the paper: adaptive layer norm modulated by the time
embedding, self-attention, adaptive layer norm, then cross-attention whose
queries are those intermediate features and whose keys and values are the two
noises [eps^{i->1}, d_eps^i] of the same pixel.

Choices the paper leaves open, made here:
  * Features: a projection of both noises of a pixel (so the fusion can see
    how far they disagree), layer-normalised, plus a sinusoidal embedding of
    the frame index i (the linear fusion's weight depends on i; TNF may learn
    that too). The self-attention is the project's temporal attention block:
    the attention itself runs along time at each pixel (relative position
    bias), which is cheap at full resolution, but its GroupNorm, as in the
    U-Net, normalises with statistics over the whole clip (every pixel of
    every frame), so each pixel's input also shifts every other pixel's
    normalised features. Spatial context is otherwise left to the U-Net.
  * Values are the raw noises through linear maps, so the output is, per head,
    a convex combination of linear maps of eps^{i->1} and d_eps^i: TNF is an
    adaptive, per-pixel linear fusion. Keys see layer-normalised noise
    features: the prior grows like 1 / sigma_t on pixels that move, and raw
    keys would saturate the softmax there.
  * Initialisation: the value and output maps start as the identity, the
    query map at zero and the prior's logit at PRIOR_LOGIT_INIT, so an
    untrained TNF is the linear fusion sigmoid(PRIOR_LOGIT_INIT) eps^{i->1} +
    (1 - sigmoid(PRIOR_LOGIT_INIT)) d_eps^i: almost the residual noise alone
    (TRIP^-), so a pretrained U-Net keeps its behaviour when fine-tuning
    starts. Gradients reach the zero query map through the keys, as they
    reach the project's zero-initialised attention outputs.
  * Everything computes in float32: the prior's magnitude at low noise would
    not survive bfloat16.

Inputs and outputs are channels-last video [B, T, H, W, C].
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from vdm.models import attention
from vdm.models import layers

# Initial attention logit of the prior against 0 for the residual: a share of
# sigmoid(-4) = 1.8% for the prior at the start of training.
PRIOR_LOGIT_INIT = -4.0
# The same scale of log-SNR before the sinusoidal embedding as the U-Net's.
LOGSNR_EMBED_SCALE = 25.0


@dataclasses.dataclass(frozen=True)
class TNFConfig:
  """Hyperparameters of the fusion module (config.trip.tnf_* keys).

  Attributes:
    channels: channels of the video (and of each noise).
    features: width of the intermediate features.
    num_heads: heads of the self- and cross-attention.
    head_dim: features per head; >= channels (the value maps start as the
      identity).
    emb_dim: width of the time embedding.
    norm_groups: groups of the self-attention's GroupNorm.
    rel_pos_buckets: buckets of the self-attention's relative position bias.
    rel_pos_max_distance: distance from which relative positions share a bucket.
  """
  channels: int
  features: int = 32
  num_heads: int = 2
  head_dim: int = 16
  emb_dim: int = 128
  norm_groups: int = 8
  rel_pos_buckets: int = 32
  rel_pos_max_distance: int = 64

  def validate(self) -> None:
    """Raises ValueError naming the config.trip key of an inconsistent setting."""
    for name in ('features', 'num_heads', 'head_dim', 'emb_dim', 'norm_groups'):
      if getattr(self, name) < 1:
        raise ValueError(f'config.trip.tnf_{name}={getattr(self, name)} must be >= 1.')
    if self.features % self.norm_groups:
      raise ValueError(f'config.trip.tnf_features={self.features} does not split into '
                       f'config.trip.tnf_norm_groups={self.norm_groups} groups.')
    if self.head_dim < self.channels:
      raise ValueError(f'config.trip.tnf_head_dim={self.head_dim} must be >= the '
                       f'{self.channels} channels of the video (config.data.channels): each '
                       'head starts as the identity on the noises.')


def layer_norm(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """Normalises the last axis to zero mean and unit variance (no parameters)."""
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps)


class AdaptiveLayerNorm(nnx.Module):
  """Layer norm whose scale and shift come from the time embedding.

  Args:
    features: normalised features.
    emb_dim: width of the embedding.
    rngs: parameter initialisation keys.
  """

  def __init__(self, features: int, emb_dim: int, *, rngs: nnx.Rngs):
    self.modulation = layers.Dense(emb_dim, 2 * features, rngs=rngs)

  def __call__(self, x: jax.Array, emb: jax.Array) -> jax.Array:
    """x [B, T, H, W, F], emb [B, E] -> [B, T, H, W, F]."""
    scale, shift = jnp.split(self.modulation(jax.nn.silu(emb)), 2, axis=-1)  # [B, F] each
    scale, shift = scale[:, None, None, None], shift[:, None, None, None]
    return layer_norm(x) * (1.0 + scale) + shift


def _identity_heads(channels: int, num_heads: int, head_dim: int) -> jax.Array:
  """[C, N * D]: every head's first C features copy the C input channels."""
  head = jnp.eye(channels, head_dim, dtype=jnp.float32)  # [C, D]
  return jnp.tile(head, (1, num_heads))


class TemporalNoiseFusion(nnx.Module):
  """(eps^{i->1}, d_eps^i, logsnr) -> the fused noise eps~^i of every frame.

  Args:
    config: a TNFConfig.
    rngs: parameter initialisation keys.
  """

  def __init__(self, config: TNFConfig, *, rngs: nnx.Rngs):
    config.validate()
    c, f, e = config.channels, config.features, config.emb_dim
    heads, head_dim = config.num_heads, config.head_dim
    self.config = config
    self.time_mlp1 = layers.Dense(f, e, rngs=rngs)
    self.time_mlp2 = layers.Dense(e, e, rngs=rngs)
    self.embed = layers.Dense(2 * c, f, rngs=rngs)
    self.frame_embed = layers.Dense(f, f, rngs=rngs)
    self.norm1 = AdaptiveLayerNorm(f, e, rngs=rngs)
    self.self_attention = attention.TemporalAttention(
        f, heads, head_dim, norm_groups=config.norm_groups, rngs=rngs, dtype=jnp.float32,
        attn_dtype=jnp.float32, num_buckets=config.rel_pos_buckets,
        max_distance=config.rel_pos_max_distance)
    self.norm2 = AdaptiveLayerNorm(f, e, rngs=rngs)
    self.token_embed = layers.Dense(c, f, rngs=rngs)
    # Tells the keys which token is the prior (row 0) and which the residual.
    self.token_type = layers.param(rngs, jax.nn.initializers.normal(1.0), (2, f),
                                   ('vocab', 'mlp'))
    self.cross_attention = attention.CrossAttention(f, f, c, c, heads, head_dim, rngs=rngs)
    self.cross_attention.query.kernel[...] = jnp.zeros((f, heads * head_dim), jnp.float32)
    self.cross_attention.value.kernel[...] = _identity_heads(c, heads, head_dim)
    self.cross_attention.out.kernel[...] = _identity_heads(c, heads, head_dim).T / heads
    self.token_logit = nnx.Param(
        jnp.tile(jnp.array([[PRIOR_LOGIT_INIT, 0.0]], jnp.float32), (heads, 1)),
        logical_axes=('heads', None))  # [N, 2]

  def time_embedding(self, logsnr: jax.Array) -> jax.Array:
    """[B] log-SNR -> [B, E]."""
    emb = layers.sinusoidal_embedding(LOGSNR_EMBED_SCALE * logsnr, self.config.features)
    return self.time_mlp2(jax.nn.silu(self.time_mlp1(emb)))

  def __call__(self, prior: jax.Array, residual: jax.Array, logsnr: jax.Array,
               is_image: Optional[jax.Array] = None) -> jax.Array:
    """Fuses the two noise estimates.

    Args:
      prior: eps^{i->1} [B, T, H, W, C].
      residual: d_eps^i [B, T, H, W, C].
      logsnr: lambda_t [B].
      is_image: optional [T] mask of independent image frames (temporal
        attention treats them as in the U-Net).

    Returns:
      eps~ [B, T, H, W, C], float32.
    """
    if prior.shape != residual.shape or prior.shape[-1] != self.config.channels:
      raise ValueError(f'prior {prior.shape} and residual {residual.shape} must both be '
                       f'[B, T, H, W, {self.config.channels}].')
    prior, residual = prior.astype(jnp.float32), residual.astype(jnp.float32)
    t = prior.shape[1]
    emb = self.time_embedding(logsnr)  # [B, E]
    h = layer_norm(self.embed(jnp.concatenate([prior, residual], axis=-1)))  # [B, T, H, W, F]
    frames = layers.sinusoidal_embedding(jnp.arange(t, dtype=jnp.float32),
                                         self.config.features)  # [T, F]
    h = h + self.frame_embed(frames)[None, :, None, None]
    h = self.norm2(self.self_attention(self.norm1(h, emb), is_image), emb)
    tokens = jnp.stack([prior, residual], axis=-2)  # [B, T, H, W, 2, C]
    keys = layer_norm(self.token_embed(tokens)) + self.token_type[...]  # [B, T, H, W, 2, F]
    return self.cross_attention(h, keys, tokens, bias=self.token_logit[...])
