"""The thread loader: batches of a pure step function, computed ahead in threads, in order."""

from __future__ import annotations

import collections
import concurrent.futures
from typing import Any, Callable, Optional


class Closable:
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


class StepIterator(Closable):
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
