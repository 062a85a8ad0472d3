"""Compile time of the test suite under XLA:CPU options: the suite's choice.

  python benchmarks/xla_cpu_compile.py --rounds=2 tests/model_test.py tests/guidance_test.py
  python benchmarks/xla_cpu_compile.py --train_step --rounds=5

Tests compile many small programs and run them a few times, so their time is
mostly XLA's compile time; tests/cli.py takes the options measured cheapest
here. Two measurements:

  * test files: pytest on the given files in one fresh process per variant of
    XLA_FLAGS (8 CPU devices, as conftest sets them, plus the variant's
    options), the variants alternating (A B A B ...) so that a change of
    machine load hits both; the median wall and CPU seconds of each.
  * --train_step: the tiny train step (configs/tiny.py, the tests' config)
    lowered once in this process and compiled again and again under the
    suite's options (tests/cli.py) and under variations of them, through
    jax.jit's per-compile options; the median CPU and wall seconds of each.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tests'))
import cli as test_processes  # pylint: disable=g-import-not-at-top,wrong-import-position

# The --train_step measurement compiles under the test session's options.
os.environ['XLA_FLAGS'] = test_processes.XLA_FLAGS
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

# Test files: name -> XLA options added to the device count.
VARIANTS = {
    'default': '',
    'no fusion emitters': '--xla_cpu_use_fusion_emitters=false',
    'no fusion emitters, one codegen split': (
        '--xla_cpu_use_fusion_emitters=false --xla_cpu_parallel_codegen_split_count=1'),
}
# --train_step: name -> compile options on top of tests/cli.py's XLA_FLAGS.
COMPILE_VARIANTS = {
    'the suite\'s (tests/cli.py)': {},
    'copy insertion without region analysis': {
        'xla_cpu_copy_insertion_use_region_analysis': False},
    'with fusion emitters': {'xla_cpu_use_fusion_emitters': True},
}


def _median(runs: list[dict]) -> dict:
  return {k: statistics.median(run[k] for run in runs) for k in runs[0]}


def _pytest(options: str, files: list[str]) -> dict:
  """Runs pytest on ``files`` in a fresh process; its wall and CPU seconds."""
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count=8 {options}')
  # A fresh compilation cache per run (conftest makes one when none is set).
  env.pop('JAX_COMPILATION_CACHE_DIR', None)
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  start = time.perf_counter()
  proc = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', *files],
                        cwd=ROOT, env=env, capture_output=True, text=True)
  wall = time.perf_counter() - start
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  if proc.returncode != 0:
    raise SystemExit(f'pytest failed under {options!r}:\n{proc.stdout[-3000:]}')
  cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
  return {'wall_s': wall, 'cpu_s': cpu}


def measure_test_files(rounds: int, files: list[str]) -> dict:
  runs = {name: [] for name in VARIANTS}
  for r in range(rounds):
    for name, options in VARIANTS.items():
      runs[name].append(_pytest(options, files))
      print(f'round {r + 1}/{rounds} {name}: {runs[name][-1]}', file=sys.stderr, flush=True)
  return {name: dict(_median(runs[name]), xla_options=options, runs=runs[name])
          for name, options in VARIANTS.items()}


def measure_train_step(rounds: int) -> dict:
  from configs import tiny  # pylint: disable=g-import-not-at-top
  from vdm import sharding  # pylint: disable=g-import-not-at-top
  from vdm.train import train_lib  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_disable_most_optimizations', True)  # As in the test session.
  config = tiny.get_config()
  trainer = train_lib.Trainer(config, mesh=sharding.create_mesh((('data', 1), ('fsdp', 1))))
  state = trainer.init_state()
  batch = sharding.global_batch(common.make_batch(config), trainer.mesh)
  lowered = trainer.train_step.lower(state, batch)
  runs = {name: [] for name in COMPILE_VARIANTS}
  for _ in range(rounds):
    for name, options in COMPILE_VARIANTS.items():
      jax.clear_caches()  # Else the second compile of a program is a lookup.
      cpu, wall = time.process_time(), time.perf_counter()
      lowered.compile(compiler_options=options)
      runs[name].append({'wall_s': time.perf_counter() - wall, 'cpu_s': time.process_time() - cpu})
  return {name: dict(_median(runs[name]), compile_options=COMPILE_VARIANTS[name],
                     runs=runs[name]) for name in COMPILE_VARIANTS}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--rounds', type=int, default=2, help='runs per variant')
  parser.add_argument('--train_step', action='store_true',
                      help='compile the tiny train step instead of running test files')
  parser.add_argument('files', nargs='*', default=['tests/model_test.py'],
                      help='test files, relative to the repository root')
  args = parser.parse_args(argv)
  if args.train_step:
    variants = measure_train_step(args.rounds)
    record = {'benchmark': 'xla_cpu_compile_train_step', 'base_xla_flags': os.environ['XLA_FLAGS']}
  else:
    variants = measure_test_files(args.rounds, args.files)
    record = {'benchmark': 'xla_cpu_compile', 'files': args.files}
  record.update(machine=common.machine_info(), variants=variants)
  rows = [['variant', 'wall s', 'CPU s']]
  rows += [[name, f"{v['wall_s']:.2f}", f"{v['cpu_s']:.2f}"] for name, v in variants.items()]
  print(common.table(rows))
  common.write_result(record, record['benchmark'])
  print(json.dumps(record, sort_keys=True))


if __name__ == '__main__':
  main()
