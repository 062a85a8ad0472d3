"""Per-step cost of the preemption check, on one process and on two CPU hosts.

  python benchmarks/preemption_check.py            # tiny config, 2 CPU processes
  python benchmarks/preemption_check.py --steps=100

Training asks ``PreemptionWatcher.reached(step)`` after every step. On one
process that reads a flag set by a Python SIGTERM handler; multi-host it is
``jax.experimental.multihost_utils.reached_preemption_sync_point``, which
compares the step with a sync point that JAX's coordination service sets only
after a notice (no collective per step). This script measures both: the cost
of one call in a tight loop, and the tiny config's train step (configs/tiny.py,
synthetic batches) timed with and without the check, interleaved in blocks of
10 steps so that load changes hit both alike. Prints a table and one JSON line
(also benchmarks/results/preemption_check.json).
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(ROOT, 'benchmarks', 'results')


def _worker(args):
  import jax  # pylint: disable=g-import-not-at-top
  if args.num_processes > 1:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(args.coordinator, num_processes=args.num_processes,
                               process_id=args.process_id)
  sys.path.insert(0, ROOT)
  import numpy as np  # pylint: disable=g-import-not-at-top
  from configs import tiny  # pylint: disable=g-import-not-at-top
  from vdm.train import preemption, sharding, train_lib  # pylint: disable=g-import-not-at-top

  config = tiny.get_config()
  config.sharding.mesh = (('data', -1), ('fsdp', 1))
  trainer = train_lib.Trainer(config)
  rng = np.random.default_rng(jax.process_index())
  b = config.training.batch_size // jax.process_count()
  t, k, s = config.data.num_frames, config.data.num_images, config.data.image_size
  local = {'video': rng.uniform(-1, 1, (b, t + k, s, s, 1)).astype(np.float32),
           'label': rng.integers(0, 10, (b,)).astype(np.int32),
           'is_image': np.array([False] * t + [True] * k)}
  batch = sharding.global_batch(local, trainer.mesh)
  state = trainer.init_state()
  step_fn = trainer.compile_train_step(state, batch)
  watcher = preemption.PreemptionWatcher()
  step = 0

  def run(n, check):
    nonlocal state, step
    start = time.perf_counter()
    for _ in range(n):
      state, metrics = step_fn(state, batch)
      step += 1
      # The loop's device_get of the loss, as train() does at log steps; here
      # every step, so each step is timed to completion.
      jax.device_get(metrics['loss'])
      if check:
        assert not watcher.reached(step)
    return (time.perf_counter() - start) / n

  run(5, True)  # Warm-up.
  plain, checked = [], []
  for _ in range(args.steps // 10):
    plain.append(run(10, False))
    checked.append(run(10, True))
  # One call in a tight loop (steps must increase for JAX's protocol).
  calls = 20000
  start = time.perf_counter()
  for i in range(calls):
    watcher.reached(step + 1 + i)
  per_call = (time.perf_counter() - start) / calls
  watcher.close()
  if jax.process_index() == 0:
    print('RESULT ' + json.dumps({
        'processes': jax.process_count(),
        'mechanism': 'jax preemption sync' if jax.distributed.is_initialized()
                     else 'python SIGTERM flag',
        'check_call_us': per_call * 1e6,
        'step_ms_without_check': statistics.median(plain) * 1e3,
        'step_ms_with_check': statistics.median(checked) * 1e3,
    }), flush=True)


def _free_port():
  with socket.socket() as sock:
    sock.bind(('127.0.0.1', 0))
    return sock.getsockname()[1]


def _launch(num_processes, steps):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1')
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, __file__, '--_worker', '--steps', str(steps),
       '--num_processes', str(num_processes), '--process_id', str(i),
       '--coordinator', f'127.0.0.1:{port}'],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(num_processes)]
  outputs = [p.communicate()[0] for p in procs]
  for p, out in zip(procs, outputs):
    if p.returncode:
      raise RuntimeError(f'worker failed ({p.returncode}):\n{out[-3000:]}')
  line = next(l for l in outputs[0].splitlines() if l.startswith('RESULT '))
  return json.loads(line[len('RESULT '):])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--steps', type=int, default=60, help='timed steps per variant')
  parser.add_argument('--_worker', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--num_processes', type=int, default=1, help=argparse.SUPPRESS)
  parser.add_argument('--process_id', type=int, default=0, help=argparse.SUPPRESS)
  parser.add_argument('--coordinator', default='', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args._worker:  # pylint: disable=protected-access
    _worker(args)
    return
  rows = [_launch(1, args.steps), _launch(2, args.steps)]
  print(f'{"processes":>9}  {"mechanism":<22} {"check call":>11} {"step w/o":>9} '
        f'{"step with":>9}')
  for r in rows:
    print(f'{r["processes"]:>9}  {r["mechanism"]:<22} {r["check_call_us"]:>9.2f}us '
          f'{r["step_ms_without_check"]:>7.1f}ms {r["step_ms_with_check"]:>7.1f}ms')
  record = {'benchmark': 'preemption_check', 'steps': args.steps, 'rows': rows,
            'date': time.strftime('%Y-%m-%d'), 'load_average': os.getloadavg()}
  os.makedirs(RESULTS_DIR, exist_ok=True)
  with open(os.path.join(RESULTS_DIR, 'preemption_check.json'), 'w') as f:
    json.dump(record, f, indent=2)
  print(json.dumps(record, sort_keys=True), flush=True)


if __name__ == '__main__':
  main()
