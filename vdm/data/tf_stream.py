"""The tf.data fallback for builds without random access (e.g. tfrecord): best-effort resume."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from vdm.data import clips
from vdm.data import sources


def train_iterator(ds: sources.Dataset, spec: sources.Spec, start_step: int,
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
    rng = np.random.default_rng([clips.TAG_STREAM, spec.seed, pi, step])
    rows, conditions = [], []
    for r, ex in enumerate(examples):
      # The images come from random videos of this process's batch: the
      # stream has no random access to the rest of the dataset.
      d = clips.draw_row(rng, spec, b_local)
      images = [examples[j] for j in d.image_src.tolist()]
      rows.append(clips.train_row(ds, spec, ex, images, d, f'{step}:{r}'))
      conditions.append(clips.row_conditions(ds, spec, ex, images))
    yield clips.to_batch(rows, conditions if conditions[0] else None, spec)
    step += 1


def eval_iterator(ds, split, n, bsz, rows, num_batches, rows_to_batch):
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
