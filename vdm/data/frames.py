"""Frame conversion: any uint8 frames as the model sees them (crop, resize, channels).

The one conversion of training clips, evaluation clips and sample.py's
conditioning inputs. Imports nothing of the project, so anything may use it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def resize_square(frames: np.ndarray, size: int) -> np.ndarray:
  """Centre square crop then resize: uint8 [n, H, W, C] -> [n, size, size, C].

  Cropping the centre square first and resizing it equals resizing the
  shorter side to `size` and centre cropping (up to sub-pixel rounding), and
  resizes fewer pixels. PIL's bilinear filter widens with the scale factor,
  so downsampling is antialiased.
  """
  n, h, w, c = frames.shape
  s = min(h, w)
  y0, x0 = (h - s) // 2, (w - s) // 2
  frames = frames[:, y0:y0 + s, x0:x0 + s]  # [n, s, s, C]
  if s == size:
    return frames
  from PIL import Image  # pylint: disable=g-import-not-at-top
  out = np.empty((n, size, size, c), np.uint8)
  def resize(a):  # uint8 [s, s] or [s, s, 3] -> [size, size(, 3)]
    img = Image.fromarray(np.ascontiguousarray(a))
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR))

  for i in range(n):
    if c == 3:  # One RGB resize rather than three.
      out[i] = resize(frames[i])
    else:  # Mode 'L' per channel works for any C.
      for ch in range(c):
        out[i, :, :, ch] = resize(frames[i, :, :, ch])
  return out


def to_channels(frames: np.ndarray, channels: int, key: str) -> np.ndarray:
  """Converts uint8 [n, H, W, C0] to `channels` (1 <-> 3) when needed."""
  c0 = frames.shape[-1]
  if c0 == channels:
    return frames
  if c0 == 1 and channels == 3:
    return np.repeat(frames, 3, axis=-1)
  if c0 == 3 and channels == 1:
    # ITU-R BT.601 luma, the usual RGB -> grayscale weights.
    y = frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.clip(np.round(y), 0, 255).astype(np.uint8)[..., None]
  raise ValueError(f'Feature {key!r} has {c0} channels; cannot convert to '
                   f'config.data.channels={channels}.')


def conform_frames(frames: np.ndarray, size: int, channels: int,
                   what: str = 'video') -> np.ndarray:
  """Any uint8 frames as the model sees them: centre square crop, resize, channels.

  The one conversion of training clips, evaluation clips and the conditioning
  inputs of sample.py (a real video of any size and channel count).

  Args:
    frames: uint8 [n, H0, W0, C0] or [n, H0, W0] (grey).
    size: output side S.
    channels: 1 (grey, ITU-R BT.601 luma from RGB) or 3.
    what: name of the input, for error messages.

  Returns:
    uint8 [n, S, S, channels].
  """
  if frames.ndim == 3:  # Grayscale stored without a channel axis.
    frames = frames[..., None]
  if frames.dtype != np.uint8:
    raise ValueError(f'{what} has dtype {frames.dtype}; expected uint8 frames.')
  return to_channels(resize_square(frames, size), channels, what)


def describe_conform(shape: Sequence[int], size: int, channels: int) -> str:
  """What conform_frames does to frames of ``shape`` [n, H0, W0, C0], in words."""
  h, w, c = shape[1], shape[2], shape[3] if len(shape) > 3 else 1
  s = min(h, w)
  steps = []
  if h != w:
    steps.append(f'center crop {s}x{s}')
  if s != size:
    steps.append(f'resize {size}x{size}')
  if c != channels:
    steps.append('grey' if channels == 1 else 'grey to RGB')
  return ', '.join(steps) or 'unchanged'
