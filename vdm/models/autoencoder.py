"""A KL-regularised convolutional autoencoder of video frames, in Flax NNX.

The latent space of latent video diffusion (docs/latent.md; Stable
Diffusion's autoencoder in shape, sized for our data): every frame is encoded
alone to a diagonal Gaussian posterior over a latent frame 2^(levels - 1)
times smaller per side (e.g. 64x64x3 -> 16x16x4), and decoded back. With
``temporal_decoder`` the decoder gains VidRD's temporal-aware layers: a
zero-initialised temporal convolution block after each of its residual
blocks, so a decoder that gains them starts out decoding exactly as before
and only learns what consistency across frames adds.

A patch discriminator (``PatchDiscriminator``) scores frames patch by patch
for the optional adversarial term of the loss (vdm/methods/autoencoder.py).

Inputs and outputs are channels-last video [B, T, H, W, C].
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from vdm.models import layers


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig:
  """Hyperparameters of the autoencoder (``config.autoencoder`` plus data shape).

  Attributes:
    channels: channels of the frames (1 or 3).
    image_size: height and width of the frames.
    latent_channels: channels of the latent frames.
    base_channels: channels of the first (full-resolution) level.
    channel_mult: per-level multipliers; the latent is 2^(len - 1) times
      smaller per side.
    num_res_blocks: residual blocks per level (encoder and decoder).
    norm_groups: groups of every GroupNorm.
    temporal_decoder: the decoder has VidRD's temporal convolution blocks.
    disc_channels: channels of the patch discriminator's first layer.
    disc_layers: its stride-2 layers (each patch logit sees about
      2^(disc_layers + 1) pixels per side).
  """
  channels: int = 3
  image_size: int = 64
  latent_channels: int = 4
  base_channels: int = 32
  channel_mult: tuple[int, ...] = (1, 2, 2)
  num_res_blocks: int = 1
  norm_groups: int = 8
  temporal_decoder: bool = False
  disc_channels: int = 32
  disc_layers: int = 2

  def __post_init__(self):
    object.__setattr__(self, 'channel_mult', tuple(self.channel_mult))
    levels = len(self.channel_mult)
    if levels < 1 or any(m < 1 for m in self.channel_mult):
      raise ValueError(f'config.autoencoder.channel_mult={self.channel_mult} needs at least '
                       'one positive multiplier.')
    if self.image_size % 2**(levels - 1):
      raise ValueError(f'config.data.image_size={self.image_size} is not divisible by '
                       f'2^(levels - 1) = {2**(levels - 1)} for config.autoencoder.channel_mult='
                       f'{self.channel_mult}.')
    for name in ('latent_channels', 'base_channels', 'num_res_blocks', 'norm_groups',
                 'disc_channels', 'disc_layers'):
      if getattr(self, name) < 1:
        raise ValueError(f'config.autoencoder.{name}={getattr(self, name)} must be >= 1.')
    for mult in self.channel_mult:
      if (self.base_channels * mult) % self.norm_groups:
        raise ValueError(f'{self.base_channels * mult} channels (config.autoencoder.'
                         'base_channels x channel_mult) do not split into '
                         f'config.autoencoder.norm_groups={self.norm_groups} groups.')

  @property
  def downsampling(self) -> int:
    """Pixels per latent pixel along each side."""
    return 2**(len(self.channel_mult) - 1)

  @property
  def latent_size(self) -> int:
    return self.image_size // self.downsampling


class ResBlock(nnx.Module):
  """GroupNorm-SiLU-conv twice with a skip; frames stay independent."""

  def __init__(self, in_ch: int, out_ch: int, groups: int, *, rngs: nnx.Rngs):
    self.norm1 = layers.GroupNorm(in_ch, groups, rngs=rngs)
    self.conv1 = layers.SpatialConv(in_ch, out_ch, rngs=rngs)
    self.norm2 = layers.GroupNorm(out_ch, groups, rngs=rngs)
    self.conv2 = layers.SpatialConv(out_ch, out_ch, rngs=rngs, init_scale=0.0)
    self.skip = (layers.SpatialConv(in_ch, out_ch, rngs=rngs, kernel_size=1)
                 if in_ch != out_ch else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.conv1(jax.nn.silu(self.norm1(x)))
    h = self.conv2(jax.nn.silu(self.norm2(h)))
    return (x if self.skip is None else self.skip(x)) + h


class Encoder(nnx.Module):
  """Frames [B, T, H, W, C] -> posterior (mean, logvar), each [B, T, h, w, latent]."""

  def __init__(self, cfg: AutoencoderConfig, *, rngs: nnx.Rngs):
    base, groups = cfg.base_channels, cfg.norm_groups
    self.conv_in = layers.SpatialConv(cfg.channels, base, rngs=rngs)
    blocks, downsample, ch = [], [], base
    for level, mult in enumerate(cfg.channel_mult):
      for _ in range(cfg.num_res_blocks):
        blocks.append(ResBlock(ch, base * mult, groups, rngs=rngs))
        ch = base * mult
      if level < len(cfg.channel_mult) - 1:
        downsample.append(layers.SpatialConv(ch, ch, stride=2, rngs=rngs))
    self.blocks = nnx.List(blocks)
    self.downsample = nnx.List(downsample)
    self.mid = ResBlock(ch, ch, groups, rngs=rngs)
    self.norm_out = layers.GroupNorm(ch, groups, rngs=rngs)
    self.conv_out = layers.SpatialConv(ch, 2 * cfg.latent_channels, rngs=rngs)
    self.cfg = cfg

  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    h = self.conv_in(x)
    blocks = iter(self.blocks)
    for level in range(len(self.cfg.channel_mult)):
      for _ in range(self.cfg.num_res_blocks):
        h = next(blocks)(h)
      if level < len(self.cfg.channel_mult) - 1:
        h = self.downsample[level](h)
    h = self.conv_out(jax.nn.silu(self.norm_out(self.mid(h))))
    mean, logvar = jnp.split(h, 2, axis=-1)  # [B, T, h, w, latent] each
    # Clipped as in Stable Diffusion's posterior: exp(logvar) stays finite.
    return mean, jnp.clip(logvar, -30.0, 20.0)


class Decoder(nnx.Module):
  """Latents [B, T, h, w, latent] -> frames [B, T, H, W, C] (unbounded, ~[-1, 1])."""

  def __init__(self, cfg: AutoencoderConfig, *, rngs: nnx.Rngs):
    base, groups = cfg.base_channels, cfg.norm_groups
    ch = base * cfg.channel_mult[-1]
    self.conv_in = layers.SpatialConv(cfg.latent_channels, ch, rngs=rngs)
    self.mid = ResBlock(ch, ch, groups, rngs=rngs)
    blocks, temporal, upsample = [], [], []
    for level in reversed(range(len(cfg.channel_mult))):
      for _ in range(cfg.num_res_blocks):
        blocks.append(ResBlock(ch, base * cfg.channel_mult[level], groups, rngs=rngs))
        ch = base * cfg.channel_mult[level]
        if cfg.temporal_decoder:
          temporal.append(layers.TemporalConvBlock(ch, groups, rngs=rngs))
      if level > 0:
        upsample.append(layers.SpatialConv(ch, ch, rngs=rngs))
    self.blocks = nnx.List(blocks)
    # VidRD's temporal-aware layers: their own subtree so that a run can train
    # them alone (the 'temporal' parameter group of the autoencoder method).
    self.temporal = nnx.List(temporal) if temporal else None
    self.upsample = nnx.List(upsample)
    self.norm_out = layers.GroupNorm(ch, groups, rngs=rngs)
    self.conv_out = layers.SpatialConv(ch, cfg.channels, rngs=rngs)
    self.cfg = cfg

  def __call__(self, z: jax.Array, is_image: Optional[jax.Array] = None) -> jax.Array:
    h = self.mid(self.conv_in(z))
    i = 0
    for n, level in enumerate(reversed(range(len(self.cfg.channel_mult)))):
      for _ in range(self.cfg.num_res_blocks):
        h = self.blocks[i](h)
        if self.temporal is not None:
          h = self.temporal[i](h, is_image)
        i += 1
      if level > 0:
        h = self.upsample[n](layers.upsample_nearest(h))
    return self.conv_out(jax.nn.silu(self.norm_out(h)))


class PatchDiscriminator(nnx.Module):
  """Frames [B, T, H, W, C] -> real/fake logits per patch [B, T, h', w', 1]."""

  def __init__(self, cfg: AutoencoderConfig, *, rngs: nnx.Rngs):
    convs, ch = [], cfg.channels
    for i in range(cfg.disc_layers):
      out = cfg.disc_channels * 2**i
      convs.append(layers.SpatialConv(ch, out, stride=2, kernel_size=4, rngs=rngs))
      ch = out
    self.convs = nnx.List(convs)
    self.conv_out = layers.SpatialConv(ch, 1, kernel_size=3, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = x
    for conv in self.convs:
      h = jax.nn.leaky_relu(conv(h), 0.2)
    return self.conv_out(h)


class Autoencoder(nnx.Module):
  """Encoder, decoder and (when the loss uses it) the patch discriminator.

  Args:
    config: the AutoencoderConfig.
    with_discriminator: build the discriminator (config.autoencoder.disc_weight > 0).
    rngs: parameter initialisation keys.
  """

  def __init__(self, config: AutoencoderConfig, *, with_discriminator: bool = False,
               rngs: nnx.Rngs):
    self.config = config
    self.encoder = Encoder(config, rngs=rngs)
    self.decoder = Decoder(config, rngs=rngs)
    self.discriminator = PatchDiscriminator(config, rngs=rngs) if with_discriminator else None

  def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Posterior mean and log-variance of every frame of x [B, T, H, W, C]."""
    cfg = self.config
    if x.ndim != 5 or x.shape[2:] != (cfg.image_size, cfg.image_size, cfg.channels):
      raise ValueError(f'the autoencoder encodes video [B, T, {cfg.image_size}, '
                       f'{cfg.image_size}, {cfg.channels}]; got shape {x.shape}.')
    return self.encoder(x)

  def decode(self, z: jax.Array, is_image: Optional[jax.Array] = None) -> jax.Array:
    """Frames of latents z [B, T, h, w, latent_channels].

    ``is_image`` [T] marks appended independent images, which the temporal
    layers keep apart from the video frames.
    """
    cfg = self.config
    if z.ndim != 5 or z.shape[2:] != (cfg.latent_size, cfg.latent_size, cfg.latent_channels):
      raise ValueError(f'the decoder takes latents [B, T, {cfg.latent_size}, {cfg.latent_size}, '
                       f'{cfg.latent_channels}]; got shape {z.shape}.')
    return self.decoder(z, is_image)


def kl_to_standard_normal(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mean, exp(logvar)) || N(0, 1)) summed over all but the leading axis.

  Closed form per dimension: (mean^2 + var - 1 - logvar) / 2.

  Args:
    mean, logvar: [B, ...] diagonal Gaussian posterior.

  Returns:
    [B] float32 KL in nats.
  """
  kl = 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
  return jnp.sum(kl.reshape(kl.shape[0], -1), axis=-1)


def posterior_sample(rng: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """A reparameterised draw mean + exp(logvar / 2) * N(0, I)."""
  return mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)

