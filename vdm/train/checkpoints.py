"""Checkpoints of the train state: the only module that talks to orbax.

Orbax writes each checkpoint into a temporary directory and renames it when
complete (on GCS: writes a commit marker), so a crash mid-write never leaves a
half checkpoint that looks finished; such leftovers are never listed.

Restoring tells two failures apart before touching the array data: a
checkpoint whose stored tree (names, shapes, dtypes, read from its metadata)
differs from the state it is restored into was written by another model or
optimizer, and raises ``CheckpointMismatchError``; a checkpoint that cannot be
read at all (garbled metadata, truncated array files) is corrupted, and the
previous one is tried. When checkpoints exist but none can be read,
``UnreadableCheckpointsError`` says so instead of pretending there were none.

A failed write (disk full, permissions, I/O error) raises
``CheckpointWriteError`` naming the checkpoint's path and the last good
checkpoint, which orbax only garbage-collects after a newer one is complete.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointMismatchError(ValueError):
  """A readable checkpoint holds a different tree than the state asked for.

  Attributes:
    step: the checkpoint's step.
    differences: (path, stored, expected) strings, one per differing leaf.
  """

  def __init__(self, message: str, step: int, differences: list[tuple[str, str, str]]):
    super().__init__(message)
    self.step = step
    self.differences = differences


class UnreadableCheckpointsError(RuntimeError):
  """Checkpoints exist but none of them can be read.

  Attributes:
    steps: the steps that were tried, newest first.
  """

  def __init__(self, message: str, steps: list[int]):
    super().__init__(message)
    self.steps = steps


class CheckpointWriteError(RuntimeError):
  """Writing a checkpoint failed; the previous checkpoints are untouched.

  Attributes:
    step: the checkpoint that could not be written.
    last_good: the newest complete checkpoint, or None.
  """

  def __init__(self, message: str, step: Optional[int], last_good: Optional[int]):
    super().__init__(message)
    self.step = step
    self.last_good = last_good


def _key_name(key) -> str:
  """One path entry as orbax names it in its metadata (dict key, attribute, index)."""
  for attr in ('key', 'name', 'idx'):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _layout(tree: Any) -> dict[tuple[str, ...], str]:
  """{path: 'dtype[shape]'} of every leaf, with paths as tuples of names.

  Orbax stores attributes and dict keys alike as string keys; naming every
  path entry by its string makes a stored tree and a live one comparable.
  A leaf without shape or dtype (not an array) is described by its type.
  """
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  out = {}
  for path, leaf in flat:
    shape, dtype = getattr(leaf, 'shape', None), getattr(leaf, 'dtype', None)
    out[tuple(_key_name(k) for k in path)] = (
        f'{np.dtype(dtype).name}{list(shape)}' if shape is not None and dtype is not None
        else type(leaf).__name__)
  return out


def layout_differences(stored: Any, expected: Any) -> list[tuple[str, str, str]]:
  """Leaves that differ in presence, shape or dtype between two trees.

  Args:
    stored: a tree of objects with ``shape`` and ``dtype`` (orbax metadata).
    expected: a tree of arrays or jax.ShapeDtypeStruct.

  Returns:
    Sorted (path, stored, expected) descriptions; empty when the trees fit.
  """
  a, b = _layout(stored), _layout(expected)
  return [('/'.join(path), a.get(path, 'absent'), b.get(path, 'absent'))
          for path in sorted(set(a) | set(b)) if a.get(path) != b.get(path)]


def list_steps(directory: str) -> list[int]:
  """Steps of the finished checkpoints in ``directory``, creating nothing.

  Args:
    directory: a checkpoint directory, which need not exist.

  Returns:
    Ascending steps; empty when there is no directory or no finished checkpoint
    (orbax's temporary directories of interrupted writes do not count).
  """
  if not os.path.isdir(directory):
    return []
  # The naming CheckpointManager uses by default, read without a manager
  # (which would create the directory or warn that it is read-only).
  return sorted(m.step for m in ocp.path.step.standard_name_format().find_all(directory))


class Checkpointer:
  """Saves and restores train states under ``directory``.

  Args:
    directory: where the numbered checkpoints live (created if missing).
    keep: number of checkpoints kept on disk.
    async_save: write in a background thread while training continues.
  """

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
    # Naming the handler lets a fresh manager read a checkpoint's metadata
    # (to check its tree before restoring) without a prior save or restore.
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_handlers=ocp.StandardCheckpointHandler())
    self._writing: Optional[int] = None  # Step of a save that may still be in flight.
    self._failed = False
    self.skipped: list[tuple[int, str]] = []  # Unreadable steps the last restore passed over.

  def all_steps(self) -> list[int]:
    """Steps of the finished checkpoints, ascending."""
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def latest_step(self) -> Optional[int]:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def path(self, step: int) -> str:
    """Where checkpoint ``step`` lives once complete."""
    return os.path.join(self.directory, str(step))

  def _write_error(self, step: Optional[int], error: BaseException) -> CheckpointWriteError:
    self._failed = True
    steps = [s for s in self.all_steps() if s != step]
    last = steps[-1] if steps else None
    where = self.path(step) if step is not None else self.directory
    good = (f'the last good checkpoint is step {last} ({self.path(last)}), which is untouched '
            'and is what a rerun resumes from' if last is not None else
            'there is no earlier checkpoint, so a rerun starts from scratch')
    return CheckpointWriteError(
        f'Writing checkpoint {step} to {where} failed ({type(error).__name__}: {error}). '
        f'Training stopped; {good}. Free disk space, fix permissions or the storage, then '
        'rerun the same command.', step, last)

  def save(self, step: int, state: Any) -> None:
    """Starts saving ``state`` as checkpoint ``step`` (async if configured).

    Raises:
      CheckpointWriteError: this write, or a previous asynchronous one, failed.
    """
    self.wait()  # A background save that failed must stop training before the next one.
    self._writing = step
    try:
      self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_error(step, e) from e

  def wait(self) -> None:
    """Blocks until every pending save is on disk.

    Raises:
      CheckpointWriteError: the pending save failed.
    """
    step, self._writing = self._writing, None
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_error(step, e) from e

  def _check_fits(self, step: int, abstract_state: Any) -> None:
    """Raises CheckpointMismatchError when ``step`` holds another tree.

    Raises whatever orbax raises when the metadata itself cannot be read.
    """
    stored = self._manager.metadata(step).item_metadata
    if stored is None or not jax.tree.leaves(stored):
      raise ValueError('its metadata lists no arrays')
    differences = layout_differences(stored, abstract_state)
    if differences:
      shown = '\n'.join(f'  {p}: stored {s}, expected {e}' for p, s, e in differences[:12])
      more = f'\n  ... and {len(differences) - 12} more' if len(differences) > 12 else ''
      raise CheckpointMismatchError(
          f'Checkpoint {step} in {self.directory} reads fine but holds a different state '
          f'than the config builds ({len(differences)} arrays differ):\n{shown}{more}\n'
          'This is a config mismatch, not corruption: the checkpoint was left untouched. '
          'Restore it with the config that wrote it.', step, differences)

  def _restore(self, step: int, abstract_state: Any) -> Any:
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

  def restore(self, abstract_state: Any, step: Optional[int] = None) -> tuple[Optional[int], Any]:
    """Restores the given step, or the newest readable one.

    Args:
      abstract_state: a tree of jax.ShapeDtypeStruct (with shardings) shaped
        like the train state; the restored arrays get those shardings.
      step: a specific step; None means the newest that can be read.

    Returns:
      (step, state), or (None, None) when there is no checkpoint. Newer
      checkpoints that could not be read are listed in ``self.skipped`` as
      (step, reason), for the caller to report in one line.

    Raises:
      FileNotFoundError: a specific step was asked for and does not exist.
      CheckpointMismatchError: the newest readable checkpoint (or the one asked
        for) does not fit ``abstract_state``; older ones are not tried.
      UnreadableCheckpointsError: checkpoints exist but none can be read.
    """
    steps = self.all_steps()
    if step is not None:
      if step not in steps:
        raise FileNotFoundError(f'no checkpoint for step {step} in {self.directory}; '
                                f'available: {steps}.')
      self._check_fits(step, abstract_state)
      return step, self._restore(step, abstract_state)
    unreadable = []
    self.skipped = []
    for candidate in reversed(steps):
      try:
        with _quiet_aborted_reads():
          self._check_fits(candidate, abstract_state)
          return candidate, self._restore(candidate, abstract_state)
      except CheckpointMismatchError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        reason = f'{type(e).__name__}: {_first_line(e)}'
        unreadable.append(f'step {candidate} ({reason})')
        self.skipped.append((candidate, reason))
    if unreadable:
      raise UnreadableCheckpointsError(
          f'None of the {len(steps)} checkpoints in {self.directory} can be read: '
          + '; '.join(unreadable) + '. They were left untouched.', list(reversed(steps)))
    return None, None

  def close(self) -> None:
    """Waits for pending saves and releases orbax's threads.

    Raises:
      CheckpointWriteError: a pending save failed (not raised again once a
        write error has been raised).
    """
    try:
      if not self._failed:
        self.wait()
    finally:
      try:
        self._manager.close()
      except Exception:  # pylint: disable=broad-except
        # Only reached after a failed write, which was already reported.
        if not self._failed:
          raise
        logging.warning('Closing the checkpointer of %s after a failed write also failed.',
                        self.directory, exc_info=True)


def describe_skipped(skipped: list[tuple[int, str]]) -> str:
  """'checkpoint 500 is unreadable (reason)' for Checkpointer.skipped, in a few words."""
  if len(skipped) == 1:
    step, reason = skipped[0]
    return f'checkpoint {step} is unreadable ({reason})'
  return 'checkpoints ' + ', '.join(f'{step} ({reason})' for step, reason in skipped) + (
      ' are unreadable')


def _first_line(error: BaseException) -> str:
  """The gist of an error: its first line, without TensorStore's JSON spec."""
  text = str(error).strip()
  line = text.splitlines()[0] if text else ''
  for tail in (' See full TensorStore details', ' [tensorstore_spec='):
    line = line.split(tail)[0]
  return line[:200]


@contextlib.contextmanager
def _quiet_aborted_reads():
  """Silences the reports of reads abandoned when one array of a checkpoint fails.

  Orbax reads every array concurrently; when one fails, the others'
  coroutines and tasks are dropped unfinished, and Python reports each as it
  is collected ("Exception ignored in: <coroutine ...>", asyncio's "Task
  exception was never retrieved": 50,000 lines for the default model). The
  failure itself is raised and reported once.
  """
  previous = sys.unraisablehook
  asyncio_log = logging.getLogger('asyncio')
  was_disabled = asyncio_log.disabled
  sys.unraisablehook = lambda unraisable: None
  asyncio_log.disabled = True
  try:
    yield
  finally:
    gc.collect()  # Collects the dropped reads while their reports are off.
    sys.unraisablehook = previous
    asyncio_log.disabled = was_disabled


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a tree of arrays, for restore."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, 'sharding', None)),
      tree)
