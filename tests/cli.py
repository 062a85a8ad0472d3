"""Runs the entry points (train.py, sample.py, evaluate.py) as a user would: in subprocesses,
or their library functions in this process with the flags as keywords."""

import dataclasses
import os
import signal
import socket
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# XLA:CPU options of every process in the test session (conftest sets them for
# pytest's own). Test models are tiny, so compiling dominates: with XLA:CPU's
# older code generator instead of its fusion emitters the suite takes about 70%
# of the time (BENCHMARKS.md, "Test suite"), though the compiled programs run
# slower; and a program's machine code generated as one piece rather than
# split for parallel threads takes about 9% less CPU time to compile (the
# suite keeps both cores busy anyway).
XLA_FLAGS = '--xla_cpu_use_fusion_emitters=false --xla_cpu_parallel_codegen_split_count=1'
# What a test compiles with (jax.jit's compiler_options) where it compares two
# different programs bit for bit or to a few float32 ulps: XLA:CPU's default
# code generator, for which those equalities were written and which users run.
DEFAULT_CODEGEN = {'xla_cpu_use_fusion_emitters': True}


def env(num_devices: int | None = 1, **extra: str) -> dict:
  """The environment of a process a test starts: ``num_devices`` CPU devices
  (None: as many as this process has) and this session's XLA options, so that
  the same program gives the same numbers here and there."""
  flags = os.environ.get('XLA_FLAGS', XLA_FLAGS)
  if num_devices is not None:
    flags = f'--xla_force_host_platform_device_count={num_devices} {XLA_FLAGS}'
  environ = dict(os.environ, XLA_FLAGS=flags, JAX_DISABLE_MOST_OPTIMIZATIONS='1',
                 PYTHONPATH=REPO)
  environ.update(extra)
  return environ


def start(script: str, *flags: str) -> subprocess.Popen:
  """Starts `python script flags...` in the repository root on one CPU device.

  The XLA options match the test process's (conftest): compile time dominates.
  """
  return subprocess.Popen([sys.executable, script, *flags], cwd=REPO, env=env(), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def free_port() -> int:
  """A free TCP port on 127.0.0.1, for a coordinator of processes run as hosts."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[str, str]:
  """Waits for ``proc``; asserts it succeeded (showing its stderr) and returns (out, err)."""
  out, err = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, err[-3000:]
  return out, err


def interrupt_after(proc: subprocess.Popen, prefix: str, timeout: float = 300
                    ) -> tuple[str, str]:
  """Sends Ctrl-C (SIGINT) once ``proc`` prints a stderr line starting with
  ``prefix``; returns its (stdout, whole stderr) once it has ended."""
  seen = []
  try:
    for line in proc.stderr:
      seen.append(line)
      if line.startswith(prefix):
        break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=timeout)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.communicate()
  return out, ''.join(seen) + err


def _split_flags(request_type, flags: dict) -> tuple[dict, dict]:
  """Flag-named keywords -> (request fields, config.sampling overrides)."""
  from vdm import cli as vdm_cli  # pylint: disable=g-import-not-at-top
  fields = {f.name for f in dataclasses.fields(request_type)}
  unknown = sorted(set(flags) - fields - set(vdm_cli.SAMPLING_FLAGS))
  assert not unknown, f'not a field of {request_type.__name__} nor a sampling flag: {unknown}'
  request = {k: v for k, v in flags.items() if k in fields}
  return request, vdm_cli.sampling_overrides(
      {k: v for k, v in flags.items() if k in vdm_cli.SAMPLING_FLAGS})


def sample(workdir: str, output_dir: str, *, mesh=None, progress: bool = True, **flags):
  """sample_lib.sample in this process, with sample.py's flag names as keywords."""
  from vdm.sampling import sample_lib  # pylint: disable=g-import-not-at-top
  request, overrides = _split_flags(sample_lib.SampleRequest, flags)
  return sample_lib.sample(workdir, output_dir, sample_lib.SampleRequest(**request), overrides,
                           mesh=mesh, progress=progress)


def evaluate(workdir=None, *, config=None, mesh=None, **flags):
  """evaluate_lib.evaluate in this process, with evaluate.py's flag names as keywords."""
  from vdm.evaluation import evaluate_lib  # pylint: disable=g-import-not-at-top
  request, overrides = _split_flags(evaluate_lib.EvalRequest, flags)
  return evaluate_lib.evaluate(workdir, evaluate_lib.EvalRequest(**request), overrides,
                               config=config, mesh=mesh)
