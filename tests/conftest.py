"""Test set-up: 8 fake CPU devices for the sharding tests, the session's XLA
options (tests/cli.py), repo on sys.path, one compilation cache for the whole
session, and the test files handed out heaviest first."""

import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cli  # noqa: E402  pylint: disable=g-import-not-at-top

# Must happen before jax is imported anywhere in the test session.
os.environ.setdefault('XLA_FLAGS', f'--xla_force_host_platform_device_count=8 {cli.XLA_FLAGS}')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# Many tests (and the entry points they start in subprocesses, which inherit
# the environment) compile the same tiny programs: XLA's persistent cache
# lets the second compile of a program read the first one's result. A new
# directory per session, so nothing carries over from an older checkout.
# pytest-xdist's workers inherit the directory of the process that started them.
_OWN_CACHE = 'JAX_COMPILATION_CACHE_DIR' not in os.environ
if _OWN_CACHE:
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='vdm_tests_xla_')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

# Test models are tiny: compile time dominates, and XLA's heavy passes buy
# nothing at these sizes. Tests marked `optimized` are the exception (below).
jax.config.update('jax_disable_most_optimizations', True)


import pytest  # noqa: E402


@pytest.fixture
def no_restore(monkeypatch):
  """Makes reaching the checkpoint restore (and so any compile) a failure."""
  from vdm import run_lib  # pylint: disable=g-import-not-at-top

  def fail(*args, **kwargs):
    raise AssertionError('restore_run reached: the error came too late.')
  monkeypatch.setattr(run_lib, 'restore_run', fail)


# The test files, heaviest first (by their measured time on 2 cores). With
# `pytest -n 2 --dist loadfile` (make test) each file runs on one worker;
# handing out the heaviest files first keeps one long file from running alone
# at the end. Files not listed run after these, in their usual order.
_HEAVIEST_FIRST = ('train_test.py', 'sample_test.py', 'latent_cli_test.py', 'videofusion_test.py',
                   'text_test.py', 'model_test.py', 'evaluate_test.py', 'trip_cli_test.py', 'prepare_test.py',
                   'samplers_test.py',
                   'guidance_test.py', 'trip_test.py', 'latent_test.py', 'data_test.py',
                   'mesh_sampling_test.py', 'compat_test.py', 'evaluation_test.py')


@pytest.fixture(autouse=True)
def _optimized_compiles(request):
  """XLA's optimizations for tests marked `optimized`.

  Their programs run long (statistics over thousands of samples and hundreds
  of sampler steps, the I3D network): unoptimized code runs them 2-4x slower
  than optimizing costs (BENCHMARKS.md, "Test suite").
  """
  if request.node.get_closest_marker('optimized') is None:
    yield
    return
  jax.config.update('jax_disable_most_optimizations', False)
  try:
    yield
  finally:
    jax.config.update('jax_disable_most_optimizations', True)


def pytest_unconfigure(config):
  del config
  if _OWN_CACHE:
    shutil.rmtree(os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)


def pytest_collection_modifyitems(items):
  def rank(item):
    name = os.path.basename(str(item.fspath))
    return _HEAVIEST_FIRST.index(name) if name in _HEAVIEST_FIRST else len(_HEAVIEST_FIRST)
  items.sort(key=rank)  # Stable: the order inside a file is kept.
