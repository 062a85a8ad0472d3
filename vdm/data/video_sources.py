"""Where prepare.py reads videos from: a folder of video files, or a TFDS dataset.

A source lists its videos per split up front (cheap: names and counts, no
decoding) and reads any index range of a split, yielding ``SourceVideo``s, or
``Skipped`` for a video that cannot be used (the reason, never an exception),
so that one bad file never stops a preparation. Sources pickle: the worker
processes of vdm.data.prepare_lib each read their own ranges.

* ``FolderSource``: video files (mp4, webm, avi, mov, mkv, gif) and frame
  folders (a folder of PNG/JPEG frames is one video, its frames in name
  order), found recursively. Labels, when asked, are the name of the folder
  a video sits in under the split root (like an image-folder dataset);
  captions come from a sidecar CSV or JSONL file of (path, caption); splits
  are top-level 'train'/'test'/'validation' folders, or a seeded fraction of
  the videos.
* ``TfdsSource``: any prepared TFDS video dataset by name (ucf101,
  bair_robot_pushing_small, moving_mnist, ...), with its own video, label and
  caption keys and splits, in any file format, including datasets whose
  top-level feature is a Sequence of per-frame dicts (bair).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import json
import os
from typing import Dict, Iterator, List, Optional, Sequence, Union

import numpy as np

VIDEO_EXTENSIONS = ('.mp4', '.webm', '.avi', '.mov', '.mkv', '.m4v', '.gif')
FRAME_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp')
SPLIT_FOLDERS = ('train', 'test', 'validation')


@dataclasses.dataclass
class SourceVideo:
  """One decoded source video."""
  origin: str  # Where it came from: a relative path, or 'split[index]'.
  frames: np.ndarray  # uint8 [T0, H0, W0, C0]
  label: Optional[int] = None
  caption: Optional[str] = None


@dataclasses.dataclass
class Skipped:
  """A source video that was not used, and why."""
  origin: str
  reason: str


Read = Union[SourceVideo, Skipped]


def read_video_file(path: str) -> np.ndarray:
  """Decodes a video file or a frame folder: uint8 [T, H, W, C] (C = 1 or 3).

  Raises:
    Exception: whatever the decoder raises for a file it cannot read.
  """
  import imageio.v3 as iio  # pylint: disable=g-import-not-at-top
  if os.path.isdir(path):
    names = sorted(n for n in os.listdir(path) if n.lower().endswith(FRAME_EXTENSIONS))
    frames = [np.asarray(iio.imread(os.path.join(path, n))) for n in names]
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
      raise ValueError(f'its frames differ in size: {sorted(shapes)}')
    frames = np.stack(frames)
  elif path.lower().endswith('.gif'):
    frames = np.asarray(iio.imread(path, index=None))
  else:
    # PyAV directly: imageio's pyav plugin runs a full garbage collection at
    # every close, a quarter second each in a large process.
    import av  # pylint: disable=g-import-not-at-top
    with av.open(path) as container:
      stream = container.streams.video[0]
      stream.thread_type = 'AUTO'
      frames = np.stack([f.to_ndarray(format='rgb24') for f in container.decode(stream)])
  if frames.ndim == 3:  # Grey frames without a channel axis.
    frames = frames[..., None]
  if frames.ndim != 4 or frames.shape[0] == 0:
    raise ValueError(f'decoded to shape {frames.shape}, not frames [T, H, W, C]')
  if frames.shape[-1] in (2, 4):
    frames = frames[..., :-1]  # Alpha.
  return frames.astype(np.uint8, copy=False)


def _is_frame_folder(path: str) -> bool:
  entries = os.listdir(path)
  return bool(entries) and all(e.lower().endswith(FRAME_EXTENSIONS) and
                               os.path.isfile(os.path.join(path, e)) for e in entries)


def list_videos(root: str) -> List[str]:
  """The videos under `root`, as sorted paths relative to it (frame folders included)."""
  found = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    rel = os.path.relpath(dirpath, root)
    if rel != '.' and _is_frame_folder(dirpath):
      found.append(rel)
      dirnames[:] = []
      continue
    found += [os.path.normpath(os.path.join(rel, f)) for f in sorted(filenames)
              if f.lower().endswith(VIDEO_EXTENSIONS)]
  return sorted(found)


def read_captions(path: str) -> Dict[str, str]:
  """A sidecar caption file: CSV (columns path, caption; a header row is optional)
  or JSONL ({"path": ..., "caption": ...} per line). Paths are relative to the
  video folder."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'caption file {path!r} does not exist (--captions).')
  out = {}
  with open(path, newline='', encoding='utf-8') as f:
    if path.lower().endswith(('.jsonl', '.json')):
      for n, line in enumerate(f, 1):
        if line.strip():
          row = json.loads(line)
          if 'path' not in row or 'caption' not in row:
            raise ValueError(f'{path}:{n}: expected {{"path": ..., "caption": ...}}, got {line.strip()!r}')
          out[os.path.normpath(row['path'])] = str(row['caption'])
    else:
      for n, row in enumerate(csv.reader(f), 1):
        if not row or (n == 1 and [c.strip().lower() for c in row[:2]] == ['path', 'caption']):
          continue
        if len(row) != 2:
          raise ValueError(f'{path}:{n}: expected two columns (path, caption), got {row!r}')
        out[os.path.normpath(row[0].strip())] = row[1].strip()
  return out


def _test_share(paths: Sequence[str], fraction: float, seed: int) -> set:
  """The round(fraction * n) videos (at least one when fraction > 0 and n > 1)
  with the smallest seeded hash of their path: stable when files are added."""
  if fraction <= 0 or len(paths) < 2:
    return set()
  n = min(len(paths) - 1, max(1, round(fraction * len(paths))))
  key = lambda p: hashlib.sha1(f'{seed}:{p}'.encode()).hexdigest()
  return set(sorted(paths, key=key)[:n])


@dataclasses.dataclass
class FolderSource:
  """A folder of videos; see the module docstring.

  Build with `FolderSource.scan`, which checks the folder and the captions.
  """
  root: str
  items: Dict[str, List[str]]  # split -> relative paths
  label_names: Optional[List[str]]  # None: no labels.
  labels: Optional[Dict[str, int]]  # path -> label; None: no labels.
  captions: Optional[Dict[str, str]]  # path -> caption; None: no captions.
  uncaptioned_rows: List[str] = dataclasses.field(default_factory=list)  # Caption paths, no video.

  @classmethod
  def scan(cls, root: str, *, labels: bool = False, captions: str = '',
           test_fraction: float = 0.1, seed: int = 0) -> 'FolderSource':
    """Lists `root` (see the module docstring).

    Args:
      root: the folder.
      labels: label each video by the folder it sits in.
      captions: path of the caption file; '' for none.
      test_fraction: share of the videos held out as 'test' when `root` has
        no split folders.
      seed: seed of that draw.

    Raises:
      FileNotFoundError: no folder, or no videos in it.
      ValueError: labels asked for videos outside class folders, or videos
        without a caption.
    """
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root):
      raise FileNotFoundError(f'--source folder {root!r} does not exist.')
    paths = list_videos(root)
    if not paths:
      raise FileNotFoundError(
          f'no videos in {root!r}: looked for {", ".join(VIDEO_EXTENSIONS)} files and '
          f'folders of {"/".join(FRAME_EXTENSIONS)} frames, recursively.')
    split_of = {p: p.split(os.sep)[0] for p in paths}
    if any(s in SPLIT_FOLDERS for s in split_of.values()):
      stray = [p for p, s in split_of.items() if s not in SPLIT_FOLDERS]
      if stray:
        raise ValueError(f'{root!r} has split folders ({"/".join(SPLIT_FOLDERS)}) but also '
                         f'videos outside them, e.g. {stray[:3]}: move them into a split folder.')
      under = {p: p.split(os.sep, 1)[1] for p in paths}  # Path below the split folder.
    else:
      test = _test_share(paths, test_fraction, seed)
      split_of = {p: 'test' if p in test else 'train' for p in paths}
      under = {p: p for p in paths}
    items: Dict[str, List[str]] = {}
    for p in paths:
      items.setdefault(split_of[p], []).append(p)

    label_names = label_of = None
    if labels:
      flat = [p for p, u in under.items() if os.sep not in u]
      if flat:
        raise ValueError(f'--labels_from_folders: {len(flat)} videos are not in a class '
                         f'folder, e.g. {flat[:3]}; put each video in a folder named '
                         'after its class.')
      label_names = sorted({u.split(os.sep)[0] for u in under.values()})
      label_of = {p: label_names.index(u.split(os.sep)[0]) for p, u in under.items()}

    caption_map, unknown = None, []
    if captions:
      caption_map = read_captions(captions)
      missing = [p for p in paths if p not in caption_map]
      if missing:
        raise ValueError(f'{len(missing)} videos have no caption in {captions!r}, e.g. '
                         f'{missing[:3]}: add a row (path relative to {root!r}, caption) '
                         'for each, or move them out of the folder.')
      unknown = sorted(set(caption_map) - set(paths))
      caption_map = {p: caption_map[p] for p in paths}
    return cls(root, items, label_names, label_of, caption_map, unknown)

  def describe(self) -> str:
    return f'folder {self.root}'

  def splits(self) -> Dict[str, int]:
    return {s: len(v) for s, v in sorted(self.items.items())}

  def read(self, split: str, start: int, stop: int) -> Iterator[Read]:
    for rel in self.items[split][start:stop]:
      try:
        frames = read_video_file(os.path.join(self.root, rel))
      except Exception as e:  # pylint: disable=broad-except
        yield Skipped(rel, f'cannot decode: {_first_line(e)}')
        continue
      yield SourceVideo(rel, frames, None if self.labels is None else self.labels[rel],
                        None if self.captions is None else self.captions[rel])


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f'{type(e).__name__}: {text[0] if text else ""}'.rstrip(': ')


@dataclasses.dataclass
class TfdsSource:
  """A prepared TFDS video dataset; see the module docstring."""
  name: str
  data_dir: Optional[str]
  video_key: str
  label_key: str = ''
  caption_key: str = ''
  only_splits: Sequence[str] = ()  # () = every split.

  def _builder(self):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    try:
      builder = tfds.builder(self.name, data_dir=self.data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
      raise ValueError(f'unknown TFDS dataset {self.name!r} ({_first_line(e)}).') from None
    if not builder.is_prepared():
      raise FileNotFoundError(
          f'TFDS dataset {self.name!r} is not prepared in data_dir={self.data_dir!r}: build it '
          f'first (tfds build {self.name} --data_dir=...), then prepare from it.')
    return builder

  @staticmethod
  def _features(builder):
    """The per-example features dict (the inner dict of a top-level Sequence)."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    features = builder.info.features
    return features.feature if isinstance(features, tfds.features.Sequence) else features

  def check(self) -> None:
    """Opens the dataset and checks the keys and splits, with clear errors."""
    builder = self._builder()
    features = self._features(builder)
    for flag, key in (('--video_key', self.video_key), ('--label_key', self.label_key),
                      ('--caption_key', self.caption_key)):
      if key and key not in features:
        raise KeyError(f'{flag}={key!r} is not a feature of {self.name!r}; its features '
                       f'are {sorted(features.keys())}.')
    missing = [s for s in self.only_splits if s not in builder.info.splits]
    if missing:
      raise ValueError(f'{self.name!r} has no split {missing}; its splits are '
                       f'{sorted(builder.info.splits)}.')

  @functools.cached_property
  def label_names(self) -> Optional[List[str]]:
    """The label feature's class names (read once; a list, so the source still pickles)."""
    if not self.label_key:
      return None
    feature = self._features(self._builder())[self.label_key]
    names = getattr(feature, 'names', None)
    if not names:
      raise ValueError(f'--label_key={self.label_key!r} of {self.name!r} is not a ClassLabel.')
    return list(names)

  @property
  def captions(self) -> Optional[bool]:
    return True if self.caption_key else None

  def describe(self) -> str:
    return f'TFDS {self.name}' + (f' in {self.data_dir}' if self.data_dir else '')

  def splits(self) -> Dict[str, int]:
    info = self._builder().info
    names = self.only_splits or sorted(info.splits)
    return {s: info.splits[s].num_examples for s in names}

  def read(self, split: str, start: int, stop: int) -> Iterator[Read]:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    builder = self._builder()
    if builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD:
      source = builder.as_data_source(split)
      examples = (source[i] for i in range(start, stop))
    else:
      examples = builder.as_dataset(split=f'{split}[{start}:{stop}]',
                                    shuffle_files=False).as_numpy_iterator()
    for i, ex in zip(range(start, stop), examples):
      origin = f'{split}[{i}]'
      frames = np.asarray(ex[self.video_key])
      if frames.ndim == 3:
        frames = frames[..., None]
      label = int(ex[self.label_key]) if self.label_key else None
      caption = None
      if self.caption_key:
        c = ex[self.caption_key]
        caption = c.decode() if isinstance(c, bytes) else str(c)
      yield SourceVideo(origin, frames.astype(np.uint8, copy=False), label, caption)


TFDS_PREFIX = 'tfds:'


def open_source(source: str, *, labels_from_folders: bool = False, captions: str = '',
                test_fraction: float = 0.1, split_seed: int = 0, tfds_data_dir: str = '',
                video_key: str = 'video', label_key: str = '', caption_key: str = '',
                splits: Sequence[str] = ()):
  """The source prepare.py's --source names: a folder path, or 'tfds:NAME'.

  The folder options (labels_from_folders, captions, test_fraction,
  split_seed) and the TFDS ones (tfds_data_dir, video_key, label_key,
  caption_key, splits) are refused for the other kind, so that no flag is
  silently ignored.
  """
  if source.startswith(TFDS_PREFIX):
    ignored = [f for f, given in (('--labels_from_folders', labels_from_folders),
                                  ('--captions', captions)) if given]
    if ignored:
      raise ValueError(f'{", ".join(ignored)} apply to a folder source, not to {source!r}; '
                       'a TFDS source takes --label_key and --caption_key.')
    tfds_source = TfdsSource(source[len(TFDS_PREFIX):], tfds_data_dir or None, video_key,
                             label_key, caption_key, tuple(splits))
    tfds_source.check()
    return tfds_source
  ignored = [f for f, given in (('--tfds_data_dir', tfds_data_dir), ('--label_key', label_key),
                                ('--caption_key', caption_key), ('--splits', splits),
                                ('--video_key', video_key != 'video')) if given]
  if ignored:
    raise ValueError(f'{", ".join(ignored)} apply to a TFDS source (--source=tfds:NAME), '
                     f'not to the folder {source!r}.')
  return FolderSource.scan(source, labels=labels_from_folders, captions=captions,
                           test_fraction=test_fraction, seed=split_seed)
