"""Reading and writing videos: uint8 conversion, GIF/mp4 grids, npz.

Videos are [N, T, H, W, C] arrays; model space is float in [-1, 1], files are
uint8 in [0, 255]. imageio is imported lazily so the core never needs it.
"""

from __future__ import annotations

import math
import os
from typing import Optional

import numpy as np


def to_uint8(videos: np.ndarray) -> np.ndarray:
  """Maps [-1, 1] floats to uint8 [0, 255] (values outside are clipped)."""
  videos = np.asarray(videos, np.float32)
  return np.clip(np.round((videos + 1.0) * 127.5), 0, 255).astype(np.uint8)


def to_model_range(videos: np.ndarray) -> np.ndarray:
  """Maps uint8 [0, 255] to float32 [-1, 1]."""
  return np.asarray(videos, np.float32) / 127.5 - 1.0


def grid(videos: np.ndarray, columns: Optional[int] = None, pad: int = 1) -> np.ndarray:
  """Tiles N videos [N, T, H, W, C] into one video [T, H', W', 3] (uint8)."""
  videos = np.asarray(videos)
  if videos.dtype != np.uint8:
    videos = to_uint8(videos)
  if videos.shape[-1] == 1:
    videos = np.repeat(videos, 3, axis=-1)
  n, t, h, w, c = videos.shape
  columns = columns or int(math.ceil(math.sqrt(n)))
  rows = int(math.ceil(n / columns))
  out = np.full((t, rows * (h + pad) + pad, columns * (w + pad) + pad, c), 255, np.uint8)
  for i in range(n):
    r, col = divmod(i, columns)
    y, x = pad + r * (h + pad), pad + col * (w + pad)
    out[:, y:y + h, x:x + w] = videos[i]
  return out


def upscale(video: np.ndarray, factor: int) -> np.ndarray:
  """Nearest-neighbour enlargement of [T, H, W, C] so small videos stay visible."""
  return np.repeat(np.repeat(video, factor, axis=1), factor, axis=2) if factor > 1 else video


def save_gif(path: str, video: np.ndarray, fps: int = 8) -> str:
  """Writes a [T, H, W, 3] uint8 video as a looping GIF; returns the path."""
  import imageio.v3 as iio  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  iio.imwrite(path, video, extension='.gif', duration=int(1000 / fps), loop=0)
  return path


def save_mp4(path: str, video: np.ndarray, fps: int = 8) -> str:
  """Writes a [T, H, W, 3] uint8 video as H.264 mp4 (sides padded to even)."""
  import imageio.v3 as iio  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  t, h, w, c = video.shape
  video = np.pad(video, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode='edge')
  iio.imwrite(path, video, plugin='pyav', codec='libx264', fps=fps)
  return path


def read_video(path: str) -> np.ndarray:
  """Reads an mp4/GIF as uint8 [T, H, W, C], or an npz's 'videos'/first array.

  An npz may hold [N, T, H, W, C] (returned as is) or [T, H, W, C].
  """
  if path.endswith('.npz'):
    with np.load(path) as data:
      key = 'videos' if 'videos' in data else data.files[0]
      return np.asarray(data[key])
  import imageio.v3 as iio  # pylint: disable=g-import-not-at-top
  if path.endswith('.gif'):
    frames = np.asarray(iio.imread(path, index=None))
  else:
    frames = np.asarray(iio.imread(path, plugin='pyav'))
  if frames.ndim == 3:
    frames = frames[..., None]
  return frames[..., :3]


def read_images(path: str) -> np.ndarray:
  """Reads images (e.g. first frames) as [N, H, W, C], in the stored dtype.

  A PNG/JPEG is one image (grey gets C = 1; an alpha channel is dropped). An
  npz holds 'images' ([N, H, W, C] or [H, W, C]) or 'videos' (their first
  frames: [N, T, H, W, C] or [T, H, W, C]); otherwise its first array is read
  as images ([N, H, W, C] or [H, W, C]) or videos ([N, T, H, W, C]).

  Returns:
    An array [N, H, W, C], or the stored array unchanged when its rank fits
    none of these (the caller reports its shape).
  """
  if path.endswith('.npz'):
    with np.load(path) as data:
      key = next((k for k in ('images', 'videos') if k in data), data.files[0])
      array = np.asarray(data[key])
    if key == 'videos' and array.ndim == 4:
      array = array[None]  # One video [T, H, W, C].
    if array.ndim == 5:
      return array[:, 0]
    return array[None] if array.ndim == 3 else array
  import imageio.v3 as iio  # pylint: disable=g-import-not-at-top
  image = np.asarray(iio.imread(path))
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] in (2, 4):
    image = image[..., :-1]  # Alpha.
  return image[None]
