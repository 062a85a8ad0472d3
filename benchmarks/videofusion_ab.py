"""VideoFusion against the plain model of equal total parameter count, same run, A/B.

  python benchmarks/videofusion_ab.py                      # digits36 vs digits_videofusion
  python benchmarks/videofusion_ab.py --plain=digits --tasks=train

Each side runs in its own subprocess (compare_peer.py's worker: build, compile,
warm up, then timed steps on command; 2 CPUs, 2 compute threads), so each
peak RSS belongs to one model and one task. The driver alternates them,
A B A B, for --rounds rounds and compares the medians pair by pair:

  * train: Trainer.train_step exactly as training runs it (the plain model on
    all T + K frames; VideoFusion's base on the key frame and the K images,
    its residual on the T clip frames);
  * sample: one step of Trainer.sample's compiled sampler (batch
    config.training.batch_size, T frames, DDIM).

Memory: the RSS high-water mark over the timed steps and over setup (model
build, compile, warm-up), and XLA's temporary buffers of the compiled step
(the step's own working memory, what a GPU's peak would follow). The last
line reads

  videofusion speedup train=X.XX sample=Y.YY temp_memory_train=Z.ZZ

(plain seconds / VideoFusion's, plain temporary bytes / VideoFusion's).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # pylint: disable=g-import-not-at-top,wrong-import-position
import compare_peer  # pylint: disable=g-import-not-at-top,wrong-import-position


def _worker(name: str, workload: str, kind: str, args) -> compare_peer.Worker:
  cmd = [sys.executable, os.path.join(HERE, 'compare_peer.py'), '--worker', '--kind', kind,
         '--workload', workload, '--threads', str(args.threads), '--warmup', str(args.warmup)]
  return compare_peer.Worker(name, cmd, args.threads)


def ab(kind: str, args) -> dict:
  """Alternates the plain model (A) and VideoFusion (B) on one task."""
  print(f'\n== {kind}: starting {args.plain} (A) and {args.videofusion} (B) ==', flush=True)
  a = _worker('plain', args.plain, kind, args)
  b = _worker('videofusion', args.videofusion, kind, args)
  steps = args.train_steps if kind == 'train' else args.sample_steps
  pairs = []
  try:
    for r in range(args.rounds):
      ta = statistics.median(a.ask(f'run {steps}')['times'])
      tb = statistics.median(b.ask(f'run {steps}')['times'])
      pairs.append((ta, tb))
      print(f'{kind} round {r + 1}/{args.rounds}: plain {ta:.4f} s  videofusion {tb:.4f} s  '
            f'ratio {ta / tb:.2f}  (load {compare_peer._load()})', flush=True)  # pylint: disable=protected-access
    stats_a, stats_b = a.ask('stats'), b.ask('stats')
  finally:
    a.close()
    b.close()
  return dict(kind=kind, pairs=pairs, plain=dict(a.ready, **stats_a, setup_s=a.setup_s),
              videofusion=dict(b.ready, **stats_b, setup_s=b.setup_s))


def report(results: dict) -> dict:
  mib = lambda n: f'{n / 2**20:,.0f}' if n else '-'
  summary = {}
  rows = [('task', 'side', 'params', 'median s/step', 'plain / VF', 'matmul+conv GFLOP',
           'XLA temp MiB', 'steps peak RSS MiB', 'setup peak RSS MiB', 'compile s')]
  for kind, res in results.items():
    ratios = [ta / tb for ta, tb in res['pairs']]
    med = {'plain': statistics.median(t for t, _ in res['pairs']),
           'videofusion': statistics.median(t for _, t in res['pairs'])}
    temp = {side: res[side].get('xla_memory', {}).get('temp_bytes') for side in med}
    summary[kind] = dict(speedup=statistics.median(ratios), ratios=ratios,
                         plain_s=med['plain'], videofusion_s=med['videofusion'])
    if temp['plain'] and temp['videofusion']:
      summary[kind]['temp_memory'] = temp['plain'] / temp['videofusion']
    summary[kind]['steps_rss'] = (compare_peer._steps_peak(res['plain']) /  # pylint: disable=protected-access
                                  compare_peer._steps_peak(res['videofusion']))  # pylint: disable=protected-access
    for side in ('plain', 'videofusion'):
      s = res[side]
      rows.append((kind, side, f"{s['param_count']:,}", f'{med[side]:.4f}',
                   f'{summary[kind]["speedup"]:.2f}' if side == 'videofusion' else '',
                   f"{s['flops'] / 1e9:.2f}" if s.get('flops') else '-', mib(temp[side]),
                   mib(compare_peer._steps_peak(s)), mib(s.get('setup_peak_rss_bytes')),  # pylint: disable=protected-access
                   f"{s['compile_s']:.0f}"))
  print('\n' + common.table(rows))
  print('(ratio = median over rounds of plain seconds / VideoFusion seconds; XLA temp: the '
        "compiled step's temporary buffers; peak RSS: the process's high-water mark)")
  return summary


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--plain', default='digits36', help='plain workload (A)')
  parser.add_argument('--videofusion', default='digits_videofusion', help='VideoFusion workload (B)')
  parser.add_argument('--rounds', type=int, default=5, help='A B rounds per task')
  parser.add_argument('--train_steps', type=int, default=3, help='timed steps per round')
  parser.add_argument('--sample_steps', type=int, default=5, help='timed steps per round')
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--threads', type=int, default=2)
  parser.add_argument('--tasks', default='train,sample')
  args = parser.parse_args()
  started, load_start = time.time(), compare_peer._load()  # pylint: disable=protected-access
  results = {k: ab(k, args) for k in args.tasks.split(',')}
  summary = report(results)
  record = dict(benchmark='videofusion_ab', plain=args.plain, videofusion=args.videofusion,
                summary=summary, results=results, load_start=load_start,
                load_end=compare_peer._load(), wall_s=time.time() - started,  # pylint: disable=protected-access
                command=' '.join(['videofusion_ab.py'] + sys.argv[1:]), **common.machine_info())
  path = common.write_result(record, f'videofusion_ab_{args.plain}')
  print(f'load average: start {load_start}, end {record["load_end"]}; written to {path}')
  fmt = lambda k, key: f"{summary[k][key]:.2f}" if k in summary and key in summary[k] else 'n/a'
  print(f'videofusion speedup train={fmt("train", "speedup")} sample={fmt("sample", "speedup")} '
        f'temp_memory_train={fmt("train", "temp_memory")}', flush=True)


if __name__ == '__main__':
  main()
