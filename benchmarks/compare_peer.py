"""Ours against lucidrains' video-diffusion-pytorch on the same workload, same run.

  python benchmarks/compare_peer.py --workload=tiny

First run: creates benchmarks/.peer (a separate venv, git-ignored) with a CPU
torch (torch==2.13.0, the CPU wheel pip finds on these machines) and
video-diffusion-pytorch==0.7.0 with its model-side dependencies (einops,
einops-exts, rotary-embedding-torch, tqdm, pillow); torchvision, which the peer
imports only for its data loader, is replaced by a stub module, and its
text-conditioning extras (transformers, sentencepiece, sacremoses) are left
out. Later runs reuse the venv.

Each side runs in its own subprocess, pinned to 2 CPUs with 2 compute threads:
ours is Trainer.train_step / Trainer.sample's step (benchmarks/common.py), the
peer's is benchmarks/peer_worker.py. Both build, compile and warm up first;
then the driver alternates them, A B A B, for --rounds rounds of a few steps
each, and compares the medians pair by pair. Training is measured first (one
pair of processes), sampling next (another pair), so each peak RSS belongs to
one task. The last line reads

  speedup train=X.XX sample=Y.YY memory=Z.ZZ

(peer seconds / ours, and the peer's peak RSS over the timed training steps /
ours). The table before it also gives each side's setup peak (model build, our
compilation, warm-up) and its ratio.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PEER_VENV = os.path.join(HERE, '.peer')
PEER_PYTHON = os.path.join(PEER_VENV, 'bin', 'python')
PEER_MARKER = os.path.join(PEER_VENV, '.installed-v1')
PEER_PACKAGES = ['video-diffusion-pytorch==0.7.0']
PEER_DEPENDENCIES = ['einops', 'einops-exts', 'rotary-embedding-torch', 'tqdm', 'pillow', 'numpy']
TORCH = 'torch==2.13.0'

TORCHVISION_STUB = '''"""Stub torchvision: video-diffusion-pytorch imports it only for its data loader."""
from . import transforms, utils  # noqa: F401
'''
TORCHVISION_STUB_MODULE = '''"""Stub: any attribute is a placeholder that fails when used."""


class _Unavailable:
  def __init__(self, *args, **kwargs):
    pass

  def __call__(self, *args, **kwargs):
    raise RuntimeError('torchvision is a stub in this venv (benchmarks/compare_peer.py)')


def __getattr__(name):
  return _Unavailable
'''


# --------------------------------------------------------------------------- peer venv

def _run(cmd: list[str]) -> None:
  print('+ ' + ' '.join(cmd), flush=True)
  subprocess.run(cmd, check=True)


def ensure_peer_venv(python: str) -> None:
  """Creates benchmarks/.peer with the peer and a CPU torch (once)."""
  if os.path.exists(PEER_MARKER) and os.path.exists(PEER_PYTHON):
    return
  print(f'Creating the peer venv in {os.path.relpath(PEER_VENV)} (once; about a minute)...',
        flush=True)
  if os.path.exists(PEER_VENV):
    shutil.rmtree(PEER_VENV)
  _run([python, '-m', 'venv', PEER_VENV])
  pip = [PEER_PYTHON, '-m', 'pip', 'install', '-q']
  # The CPU wheel first, by exact version: an unpinned torch (or letting the
  # peer's requirements pull one) would bring a multi-GB CUDA build.
  _run(pip + [TORCH])
  _run(pip + ['--no-deps'] + PEER_PACKAGES)
  _run(pip + PEER_DEPENDENCIES + [TORCH])
  site = subprocess.run([PEER_PYTHON, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                        check=True, capture_output=True, text=True).stdout.strip()
  stub = os.path.join(site, 'torchvision')
  os.makedirs(stub, exist_ok=True)
  with open(os.path.join(stub, '__init__.py'), 'w') as f:
    f.write(TORCHVISION_STUB)
  for name in ('transforms.py', 'utils.py'):
    with open(os.path.join(stub, name), 'w') as f:
      f.write(TORCHVISION_STUB_MODULE)
  subprocess.run([PEER_PYTHON, '-c', 'import video_diffusion_pytorch'], check=True)
  with open(PEER_MARKER, 'w') as f:
    f.write(datetime.datetime.now().isoformat() + '\n')


# --------------------------------------------------------------------------- workers

def _pin(threads: int) -> None:
  """Pins this process to the first `threads` CPUs and caps math threads."""
  try:
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, cpus)
  except (AttributeError, OSError):
    pass


def _worker_env(threads: int) -> dict:
  env = dict(os.environ)
  for key in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS'):
    env[key] = str(threads)
  env['PYTHONUNBUFFERED'] = '1'
  return env


class Worker:
  """A benchmark subprocess spoken to with one JSON line per command."""

  def __init__(self, name: str, cmd: list[str], threads: int):
    self.name = name
    start = time.perf_counter()
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True, env=_worker_env(threads), cwd=ROOT,
                                 preexec_fn=lambda: _pin(threads))
    self.ready = self._read()
    self.setup_s = time.perf_counter() - start

  def _read(self) -> dict:
    while True:
      line = self.proc.stdout.readline()
      if not line:
        raise RuntimeError(f'{self.name} worker exited (code {self.proc.wait()}); '
                           'its error is printed above.')
      line = line.strip()
      if line.startswith('{'):
        return json.loads(line)
      print(f'[{self.name}] {line}', flush=True)

  def ask(self, command: str) -> dict:
    self.proc.stdin.write(command + '\n')
    self.proc.stdin.flush()
    return self._read()

  def close(self) -> None:
    try:
      self.proc.stdin.write('quit\n')
      self.proc.stdin.flush()
    except BrokenPipeError:
      pass
    self.proc.wait(timeout=60)


def ours_worker_main(args) -> None:
  """--worker mode: our side, same protocol as peer_worker.py."""
  _pin(args.threads)
  sys.path.insert(0, HERE)
  import common  # pylint: disable=g-import-not-at-top
  config = common.get_config(args.workload)
  prepared = common.PREPARE[args.kind](config)
  for _ in range(args.warmup):
    common.block(prepared.step())
  rate = common.matmul_rate(2048)
  setup_peak = common.rss_high_water_mark_bytes()  # Build, init, compile and warm-up.
  hwm_reset = common.reset_rss_high_water_mark()
  info = dict(prepared.info)
  info.update(ready=True, matmul_rate=rate, hwm_reset=hwm_reset, jax=common.jax.__version__,
              flops=info['matmul_flops'], setup_peak_rss_bytes=setup_peak,
              xla_memory=common.xla_memory(prepared.compiled))
  print(json.dumps(info), flush=True)
  for line in sys.stdin:
    cmd = line.split()
    if not cmd:
      continue
    if cmd[0] == 'run':
      times = common.time_calls(prepared.step, int(cmd[1]), warmup=0)
      print(json.dumps({'times': times}), flush=True)
    elif cmd[0] == 'stats':
      print(json.dumps({'peak_rss_bytes': common.host_peak_rss_bytes(),
                        'steady_peak_rss_bytes': common.rss_high_water_mark_bytes()
                                                 if hwm_reset else None}), flush=True)
    elif cmd[0] == 'quit':
      break


# --------------------------------------------------------------------------- driver

def _load() -> str:
  try:
    return ' '.join(f'{x:.2f}' for x in os.getloadavg())
  except OSError:
    return '?'


def compare(kind: str, args) -> dict:
  """Alternates ours and the peer on one task; returns the pairs and stats."""
  base = ['--kind', kind, '--workload', args.workload, '--threads', str(args.threads),
          '--warmup', str(args.warmup)]
  print(f'\n== {kind}: starting the peer worker, then ours (build, compile, warm up) ==',
        flush=True)
  peer = Worker('peer', [PEER_PYTHON, os.path.join(HERE, 'peer_worker.py')] + base, args.threads)
  ours = Worker('ours', [sys.executable, os.path.abspath(__file__), '--worker'] + base,
                args.threads)
  steps = args.train_steps if kind == 'train' else args.sample_steps
  pairs = []
  try:
    for r in range(args.rounds):
      a = statistics.median(ours.ask(f'run {steps}')['times'])
      b = statistics.median(peer.ask(f'run {steps}')['times'])
      pairs.append((a, b))
      print(f'{kind} round {r + 1}/{args.rounds}: ours {a:.4f} s  peer {b:.4f} s  '
            f'ratio {b / a:.2f}  (load {_load()})', flush=True)
    ours_stats, peer_stats = ours.ask('stats'), peer.ask('stats')
  finally:
    ours.close()
    peer.close()
  return dict(kind=kind, pairs=pairs, ours=dict(ours.ready, **ours_stats, setup_s=ours.setup_s),
              peer=dict(peer.ready, **peer_stats, setup_s=peer.setup_s))


def _table(rows):
  widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
  out = []
  for j, r in enumerate(rows):
    out.append('  '.join(str(c).rjust(w) if j and i else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(r, widths))))
    if j == 0:
      out.append('  '.join('-' * w for w in widths))
  return '\n'.join(out)


def _steps_peak(stats: dict) -> int:
  """Peak RSS over the timed steps: VmHWM since the reset, else ru_maxrss."""
  return stats.get('steady_peak_rss_bytes') or stats['peak_rss_bytes']


def report(results: dict, args) -> dict:
  mib = lambda b: f'{b / 2**20:,.0f}' if b else '-'
  summary = {}
  print('\n== pairs (seconds per step, median of each round; ratio = peer / ours) ==')
  rows = [('task', 'round', 'ours s', 'peer s', 'ratio')]
  for kind, res in results.items():
    for i, (a, b) in enumerate(res['pairs']):
      rows.append((kind, i + 1, f'{a:.4f}', f'{b:.4f}', f'{b / a:.2f}'))
    ratios = [b / a for a, b in res['pairs']]
    ours_med = statistics.median(a for a, _ in res['pairs'])
    peer_med = statistics.median(b for _, b in res['pairs'])
    rows.append((kind, 'median', f'{ours_med:.4f}', f'{peer_med:.4f}',
                 f'{statistics.median(ratios):.2f}'))
    summary[kind] = dict(ours_s=ours_med, peer_s=peer_med, speedup=statistics.median(ratios),
                         ratios=ratios)
  print(_table(rows))

  machine = max(max(r['ours']['matmul_rate'], r['peer']['matmul_rate'])
                for r in results.values())
  print(f'\n== FLOPs and achieved rate (machine float32 2048x2048 matmul: '
        f'{machine / 1e9:.0f} GFLOP/s) ==')
  rows = [('task', 'side', 'params', 'matmul+conv GFLOP', 'XLA GFLOP', 'GFLOP/s',
           '% of matmul', 'setup peak RSS MiB', 'steps peak RSS MiB', 'matmul GFLOP/s')]
  for kind, res in results.items():
    for side in ('ours', 'peer'):
      s = res[side]
      t = summary[kind][f'{side}_s']
      rate = s['flops'] / t
      rows.append((kind, side, f"{s['param_count']:,}", f"{s['flops'] / 1e9:.2f}",
                   f"{s['xla_flops'] / 1e9:.2f}" if s.get('xla_flops') else '-',
                   f'{rate / 1e9:.1f}', f'{100 * rate / machine:.1f}',
                   mib(s.get('setup_peak_rss_bytes')), mib(_steps_peak(s)),
                   f"{s['matmul_rate'] / 1e9:.0f}"))
      summary[kind][f'{side}_gflops_per_s'] = rate / 1e9
  print(_table(rows))
  print('(matmul+conv FLOPs: torch FlopCounterMode for the peer, the same ops counted on '
        "our jaxpr; XLA GFLOP: XLA's cost analysis, every op. Setup peak RSS: the process's "
        'high-water mark over model build, our compilation, and warm-up; steps peak RSS: the '
        'high-water mark over the timed steps (reset after warm-up), the memory a run holds.)')
  for kind, key in (('train', 'memory'), ('sample', 'memory_sample')):
    if kind in results:
      ours, peer = results[kind]['ours'], results[kind]['peer']
      summary[key] = _steps_peak(peer) / _steps_peak(ours)
      if ours.get('setup_peak_rss_bytes') and peer.get('setup_peak_rss_bytes'):
        summary[key + '_setup'] = peer['setup_peak_rss_bytes'] / ours['setup_peak_rss_bytes']
  for kind, res in results.items():
    print(f"{kind} setup: ours {res['ours']['setup_s']:.0f} s (compile "
          f"{res['ours']['compile_s']:.0f} s), peer {res['peer']['setup_s']:.0f} s")
  return summary


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workload', default='tiny')
  parser.add_argument('--rounds', type=int, default=5, help='A B rounds per task')
  parser.add_argument('--train_steps', type=int, default=2, help='timed steps per round')
  parser.add_argument('--sample_steps', type=int, default=5, help='timed steps per round')
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--threads', type=int, default=2)
  parser.add_argument('--tasks', default='train,sample')
  parser.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--kind', default='train', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    ours_worker_main(args)
    return
  if args.workload != 'tiny':
    raise SystemExit('the peer comparison is defined for --workload=tiny only')
  ensure_peer_venv(os.environ.get('PEER_BASE_PYTHON', shutil.which('python3') or sys.executable))
  started = time.time()
  load_start = _load()
  results = {k: compare(k, args) for k in args.tasks.split(',')}
  summary = report(results, args)
  sys.path.insert(0, HERE)
  import common  # pylint: disable=g-import-not-at-top
  record = dict(benchmark='compare_peer', workload=args.workload, summary=summary,
                results=results, load_start=load_start, load_end=_load(),
                wall_s=time.time() - started, command=' '.join(['compare_peer.py'] + sys.argv[1:]),
                **common.machine_info())
  common.write_result(record, f'compare_peer_{args.workload}')
  fmt = lambda k: f"{summary[k]['speedup']:.2f}" if k in summary else 'n/a'
  mem = f"{summary['memory']:.2f}" if 'memory' in summary else 'n/a'
  if 'memory_setup' in summary:
    print(f"training setup peak RSS, peer / ours: {summary['memory_setup']:.2f} "
          '(our side includes compiling the step)')
  print(f"load average: start {load_start}, end {_load()}")
  print(f'speedup train={fmt("train")} sample={fmt("sample")} memory={mem}', flush=True)


if __name__ == '__main__':
  main()
