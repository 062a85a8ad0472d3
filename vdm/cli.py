"""What the entry points (train.py, sample.py, evaluate.py) share around main().

* Orbax and TFDS log every file operation at INFO: the console is kept at
  WARNING unless --verbosity (or -v) is given.
* An error the code raises on purpose about the user's input (a ValueError,
  FileNotFoundError or KeyError raised inside this repository: a config typo,
  a missing workdir, a wrong input shape) prints its message alone on stderr
  and exits with status 2. Anything else (an error raised inside a library,
  or any other exception) is a bug and keeps its traceback; --verbosity=1
  shows the traceback of user errors too.
* Multi-host: every entry point takes --coordinator_address, --num_processes
  and --process_id (or finds the cluster from SLURM / TPU environments) and
  starts JAX's runtime before main() runs.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Callable

from absl import app
from absl import flags
from absl import logging

USER_ERRORS = (ValueError, FileNotFoundError, KeyError)
USAGE_ERROR_STATUS = 2
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_COORDINATOR = flags.DEFINE_string('coordinator_address', '',
                                   'host:port of process 0 (multi-host).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', 0, 'Number of processes (multi-host).')
_PROCESS_ID = flags.DEFINE_integer('process_id', -1, 'This process (multi-host).')


def initialize_distributed() -> None:
  """Starts JAX's multi-host runtime from the flags or the cluster environment."""
  import jax  # pylint: disable=g-import-not-at-top
  from vdm import sharding  # pylint: disable=g-import-not-at-top
  if _COORDINATOR.value:
    # CPU processes (tests, a laptop) need a collectives backend; GPUs and
    # TPUs ignore this setting.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  sharding.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)


def raised_here(error: BaseException) -> bool:
  """Whether this repository's code raised the error on purpose.

  True when the innermost frame of the traceback is a ``raise`` statement in
  a file of this repository: an error from inside a library, or one that C
  code (numpy, XLA) raised on a line of ours, is a bug.
  """
  frames = traceback.extract_tb(error.__traceback__)
  if not frames:
    return False
  path = os.path.abspath(frames[-1].filename)
  ours = path.startswith(_REPO + os.sep) and f'{os.sep}site-packages{os.sep}' not in path
  return ours and (frames[-1].line or '').lstrip().startswith('raise')


def user_error_message(error: BaseException) -> str:
  """The message of an error, without the quotes str() puts around KeyError's."""
  if isinstance(error, KeyError) and len(error.args) == 1:
    return str(error.args[0])
  return str(error)


def run(main: Callable[[list[str]], None]) -> None:
  """app.run(main) with quiet library logs, clean user errors and the multi-host
  runtime started (see module docstring)."""

  def wrapped(argv):
    verbose = any(a.startswith(('--verbosity', '-v')) for a in sys.argv[1:])
    if not verbose:
      logging.set_verbosity(logging.WARNING)
    try:
      initialize_distributed()
      main(argv)
    except USER_ERRORS as e:
      if (verbose and flags.FLAGS.verbosity >= 1) or not raised_here(e):
        raise
      print(f'error: {user_error_message(e)}', file=sys.stderr, flush=True)
      sys.exit(USAGE_ERROR_STATUS)

  app.run(wrapped)
