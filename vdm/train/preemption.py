"""Preemption and Ctrl-C: SIGTERM (and SIGINT) become a checkpoint at an agreed step.

SLURM, Kubernetes and preemptible TPU/GPU VMs send SIGTERM some seconds to
minutes before they kill a job. Training asks ``PreemptionWatcher.reached``
after every step; once it says yes, it saves a checkpoint at that step and
raises ``Preempted``, which ends the process with ``PREEMPTED_EXIT_CODE`` so
that a job script can tell "rerun me" from success (0) and failure (1).

Multi-host, a checkpoint is a collective write, so every process must stop at
the same step even though the signal may reach only one of them. JAX's
preemption service (started by ``jax.distributed.initialize``) does this: its
own SIGTERM handler tells the coordination service, which computes a step just
ahead of every process, and ``multihost_utils.reached_preemption_sync_point``
answers yes on each process at that step. Between notices the check is a
local comparison, with no collective, so it costs nothing per step. On one
process without ``jax.distributed`` a Python signal handler sets a flag that
the next step boundary reads.

Ctrl-C (SIGINT) on one process is handled the same way: the checkpoint is
written at the end of the step, and the process ends with status 130 (128 +
SIGINT, what shells expect of an interrupted command). A second Ctrl-C stops
at once (vdm.cli ends the process). Multi-host, where JAX's service watches
SIGTERM only, Ctrl-C stops without a checkpoint; send SIGTERM to keep one.
"""

from __future__ import annotations

import logging
import signal
import threading

import jax
from jax.experimental import multihost_utils

# EX_TEMPFAIL in sysexits.h: "a temporary failure; the user is invited to
# retry". Distinct from success, from errors (1) and from death by a signal
# (128 + n), so job scripts can requeue on exactly this status.
PREEMPTED_EXIT_CODE = 75
# 128 + SIGINT: how shells report a command stopped by Ctrl-C.
INTERRUPTED_EXIT_CODE = 130

# Whether a training loop is watching for Ctrl-C to save a checkpoint (read
# by vdm.cli, which otherwise ends the process at once).
_saving_on_interrupt = threading.Event()


def interrupt_saves() -> bool:
  """True while a training loop turns Ctrl-C into a checkpoint."""
  return _saving_on_interrupt.is_set()


class Preempted(SystemExit):
  """Training stopped for a preemption notice after saving a checkpoint.

  A SystemExit, so a caller that does not catch it (train.py) ends with
  ``PREEMPTED_EXIT_CODE``; ``except Exception`` blocks do not swallow it.

  Attributes:
    step: the step of the checkpoint that was written.
    directory: the checkpoint directory.
  """

  def __init__(self, step: int, directory: str, signal_name: str = 'SIGTERM'):
    self.code_for_signal = (INTERRUPTED_EXIT_CODE if signal_name == 'SIGINT'
                            else PREEMPTED_EXIT_CODE)
    super().__init__(self.code_for_signal)
    self.step = step
    self.directory = directory
    self.signal_name = signal_name

  def __str__(self) -> str:
    what = 'Interrupted (Ctrl-C)' if self.signal_name == 'SIGINT' else 'Preempted (SIGTERM)'
    return (f'{what}: saved checkpoint {self.step} in {self.directory}; '
            f'exit status {self.code_for_signal}. Rerun the same command to resume.')


def _jax_preemption_service_running() -> bool:
  # jax.distributed.initialize starts the service unless this option is off.
  return jax.distributed.is_initialized() and bool(jax.config.jax_enable_preemption_service)


class PreemptionWatcher:
  """Answers, at each step boundary, whether training must stop for SIGTERM.

  Use as a context manager around the training loop, and call ``reached``
  once per step with increasing steps on every process (JAX's protocol needs
  every step).
  """

  def __init__(self):
    self._received = None  # The name of the signal received.
    self._installed = False
    self._previous_handler = None
    self._previous_interrupt_handler = None
    self._use_jax = _jax_preemption_service_running()
    if self._use_jax:
      # JAX's handler is already installed; a Python one would replace it and
      # leave the other processes uninformed.
      return
    if jax.distributed.is_initialized():
      logging.warning('The JAX preemption service is off (jax_enable_preemption_service): '
                      'SIGTERM will end training without a checkpoint.')
      return
    if threading.current_thread() is not threading.main_thread():
      logging.warning('Training runs outside the main thread, where Python cannot handle '
                      'signals: SIGTERM will end it without a checkpoint.')
      return
    self._previous_handler = signal.signal(signal.SIGTERM, self._on_signal)
    self._previous_interrupt_handler = signal.signal(signal.SIGINT, self._on_signal)
    _saving_on_interrupt.set()
    self._installed = True

  def _on_signal(self, signum, frame):
    del frame
    # A signal handler must not do I/O or take locks: only set the flag.
    if self._received is None:
      self._received = signal.Signals(signum).name

  def reached(self, step: int) -> bool:
    """True when training must save and stop after ``step``.

    Args:
      step: the number of steps done; the same on every process.

    Returns:
      Whether a preemption notice has arrived and ``step`` is the step every
      process stops at.
    """
    if self._use_jax:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._received is not None

  @property
  def signal_name(self) -> str:
    """The signal that stopped training: 'SIGTERM' (also JAX's service) or 'SIGINT'."""
    return self._received or 'SIGTERM'

  def close(self) -> None:
    """Puts back the SIGTERM handler that was there before."""
    if self._installed:
      # None: the previous handler was not set from Python; the default is
      # the best stand-in.
      for signum, previous in ((signal.SIGTERM, self._previous_handler),
                               (signal.SIGINT, self._previous_interrupt_handler)):
        signal.signal(signum, signal.SIG_DFL if previous is None else previous)
      _saving_on_interrupt.clear()
      self._installed = False

  def __enter__(self) -> 'PreemptionWatcher':
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def stop(step: int, ckpt, signal_name: str = 'SIGTERM') -> None:
  """Waits for checkpoint ``step`` to be on disk, reports, raises Preempted.

  Args:
    step: the step just saved, the same on every process.
    ckpt: the run's checkpoints.Checkpointer.
    signal_name: what stopped training ('SIGTERM' or 'SIGINT'), for the
      message and the exit status.

  Raises:
    Preempted: always (after the checkpoint is complete).
    checkpoints.CheckpointWriteError: the checkpoint could not be written.
  """
  ckpt.wait()
  preempted = Preempted(step, ckpt.directory, signal_name)
  if jax.process_index() == 0:
    print(preempted, flush=True)
  else:
    logging.warning('Process %d: %s', jax.process_index(), preempted)
  raise preempted
