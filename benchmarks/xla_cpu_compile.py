"""Time and CPU of test files under XLA:CPU options: the test suite's choice.

  python benchmarks/xla_cpu_compile.py --rounds=2 tests/model_test.py tests/mesh_sampling_test.py

Runs the given test files with pytest in one process per variant of XLA_FLAGS
(8 CPU devices as conftest sets them, plus the variant's options), the variants
alternating (A B A B ...) so that a change of machine load hits both, and
prints the median wall seconds and CPU seconds (all threads) of each. Tests
compile many small programs and run them a few times, so their time is mostly
XLA's compile time; tests/cli.py takes the options measured fastest here.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

# name -> XLA options added to the device count.
VARIANTS = {
    'default': '',
    'no fusion emitters': '--xla_cpu_use_fusion_emitters=false',
}


def _measure(options: str, files: list[str]) -> dict:
  """Runs pytest on ``files`` in a fresh process; its wall and CPU seconds."""
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count=8 {options}')
  # A fresh compilation cache per run (conftest makes one when none is set).
  env.pop('JAX_COMPILATION_CACHE_DIR', None)
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  start = time.perf_counter()
  proc = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', *files],
                        cwd=common.ROOT, env=env, capture_output=True, text=True)
  wall = time.perf_counter() - start
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  if proc.returncode != 0:
    raise SystemExit(f'pytest failed under {options!r}:\n{proc.stdout[-3000:]}')
  cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
  return {'wall_s': wall, 'cpu_s': cpu}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--rounds', type=int, default=2, help='runs per variant')
  parser.add_argument('files', nargs='*', default=['tests/model_test.py'],
                      help='test files, relative to the repository root')
  args = parser.parse_args(argv)
  runs = {name: [] for name in VARIANTS}
  for r in range(args.rounds):
    for name, options in VARIANTS.items():
      runs[name].append(_measure(options, args.files))
      print(f'round {r + 1}/{args.rounds} {name}: {runs[name][-1]}', file=sys.stderr, flush=True)
  rows = [['variant', 'XLA options', 'wall s', 'CPU s']]
  record = {'benchmark': 'xla_cpu_compile', 'files': args.files,
            'machine': common.machine_info(), 'variants': {}}
  for name, options in VARIANTS.items():
    med = {k: statistics.median(run[k] for run in runs[name]) for k in runs[name][0]}
    record['variants'][name] = dict(med, xla_options=options, runs=runs[name])
    rows.append([name, options or '(none)', f"{med['wall_s']:.1f}", f"{med['cpu_s']:.1f}"])
  print(common.table(rows))
  common.write_result(record, 'xla_cpu_compile')
  print(json.dumps(record, sort_keys=True))


if __name__ == '__main__':
  main()
