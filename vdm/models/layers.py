"""Building blocks of the factorized space-time U-Net, in Flax NNX.

Every parameter carries ``logical_axes`` metadata (one name per dimension) that
``vdm.sharding`` maps onto mesh axes, so the model never names a mesh itself.
Parameters are stored in ``param_dtype`` (float32) and cast to the compute
``dtype`` (float32 or bfloat16) at use.

Logical axis names: 'embed' (input features), 'mlp' (output features),
'heads', 'kv' (per-head features), 'norm' (normalisation scales), 'vocab'
(embedding rows), 'rel_buckets' (relative position buckets); None means the
dimension is never sharded (kernel height and width).
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def next_key(stream: nnx.RngStream) -> jax.Array:
  """The key ``stream()`` returns (fold_in(key, count), count + 1), drawn cheaply.

  nnx updates the count in place (``count[...] += 1``), which under tracing
  (the model is built inside jit and eval_shape) asks each tracer for its
  sharding; JAX answers with an error message that walks the whole trace so
  far, so building a model cost time quadratic in its size: 40% of building
  the tiny test model. Replacing the count's value gives the same keys.
  """
  key = jax.random.fold_in(stream.key.get_value(), stream.count.get_value())
  stream.count.set_value(stream.count.get_value() + 1)
  return key


def param(rngs: nnx.Rngs, init, shape: Sequence[int],
          logical_axes: Sequence[Optional[str]], dtype=jnp.float32) -> nnx.Param:
  """Creates a parameter with its logical axis names attached."""
  if len(shape) != len(logical_axes):
    raise ValueError(f'shape {shape} and logical_axes {logical_axes} differ in rank')
  return nnx.Param(init(next_key(rngs.params), tuple(shape), dtype),
                   logical_axes=tuple(logical_axes))


def zeros_init(key, shape, dtype):
  del key
  return jnp.zeros(shape, dtype)


def ones_init(key, shape, dtype):
  del key
  return jnp.ones(shape, dtype)


def variance_scaling(scale: float = 1.0):
  """Fan-average uniform initialiser (the DDPM default) with a scale."""
  return jax.nn.initializers.variance_scaling(
      max(scale, 1e-10), 'fan_avg', 'uniform')


class Dense(nnx.Module):
  """y = x W + b on the last axis."""

  def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs,
               init_scale: float = 1.0, dtype=jnp.float32,
               logical_axes=('embed', 'mlp')):
    init = zeros_init if init_scale == 0 else variance_scaling(init_scale)
    self.kernel = param(rngs, init, (in_features, out_features), logical_axes)
    self.bias = param(rngs, zeros_init, (out_features,), logical_axes[1:])
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(self.dtype)
    y = jnp.dot(x, self.kernel[...].astype(self.dtype))
    return y + self.bias[...].astype(self.dtype)


def _conv_same(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=(stride, stride), padding='SAME',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
  """'SAME' 2D convolution of [N, H, W, Cin] with an HWIO kernel.

  The value and the input gradient are XLA's convolutions. The kernel gradient
  is computed as one matmul per kernel tap instead: XLA's CPU backend lowers
  the kernel-gradient convolution (a reduction over N*H*W) several times
  slower than the equivalent matmuls, and it dominated the training step
  (benchmarks/ and BENCHMARKS.md have the numbers). On GPU/TPU both forms
  become the same few large matmuls.

  Args:
    x: [N, H, W, Cin].
    kernel: [kh, kw, Cin, Cout].
    stride: spatial stride (static).

  Returns:
    [N, ceil(H / stride), ceil(W / stride), Cout].
  """
  return _conv_same(x, kernel, stride)


def _conv2d_fwd(x, kernel, stride):
  return _conv_same(x, kernel, stride), (x, kernel)


def _conv2d_bwd(stride, residuals, grad):
  x, kernel = residuals
  _, input_vjp = jax.vjp(lambda x_: _conv_same(x_, kernel, stride), x)
  (dx,) = input_vjp(grad)
  kh, kw, cin, cout = kernel.shape
  pads = jax.lax.padtype_to_pads(x.shape[1:3], (kh, kw), (stride, stride), 'SAME')
  xp = jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
  n = x.shape[0]
  oh, ow = grad.shape[1:3]
  span_h, span_w = (oh - 1) * stride + 1, (ow - 1) * stride + 1
  g = grad.reshape(-1, cout)  # [N*OH*OW, Cout]

  def tap(t, dk):
    # One shifted window alive at a time: unrolled, XLA built all kh*kw
    # windows at once (half of the train step's temporary memory).
    i, j = t // kw, t % kw
    window = jax.lax.dynamic_slice(xp, (0, i, j, 0), (n, span_h, span_w, cin))
    window = window[:, ::stride, ::stride]
    return dk.at[t].set(jnp.dot(window.reshape(-1, cin).T, g,
                                preferred_element_type=jnp.float32))
  dk = jax.lax.fori_loop(0, kh * kw, tap, jnp.zeros((kh * kw, cin, cout), jnp.float32))
  return dx, dk.reshape(kh, kw, cin, cout).astype(kernel.dtype)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


class SpatialConv(nnx.Module):
  """A space-only convolution (kernel 1 x k x k) of video [B, T, H, W, C].

  This is the factorization of the paper: a 2D image convolution applied to
  every frame alone, so frames mix only through temporal attention.
  """

  def __init__(self, in_channels: int, out_channels: int, *, rngs: nnx.Rngs,
               kernel_size: int = 3, stride: int = 1, init_scale: float = 1.0,
               dtype=jnp.float32):
    init = zeros_init if init_scale == 0 else variance_scaling(init_scale)
    self.kernel = param(rngs, init,
                        (kernel_size, kernel_size, in_channels, out_channels),
                        (None, None, 'embed', 'mlp'))
    self.bias = param(rngs, zeros_init, (out_channels,), ('mlp',))
    self.stride = stride
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, h, w, c = x.shape
    frames = x.reshape(b * t, h, w, c).astype(self.dtype)  # [B*T, H, W, C]
    y = conv2d(frames, self.kernel[...].astype(self.dtype), self.stride)
    y = y + self.bias[...].astype(self.dtype)
    return y.reshape((b, t) + y.shape[1:])


class GroupNorm(nnx.Module):
  """Group normalisation over (H, W, channels-in-group) of each frame.

  Statistics are per frame, not over time, so a frame's normalisation never
  depends on the other frames (the joint image-video masking relies on this).
  They are computed in float32 whatever the compute dtype.
  """

  def __init__(self, channels: int, num_groups: int, *, rngs: nnx.Rngs,
               dtype=jnp.float32, eps: float = 1e-6):
    if channels % num_groups:
      raise ValueError(f'{channels} channels do not split into '
                       f'config.model.norm_groups={num_groups} groups')
    self.scale = param(rngs, ones_init, (channels,), ('norm',))
    self.bias = param(rngs, zeros_init, (channels,), ('norm',))
    self.num_groups = num_groups
    self.dtype = dtype
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    *lead, h, w, c = x.shape
    g = self.num_groups
    xf = x.astype(jnp.float32).reshape(*lead, h * w, g, c // g)  # [..., HW, G, C/G]
    # Two-pass statistics: E[x^2] - E[x]^2 cancels badly when |mean| >> std.
    mean = jnp.mean(xf, axis=(-3, -1), keepdims=True)            # [..., 1, G, 1]
    var = jnp.mean(jnp.square(xf - mean), axis=(-3, -1), keepdims=True)
    # Normalisation and affine folded into one multiply-add per element: the
    # per-(frame, channel) factors are tiny, and the backward pass keeps fewer
    # full-size temporaries (measured in BENCHMARKS.md).
    a = self.scale[...].reshape(g, c // g) * jax.lax.rsqrt(var + self.eps)  # [..., 1, G, C/G]
    b = self.bias[...].reshape(g, c // g) - mean * a
    return (xf * a + b).reshape(x.shape).astype(self.dtype)


class Embed(nnx.Module):
  """A lookup table [num_embeddings, features]."""

  def __init__(self, num_embeddings: int, features: int, *, rngs: nnx.Rngs):
    self.embedding = param(rngs, jax.nn.initializers.normal(1.0),
                           (num_embeddings, features), ('vocab', 'mlp'))

  def __call__(self, ids: jax.Array) -> jax.Array:
    return jnp.take(self.embedding[...], ids, axis=0)


def sinusoidal_embedding(x: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal features of continuous scalars.

  Args:
    x: [B] float values.
    dim: even number of output features.
    max_period: the longest period among the frequencies.

  Returns:
    [B, dim] float32: sin and cos of x at geometrically spaced frequencies.
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  angles = x.astype(jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def dropout(x: jax.Array, rate: float, rng: Optional[jax.Array]) -> jax.Array:
  """Inverted dropout; the identity when ``rng`` is None (evaluation)."""
  if rng is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def upsample_nearest(x: jax.Array) -> jax.Array:
  """Doubles H and W of [B, T, H, W, C] by repetition (frames unchanged)."""
  x = jnp.repeat(x, 2, axis=2)
  return jnp.repeat(x, 2, axis=3)


def temporal_neighbours(is_image: Optional[jax.Array], num_frames: int
                        ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Each frame's previous and next video frame, as indices and validity masks.

  Neighbours count video frames only (as relative positions do in
  vdm/models/attention.py): an image frame has none, and a video frame's
  neighbours skip any image frames between, so interleaving images leaves the
  video frames' computation unchanged.

  Returns:
    (prev [T] int32, has_prev [T] bool, next [T] int32, has_next [T] bool).
  """
  video = (jnp.ones((num_frames,), bool) if is_image is None
           else ~jnp.asarray(is_image, bool))
  position = jnp.cumsum(video) - 1                      # [T]: index among video frames
  order = jnp.argsort(~video, stable=True)              # video frames first, in order
  num_video = jnp.sum(video)
  has_prev = video & (position >= 1)
  has_next = video & (position + 1 < num_video)
  prev = order[jnp.clip(position - 1, 0, num_frames - 1)]
  nxt = order[jnp.clip(position + 1, 0, num_frames - 1)]
  return prev, has_prev, nxt, has_next


class TemporalConv(nnx.Module):
  """A kernel-3 convolution over time of video [B, T, H, W, C], zero-padded.

  Each output frame mixes itself with its previous and next video frame;
  appended independent images (``is_image``) mix with nothing (the joint
  image-video contract of vdm/models/attention.py).
  """

  def __init__(self, in_channels: int, out_channels: int, *, rngs: nnx.Rngs,
               init_scale: float = 1.0, dtype=jnp.float32):
    init = zeros_init if init_scale == 0 else variance_scaling(init_scale)
    self.kernel = param(rngs, init, (3, in_channels, out_channels), (None, 'embed', 'mlp'))
    self.bias = param(rngs, zeros_init, (out_channels,), ('mlp',))
    self.dtype = dtype

  def __call__(self, x: jax.Array, is_image: Optional[jax.Array] = None) -> jax.Array:
    x = x.astype(self.dtype)
    prev_i, has_prev, next_i, has_next = temporal_neighbours(is_image, x.shape[1])
    shape = (1, -1, 1, 1, 1)
    prev = jnp.where(has_prev.reshape(shape), jnp.take(x, prev_i, axis=1), 0)  # [B, T, H, W, C]
    nxt = jnp.where(has_next.reshape(shape), jnp.take(x, next_i, axis=1), 0)
    taps = jnp.concatenate([prev, x, nxt], axis=-1)    # [B, T, H, W, 3C]
    kernel = self.kernel[...].astype(self.dtype)
    y = jnp.dot(taps, kernel.reshape(-1, kernel.shape[-1]))
    return y + self.bias[...].astype(self.dtype)

class TemporalConvBlock(nnx.Module):
  """x + TemporalConv(SiLU(GroupNorm(x))) with the convolution zero-initialised.

  Inserted into a trained spatial network (VidRD's temporal-aware decoder, the
  U-Net's ``temporal_conv`` option) it is the identity at initialisation, so
  the network starts exactly as it was and learns only what time adds.
  """

  def __init__(self, channels: int, num_groups: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
    self.norm = GroupNorm(channels, num_groups, rngs=rngs, dtype=dtype)
    self.conv = TemporalConv(channels, channels, rngs=rngs, init_scale=0.0, dtype=dtype)

  def __call__(self, x: jax.Array, is_image: Optional[jax.Array] = None) -> jax.Array:
    h = self.conv(jax.nn.silu(self.norm(x)), is_image)
    return x.astype(h.dtype) + h
