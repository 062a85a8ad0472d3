"""Moving digits: a small, real, offline video dataset bundled with the code.

Videos of handwritten digits bouncing inside a square frame, in
the spirit of Moving MNIST, but made from scikit-learn's bundled copy of the
UCI handwritten digits (1,797 real 8x8 scans, values 0..16), so that it can be
built on a machine without internet access.

Two layers:

* `generate(...)`: plain numpy (plus scikit-learn for the digit scans). It does
  not import TensorFlow or TFDS, so machines without them (the accelerator
  machines) can still produce exactly the same videos in memory.
* `get_builder_cls()` / `prepare(...)`: a TFDS `GeneratorBasedBuilder` named
  `moving_digits` (configs `moving_digits/32` and `moving_digits/64`: one to
  three digits per video, the label being the first one's class;
  `moving_digits/single_32` and `moving_digits/single_64`: exactly one digit,
  so the label is the class of every frame's only digit;
  `moving_digits/captions_32` and `moving_digits/captions_64`: one digit
  moving in a straight line, never touching a wall, with a caption such as
  "a seven moving up and to the left, slowly", see vdm.data.digit_captions) that
  writes the generator's output in the array_record format, so the input
  pipeline can read it with random access through `tfds.data_source`. TFDS is
  imported only inside these functions.

Train and test videos are made from disjoint source scans: the first 1,437
scans (80%) feed the train split, the last 360 the test split, so the test
handwriting is unseen during training. The split is contiguous rather than
random so that neighbouring scans of the file (which may come from the same
writer) do not straddle it.
"""

from __future__ import annotations

import functools
from typing import Any, Dict, Optional

import numpy as np

from vdm.data import bundled
from vdm.data import digit_captions

# The UCI digits file holds 1,797 scans; the first 1,437 (80%) are the train
# pool, the rest the test pool (per-class counts are balanced in both).
NUM_SOURCE_DIGITS = 1797
NUM_TRAIN_SOURCES = 1437
MAX_DIGITS = 3

DEFAULT_NUM_FRAMES = 20
DEFAULT_NUM_TRAIN = 4000
DEFAULT_NUM_TEST = 512
RESOLUTIONS = (32, 64)
VERSION = '1.0.0'
# TFDS config name -> (resolution, most digits per video).
CONFIGS = {'32': (32, MAX_DIGITS), '64': (64, MAX_DIGITS),
           'single_32': (32, 1), 'single_64': (64, 1),
           'captions_32': (32, 1), 'captions_64': (64, 1)}
# Configs whose videos have captions (one digit on a straight path). Their
# videos are 10 frames, the clip length of the configs that train on them, so
# "quickly" (crossing the frame in one video) is about a pixel per frame at
# 16x16, motion a model learns within `make train`'s steps.
CAPTIONED = ('captions_32', 'captions_64')
CAPTIONED_NUM_FRAMES = 10

_SPLIT_CODES = {'train': 0, 'test': 1}
SPLITS = tuple(_SPLIT_CODES)
CLASS_FEATURES = {'label': 10}  # Feature -> number of classes.


def source_indices(split: str) -> np.ndarray:
  """Indices into `sklearn.datasets.load_digits()` used by a split.

  Args:
    split: 'train' or 'test'.

  Returns:
    int64 [n] sorted indices; train and test are disjoint.
  """
  if split == 'train':
    return np.arange(NUM_TRAIN_SOURCES)
  if split == 'test':
    return np.arange(NUM_TRAIN_SOURCES, NUM_SOURCE_DIGITS)
  raise ValueError(f"moving_digits split must be 'train' or 'test', got {split!r}")


def digit_size(image_size: int) -> int:
  """Side of an upsampled digit: 14 px in a 32 px frame, scaled linearly."""
  return max(4, int(round(image_size * 14 / 32)))


def _interp_matrix(in_size: int, out_size: int) -> np.ndarray:
  """Bilinear resampling matrix from a zero-padded `in_size` grid.

  The source gets one zero pixel on each side, so a digit fades smoothly to
  black at its border instead of being cut off at a bright pixel.

  Args:
    in_size: number of source pixels (8).
    out_size: number of output pixels.

  Returns:
    float64 [out_size, in_size + 2] such that `M @ padded @ M.T` resamples.
  """
  # Output pixel centres in source pixel coordinates (centres at 0..in-1),
  # shifted by one for the zero border.
  u = (np.arange(out_size) + 0.5) * in_size / out_size - 0.5 + 1.0
  lo = np.floor(u).astype(int)
  frac = u - lo
  m = np.zeros((out_size, in_size + 2))
  m[np.arange(out_size), lo] += 1.0 - frac
  m[np.arange(out_size), lo + 1] += frac
  return m


@functools.lru_cache(maxsize=None)
def _load_scans():
  """The 1,797 real digit scans as float [N, 8, 8] in 0..16, and classes."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  d = load_digits()
  return d.images.astype(np.float64), d.target.astype(np.int32)


@functools.lru_cache(maxsize=None)
def _upsampled_digits(size: int):
  """All scans upsampled to `size` x `size` uint8 (0..255) and their classes.

  Returns:
    (uint8 [1797, size, size], int32 [1797]).
  """
  scans, classes = _load_scans()
  padded = np.pad(scans, ((0, 0), (1, 1), (1, 1)))  # [N, 10, 10]
  m = _interp_matrix(8, size)  # [size, 10]
  up = np.einsum('ij,njk,lk->nil', m, padded, m)  # [N, size, size]
  up = np.clip(np.round(up * (255.0 / 16.0)), 0, 255).astype(np.uint8)
  up.setflags(write=False)
  return up, classes


def _fold(p: np.ndarray, limit: float) -> np.ndarray:
  """Reflects free positions into [0, limit]: a ball bouncing off two walls."""
  if limit <= 0:
    return np.zeros_like(p)
  period = 2.0 * limit
  return limit - np.abs(np.mod(p, period) - limit)


def _make_video(rng: np.random.Generator, pool: np.ndarray,
                digits_img: np.ndarray, classes: np.ndarray, num_frames: int,
                image_size: int, max_digits: int, split: str, captioned: bool):
  """One video.

  Returns:
    (uint8 [T, H, W], int32 [3] classes, int32 [3] sources, and for a
    captioned video its digit_captions.Motion, else None).
  """
  size = digits_img.shape[-1]
  limit = float(image_size - size)
  motion = None
  if captioned:
    src = rng.choice(pool, size=1)
    motion = digit_captions.Motion(int(classes[src[0]]),
                                   *digit_captions.draw_motion(rng, int(classes[src[0]]), split))
    pos = digit_captions.straight_path(rng, motion.direction, motion.speed, num_frames,
                                       limit, image_size)[None]  # [1, T, 2]
    n = 1
  else:
    n = int(rng.integers(1, max_digits + 1))
    src = rng.choice(pool, size=n, replace=False)
    start = rng.uniform(0.0, limit, size=(n, 2))  # [n, (y, x)]
    # Each digit gets its own speed and direction; the speed scales with the
    # frame so that motion looks the same at 32 and 64 px.
    speed = rng.uniform(1.0, 2.5, size=n) * image_size / 32.0
    angle = rng.uniform(0.0, 2.0 * np.pi, size=n)
    vel = np.stack([np.sin(angle), np.cos(angle)], axis=-1) * speed[:, None]
    t = np.arange(num_frames, dtype=np.float64)
    pos = start[:, None, :] + vel[:, None, :] * t[None, :, None]  # [n, T, 2]
    pos = np.round(_fold(pos, limit)).astype(np.int64)
  frames = np.zeros((num_frames, image_size, image_size), np.uint8)
  for k in range(n):
    img = digits_img[src[k]]
    for f in range(num_frames):
      y, x = pos[k, f]
      # Overlapping digits are composited with max so none hides another.
      np.maximum(frames[f, y:y + size, x:x + size], img,
                 out=frames[f, y:y + size, x:x + size])
  digit_cls = np.full((MAX_DIGITS,), -1, np.int32)
  digit_cls[:n] = classes[src]
  sources = np.full((MAX_DIGITS,), -1, np.int32)
  sources[:n] = src
  return frames, digit_cls, sources, motion


def generate(split: str, num_videos: int, num_frames: int = DEFAULT_NUM_FRAMES,
             image_size: int = 32, seed: int = 0, start: int = 0,
             max_digits: int = MAX_DIGITS, captions: bool = False) -> Dict[str, np.ndarray]:
  """Generates moving digits videos with plain numpy.

  Video `i` depends only on (split, seed, i, num_frames, image_size,
  max_digits), so any range of videos can be generated on its own (`start`)
  and matches the same rows of a larger call.

  Args:
    split: 'train' or 'test' (they use disjoint source scans).
    num_videos: number of videos N.
    num_frames: frames per video T.
    image_size: frame side H = W (>= 8).
    seed: non-negative integer seed.
    start: index of the first video.
    max_digits: each video has 1..max_digits digits (uniformly); 1: exactly one.
    captions: one digit on a straight path that never touches a wall, with
      a caption (vdm.data.digit_captions); max_digits is then ignored.

  Returns:
    dict with
      video: uint8 [N, T, H, W, 1], values 0..255.
      label: int32 [N], class (0..9) of the first digit.
      digits: int32 [N, 3], classes of the digits, padded with -1.
      sources: int32 [N, 3], indices into `sklearn.datasets.load_digits()` of
        the scans used, padded with -1 (for checks; not in the TFDS dataset).
      with captions, also
      caption: object [N] of UTF-8 bytes (as TFDS returns a Text feature).
      direction, speed: int32 [N], indices of digit_captions.DIRECTIONS and
        SPEEDS (for checks; not in the TFDS dataset).
  """
  if split not in _SPLIT_CODES:
    raise ValueError(f"moving_digits split must be 'train' or 'test', got {split!r}")
  if image_size < 8:
    raise ValueError(f'moving_digits image_size must be >= 8, got {image_size}')
  if seed < 0 or start < 0 or num_videos < 0:
    raise ValueError('seed, start and num_videos must be non-negative')
  if not 1 <= max_digits <= MAX_DIGITS:
    raise ValueError(f'moving_digits max_digits must be 1..{MAX_DIGITS}, got {max_digits}')
  digits_img, classes = _upsampled_digits(digit_size(image_size))
  pool = source_indices(split)
  video = np.zeros((num_videos, num_frames, image_size, image_size, 1), np.uint8)
  digits = np.zeros((num_videos, MAX_DIGITS), np.int32)
  sources = np.zeros((num_videos, MAX_DIGITS), np.int32)
  motions = []
  for j in range(num_videos):
    # A generator per video keyed by its index makes videos independent of
    # num_videos and of chunking. The split code keeps train and test streams
    # apart even for the same seed.
    rng = np.random.default_rng([_SPLIT_CODES[split], seed, start + j])
    frames, digits[j], sources[j], motion = _make_video(
        rng, pool, digits_img, classes, num_frames, image_size, max_digits, split,
        captions)
    video[j, ..., 0] = frames
    motions.append(motion)
  out = dict(video=video, label=digits[:, 0].copy(), digits=digits, sources=sources)
  if captions:
    out['caption'] = np.array([digit_captions.caption(m).encode() for m in motions],
                              dtype=object)
    out['direction'] = np.array([m.direction for m in motions], np.int32)
    out['speed'] = np.array([m.speed for m in motions], np.int32)
  return out


# ----------------------------------------------------------------------------
# TFDS builder (TFDS imported lazily).
# ----------------------------------------------------------------------------

@functools.cache
def get_builder_cls():
  """Returns the `MovingDigits` TFDS builder class (defined on first call).

  The class is created lazily so that importing this module never imports
  TensorFlow or TFDS; it is cached because TFDS registers builder names
  globally and refuses a second class with the same name.

  Features (decodable with numpy, no TensorFlow needed):
    video: `tfds.features.Tensor(shape=(T, H, W, 1), dtype=uint8,
      encoding='zlib')`, a zlib-compressed raw tensor rather than
      `tfds.features.Video` (one PNG per frame). Measured on 2 CPU cores for
      the default 32 px build: 3.7 s to build vs 20 s, 6.5 MB vs 25 MB on
      disk, 0.2 ms vs 2.2 ms to read a video; and TFDS cannot even
      construct a Video feature without TensorFlow, while this one is built
      and read with TFDS and numpy alone.
    label: `ClassLabel(num_classes=10)`, class of the first digit.
    digits: `Tensor(shape=(3,), dtype=int32)`, classes of the digits, -1 pad.
    caption: `Text()`, only in the captioned configs (CAPTIONED).

  Returns:
    The builder class, a `tfds.core.GeneratorBasedBuilder` subclass.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class MovingDigits(tfds.core.GeneratorBasedBuilder):
    """Handwritten digits (scikit-learn's UCI scans) bouncing in a frame."""

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {str(VERSION): 'First release.'}
    BUILDER_CONFIGS = [
        bundled.builder_config(
            n, f'{res}x{res} frames, ' + ('one digit' if most == 1 else f'1 to {most} digits')
            + ' per video.', resolution=res, max_digits=most)
        for n, (res, most) in CONFIGS.items()]
    DEFAULT_CONFIG_NAME = '32'

    def __init__(self, *, num_train: int = DEFAULT_NUM_TRAIN,
                 num_test: int = DEFAULT_NUM_TEST,
                 num_frames: Optional[int] = None, seed: int = 0,
                 **kwargs):
      # Sizes are builder arguments rather than configs so that tests can
      # build a small 'moving_digits/32' under the same name. They only
      # matter when building: a prepared dataset's own dataset_info.json
      # describes what is on disk.
      self._num_train = num_train
      self._num_test = num_test
      self._num_frames = num_frames
      self._seed = seed
      super().__init__(**kwargs)

    code_path = bundled.code_path_property(__file__)

    def _info(self):
      res = self.builder_config.resolution
      if self._num_frames is None:
        self._num_frames = default_num_frames(self.builder_config.name)
      shape = (self._num_frames, res, res, 1)
      features = {
          'video': tfds.features.Tensor(shape=shape, dtype=np.uint8, encoding='zlib'),
          'label': tfds.features.ClassLabel(num_classes=10),  # The first digit's.
          'digits': tfds.features.Tensor(shape=(MAX_DIGITS,), dtype=np.int32),
      }
      if self.builder_config.name in CAPTIONED:
        features['caption'] = tfds.features.Text()
      return self.dataset_info_from_configs(
          description=(
              'Real handwritten digits (scikit-learn UCI 8x8 scans, smoothly '
              'upsampled) bouncing off the walls with their own velocities, '
              'composited with max; ' + self.builder_config.description +
              ' Train and test use disjoint scans.'),
          features=tfds.features.FeaturesDict(features),
          supervised_keys=('video', 'label'),
          # Keep generator order so that `data_source[i]` is video i of
          # `generate`: the numpy fallback then yields identical batches.
          disable_shuffling=True,
      )

    def _split_generators(self, dl_manager):
      del dl_manager  # Nothing to download.
      return {
          'train': self._generate_examples('train', self._num_train),
          'test': self._generate_examples('test', self._num_test),
      }

    def _generate_examples(self, split, num_videos):
      res, max_digits = self.builder_config.resolution, self.builder_config.max_digits
      captions = self.builder_config.name in CAPTIONED
      chunk = 256  # Bounds memory at 64 px (a chunk is ~21 MB there).
      for start in range(0, num_videos, chunk):
        n = min(chunk, num_videos - start)
        out = generate(split, n, self._num_frames, res, self._seed,
                       start=start, max_digits=max_digits, captions=captions)
        for j in range(n):
          example = {'video': out['video'][j], 'label': int(out['label'][j]),
                     'digits': out['digits'][j]}
          if captions:
            example['caption'] = out['caption'][j].decode()
          yield start + j, example

  return MovingDigits


def default_num_frames(config: str) -> int:
  """Frames per video of a default build of ``config``."""
  return CAPTIONED_NUM_FRAMES if config in CAPTIONED else DEFAULT_NUM_FRAMES


def parse_name(name: str) -> str:
  """The config of a 'moving_digits[/CONFIG][:VERSION]' dataset name.

  Args:
    name: e.g. 'moving_digits', 'moving_digits/64', 'moving_digits/single_32:1.0.0'.

  Returns:
    The config name, a key of CONFIGS ('32' when none is named).
  """
  if bundled.base_name(name) != 'moving_digits':
    raise ValueError(f'Not a moving_digits dataset name: {name!r}')
  return bundled.parse_config(name, CONFIGS, '32')


@functools.lru_cache(maxsize=4)
def in_memory(config: str, split: str) -> Dict[str, np.ndarray]:
  """A default build's `split` generated in memory (numpy only, no TFDS)."""
  resolution, max_digits = CONFIGS[config]
  n = DEFAULT_NUM_TRAIN if split == 'train' else DEFAULT_NUM_TEST
  out = generate(split, n, default_num_frames(config), resolution, seed=0,
                 max_digits=max_digits, captions=config in CAPTIONED)
  return {k: out[k] for k in ('video', 'label', 'digits', 'caption') if k in out}


def single_digit(name: str) -> bool:
  """Whether a dataset name is moving digits with one digit per video.

  Only then is a video's label the class of every frame's only digit, which
  the digit classifier (vdm.evaluation.digits) can check.
  """
  try:
    return CONFIGS[parse_name(name)][1] == 1
  except ValueError:
    return False


def prepare(data_dir: Optional[str], config: Any = '32', *,
            num_train: Optional[int] = None, num_test: Optional[int] = None,
            num_frames: Optional[int] = None, seed: int = 0,
            verbose: bool = True) -> Any:
  """Builds moving digits into `data_dir` once (offline) and returns a builder.

  A second call finds the build and does no work. Sizes left as None accept
  whatever is already built (or use the defaults when building); sizes given
  explicitly must match an existing build.

  Several processes sharing one filesystem should not build at the same time:
  call this once before a multi-host launch (TFDS writes into a temporary
  directory and renames it, so a finished build is never seen half-written).

  Args:
    data_dir: TFDS data directory (created if missing); None or '' means the
      TFDS default ($TFDS_DATA_DIR or ~/tensorflow_datasets).
    config: a key of CONFIGS ('moving_digits/<config>'), or a resolution (an
      int of RESOLUTIONS: the 1-3 digit config of that size).
    num_train: train videos (default 4000).
    num_test: test videos (default 512).
    num_frames: frames per video (default 20; captioned configs 10).
    seed: generator seed (used only when building).
    verbose: print where the dataset went after building it.

  Returns:
    A prepared `tfds.core.DatasetBuilder` (array_record files when built
    here; an existing build in another format is returned as it is); use
    `builder.as_data_source(split)` or
    `tfds.data_source('moving_digits/<res>', data_dir=data_dir)`.
  """
  config = str(config)
  if config not in CONFIGS:
    raise ValueError(f'moving_digits config must be one of {sorted(CONFIGS)} (or a '
                     f'resolution of {RESOLUTIONS}), got {config!r}')
  return bundled.prepare_sized(
      'moving_digits', config, VERSION, data_dir, get_builder_cls,
      dict(num_train=num_train, num_test=num_test, num_frames=num_frames),
      dict(num_train=DEFAULT_NUM_TRAIN, num_test=DEFAULT_NUM_TEST,
           num_frames=default_num_frames(config)), seed, verbose)
