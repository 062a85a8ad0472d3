"""Checkpoints of the train state: the only module that talks to orbax.

Orbax writes each checkpoint into a temporary directory and renames it when
complete, so a crash mid-write never leaves a half checkpoint that looks
finished. On restore, a latest checkpoint that is nevertheless unreadable
(corrupted on disk) is skipped with a warning and the previous one is used.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


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
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def all_steps(self) -> list[int]:
    """Steps of the finished checkpoints, ascending."""
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def latest_step(self) -> Optional[int]:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def save(self, step: int, state: Any) -> None:
    """Starts saving ``state`` as checkpoint ``step`` (async if configured)."""
    self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def wait(self) -> None:
    """Blocks until every pending save is on disk."""
    self._manager.wait_until_finished()

  def restore(self, abstract_state: Any, step: Optional[int] = None) -> tuple[Optional[int], Any]:
    """Restores the given step, or the newest readable one.

    Args:
      abstract_state: a tree of jax.ShapeDtypeStruct (with shardings) shaped
        like the train state; the restored arrays get those shardings.
      step: a specific step; None means the newest that can be read.

    Returns:
      (step, state), or (None, None) when there is no checkpoint.

    Raises:
      FileNotFoundError: a specific step was asked for and does not exist.
    """
    steps = self.all_steps()
    if step is not None:
      if step not in steps:
        raise FileNotFoundError(f'no checkpoint for step {step} in {self.directory}; '
                                f'available: {steps}.')
      return step, self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
    for candidate in reversed(steps):
      try:
        return candidate, self._manager.restore(
            candidate, args=ocp.args.StandardRestore(abstract_state))
      except Exception as e:  # pylint: disable=broad-except
        logging.warning('Checkpoint %d in %s is unreadable (%s: %s); trying the previous one.',
                        candidate, self.directory, type(e).__name__, e)
    return None, None

  def close(self) -> None:
    self.wait()
    self._manager.close()


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a tree of arrays, for restore."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, 'sharding', None)),
      tree)
