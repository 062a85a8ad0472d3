"""The factorized space-time U-Net of Video Diffusion Models (Ho et al., 2022).

A 2D image U-Net made 3D: every 3x3 convolution is space-only (1x3x3), every
spatial attention block attends within a frame and is followed by a temporal
attention block along time, and down/up-sampling are spatial only, so the
number of frames never changes. An embedding of log-SNR (plus an optional class
label, per video or per frame) modulates every residual block with a FiLM scale
and shift. With text (``text_encoder``), a text encoder trained with the net
turns each caption into token embeddings: every attention block attends from
each frame to its caption's tokens between its spatial and temporal
attention, and the mean token embedding joins the conditioning embedding.

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
from vdm.models import text as text_lib
from vdm.models import tokenizer as tokenizer_lib

# config.model.text_encoder: none, learned with the net, or a frozen encoder's embeddings.
TEXT_ENCODERS = ('', 'learned', 'precomputed')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
# lambda in [-20, 20] times this spans about the range of a 1000-step index,
# which the sinusoidal frequencies below were designed for.
LOGSNR_EMBED_SCALE = 25.0
# w in [0, 8] times this spans the same range.
GUIDANCE_EMBED_SCALE = 125.0


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  """Hyperparameters of the U-Net (the ``config.model`` section plus data shape).

  Attributes:
    channels: channels of the data (3 for RGB, 1 for grayscale).
    image_size: height and width of the frames.
    base_channels: channels of the first level.
    channel_mult: per-level channel multipliers; len = number of levels.
    num_res_blocks: residual blocks per level on the way down.
    attention_resolutions: frame sizes (pixels) that get spatial + temporal attention.
    head_dim: features per attention head.
    num_heads: heads per attention block; 0 means channels // head_dim.
    emb_dim: conditioning embedding size; 0 means 4 * base_channels.
    dropout: dropout rate inside residual blocks.
    num_classes: number of class labels; 0 for an unconditional model.
    cond_channels: extra input channels concatenated to z_t (super-resolution,
      image-to-video); 0 for none.
    norm_groups: groups of every GroupNorm.
    rel_pos_buckets: buckets of the temporal relative position bias.
    rel_pos_max_distance: distance beyond which relative positions share a bucket.
    frame_index_embed: rows of a learned absolute frame-index embedding added
      to the conditioning of each frame (the most frames the net then takes);
      0 (default): none, the net knows frame order only through relative
      positions and runs on any number of frames.
    dtype: compute dtype name ('float32' or 'bfloat16'); parameters stay float32.
    attn_dtype: dtype of the attention inputs; '' means ``dtype``.
    remat: recompute each block's activations in the backward pass.
    temporal_conv: add a zero-initialised kernel-3 convolution over time
      after the first (spatial) convolution of every residual block (VidRD's
      U-Net); False: frames mix only through temporal attention.
    text_encoder: '' (no text), 'learned' (vdm.models.text.TextEncoder,
      learned with the net over tokens) or 'precomputed' (a frozen encoder's
      embeddings [..., L, text_embed_dim] come in; vdm.models.text.
      EmbeddingProjection maps them to text_width).
    text_tokenizer: 'learned': 'bytes' or 'words' (vdm.models.tokenizer).
    text_vocabulary: the words of the 'words' tokenizer.
    text_max_length: L, tokens per caption.
    text_width: D, features per text token the net attends to.
    text_layers: transformer layers of the learned text encoder.
    text_heads: attention heads of the learned text encoder.
    text_embedder: 'precomputed': 'package.module:function', the frozen
      encoder (vdm.models.tokenizer.Embedder).
    text_embed_dim: 'precomputed': features per token of its embeddings.
    guidance_embed: take the classifier-free guidance weight w as an input,
      embedded like the log-SNR and added to the conditioning (a
      guidance-distilled student, vdm.methods.distill); its last layer starts
      at zero, so the net starts as the one it was copied from.
  """
  channels: int = 3
  image_size: int = 64
  base_channels: int = 128
  channel_mult: tuple[int, ...] = (1, 2, 4, 8)
  num_res_blocks: int = 2
  attention_resolutions: tuple[int, ...] = (8, 16, 32)
  head_dim: int = 64
  num_heads: int = 0
  emb_dim: int = 0
  dropout: float = 0.1
  num_classes: int = 0
  cond_channels: int = 0
  norm_groups: int = 32
  rel_pos_buckets: int = 32
  rel_pos_max_distance: int = 64
  frame_index_embed: int = 0
  dtype: str = 'float32'
  attn_dtype: str = ''
  remat: bool = False
  temporal_conv: bool = False
  text_encoder: str = ''
  text_tokenizer: str = 'bytes'
  text_vocabulary: tuple[str, ...] = ()
  text_max_length: int = 64
  text_width: int = 128
  text_layers: int = 2
  text_heads: int = 4
  text_embedder: str = ''
  text_embed_dim: int = 0
  guidance_embed: bool = False

  def __post_init__(self):
    object.__setattr__(self, 'channel_mult', tuple(self.channel_mult))
    object.__setattr__(self, 'attention_resolutions', tuple(self.attention_resolutions))
    object.__setattr__(self, 'text_vocabulary', tuple(self.text_vocabulary))
    self.validate()

  @classmethod
  def from_config(cls, config, frame_shape: Optional[tuple[int, int]] = None) -> 'UNetConfig':
    """Builds the U-Net config from a full config (``data`` and ``model`` sections).

    Args:
      config: a full ConfigDict.
      frame_shape: (size, channels) of the frames the net sees; None means
        config.data's (pixels). A latent run passes its latents'
        (vdm.config_lib.frame_shape).
    """
    fields = {f.name for f in dataclasses.fields(cls)} - {'channels', 'image_size'}
    model = dict(config.model)
    unknown = sorted(set(model) - fields)
    if unknown:
      raise ValueError(f'config.model has unknown keys {unknown}; '
                       f'known keys: {sorted(fields)}.')
    size, channels = frame_shape or (config.data.image_size, config.data.channels)
    return cls(channels=channels, image_size=size, **model)

  def text_input_shape(self) -> tuple[int, ...]:
    """Shape of one caption's text input: (L,) tokens or (L, D_in) embeddings."""
    if self.text_encoder == 'precomputed':
      return (self.text_max_length, self.text_embed_dim)
    return (self.text_max_length,)

  def tokenizer(self) -> tokenizer_lib.Tokenizer:
    """The tokenizer of the captions this net takes."""
    return tokenizer_lib.Tokenizer(self.text_tokenizer, self.text_max_length,
                                   self.text_vocabulary)

  @property
  def resolutions(self) -> tuple[int, ...]:
    """Frame size at each level."""
    return tuple(self.image_size // 2**i for i in range(len(self.channel_mult)))

  def heads_at(self, channels: int) -> int:
    return self.num_heads or channels // self.head_dim

  def validate(self) -> None:
    """Raises ValueError naming the config key of any inconsistent setting."""
    def fail(msg):
      raise ValueError(msg)
    levels = len(self.channel_mult)
    if levels < 1 or any(m < 1 for m in self.channel_mult):
      fail(f'config.model.channel_mult={self.channel_mult} needs at least one '
           'positive multiplier.')
    if self.image_size < 1 or self.image_size % 2**(levels - 1):
      fail(f'config.data.image_size={self.image_size} is not divisible by '
           f'2^(levels - 1) = {2**(levels - 1)} for the {levels} levels of '
           f'config.model.channel_mult={self.channel_mult}; change one of them.')
    missing = [r for r in self.attention_resolutions if r not in self.resolutions]
    if missing:
      fail(f'config.model.attention_resolutions={self.attention_resolutions}: '
           f'{missing} never occur; the U-Net has frame sizes {self.resolutions}.')
    if not 0.0 <= self.dropout < 1.0:
      fail(f'config.model.dropout={self.dropout} must be in [0, 1).')
    for name in ('base_channels', 'num_res_blocks', 'head_dim', 'channels',
                 'rel_pos_buckets', 'rel_pos_max_distance', 'norm_groups'):
      if getattr(self, name) < 1:
        fail(f'config.model.{name}={getattr(self, name)} must be >= 1.')
    for name in ('num_heads', 'emb_dim', 'num_classes', 'cond_channels', 'frame_index_embed'):
      if getattr(self, name) < 0:
        fail(f'config.model.{name}={getattr(self, name)} must be >= 0.')
    if self.text_encoder not in TEXT_ENCODERS:
      fail(f"config.model.text_encoder={self.text_encoder!r} is unknown; choose '' (no "
           "text), 'learned' or 'precomputed'.")
    if self.text_encoder == 'precomputed' and (not self.text_embedder
                                               or self.text_embed_dim < 1):
      fail("config.model.text_encoder='precomputed' needs config.model.text_embedder (the "
           "frozen encoder, 'package.module:function') and config.model.text_embed_dim (its "
           f'features per token); got {self.text_embedder!r} and {self.text_embed_dim}.')
    if self.text_encoder:
      if self.text_tokenizer not in tokenizer_lib.TOKENIZERS:
        fail(f'config.model.text_tokenizer={self.text_tokenizer!r} is unknown; choose one of '
             f'{tokenizer_lib.TOKENIZERS}.')
      for name in ('text_max_length', 'text_width', 'text_layers', 'text_heads'):
        if getattr(self, name) < 1:
          fail(f'config.model.{name}={getattr(self, name)} must be >= 1.')
      if self.text_width % self.text_heads:
        fail(f'config.model.text_width={self.text_width} is not divisible by '
             f'config.model.text_heads={self.text_heads}.')
    if self.rel_pos_buckets < 4 or self.rel_pos_buckets % 2:
      fail(f'config.model.rel_pos_buckets={self.rel_pos_buckets} must be even and >= 4.')
    for name in ('dtype', 'attn_dtype'):
      value = getattr(self, name)
      if value not in DTYPES and not (name == 'attn_dtype' and value == ''):
        fail(f'config.model.{name}={value!r} is unknown; choose one of {sorted(DTYPES)}.')
    for mult in self.channel_mult:
      ch = self.base_channels * mult
      if ch % self.norm_groups:
        fail(f'{ch} channels (config.model.base_channels x channel_mult) do not '
             f'split into config.model.norm_groups={self.norm_groups} groups.')
    for res, mult in zip(self.resolutions, self.channel_mult):
      ch = self.base_channels * mult
      if res in self.attention_resolutions and not self.num_heads and ch % self.head_dim:
        fail(f'{ch} channels at resolution {res} are not a multiple of '
             f'config.model.head_dim={self.head_dim}; set config.model.num_heads.')


class ResBlock(nnx.Module):
  """GroupNorm-SiLU-conv, FiLM from the embedding, GroupNorm-SiLU-dropout-conv."""

  def __init__(self, in_ch: int, out_ch: int, cfg: UNetConfig, *, rngs: nnx.Rngs):
    dtype = DTYPES[cfg.dtype]
    self.norm1 = layers.GroupNorm(in_ch, cfg.norm_groups, rngs=rngs, dtype=dtype)
    self.conv1 = layers.SpatialConv(in_ch, out_ch, rngs=rngs, dtype=dtype)
    self.film = layers.Dense(_emb_dim(cfg), 2 * out_ch, rngs=rngs, dtype=dtype)
    self.norm2 = layers.GroupNorm(out_ch, cfg.norm_groups, rngs=rngs, dtype=dtype)
    # Zero init: each residual block starts as the identity (DDPM practice).
    self.conv2 = layers.SpatialConv(out_ch, out_ch, rngs=rngs, init_scale=0.0, dtype=dtype)
    self.skip = (layers.SpatialConv(in_ch, out_ch, rngs=rngs, kernel_size=1, dtype=dtype)
                 if in_ch != out_ch else None)
    # Identity at initialisation: a run gaining it starts as the attention-only net.
    self.temporal = (layers.TemporalConvBlock(out_ch, cfg.norm_groups, rngs=rngs, dtype=dtype)
                     if cfg.temporal_conv else None)
    self.dropout_rate = cfg.dropout

  def __call__(self, x: jax.Array, emb: jax.Array, rng: Optional[jax.Array],
               is_image: Optional[jax.Array] = None) -> jax.Array:
    h = self.conv1(jax.nn.silu(self.norm1(x)))  # [B, T, H, W, out]
    if self.temporal is not None:
      h = self.temporal(h, is_image)
    # emb: [B, 1, E] (one condition per video) or [B, T, E] (per frame).
    scale, shift = jnp.split(self.film(jax.nn.silu(emb)), 2, axis=-1)  # [B, T', out] each
    h = self.norm2(h) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
    h = layers.dropout(jax.nn.silu(h), self.dropout_rate, rng)
    h = self.conv2(h)
    skip = x if self.skip is None else self.skip(x)
    return skip.astype(h.dtype) + h


class AttentionBlock(nnx.Module):
  """Spatial attention, text cross-attention (with text), then temporal attention."""

  def __init__(self, ch: int, cfg: UNetConfig, *, rngs: nnx.Rngs):
    dtype = DTYPES[cfg.dtype]
    attn_dtype = DTYPES[cfg.attn_dtype or cfg.dtype]
    kw = dict(norm_groups=cfg.norm_groups, rngs=rngs, dtype=dtype, attn_dtype=attn_dtype)
    heads = cfg.heads_at(ch)
    self.spatial = attention.SpatialAttention(ch, heads, cfg.head_dim, **kw)
    self.text = (attention.TextCrossAttention(ch, cfg.text_width, heads, cfg.head_dim, **kw)
                 if cfg.text_encoder else None)
    self.temporal = attention.TemporalAttention(
        ch, heads, cfg.head_dim, num_buckets=cfg.rel_pos_buckets,
        max_distance=cfg.rel_pos_max_distance, **kw)

  def __call__(self, x: jax.Array, is_image: Optional[jax.Array], text=None) -> jax.Array:
    x = self.spatial(x)
    if self.text is not None:
      x = self.text(x, *text)
    return self.temporal(x, is_image)


class Level(nnx.Module):
  """One residual block, with its attention block where the resolution asks."""

  def __init__(self, in_ch: int, out_ch: int, use_attention: bool, cfg: UNetConfig,
               *, rngs: nnx.Rngs):
    self.res = ResBlock(in_ch, out_ch, cfg, rngs=rngs)
    self.attn = AttentionBlock(out_ch, cfg, rngs=rngs) if use_attention else None
    self.remat = cfg.remat

  def _forward(self, x, emb, rng, is_image, text):
    x = self.res(x, emb, rng, is_image)
    return x if self.attn is None else self.attn(x, is_image, text)

  def __call__(self, x, emb, rng, is_image, text=None):
    if self.remat:
      return nnx.remat(Level._forward)(self, x, emb, rng, is_image, text)
    return self._forward(x, emb, rng, is_image, text)


def _emb_dim(cfg: UNetConfig) -> int:
  return cfg.emb_dim or 4 * cfg.base_channels


class UNet3D(nnx.Module):
  """The denoiser (z_t, logsnr, label, cond, is_image) -> prediction.

  Attributes:
    config: the UNetConfig it was built with.
  """

  def __init__(self, config: UNetConfig, *, rngs: nnx.Rngs):
    cfg = config
    self.config = cfg
    dtype = DTYPES[cfg.dtype]
    emb = _emb_dim(cfg)
    base = cfg.base_channels
    self.time_mlp1 = layers.Dense(base, emb, rngs=rngs, dtype=dtype)
    self.time_mlp2 = layers.Dense(emb, emb, rngs=rngs, dtype=dtype)
    # Row num_classes is the learned null label for classifier-free guidance.
    self.label_embed = (layers.Embed(cfg.num_classes + 1, emb, rngs=rngs)
                        if cfg.num_classes else None)
    if cfg.text_encoder == 'precomputed':
      self.text_encoder = text_lib.EmbeddingProjection(cfg.text_embed_dim, cfg.text_width,
                                                       rngs=rngs)
      self.text_pool = layers.Dense(cfg.text_width, emb, rngs=rngs, dtype=dtype)
    elif cfg.text_encoder:
      self.text_encoder = text_lib.TextEncoder(
          cfg.tokenizer().vocab_size, cfg.text_max_length, cfg.text_width, cfg.text_layers,
          cfg.text_heads, rngs=rngs)
      self.text_pool = layers.Dense(cfg.text_width, emb, rngs=rngs, dtype=dtype)
    else:
      self.text_encoder = self.text_pool = None
    # Only when asked for: the default net has no parameter of absolute position.
    if cfg.guidance_embed:
      self.guidance_mlp1 = layers.Dense(base, emb, rngs=rngs, dtype=dtype)
      self.guidance_mlp2 = layers.Dense(emb, emb, rngs=rngs, dtype=dtype, init_scale=0.0)
    else:
      self.guidance_mlp1 = self.guidance_mlp2 = None
    self.frame_embed = (layers.Embed(cfg.frame_index_embed, emb, rngs=rngs)
                        if cfg.frame_index_embed else None)
    # The first and last convolutions compute in float32 whatever the compute
    # dtype: bfloat16 would round z_t (at high log-SNR sigma eps falls below
    # its resolution, so the eps target is lost) and the prediction (which the
    # eps parameterization amplifies by sigma / alpha).
    self.conv_in = layers.SpatialConv(cfg.channels + cfg.cond_channels, base,
                                      rngs=rngs, dtype=jnp.float32)
    chans = [base]  # Channels of every skip activation, in order.
    ch = base
    down, downsample = [], []
    for level, (res, mult) in enumerate(zip(cfg.resolutions, cfg.channel_mult)):
      use_attn = res in cfg.attention_resolutions
      for _ in range(cfg.num_res_blocks):
        down.append(Level(ch, base * mult, use_attn, cfg, rngs=rngs))
        ch = base * mult
        chans.append(ch)
      if level < len(cfg.channel_mult) - 1:
        downsample.append(layers.SpatialConv(ch, ch, stride=2, rngs=rngs, dtype=dtype))
        chans.append(ch)
    self.down = nnx.List(down)
    self.downsample = nnx.List(downsample)
    self.mid1 = Level(ch, ch, True, cfg, rngs=rngs)
    self.mid2 = Level(ch, ch, False, cfg, rngs=rngs)
    up, upsample = [], []
    for level in reversed(range(len(cfg.channel_mult))):
      res, mult = cfg.resolutions[level], cfg.channel_mult[level]
      use_attn = res in cfg.attention_resolutions
      for _ in range(cfg.num_res_blocks + 1):
        up.append(Level(ch + chans.pop(), base * mult, use_attn, cfg, rngs=rngs))
        ch = base * mult
      if level > 0:
        upsample.append(layers.SpatialConv(ch, ch, rngs=rngs, dtype=dtype))
    self.up = nnx.List(up)
    self.upsample = nnx.List(upsample)
    self.norm_out = layers.GroupNorm(ch, cfg.norm_groups, rngs=rngs, dtype=dtype)
    self.conv_out = layers.SpatialConv(ch, cfg.channels, rngs=rngs, init_scale=0.0,
                                       dtype=jnp.float32)

  def _check_inputs(self, z, logsnr, label, cond, is_image, text):
    cfg = self.config
    if z.ndim != 5 or z.shape[-1] != cfg.channels:
      raise ValueError(f'z_t must be [B, T, H, W, {cfg.channels}] video; got shape {z.shape}.')
    b, t, h, w, _ = z.shape
    factor = 2**(len(cfg.channel_mult) - 1)
    if h % factor or w % factor:
      raise ValueError(f'frame size {h}x{w} is not divisible by {factor}, the '
                       f'downsampling factor of the {len(cfg.channel_mult)} levels.')
    if jnp.shape(logsnr) != (b,):
      raise ValueError(f'logsnr must be [B] = [{b}]; got shape {jnp.shape(logsnr)}.')
    if label is not None and not cfg.num_classes:
      raise ValueError('a label was given to an unconditional model '
                       '(config.model.num_classes = 0).')
    if label is not None and jnp.shape(label) not in ((b,), (b, t)):
      raise ValueError(f'label must be [B] = [{b}] (per video) or [B, T] = [{b}, {t}] '
                       f'(per frame); got shape {jnp.shape(label)}.')
    if text is not None and not cfg.text_encoder:
      raise ValueError('text was given to a model without text conditioning '
                       "(config.model.text_encoder = '').")
    per_token = cfg.text_input_shape()
    if text is not None and jnp.shape(text) not in ((b, *per_token), (b, t, *per_token)):
      what = 'tokens' if cfg.text_encoder == 'learned' else 'embeddings'
      dims = ', '.join(map(str, per_token))
      raise ValueError(f'text must be {what} [B, {dims}] (per video) or [B, T, {dims}] (per '
                       f'frame), B = {b}, T = {t}; got shape {jnp.shape(text)}.')
    if cfg.cond_channels:
      want = (b, t, h, w, cfg.cond_channels)
      if cond is None or cond.shape != want:
        raise ValueError(f'cond must be {list(want)} (config.model.cond_channels='
                         f'{cfg.cond_channels}); got {None if cond is None else cond.shape}.')
    elif cond is not None:
      raise ValueError('cond was given but config.model.cond_channels = 0.')
    if is_image is not None and jnp.shape(is_image) != (t,):
      raise ValueError(f'is_image must be a [T] = [{t}] bool mask; got shape '
                       f'{jnp.shape(is_image)}.')
    # With appended images (training) the video frames are counted by a traced
    # mask; there validate_config has checked config.data.num_frames instead.
    if cfg.frame_index_embed and is_image is None and t > cfg.frame_index_embed:
      raise ValueError(f'{t} frames exceed the {cfg.frame_index_embed} rows of the absolute '
                       f'frame-index embedding (config.model.frame_index_embed); run clips '
                       f'of at most {cfg.frame_index_embed} frames.')

  def _text_context(self, text, batch: int):
    """(token embeddings [B, T', L, D], mask [B, T', L], pooled [B, T', D])."""
    cfg = self.config
    per_token = cfg.text_input_shape()  # (L,) tokens or (L, D_in) embeddings
    dtype = jnp.float32 if cfg.text_encoder == 'precomputed' else jnp.int32
    if text is None:  # The null text: padding only (zero tokens or zero embeddings).
      text = jnp.zeros((batch, *per_token), dtype)
    text = jnp.asarray(text, dtype).reshape(batch, -1, *per_token)  # [B, T', L(, D_in)]
    tokens, mask = self.text_encoder(text)
    weights = mask[..., None].astype(tokens.dtype)
    # Sum / sqrt(n) rather than the mean: one word that differs between two
    # captions (the digit) moves the pooled vector by O(1), as a class label's
    # embedding does, instead of by 1/n of it. 0 for the null text.
    pooled = (tokens * weights).sum(-2) / jnp.sqrt(jnp.maximum(weights.sum(-2), 1.0))
    return tokens, mask, pooled

  def __call__(self, z: jax.Array, logsnr: jax.Array, *, label: Optional[jax.Array] = None,
               cond: Optional[jax.Array] = None, is_image: Optional[jax.Array] = None,
               dropout_rng: Optional[jax.Array] = None,
               text: Optional[jax.Array] = None,
               guidance_weight: Optional[jax.Array] = None) -> jax.Array:
    """Predicts eps, v or x (whatever it was trained for) from z_t.

    Args:
      z: noisy video z_t [B, T, H, W, C].
      logsnr: lambda_t [B].
      label: int class labels [B] (one per video) or [B, T] (one per frame:
        appended images carry their own); negative values mean "no label"
        (the learned null embedding). None on a conditional model means all
        null.
      cond: extra conditioning channels [B, T, H, W, cond_channels].
      is_image: [T] bool, True for appended independent image frames.
      dropout_rng: PRNG key enabling dropout (training); None disables it.
      text: tokens (vdm.models.tokenizer) [B, L] (one caption per
        video) or [B, T, L] (per frame); all padding means the null text.
        None on a text model means null text for all.
      guidance_weight: w [B] or a scalar, for a net with ``guidance_embed``
        (None: w = 0); refused by a net without it.

    Returns:
      The prediction [B, T, H, W, C], float32.
    """
    cfg = self.config
    self._check_inputs(z, logsnr, label, cond, is_image, text)
    if is_image is not None:
      is_image = jnp.asarray(is_image, bool)
    emb = layers.sinusoidal_embedding(LOGSNR_EMBED_SCALE * logsnr, cfg.base_channels)
    emb = self.time_mlp2(jax.nn.silu(self.time_mlp1(emb)))[:, None]  # [B, 1, E]
    if self.label_embed is not None:
      if label is None:
        label = jnp.full(z.shape[:1], -1, jnp.int32)
      label = jnp.asarray(label).reshape(z.shape[0], -1)  # [B, 1] or [B, T]
      label = jnp.where(label < 0, cfg.num_classes, label)
      emb = emb + self.label_embed(label).astype(emb.dtype)  # [B, 1 or T, E]
    context = None
    if self.text_encoder is not None:
      tokens, mask, pooled = self._text_context(text, z.shape[0])
      context = (tokens, mask)
      emb = emb + self.text_pool(pooled).astype(emb.dtype)  # [B, 1 or T, E]
    if cfg.guidance_embed:
      w = jnp.broadcast_to(jnp.float32(0) if guidance_weight is None else guidance_weight,
                           z.shape[:1])  # [B]
      # w of a few units spread over the frequencies as the log-SNR's 40 do.
      w = layers.sinusoidal_embedding(GUIDANCE_EMBED_SCALE * w, cfg.base_channels)
      emb = emb + self.guidance_mlp2(jax.nn.silu(self.guidance_mlp1(w)))[:, None]
    elif guidance_weight is not None:
      raise ValueError('guidance_weight was given to a net without a guidance input '
                       '(config.model.guidance_embed = False): guide it with two passes instead.')
    if self.frame_embed is not None:
      # Video frames count 0, 1, ...; appended images, which have no place in
      # the clip, get no index embedding.
      index = attention.video_positions(is_image, z.shape[1])  # [T]
      frame = self.frame_embed(jnp.maximum(index, 0)).astype(emb.dtype)  # [T, E]
      if is_image is not None:
        frame = jnp.where(is_image[:, None], 0, frame)
      emb = emb + frame[None]  # [B, T, E]

    block = iter(range(10**6))  # Each residual block gets its own dropout key.
    def rng():
      i = next(block)
      return None if dropout_rng is None else jax.random.fold_in(dropout_rng, i)

    x = z if cond is None else jnp.concatenate([z, cond.astype(z.dtype)], axis=-1)
    h = self.conv_in(x)
    skips = [h]
    blocks = iter(self.down)
    for level in range(len(cfg.channel_mult)):
      for _ in range(cfg.num_res_blocks):
        h = next(blocks)(h, emb, rng(), is_image, context)
        skips.append(h)
      if level < len(cfg.channel_mult) - 1:
        h = self.downsample[level](h)
        skips.append(h)
    h = self.mid2(self.mid1(h, emb, rng(), is_image, context), emb, rng(), is_image)
    blocks = iter(self.up)
    for i, level in enumerate(reversed(range(len(cfg.channel_mult)))):
      for _ in range(cfg.num_res_blocks + 1):
        h = jnp.concatenate([h, skips.pop().astype(h.dtype)], axis=-1)
        h = next(blocks)(h, emb, rng(), is_image, context)
      if level > 0:
        h = self.upsample[i](layers.upsample_nearest(h))
    return self.conv_out(jax.nn.silu(self.norm_out(h)))


def count_params(model: nnx.Module) -> int:
  """Number of scalar parameters of a model."""
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
