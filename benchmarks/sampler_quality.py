"""FVD against the number of denoiser evaluations, per sampler, on a trained run.

  python benchmarks/sampler_quality.py --workdir=runs/default --num_samples=64 \
      --evaluations=8,16,32,64 --samplers=ancestral,ddim,pc,dpm++2m
  python benchmarks/sampler_quality.py --plot_only   # the PNG from the last JSON

Every point is exactly ``evaluate.py --workdir=W --num_samples=N --sampler=S
--steps=K [--time_grid=G]`` (evaluate_lib.evaluate, in one process so that the
I3D compiles once), with K chosen so that the sampler makes E denoiser
evaluations: K = E, except 'pc', whose K steps cost 2 K - 1 evaluations
(K = (E + 1) // 2). The same --seed gives every sampler the same z_1 and
labels, so the differences are paired. Then, at the number of evaluations
where each sampler's FVD is lowest, the wall-clock of sampling one batch of
config.eval.batch_size videos is timed (compile excluded: a warm-up call
first) and reported per video: sampling only, no I3D. Also the real-vs-real floor at the same N.

Writes benchmarks/results/sampler_quality.json (one record, all points) and,
with matplotlib, a PNG plot (--plot, default docs/sampler_quality.png).
matplotlib is not in requirements.txt: only this script's plot needs it
(pip install matplotlib); without it the table and JSON are still written.
evaluate() also writes each point to <workdir>/eval/<step>_<settings>.json.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from vdm import run_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from vdm.diffusion import samplers  # pylint: disable=g-import-not-at-top,wrong-import-position
from vdm.evaluation import evaluate_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

NAME = 'sampler_quality'
# The digit classifier's figures (single-digit moving digits only).
DIGIT_KEYS = ('digit_accuracy', 'digit_consistency', 'digit_accuracy_ceiling')


def steps_for(sampler: str, evaluations: int) -> int:
  """Sampler steps K that make ``evaluations`` denoiser evaluations."""
  return (evaluations + 1) // 2 if sampler == 'pc' else evaluations


def evaluations_of(sampler: str, steps: int) -> int:
  """Denoiser evaluations of K steps (samplers.sample's docstring)."""
  return 2 * steps - 1 if sampler == 'pc' else steps


def time_per_video(workdir: str, sampler: str, steps: int, time_grid: str, seed: int) -> float:
  """Seconds of sampling per video, one eval batch, compiled beforehand.

  Args:
    workdir: the run.
    sampler, steps, time_grid: its sampling settings.
    seed: sampling seed.

  Returns:
    batch seconds / batch size of one timed call (after one warm-up call).
  """
  run = run_lib.restore_run(workdir, overrides={
      'sampling.sampler': sampler, 'sampling.num_steps': steps,
      'sampling.time_grid': time_grid})
  c = run.config
  bs = int(c.eval.batch_size)
  labels = (np.arange(bs) % run.method.num_classes()) if run.method.num_classes() else None
  fn = run_lib.model_fn(run.method, run.graphdef, run.params, labels=labels,
                        guidance_weight=c.sampling.guidance_weight)
  options = run_lib.sampler_options(c, run.method)
  shape = (bs, c.data.num_frames, c.data.image_size, c.data.image_size, c.data.channels)
  call = lambda: np.asarray(run_lib.sample(fn, jax.random.PRNGKey(seed), shape, options))
  times = common.time_calls(call, iters=1, warmup=1)
  return times[0] / bs


def plot(record: dict, path: str) -> bool:
  """FVD against denoiser evaluations, one line per sampler; False without matplotlib."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    print('matplotlib is not installed: no plot (pip install matplotlib).', file=sys.stderr)
    return False
  with_digits = all('digit_accuracy' in p for p in record['points'])
  fig, axes = plt.subplots(1, 2 if with_digits else 1, figsize=(11 if with_digits else 6, 4),
                           squeeze=False)
  ax = axes[0, 0]
  for label in dict.fromkeys(p['label'] for p in record['points']):
    pts = sorted((p['evaluations'], p['fvd']) for p in record['points'] if p['label'] == label)
    ax.plot(*zip(*pts), marker='o', label=label)
    if with_digits:
      acc = sorted((p['evaluations'], 100 * p['digit_accuracy'])
                   for p in record['points'] if p['label'] == label)
      axes[0, 1].plot(*zip(*acc), marker='o', label=label)
  if with_digits:
    a = axes[0, 1]
    a.axhline(100 * record['points'][0]['digit_accuracy_ceiling'], color='grey', linestyle='--',
              label='real frames')
    a.set_xscale('log', base=2)
    a.set_xlabel('denoiser evaluations per video')
    a.set_ylabel('conditional digit accuracy (%)')
    a.grid(True, which='both', alpha=0.3)
    a.legend()
  if record.get('floor') is not None:
    ax.axhline(record['floor'], color='grey', linestyle='--',
               label=f"real vs real ({record['floor']:.0f})")
  ax.set_xscale('log', base=2)
  ticks = sorted({p['evaluations'] for p in record['points']})
  ax.set_xticks(ticks, [str(t) for t in ticks])
  ax.minorticks_off()
  ax.set_xlabel('denoiser evaluations per video')
  ax.set_ylabel(f"FVD (N = {record['num_samples']})")
  ax.set_title(f"{record['workdir']}, step {record['step']}: FVD vs evaluations")
  ax.grid(True, which='both', alpha=0.3)
  ax.legend()
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120)
  return True


def budget_of(point: dict) -> int:
  """The evaluation budget E a point was run for ('pc' makes E - 1)."""
  return 2 * point['steps'] if point['sampler'] == 'pc' else point['evaluations']


def report(record: dict) -> str:
  """The FVD table (rows: sampler, columns: evaluations) and the timing table."""
  budgets = sorted({budget_of(p) for p in record['points']})
  labels = list(dict.fromkeys(p['label'] for p in record['points']))
  cells = {(p['label'], budget_of(p)): p for p in record['points']}
  rows = [['sampler'] + [f'{e} evals' for e in budgets]]
  for label in labels:
    row = [label]
    for e in budgets:
      p = cells.get((label, e))
      row.append('-' if p is None else f"{p['fvd']:.0f}" + (
          f" ({p['evaluations']})" if p['evaluations'] != e else ''))
    rows.append(row)
  text = common.table(rows)
  if all('digit_accuracy' in p for p in record['points']):
    rows = [['sampler'] + [f'{e} evals' for e in budgets]]
    for label in labels:
      rows.append([label] + ['-' if cells.get((label, e)) is None else
                             f"{100 * cells[(label, e)]['digit_accuracy']:.1f}%"
                             for e in budgets])
    text += ('\n\nDigit accuracy (ceiling, real frames: '
             f"{100 * record['points'][0]['digit_accuracy_ceiling']:.1f}%):\n\n"
             + common.table(rows))
  if record.get('best'):
    rows = [['sampler', 'best at evals', 'steps', 'FVD', 's / video']]
    for b in record['best']:
      rows.append([b['label'], str(b['evaluations']), str(b['steps']), f"{b['fvd']:.0f}",
                   '-' if b.get('s_per_video') is None else f"{b['s_per_video']:.3f}"])
    text += '\n\n' + common.table(rows)
  return text


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', default='runs/default')
  parser.add_argument('--num_samples', type=int, default=64)
  parser.add_argument('--evaluations', default='8,16,32,64',
                      help='comma-separated; empty with --append: only the timing')
  parser.add_argument('--samplers', default='ancestral,ddim,pc,dpm++2m',
                      help='comma-separated; SAMPLER:GRID picks a time grid (e.g. '
                           'dpm++2m:uniform_t); otherwise the sampler\'s own (auto).')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--no_timing', action='store_true')
  parser.add_argument('--no_floor', action='store_true')
  parser.add_argument('--plot', default=os.path.join(common.ROOT, 'docs', f'{NAME}.png'))
  parser.add_argument('--plot_only', action='store_true',
                      help='redraw the plot and table from the last JSON')
  parser.add_argument('--append', action='store_true',
                      help='add the points to the last JSON (same workdir and N) instead '
                           'of starting a new one')
  args = parser.parse_args(argv)
  json_path = os.path.join(common.RESULTS_DIR, f'{NAME}.json')
  if args.plot_only:
    with open(json_path) as f:
      record = json.load(f)
    print(report(record))
    if plot(record, args.plot):
      print(f'Wrote {args.plot}')
    return record

  record = {'benchmark': NAME, 'workdir': args.workdir, 'num_samples': args.num_samples,
            'seed': args.seed, **common.machine_info(), 'points': [], 'floor': None,
            'load_average_start': common.load_average()}
  if args.append:
    with open(json_path) as f:
      record = json.load(f)
    if (record['workdir'], record['num_samples'], record['seed']) != (
        args.workdir, args.num_samples, args.seed):
      raise ValueError(f'--append: {json_path} is for {record["workdir"]}, N = '
                       f'{record["num_samples"]}, seed {record["seed"]}.')
  if not args.no_floor:
    record['floor'] = evaluate_lib.evaluate(args.workdir, evaluate_lib.EvalRequest(
        num_samples=args.num_samples, real_vs_real=True))['fvd']
  specs = []
  for spec in args.samplers.split(','):
    sampler, _, grid = spec.partition(':')
    if sampler not in samplers.SAMPLERS or (grid or 'auto') not in samplers.TIME_GRIDS:
      raise ValueError(f'--samplers entry {spec!r}: sampler in {samplers.SAMPLERS}, '
                       f'grid in {samplers.TIME_GRIDS}.')
    specs.append((spec, sampler, grid or 'auto'))
  # Column by column (all samplers at E evaluations, then the next E), the
  # JSON rewritten after every point: a run cut short keeps whole columns.
  for evaluations in [int(e) for e in args.evaluations.split(',') if e]:
    for spec, sampler, grid in specs:
      steps = steps_for(sampler, evaluations)
      start = time.time()
      result = evaluate_lib.evaluate(
          args.workdir, evaluate_lib.EvalRequest(num_samples=args.num_samples, seed=args.seed),
          {'sampling.sampler': sampler, 'sampling.num_steps': steps, 'sampling.time_grid': grid})
      record['step'] = result['step']
      record['points'].append({
          'label': spec, 'sampler': sampler, 'time_grid': grid, 'steps': steps,
          'evaluations': evaluations_of(sampler, steps), 'fvd': result['fvd'],
          'kvd': result['kvd'], 'eval_s': time.time() - start,
          **{k: result[k] for k in DIGIT_KEYS if k in result},
          'load_average': common.load_average()})
      common.write_result(record, NAME)
      print(f'{spec} x {steps} steps: FVD {result["fvd"]:.1f} '
            f'({time.time() - start:.0f} s)', file=sys.stderr, flush=True)
  record['best'] = []
  for label in dict.fromkeys(p['label'] for p in record['points']):
    best = min((p for p in record['points'] if p['label'] == label), key=lambda p: p['fvd'])
    best = dict(best)
    if not args.no_timing:
      best['s_per_video'] = time_per_video(args.workdir, best['sampler'], best['steps'],
                                           best['time_grid'], args.seed)
    record['best'].append(best)
  record['load_average_end'] = common.load_average()
  print(report(record))
  path = common.write_result(record, NAME)
  print(json.dumps(record, sort_keys=True))
  print(f'Wrote {path}')
  if plot(record, args.plot):
    print(f'Wrote {args.plot}')
  return record


if __name__ == '__main__':
  main()
