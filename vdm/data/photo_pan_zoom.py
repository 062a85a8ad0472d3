"""Photo pan/zoom: natural RGB pseudo-videos from real photographs, offline.

VidRD (docs/vidrd.md) turns image datasets into videos by random
zooming and panning. This dataset does the same with the real photographs
that scikit-image installs with itself (an astronaut, a cat, coffee, a
rocket, a motorcycle, the Hubble deep field, a retina, coins, grass, the
moon, ...), so it builds on a machine without internet access.

A video is a square window moving over one photograph along a random smooth
camera path: its centre moves at constant velocity (a pan of up to half the
window's side over the clip) while its side changes geometrically (a zoom in
or out by up to 1.6x), so the apparent motion is smooth and its speed is
constant in log-scale. Each frame is the window resampled to R x R with PIL's
antialiased bilinear filter at sub-pixel precision (the window's corners are
not rounded to pixels), so slow pans move the picture by fractions of a
pixel and do not judder. Grayscale photographs are repeated to three
channels.

Train and test use disjoint photographs: four of the nineteen (a cat, a
rocket, coins, grass: two colour and two grayscale) are held out for the test
split. The two views of the stereo motorcycle pair are both in train.

Like `vdm.data.moving_digits`, two layers: `generate` is numpy + PIL only
(the accelerator machines can make the same videos in memory), and
`get_builder_cls` / `prepare` write them as a TFDS dataset in the array_record
format (configs 'photo_pan_zoom/32' and 'photo_pan_zoom/64').
"""

from __future__ import annotations

import functools
import os
from typing import Any, Dict, Optional

import numpy as np

from vdm.data import bundled

VERSION = '1.0.0'
DEFAULT_NUM_FRAMES = 16
DEFAULT_NUM_TRAIN = 2000
DEFAULT_NUM_TEST = 256
CONFIGS = {'32': 32, '64': 64}  # Config name -> frame side R.
CLASS_FEATURES: Dict[str, int] = {}  # No class labels.

# scikit-image's bundled photographs (files in skimage/data). Synthetic images
# (checkerboards, the colour wheel, the phantom, logos, the horse silhouette)
# are left out, and so is the 102 px microaneurysms crop.
TRAIN_PHOTOS = ('astronaut.png', 'coffee.png', 'hubble_deep_field.jpg',
                'ihc.png', 'motorcycle_left.png', 'motorcycle_right.png',
                'retina.jpg', 'brick.png', 'camera.png', 'cell.png',
                'clock_motion.png', 'gravel.png', 'moon.png', 'page.png',
                'text.png')
TEST_PHOTOS = ('chelsea.png', 'rocket.jpg', 'coins.png', 'grass.png')

# Camera path ranges, as fractions of the photograph's shorter side.
_MIN_SIDE, _MAX_SIDE = 0.25, 0.9  # Window side.
_START_SIDE = (0.3, 0.9)  # Log-uniform range of the first window's side.
_MAX_ZOOM = 1.6  # Last side / first side in [1 / 1.6, 1.6].
_MAX_PAN = 0.5  # Centre displacement over the clip, in window sides.

_SPLIT_CODES = {'train': 0, 'test': 1}
SPLITS = tuple(_SPLIT_CODES)


def photo_names(split: str):
  """The photographs (file names in skimage/data) a split uses."""
  if split == 'train':
    return TRAIN_PHOTOS
  if split == 'test':
    return TEST_PHOTOS
  raise ValueError(f"photo_pan_zoom split must be 'train' or 'test', got {split!r}")


@functools.lru_cache(maxsize=None)
def _photo(file_name: str):
  """One photograph as an RGB PIL image."""
  import skimage.data  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(skimage.data.__file__), file_name)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'{path} is missing: photo_pan_zoom needs the photographs that '
        'scikit-image installs with itself (pip install scikit-image).')
  img = Image.open(path)
  img.load()
  return img.convert('RGB')


def camera_path(rng: np.random.Generator, height: int, width: int,
                num_frames: int) -> np.ndarray:
  """A random smooth camera path over a `height` x `width` photograph.

  The window's side is s_0 (s_1 / s_0)^a and its centre c_0 + a (c_1 - c_0),
  a = k / (T - 1) for frame k. Both end windows lie inside the photograph,
  and then so does every window between them: the left edge c - s / 2 is
  concave in a and the right edge c + s / 2 convex, so both are extreme at
  the ends.

  Args:
    rng: the video's random generator.
    height: photograph height in pixels.
    width: photograph width in pixels.
    num_frames: T.

  Returns:
    float64 [T, 4]: each frame's window (x0, y0, x1, y1) in pixel coordinates
    (edges of the photograph at 0 and width/height), x1 - x0 = y1 - y0.
  """
  m = min(height, width)
  s0 = m * np.exp(rng.uniform(*np.log(_START_SIDE)))
  s1 = np.clip(s0 * np.exp(rng.uniform(-np.log(_MAX_ZOOM), np.log(_MAX_ZOOM))),
               _MIN_SIDE * m, _MAX_SIDE * m)
  theta = rng.uniform(0.0, 2.0 * np.pi)
  dist = rng.uniform(0.0, _MAX_PAN) * 0.5 * (s0 + s1)
  d = dist * np.array([np.cos(theta), np.sin(theta)])  # [2] (x, y)
  size = np.array([width, height], np.float64)
  half = max(s0, s1) / 2
  # Both windows fit iff c0 and c0 + d lie in [half, size - half] per axis;
  # shorten the pan where the photograph is too narrow for it.
  room = size - 2 * half
  d = d * min(1.0, *(room / np.maximum(np.abs(d), 1e-9)))
  lo = half + np.maximum(0.0, -d)
  hi = size - half - np.maximum(0.0, d)
  c0 = lo + rng.random(2) * (hi - lo)  # [2]
  a = np.linspace(0.0, 1.0, num_frames)[:, None]  # [T, 1]
  side = s0 * (s1 / s0) ** a  # [T, 1]
  centre = c0 + a * d  # [T, 2]
  return np.concatenate([centre - side / 2, centre + side / 2], axis=1)


def render(photo, windows: np.ndarray, size: int) -> np.ndarray:
  """The windows of a photograph resampled to `size` x `size`.

  Args:
    photo: RGB PIL image.
    windows: float [T, 4] (x0, y0, x1, y1), sub-pixel.
    size: output side R.

  Returns:
    uint8 [T, R, R, 3].
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  # Rounding can put an edge a hair outside the photograph, which PIL refuses.
  limits = np.array([photo.width, photo.height] * 2, np.float64)
  windows = np.clip(windows, 0.0, limits)  # [T, 4]
  return np.stack([
      np.asarray(photo.resize((size, size), Image.Resampling.BILINEAR,
                              box=tuple(float(v) for v in w)))
      for w in windows])


def generate(split: str, num_videos: int, num_frames: int = DEFAULT_NUM_FRAMES,
             image_size: int = 32, seed: int = 0, start: int = 0
             ) -> Dict[str, np.ndarray]:
  """Generates photo pan/zoom videos with numpy and PIL.

  Video `i` depends only on (split, seed, i, num_frames, image_size), so any
  range of videos can be generated on its own (`start`) and matches the same
  rows of a larger call.

  Args:
    split: 'train' or 'test' (disjoint photographs).
    num_videos: number of videos N.
    num_frames: frames per video T (>= 2).
    image_size: frame side R (>= 8).
    seed: non-negative integer seed.
    start: index of the first video.

  Returns:
    dict with
      video: uint8 [N, T, R, R, 3].
      photo: int32 [N], index of the photograph in `photo_names(split)`.
      window: float32 [N, T, 4], each frame's window (x0, y0, x1, y1) in the
        photograph's pixels (for checks; not in the TFDS dataset).
  """
  names = photo_names(split)
  if image_size < 8:
    raise ValueError(f'photo_pan_zoom image_size must be >= 8, got {image_size}')
  if num_frames < 2:
    raise ValueError(f'photo_pan_zoom num_frames must be >= 2, got {num_frames}')
  if seed < 0 or start < 0 or num_videos < 0:
    raise ValueError('seed, start and num_videos must be non-negative')
  video = np.zeros((num_videos, num_frames, image_size, image_size, 3), np.uint8)
  photo = np.zeros((num_videos,), np.int32)
  window = np.zeros((num_videos, num_frames, 4), np.float32)
  for j in range(num_videos):
    # One generator per video, keyed by its index: videos do not depend on
    # num_videos or chunking, and the split code keeps the splits apart.
    rng = np.random.default_rng([_SPLIT_CODES[split], seed, start + j])
    photo[j] = rng.integers(len(names))
    img = _photo(names[photo[j]])
    w = camera_path(rng, img.height, img.width, num_frames)
    window[j] = w
    video[j] = render(img, w, image_size)
  return dict(video=video, photo=photo, window=window)


def parse_name(name: str) -> str:
  """The config of a 'photo_pan_zoom[/RES][:VERSION]' name ('32' by default)."""
  return bundled.parse_config(name, CONFIGS, '32')


@functools.lru_cache(maxsize=4)
def in_memory(config: str, split: str) -> Dict[str, np.ndarray]:
  """A default build's `split` generated in memory (numpy + PIL, no TFDS)."""
  n = DEFAULT_NUM_TRAIN if split == 'train' else DEFAULT_NUM_TEST
  out = generate(split, n, DEFAULT_NUM_FRAMES, CONFIGS[config], seed=0)
  return {k: out[k] for k in ('video', 'photo')}


# ----------------------------------------------------------------------------
# TFDS builder (TFDS imported lazily).
# ----------------------------------------------------------------------------

@functools.cache
def get_builder_cls():
  """Returns the `PhotoPanZoom` TFDS builder class (defined on first call).

  Features (numpy-decodable, no TensorFlow needed to build or read):
    video: `Tensor(shape=(T, R, R, 3), dtype=uint8, encoding='zlib')`.
    photo: `Tensor(shape=(), dtype=int32)`, index of the photograph in
      `photo_names(split)`.

  Returns:
    The builder class, a `tfds.core.GeneratorBasedBuilder` subclass.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class PhotoPanZoom(tfds.core.GeneratorBasedBuilder):
    """Random pans and zooms over scikit-image's real photographs."""

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {str(VERSION): 'First release.'}
    BUILDER_CONFIGS = [bundled.builder_config(n, f'{r}x{r} RGB frames.', resolution=r)
                       for n, r in CONFIGS.items()]
    DEFAULT_CONFIG_NAME = '32'
    code_path = bundled.code_path_property(__file__)

    def __init__(self, *, num_train: int = DEFAULT_NUM_TRAIN,
                 num_test: int = DEFAULT_NUM_TEST,
                 num_frames: int = DEFAULT_NUM_FRAMES, seed: int = 0,
                 **kwargs):
      # Sizes are builder arguments (not configs) so that tests can build a
      # small dataset under the same name.
      self._num_train, self._num_test = num_train, num_test
      self._num_frames, self._seed = num_frames, seed
      super().__init__(**kwargs)

    def _info(self):
      res = self.builder_config.resolution
      return self.dataset_info_from_configs(
          description=(
              'Pseudo-videos: a square window moving along a random smooth '
              'camera path (constant-velocity pan, geometric zoom) over real '
              "photographs bundled with scikit-image; train and test use "
              'disjoint photographs. ' + self.builder_config.description),
          features=tfds.features.FeaturesDict({
              'video': tfds.features.Tensor(
                  shape=(self._num_frames, res, res, 3), dtype=np.uint8,
                  encoding='zlib'),
              'photo': tfds.features.Tensor(shape=(), dtype=np.int32),
          }),
          # Generator order, so that data_source[i] is video i of generate.
          disable_shuffling=True,
      )

    def _split_generators(self, dl_manager):
      del dl_manager  # Nothing to download.
      return {'train': self._generate_examples('train', self._num_train),
              'test': self._generate_examples('test', self._num_test)}

    def _generate_examples(self, split, num_videos):
      res = self.builder_config.resolution
      chunk = 128  # A 64 px chunk is 25 MB.
      for start in range(0, num_videos, chunk):
        n = min(chunk, num_videos - start)
        out = generate(split, n, self._num_frames, res, self._seed, start=start)
        for j in range(n):
          yield start + j, {'video': out['video'][j],
                            'photo': int(out['photo'][j])}

  return PhotoPanZoom


def prepare(data_dir: Optional[str], config: Any = '32', *,
            num_train: Optional[int] = None, num_test: Optional[int] = None,
            num_frames: Optional[int] = None, seed: int = 0,
            verbose: bool = True) -> Any:
  """Builds photo_pan_zoom/<config> into `data_dir` once and returns a builder.

  Sizes left as None accept whatever is already built (defaults when
  building); sizes given must match an existing build.

  Args:
    data_dir: TFDS data directory; None or '' means the TFDS default.
    config: '32' or '64' (or the int).
    num_train: train videos (default 2000).
    num_test: test videos (default 256).
    num_frames: frames per video (default 16).
    seed: generator seed (used only when building).
    verbose: print where the dataset went after building it.

  Returns:
    A prepared `tfds.core.DatasetBuilder`.
  """
  config = str(config)
  if config not in CONFIGS:
    raise ValueError(f'photo_pan_zoom config must be one of {sorted(CONFIGS)}, '
                     f'got {config!r}')
  return bundled.prepare_sized(
      'photo_pan_zoom', config, VERSION, data_dir, get_builder_cls,
      dict(num_train=num_train, num_test=num_test, num_frames=num_frames),
      dict(num_train=DEFAULT_NUM_TRAIN, num_test=DEFAULT_NUM_TEST,
           num_frames=DEFAULT_NUM_FRAMES), seed, verbose)
