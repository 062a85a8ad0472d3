"""Test set-up: 8 fake CPU devices for the sharding tests, repo on sys.path."""

import os
import sys

# Must happen before jax is imported anywhere in the test session.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

# Test models are tiny: compile time dominates, and XLA's heavy passes buy
# nothing at these sizes.
jax.config.update('jax_disable_most_optimizations', True)


import pytest  # noqa: E402


@pytest.fixture
def no_restore(monkeypatch):
  """Makes reaching the checkpoint restore (and so any compile) a failure."""
  from vdm import run_lib  # pylint: disable=g-import-not-at-top

  def fail(*args, **kwargs):
    raise AssertionError('restore_run reached: the error came too late.')
  monkeypatch.setattr(run_lib, 'restore_run', fail)
