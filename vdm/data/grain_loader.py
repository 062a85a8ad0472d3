"""The Grain loader (config.data.loader = 'grain'): the same batches, from worker processes."""

from __future__ import annotations

from typing import Callable

import numpy as np

from vdm.data import thread_loader


# Steps of an endless Grain range (a MapDataset needs a length).
_GRAIN_STOP = 2**62


class GrainStepIterator(thread_loader.Closable):
  """The batches of `fn(step)` for step = start, start + 1, ..., from Grain.

  The same contract as thread_loader.StepIterator for the training batches (`.step`,
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

  def __init__(self, fn: Callable[[int], dict], start: int = 0,
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
    # thread_loader.StepIterator. The workers' queues share `prefetch` between them, so that
    # about as many batches wait in memory as with thread_loader.StepIterator (each worker
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
    # get the same numpy arrays thread_loader.StepIterator gives.
    out = {k: np.array(v) for k, v in next(self._it).items()}
    self.step += 1
    return out

  def close(self):
    """Stops the worker processes (joined before this returns)."""
    it, self._it = getattr(self, '_it', None), None
    if it is not None:
      it.close()
