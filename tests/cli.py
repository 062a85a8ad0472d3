"""Runs the entry points (train.py, sample.py, evaluate.py) as a user would, in subprocesses."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start(script: str, *flags: str) -> subprocess.Popen:
  """Starts `python script flags...` in the repository root on one CPU device.

  The XLA options match the test process's (conftest): compile time dominates.
  """
  env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS='1', XLA_FLAGS='', PYTHONPATH=REPO)
  return subprocess.Popen([sys.executable, script, *flags], cwd=REPO, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[str, str]:
  """Waits for ``proc``; asserts it succeeded (showing its stderr) and returns (out, err)."""
  out, err = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, err[-3000:]
  return out, err
