"""The real side of FVD: which clips, read like training clips, and their cached features.

The N clips of a split of S examples are the examples floor(i * S / N), i =
0..N-1, in stored order: distinct and spread over the whole split, so a split
stored sorted by class is not represented by its first classes only. Their
features (and labels) are cached on disk under a key naming everything they
depend on.
"""

from __future__ import annotations

import copy
import os
import sys
from typing import Optional

import ml_collections
import numpy as np

from vdm import progress as progress_lib
from vdm import sharding
from vdm.data import pipeline
from vdm.evaluation import i3d
from vdm.evaluation import metrics
from vdm.sampling import mesh_sampling

# Versions the choice of real clips; part of the cache key, so a change in how
# clips are selected can never reuse stale features.
REAL_SELECTION = 'evenly-spaced-v1'
CACHE_SUBDIR = 'fvd_cache'


def default_cache_dir(config: ml_collections.ConfigDict) -> str:
  """Where real-split features are cached: next to the data they describe.

  Args:
    config: the run's config.

  Returns:
    <config.data.data_dir, or $TFDS_DATA_DIR / ~/tensorflow_datasets>/fvd_cache.
  """
  data_dir = str(config.data.get('data_dir', '') or '') or os.environ.get(
      'TFDS_DATA_DIR', '~/tensorflow_datasets')
  return os.path.join(os.path.abspath(os.path.expanduser(data_dir)), CACHE_SUBDIR)


def split_size(config: ml_collections.ConfigDict, split: str) -> int:
  """Number of examples in `split` of config.data.dataset.

  `pipeline.dataset_info` reports the size of the train split, so it is asked
  about a copy of the config whose train split is `split`.

  Args:
    config: the run's config.
    split: split name.

  Returns:
    S, the number of examples.
  """
  probe = copy.deepcopy(config)
  probe.data.train_split = split
  return int(pipeline.dataset_info(probe)['num_train_examples'])


def select_indices(num_available: int, num: int) -> np.ndarray:
  """`num` distinct example indices spread evenly over [0, num_available).

  Args:
    num_available: S, the split size.
    num: N <= S.

  Returns:
    int64 [N], strictly increasing: floor(i * S / N).
  """
  if not 0 < num <= num_available:
    raise ValueError(f'cannot take {num} distinct clips from a split of '
                     f'{num_available} (FVD here samples without replacement).')
  return (np.arange(num, dtype=np.int64) * num_available) // num


def real_cache_key(config: ml_collections.ConfigDict, split: str, num: int,
                   num_available: int, what: str = 'i3d_features') -> dict:
  """Everything the cached real features (or labels) depend on.

  Args:
    config: the run's config (its data section).
    split: split name.
    num: N, clips selected.
    num_available: S, the split size (the selection depends on it).
    what: 'i3d_features' or 'labels'.

  Returns:
    A JSON-like key for `metrics.cached_real_features`.
  """
  d = config.data
  key = {
      'what': what,
      'dataset': str(d.dataset),
      'split': split,
      'split_size': int(num_available),
      'resolution': int(d.image_size),
      'channels': int(d.channels),
      'frames': int(d.num_frames),
      'frameskip': int(d.get('frameskip', 1)),
      'video_key': str(d.get('video_key', 'video')),
      'num_samples': int(num),
      'selection': REAL_SELECTION,
      'protocol_version': i3d.FVD_PROTOCOL['version'],
  }
  if what == 'labels':
    key['label_key'] = str(d.get('label_key', ''))
  return key


def read_clips(config, split: str, indices: np.ndarray, batch_size: int, *,
               num_frames: Optional[int] = None, features: bool = True,
               keep_videos: bool = False, what: str = 'real clips', mesh=None
               ) -> dict[str, Optional[np.ndarray]]:
  """One ordered pass over the split that keeps the clips at `indices`.

  Reading goes through `make_eval_iterator` (the training clip recipe), up to
  the last wanted example. Kept clips are buffered and sent to the I3D in full
  batches of `batch_size`, so the I3D compiles once and never runs on mostly
  padding even when the wanted clips are sparse in the split.

  Args:
    config: the run's config.
    split: split name.
    indices: int64 [N] strictly increasing example indices.
    batch_size: reading and I3D batch size (rounded up to a multiple of the
      batch shards of config.sharding.mesh).
    num_frames: clip length; config.data.num_frames when None.
    features: compute I3D features of the kept clips.
    keep_videos: also return the kept clips.
    what: name in progress lines.
    mesh: the mesh the I3D runs on; config.sharding.mesh when None.

  Returns:
    dict with 'features' (float64 [N, 400] or None), 'labels' (int64 [N] or
    None when the config has no label_key), 'captions' (N str, or None when
    it has no caption_key) and 'videos' (uint8 [N, T', H, W, C] or None),
    rows in the order of `indices`.
  """
  n = len(indices)
  # The I3D runs on the run's mesh (the training one), each batch split over
  # its devices; reading stays on every process.
  if features and mesh is None:
    mesh = sharding.create_mesh(config.sharding.mesh)
  batch_size = mesh_sampling.chunk_size(batch_size, n, mesh)
  wanted = np.zeros(int(indices[-1]) + 1, bool)
  wanted[indices] = True
  it = pipeline.make_eval_iterator(
      config, split, num_examples=len(wanted),
      batch_size=batch_size, num_frames=num_frames,
      # Every process reads all N clips (cheap beside the I3D, which is split
      # over the mesh) and so holds the whole real side of the metric.
      process_index=0, process_count=1)
  feats, labels, captions, videos, buffer = [], [], [], [], []
  progress = progress_lib.Progress(f'I3D features of {what}' if features else f'reading {what}',
                                  n, 'videos', every=5.0, file=sys.stderr)
  done = 0

  def flush(force: bool):
    nonlocal buffer, done
    while buffer and (force or sum(len(b) for b in buffer) >= batch_size):
      stacked = np.concatenate(buffer)
      chunk, rest = stacked[:batch_size], stacked[batch_size:]
      buffer = [rest] if len(rest) else []
      if features:
        # Padded to a full batch: one compiled I3D shape for every call.
        feats.append(i3d.batch_features(mesh_sampling.pad_rows(chunk, batch_size),
                                        mesh)[:len(chunk)])
      if keep_videos:
        videos.append(chunk)
      done += len(chunk)
      progress(done)

  try:
    for batch in it:
      keep = batch['mask'] & wanted[np.maximum(batch['index'], 0)]
      if not keep.any():
        continue
      buffer.append(batch['video'][keep])
      if 'label' in batch:
        labels.append(batch['label'][keep].astype(np.int64))
      if 'caption' in batch:
        captions += [str(c) for c in batch['caption'][keep]]
      flush(force=False)
    flush(force=True)
  finally:
    getattr(it, 'close', lambda: None)()
  if done != n:
    raise RuntimeError(f'read {done} of the {n} wanted clips of split {split!r}.')
  return {
      'features': np.concatenate(feats) if features else None,
      'labels': np.concatenate(labels) if labels else None,
      'captions': captions if 'caption_key' in config.data and config.data.caption_key else None,
      'videos': np.concatenate(videos) if keep_videos else None,
  }


def real_features(config, split: str, num: int, *, batch_size: int,
                  cache_dir: Optional[str] = None, with_labels: bool = False, mesh=None
                  ) -> tuple[np.ndarray, Optional[np.ndarray]]:
  """I3D features (and labels) of the N protocol clips of a split, cached.

  Args:
    config: the run's config (config.data describes the clips).
    split: split name.
    num: N, number of clips (<= split size).
    batch_size: reading / I3D batch size.
    cache_dir: cache directory; default_cache_dir(config) when None.
    with_labels: also return the clips' labels (needs config.data.label_key).
    mesh: the mesh the I3D runs on; config.sharding.mesh when None.

  Returns:
    (float64 [N, 400] features, int64 [N] labels or None).
  """
  cache_dir = cache_dir or default_cache_dir(config)
  s = split_size(config, split)
  indices = select_indices(s, num)
  key = real_cache_key(config, split, num, s)
  passes = {}

  def compute():
    passes['out'] = read_clips(config, split, indices, batch_size,
                               what=f'{num} real clips ({split})', mesh=mesh)
    return passes['out']['features']

  feats = metrics.cached_real_features(cache_dir, key, compute)
  if 'out' not in passes:
    progress_lib.log(f'Real features: cache hit in {cache_dir} ({num} clips of {split}).')
  labels = None
  if with_labels:
    def compute_labels():
      out = passes.get('out') or read_clips(config, split, indices, batch_size,
                                            features=False, what='real labels')
      if out['labels'] is None:
        raise ValueError('a class-conditional model needs config.data.label_key.')
      return out['labels'][:, None]  # The cache stores [N, D] arrays.
    labels = metrics.cached_real_features(
        cache_dir, real_cache_key(config, split, num, s, what='labels'),
        compute_labels)[:, 0].astype(np.int64)
  return feats, labels


def real_captions(config, split: str, num: int, *, batch_size: int) -> list[str]:
  """The captions of the N protocol clips of a split (the clips of
  ``real_features``, in the same order): what a text model's samples are
  conditioned on when it is evaluated.

  Raises:
    ValueError: the config has no config.data.caption_key.
  """
  if not config.data.get('caption_key', ''):
    raise ValueError('a text-conditional model needs config.data.caption_key.')
  indices = select_indices(split_size(config, split), num)
  return read_clips(config, split, indices, batch_size, features=False,
                    what=f'captions of {num} real clips ({split})')['captions']
