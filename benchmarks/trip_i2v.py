"""TRIP image-to-video variants at equal training wall-clock time.

Trains each variant of configs/trip_digits.py for the same wall-clock budget
(counted from the end of the first, compiling, step; the learning rate is
constant after warm-up so that no run is cut off mid-decay), then evaluates
it on the first frames of N test clips with the run's own evaluate.py code:

  tnf       TRIP: prepended first frame, Temporal Noise Fusion
  linear    TRIP with linear fusion (l^1 = 1 down to l^N = 0)
  minus     TRIP^-: the U-Net alone on the prepended frame (fusion = none)
  channels  TRIP_C: first frame concatenated as input channels (fusion = none)
  recon     a plain unconditional model, reconstruction guidance on frame 1
            (evaluate.py --mode=predict --context_frames=1)

  python benchmarks/trip_i2v.py --variants=tnf,linear,minus,channels,recon \\
      --budget_s=300 --num_samples=64 --steps=16 --root=runs/trip_i2v

Prints one JSON line per variant and a Markdown table at the end; writes
benchmarks/results/trip_i2v.json (merged with earlier variants of the same
root). Every run's workdir keeps its checkpoints, config and eval JSON. The
measured table: BENCHMARKS.md#trip-image-to-video.
"""

from __future__ import annotations

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import common  # pylint: disable=g-import-not-at-top
from configs import trip_digits
from vdm.evaluation import evaluate_lib

VARIANTS = {
    'tnf': ('trip', {'trip.fusion': 'tnf'}),
    'linear': ('trip', {'trip.fusion': 'linear'}),
    'minus': ('trip', {'trip.fusion': 'none'}),
    'channels': ('trip', {'trip.fusion': 'none', 'trip.condition': 'channels'}),
    'recon': ('vdm', {}),
}
NAMES = {'tnf': 'TRIP (TNF)', 'linear': 'TRIP, linear fusion', 'minus': 'TRIP^- (U-Net alone)',
         'channels': 'TRIP_C (channel concat)', 'recon': 'reconstruction guidance, uncond. model'}


def config_of(variant: str, max_steps: int):
  method, overrides = VARIANTS[variant]
  config = trip_digits.get_config(method)
  for dotted, value in overrides.items():
    section, key = dotted.split('.')
    config[section][key] = value
  return common.equal_time_config(config, max_steps)


def run_variant(variant: str, args) -> dict:
  workdir = os.path.join(args.root, variant)
  config = config_of(variant, args.max_steps)
  record = common.train_within(config, workdir, args.budget_s)
  mode = 'predict' if variant == 'recon' else 'i2v'
  result = evaluate_lib.evaluate(
      workdir, evaluate_lib.EvalRequest(mode=mode, num_samples=args.num_samples,
                                        batch_size=args.batch_size),
      {'sampling.num_steps': args.steps})
  keep = ('fvd', 'kvd', 'first_frame_psnr', 'first_frame_ssim', 'later_frames_psnr',
          'real_later_frames_psnr', 'step', 'num_samples', 'sampling_steps', 'mode')
  row = {k: result[k] for k in keep if k in result}
  row.update(variant=variant, train_seconds=round(record.get('seconds', float('nan')), 1),
             budget_s=args.budget_s, workdir=workdir, eval_seconds=result['seconds'])
  print(json.dumps(row, sort_keys=True), flush=True)
  return row


def table(rows) -> str:
  lines = ['| variant | steps in budget | FVD | frame-1 PSNR (dB) | frame-1 SSIM | '
           'later frames PSNR (dB) |', '|---|---|---|---|---|---|']
  for r in rows:
    lines.append(f"| {NAMES[r['variant']]} | {r['step']} | {r['fvd']:.0f} | "
                 f"{r['first_frame_psnr']:.1f} | {r['first_frame_ssim']:.3f} | "
                 f"{r['later_frames_psnr']:.1f} |")
  return '\n'.join(lines)


def main():
  common.equal_time_main(
      __doc__, 'trip_i2v', list(VARIANTS), run_variant, table,
      os.path.join(ROOT, 'runs', 'trip_i2v'),
      lambda parser: parser.add_argument('--steps', type=int, default=16,
                                         help='sampling steps of the evaluation'))

if __name__ == '__main__':
  main()
