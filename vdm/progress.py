"""One progress line format for every long loop outside the jitted sampler.

  '<what>: [<note>, ]<done>/<total> <unit>, <elapsed>s[, ETA <eta>]'

Used by the long-video drivers (per clip) and evaluation (per batch of
videos); the train loop prints its own lines (loss, steps/s) with the same
``Rate``, and the sampler's per-step line is ``samplers.print_progress`` (a
jax.debug.callback). All progress goes to stderr: stdout carries results.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Optional, TextIO

import jax


def format_duration(seconds: float) -> str:
  """'45s', '7m20s', '3h05m': a duration to the precision a person reads."""
  seconds = max(0, int(round(seconds)))
  if seconds < 60:
    return f'{seconds}s'
  minutes, seconds = divmod(seconds, 60)
  if minutes < 60:
    return f'{minutes}m{seconds:02d}s'
  hours, minutes = divmod(minutes, 60)
  return f'{hours}h{minutes:02d}m'


class Rate:
  """Work per second for an ETA, leaving out the slow start.

  The first interval of a loop holds its compiles and warm-up (and a long
  video's first clip is cheaper than the guided ones after it), so the rate
  runs from the first report (from the second once there are three): no ETA
  until two reports exist.
  """

  def __init__(self):
    self._marks: list[tuple[float, float]] = []  # (time, done)

  def mark(self, done: float, now: Optional[float] = None) -> None:
    """Records that ``done`` units were finished at ``now`` (perf_counter)."""
    self._marks.append((time.perf_counter() if now is None else now, done))

  def eta(self, remaining: float) -> Optional[float]:
    """Seconds until ``remaining`` more units are done; None while unknown."""
    if len(self._marks) < 2:
      return None
    t0, d0 = self._marks[1] if len(self._marks) >= 3 else self._marks[0]
    t1, d1 = self._marks[-1]
    if d1 <= d0 or t1 <= t0:
      return None
    return remaining * (t1 - t0) / (d1 - d0)


class Progress:
  """Prints a progress line, at most one every ``every`` seconds, on process 0.

  Args:
    what: name of the work.
    total: units of work in all.
    unit: what is counted ('frames', 'videos').
    every: minimum seconds between lines; the last line always prints.
    file: where lines go; stderr when None.
  """

  def __init__(self, what: str, total: int, unit: str, *, every: float = 0.0,
               file: Optional[TextIO] = None):
    self.what, self.total, self.unit, self.every = what, total, unit, every
    self.file = file
    self.start = time.perf_counter()
    self._last = -math.inf
    self._rate = Rate()

  def __call__(self, done: int, note: str = '') -> None:
    """Reports ``done`` units finished (clipped to total), with an optional note."""
    if jax.process_index() != 0:
      return
    now = time.perf_counter()
    done = min(done, self.total)
    self._rate.mark(done, now)
    if done < self.total and now - self._last < self.every:
      return
    self._last = now
    eta = self._rate.eta(self.total - done) if done < self.total else None
    head = f'{note}, ' if note else ''
    tail = '' if eta is None else f', ETA {format_duration(eta)}'
    print(f'{self.what}: {head}{done}/{self.total} {self.unit}, {now - self.start:.1f}s{tail}',
          file=self.file or sys.stderr, flush=True)


def log(msg: str) -> None:
  """A one-off progress message on stderr, from process 0 only (stdout carries results)."""
  if jax.process_index() == 0:
    print(msg, file=sys.stderr, flush=True)
