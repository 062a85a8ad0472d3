"""Distils a run round by round and scores every student against the solvers.

  python benchmarks/distillation.py --teacher=runs/default --target_steps=4 --num_samples=64

Trains (or resumes: each round is a train.py run in its own workdir) the
chain of configs/distill.py: the guidance stage <prefix>_g, then progressive
rounds <prefix>_16, <prefix>_8, ... down to --target_steps, each starting from
the previous student (the first on the grid --shift names, by default the
config's), recording each round's training minutes. Then scores,
with evaluate_lib.evaluate at the same N and seed (the same labels and z_1):

  * the teacher as it is sampled by default (its sampler and steps, two
    passes per step under guidance);
  * every student on its own grid, one pass per step, with each sampler of
    --student_samplers (DDIM, the steps it was trained for, and DDIM with
    renoising); the guidance-distilled one at the teacher's sampler and steps,
    and with DDIM at those steps on the plain grid;
  * the teacher with DPM-Solver++ 2M, DDIM, DDIM renoised and ancestral at
    2, 4 and 8 steps (4, 8 and 16 passes with guidance): what the same passes
    buy without distillation; and, on the schedule shifted by each of
    --baseline_shifts (by default the students' shift), the teacher as
    sampled by default and its uniform-t samplers at those steps;

and times sampling one eval batch per point (compiled first). Writes
benchmarks/results/distillation.json, rewritten after every point.
"""

import argparse
import json
import os
import sys
import time
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

import sampler_quality  # pylint: disable=g-import-not-at-top,wrong-import-position

from configs import distill as distill_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from vdm import config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from vdm.evaluation import evaluate_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from vdm.train import train_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

NAME = 'distillation'


def chain(teacher: str, prefix: str, target_steps: int,
          shift: Optional[float] = None) -> list[tuple[str, str]]:
  """(configs/distill.py argument, workdir) of every round, guidance stage first;
  ``shift``, if given, the first progressive round's grid (its 'shift=S')."""
  steps = int(config_lib.read_config(teacher).sampling.num_steps) // 2
  rounds = [(f'{teacher},guidance', f'{prefix}_g')]
  previous = f'{prefix}_g'
  while steps >= target_steps:
    first = len(rounds) == 1 and shift is not None
    rounds.append((f'{previous},shift={shift:g}' if first else previous, f'{prefix}_{steps}'))
    previous, steps = f'{prefix}_{steps}', steps // 2
  return rounds


def train_rounds(rounds, train_steps: int, record: dict) -> None:
  """Trains each round to ``train_steps`` (a finished one is found and kept)."""
  for arg, workdir in rounds:
    config = distill_config.get_config(arg)
    config.training.num_steps = train_steps
    start = time.time()
    train_lib.train(config, workdir)
    record['rounds'].append({'workdir': workdir, 'teacher': arg, 'train_steps': train_steps,
                             'num_steps': int(config.distill.num_steps),
                             'train_min': (time.time() - start) / 60,
                             'load_average': common.load_average()})
    common.write_result(record, NAME)


def score(record, label, workdir, overrides, passes_per_step, args):
  """One row: evaluate.py's figures at N, and sampling seconds per video."""
  start = time.time()
  result = evaluate_lib.evaluate(workdir, evaluate_lib.EvalRequest(
      num_samples=args.num_samples, seed=args.seed), overrides)
  run_config = config_lib.apply_overrides(config_lib.read_config(workdir), overrides)
  steps = int(run_config.sampling.num_steps)
  point = {'label': label, 'workdir': workdir, 'sampler': run_config.sampling.sampler,
           'steps': steps, 'passes': passes_per_step * steps, 'fvd': result['fvd'],
           'eval_s': time.time() - start, 'load_average': common.load_average(),
           **{k: result[k] for k in sampler_quality.DIGIT_KEYS if k in result}}
  point['s_per_video'] = sampler_quality.time_per_video(
      workdir, point['sampler'], steps, run_config.sampling.time_grid, args.seed)
  record['points'].append(point)
  common.write_result(record, NAME)
  print(f'{label}: {point["passes"]} passes, FVD {point["fvd"]:.1f}, digit '
        f'{point.get("digit_accuracy", float("nan")):.3f}', file=sys.stderr, flush=True)


def report(record: dict) -> str:
  """The markdown tables of BENCHMARKS.md#distillation from a record."""
  lines = ['| round | workdir | student steps | training min (400 steps) |', '| --- | --- | --- | --- |']
  for r in record['rounds']:
    lines.append(f"| {r['teacher']} | {r['workdir']} | {r['num_steps'] or 'as teacher'} | "
                 f"{r['train_min']:.1f} |")
  lines += ['', f"N = {record['num_samples']}, real-vs-real FVD floor {record.get('floor') or 0:.1f}", '',
            '| sampler | passes | FVD | digit accuracy | consistency | s per video |',
            '| --- | --- | --- | --- | --- | --- |']
  for p in record['points']:
    lines.append(f"| {p['label']} ({p['sampler']}, {p['steps']} steps) | {p['passes']} | "
                 f"{p['fvd']:.1f} | {100 * p.get('digit_accuracy', float('nan')):.1f}% | "
                 f"{100 * p.get('digit_consistency', float('nan')):.1f}% | {p['s_per_video']:.3f} |")
  return '\n'.join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--teacher', default='runs/default')
  parser.add_argument('--prefix', default='runs/distill')
  parser.add_argument('--target_steps', type=int, default=4)
  parser.add_argument('--train_steps', type=int, default=400)
  parser.add_argument('--num_samples', type=int, default=64)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--baseline_steps', default='2,4,8')
  parser.add_argument('--shift', type=float, default=None,
                      help="the first progressive round's grid (configs/distill.py's "
                           "'shift=S'); default: the config's GRID_SHIFT")
  parser.add_argument('--baseline_shifts', default=None,
                      help='log-SNR shifts of the grid the teacher is also scored on; '
                           'default: the students\' shift, none for a linear_beta teacher')
  parser.add_argument('--student_samplers', default='ddim,ddim_renoise',
                      help='samplers each progressive student is scored with, on its own grid')
  parser.add_argument('--report_only', action='store_true',
                      help='print the tables of the last JSON and stop')
  args = parser.parse_args(argv)
  if args.report_only:
    with open(os.path.join(common.RESULTS_DIR, f'{NAME}.json')) as f:
      print(report(json.load(f)))
    return None
  record = {'benchmark': NAME, 'teacher': args.teacher, 'num_samples': args.num_samples,
            'seed': args.seed, **common.machine_info(), 'rounds': [], 'points': [],
            'load_average_start': common.load_average()}
  rounds = chain(args.teacher, args.prefix, args.target_steps, args.shift)
  train_rounds(rounds, args.train_steps, record)
  record['floor'] = evaluate_lib.evaluate(args.teacher, evaluate_lib.EvalRequest(
      num_samples=args.num_samples, real_vs_real=True))['fvd']
  teacher = config_lib.read_config(args.teacher)
  guided = 2 if teacher.sampling.guidance_weight else 1
  score(record, 'teacher', args.teacher, {}, guided, args)
  guidance_stage, *students = [workdir for _, workdir in rounds]
  score(record, os.path.basename(guidance_stage), guidance_stage, {}, 1, args)
  score(record, os.path.basename(guidance_stage), guidance_stage,
        {'sampling.sampler': 'ddim', 'sampling.time_grid': 'uniform_t'}, 1, args)
  for workdir in students:
    for sampler in args.student_samplers.split(','):
      score(record, os.path.basename(workdir), workdir, {'sampling.sampler': sampler}, 1, args)
  if args.baseline_shifts is None:  # The first student's grid (none for linear_beta).
    student_shift = (float(config_lib.read_config(students[0]).diffusion.logsnr_shift)
                     if students else 0.0)
    args.baseline_shifts = str(student_shift) if student_shift else ''
  shifts = [float(s) for s in args.baseline_shifts.split(',') if s]
  for shift in shifts:
    score(record, f'teacher, shift {shift:g}', args.teacher, {'diffusion.logsnr_shift': shift},
          guided, args)
  for steps in [int(s) for s in args.baseline_steps.split(',') if s]:
    for sampler in ('dpm++2m', 'ddim', 'ddim_renoise', 'ancestral'):
      # DPM-Solver++'s grid is uniform in log-SNR: a shift does not move it.
      for shift in (None,) if sampler == 'dpm++2m' else (None, *shifts):
        overrides = {'sampling.sampler': sampler, 'sampling.num_steps': steps,
                     'sampling.time_grid': 'auto'}
        label = f'teacher {sampler}'
        if shift is not None:
          overrides['diffusion.logsnr_shift'] = shift
          label += f', shift {shift:g}'
        score(record, label, args.teacher, overrides, guided, args)
  record['load_average_end'] = common.load_average()
  print(report(record))
  print(f'Wrote {common.write_result(record, NAME)}')
  return record


if __name__ == '__main__':
  main()
