"""Clips and images cut from stored videos, and the random draws of a training row.

Every random choice of a training row (clip start, flips, which videos and
frames give the appended images) is drawn into a ``RowDraws`` before any
reading, from a generator seeded by the row's identity, so a row is a pure
function of (seed, step, row).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional

import numpy as np

from vdm.data import frames as frames_lib
from vdm.data import sources

# First element of every seed tuple, so that the random streams used for
# different purposes can never coincide.
TAG_PERMUTATION = 0
TAG_TRAIN_ROW = 1
TAG_STREAM = 2


def take_frames(ds: sources.Dataset, video, idx: np.ndarray) -> np.ndarray:
  """Frames `idx` of one stored video as uint8 [n, H0, W0, C0]."""
  if ds.decode_frame is None:
    return np.asarray(video)[idx]
  return np.stack([ds.decode_frame(video[i]) for i in idx])


def _prepare_frames(ds: sources.Dataset, spec: sources.Spec, frames: np.ndarray
                    ) -> np.ndarray:
  """uint8 [n, H0, W0, C0] -> uint8 [n, S, S, C]."""
  return frames_lib.conform_frames(frames, spec.image_size, spec.channels,
                        f'Feature {ds.video_key!r} of {ds.name!r}')


def _frames(ds: sources.Dataset, spec: sources.Spec, video, idx: np.ndarray) -> np.ndarray:
  """Frames `idx` of one stored video as the batch takes them: uint8 [n, S, S, C],
  or with config.data.latent_key the stored latents [n, h, w, c] as they are."""
  if spec.latent_key:
    return np.asarray(video)[idx]
  return _prepare_frames(ds, spec, take_frames(ds, video, idx))


def read_clip(ds: sources.Dataset, spec: sources.Spec, video, u_start: float, index: Any,
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
    uint8 [num_frames, S, S, C] (stored latents [num_frames, h, w, c] when
    `video` is the latent_key feature).
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
  return _frames(ds, spec, video, idx)


def read_image(ds: sources.Dataset, spec: sources.Spec, video, u: float) -> np.ndarray:
  """One frame chosen by u in [0, 1): uint8 [1, S, S, C] (or its latents)."""
  return _frames(ds, spec, video, np.array([int(u * len(video))]))


@dataclasses.dataclass
class RowDraws:
  """All random choices for one training row, drawn before any reading."""
  u_start: float
  flip: bool
  image_src: np.ndarray  # int64 [K], which video gives each image.
  image_u: np.ndarray  # float [K], which frame of it.
  image_flip: np.ndarray  # bool [K]


def draw_row(rng: np.random.Generator, spec: sources.Spec, num_sources: int) -> RowDraws:
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
  return RowDraws(u_start, bool(flip), image_src, image_u, image_flip)


def train_row(ds: sources.Dataset, spec: sources.Spec, example, image_examples,
              d: RowDraws, index) -> np.ndarray:
  """One training row: uint8 [T + K, S, S, C] (clip frames, then images), or
  their stored latents [T + K, h, w, c] with config.data.latent_key."""
  key = spec.latent_key or ds.video_key
  clip = read_clip(ds, spec, example[key], d.u_start, index)
  if d.flip:  # Flip the whole clip, so the motion stays consistent.
    clip = clip[:, :, ::-1]
  parts = [clip]
  for j, ex in enumerate(image_examples):
    img = read_image(ds, spec, ex[key], d.image_u[j])
    if d.image_flip[j]:
      img = img[:, :, ::-1]
    parts.append(img)
  return np.concatenate(parts, axis=0)


def row_conditions(ds: sources.Dataset, spec: sources.Spec, example, image_examples
                   ) -> Optional[Dict[str, list]]:
  """Per-frame labels and captions of a training row, or None without either.

  The video's for its T clip frames, then each appended image's own (it comes
  from another video, whose label and caption are the true ones for it).
  With config.data.text_embedding_key, the captions' stored embeddings come
  instead of the captions.

  Returns:
    {'label': T + K ints} and/or {'caption': T + K texts} or {'embedding':
    T + K arrays [L, D]}.
  """
  out = {}
  caption = ((spec.text_embedding_key, 'embedding') if spec.text_embedding_key
             else (ds.caption_key, 'caption'))
  for key, name in ((ds.label_key, 'label'), caption):
    if key:
      out[name] = [example[key]] * spec.num_frames + [ex[key] for ex in image_examples]
  return out or None


_TO_UNIT = (np.arange(256) / 127.5 - 1.0).astype(np.float32)


def to_batch(rows: List[np.ndarray], conditions: Optional[List[Dict[str, list]]],
             spec: sources.Spec) -> Dict[str, np.ndarray]:
  """Training rows (and their row_conditions) -> the batch dict of the pipeline."""
  if spec.latent_key:  # Stored latents: already what the model diffuses.
    video = np.stack(rows).astype(np.float32)  # [B_local, T+K, h, w, c]
  else:
    # uint8 -> [-1, 1] as x / 127.5 - 1, through a 256-entry table: one pass
    # over the batch instead of three, and exactly rounded.
    video = _TO_UNIT[np.stack(rows)]  # [B_local, T+K, S, S, C] float32
  is_image = np.zeros(spec.num_frames + spec.num_images, bool)  # [T+K]
  is_image[spec.num_frames:] = True
  out = dict(video=video, is_image=is_image)
  if conditions and 'label' in conditions[0]:
    out['label'] = np.asarray([c['label'] for c in conditions], np.int32)  # [B_local, T+K]
  if conditions and 'caption' in conditions[0]:
    out['text'] = caption_tokens([c['caption'] for c in conditions], spec)  # [B_local, T+K, L]
  if conditions and 'embedding' in conditions[0]:
    out['text'] = np.asarray([c['embedding'] for c in conditions], np.float32)  # [B_local, T+K, L, D]
  return out


def caption_tokens(captions: List[Any], spec: sources.Spec) -> np.ndarray:
  """The text input of nested lists of captions (str or bytes): tokens int32
  [..., L], or a frozen encoder's embeddings float32 [..., L, D]."""
  arr = np.asarray(captions, dtype=object)
  if spec.tokenizer is None:
    raise ValueError('captions are read but there is no tokenizer: config.model.text_encoder '
                     "is '' or the 'words' vocabulary (config.model.text_vocabulary) is empty; "
                     'training fills it (vdm.train.train_lib.resolve_text_vocabulary).')
  tokens = spec.tokenizer(arr.reshape(-1).tolist())
  return tokens.reshape(arr.shape + tokens.shape[1:])
