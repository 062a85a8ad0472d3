"""One progress line format for every long loop outside the jitted sampler.

  '<what>: [<note>, ]<done>/<total> <unit>, <elapsed>s, ETA <eta>s'

Used by the long-video drivers (per clip) and evaluation (per batch of
videos); the train loop prints its own lines (loss, steps/s) and the sampler's
per-step line is ``samplers.print_progress`` (a jax.debug.callback).
"""

from __future__ import annotations

import math
import sys
import time
from typing import Optional, TextIO

import jax


class Progress:
  """Prints a progress line, at most one every ``every`` seconds, on process 0.

  Args:
    what: name of the work.
    total: units of work in all.
    unit: what is counted ('frames', 'videos').
    every: minimum seconds between lines; the last line always prints.
    file: where lines go; stdout when None.
  """

  def __init__(self, what: str, total: int, unit: str, *, every: float = 0.0,
               file: Optional[TextIO] = None):
    self.what, self.total, self.unit, self.every = what, total, unit, every
    self.file = file
    self.start = time.perf_counter()
    self._last = -math.inf

  def __call__(self, done: int, note: str = '') -> None:
    """Reports ``done`` units finished (clipped to total), with an optional note."""
    if jax.process_index() != 0:
      return
    now = time.perf_counter()
    done = min(done, self.total)
    if done < self.total and now - self._last < self.every:
      return
    self._last = now
    elapsed = now - self.start
    eta = elapsed / max(done, 1) * (self.total - done)
    head = f'{note}, ' if note else ''
    print(f'{self.what}: {head}{done}/{self.total} {self.unit}, {elapsed:.1f}s, '
          f'ETA {eta:.0f}s', file=self.file or sys.stdout, flush=True)


def log(msg: str) -> None:
  """A one-off progress message on stderr, from process 0 only (stdout carries results)."""
  if jax.process_index() == 0:
    print(msg, file=sys.stderr, flush=True)
