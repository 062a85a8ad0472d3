"""VideoFusion against the plain model at equal training wall-clock time.

Trains each variant for the same wall-clock budget (from the end of the
first, compiling, step; constant learning rate after warm-up) on the default
data (moving_digits/single_32 read at 16x16, 10 frames + 2 images, batch 8),
then scores it with evaluate.py's code: FVD/KVD and the digit figures over
N generated videos, the default sampler (ancestral, 32 steps, guidance 1).

  plain     configs/default.py's U-Net (32 channels, 1.26 M parameters),
            eps-prediction like VideoFusion; also the run the base of
            vf_init starts from
  plain36   the same at 36 channels: VideoFusion's total parameter count
  vf        configs/videofusion_digits.py, l = 0.5, base from scratch
  vf_init   the same, base initialised from `plain` (its budget is not
            counted again), base learning rate x 0.1
  vf_l25    vf with l = 0.25
  vf_l75    vf with l = 0.75

  python benchmarks/videofusion_quality.py --budget_s=300 --num_samples=64 \\
      --root=runs/vf_quality

Prints one JSON line per variant and a Markdown table; writes
benchmarks/results/videofusion_quality.json (merged with earlier variants of
the same root). Every run's workdir keeps its checkpoints and eval JSON.
"""

from __future__ import annotations

import importlib
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import common  # pylint: disable=g-import-not-at-top
from vdm.evaluation import evaluate_lib

EPS = {'diffusion.parameterization': 'eps', 'diffusion.loss_type': 'eps_mse'}
# 36 channels: GroupNorm 4 and 2 heads, as the 32-channel model has.
WIDE = {'model.base_channels': 36, 'model.norm_groups': 4, 'model.num_heads': 2}
VARIANTS = {
    'plain': ('default', EPS),
    'plain36': ('default', {**EPS, **WIDE}),
    'vf': ('videofusion_digits', {}),
    'vf_init': ('videofusion_digits', {'videofusion.base_init_workdir': '{root}/plain',
                                       'videofusion.base_lr_mult': 0.1}),
    'vf_l25': ('videofusion_digits', {'videofusion.l': 0.25}),
    'vf_l75': ('videofusion_digits', {'videofusion.l': 0.75}),
}
NAMES = {'plain': 'plain U-Net, 1.26 M', 'plain36': 'plain U-Net, 1.57 M (36 ch)',
         'vf': 'VideoFusion l = 0.5, base from scratch',
         'vf_init': 'VideoFusion l = 0.5, base from `plain`',
         'vf_l25': 'VideoFusion l = 0.25', 'vf_l75': 'VideoFusion l = 0.75'}


def config_of(variant: str, root: str, max_steps: int):
  module, overrides = VARIANTS[variant]
  config = importlib.import_module(f'configs.{module}').get_config()
  for dotted, value in overrides.items():
    section, key = dotted.split('.')
    config[section][key] = value.format(root=root) if isinstance(value, str) else value
  config.training.num_samples = 0  # Evaluation draws the samples.
  return common.equal_time_config(config, max_steps)


def run_variant(variant: str, args) -> dict:
  workdir = os.path.join(args.root, variant)
  record = common.train_within(config_of(variant, args.root, args.max_steps), workdir,
                               args.budget_s)
  result = evaluate_lib.evaluate(workdir, evaluate_lib.EvalRequest(
      num_samples=args.num_samples, batch_size=args.batch_size))
  keep = ('fvd', 'kvd', 'digit_accuracy', 'digit_consistency', 'step', 'num_samples',
          'sampling_steps')
  row = {k: result[k] for k in keep if k in result}
  row.update(variant=variant, train_seconds=round(record.get('seconds', float('nan')), 1),
             budget_s=args.budget_s, workdir=workdir, eval_seconds=result['seconds'],
             load=common.load_average())
  print(json.dumps(row, sort_keys=True), flush=True)
  return row


def table(rows) -> str:
  lines = ['| variant | steps in budget | FVD | KVD | digit accuracy | digit consistency |',
           '|---|---|---|---|---|---|']
  for r in rows:
    lines.append(f"| {NAMES[r['variant']]} | {r['step']} | {r['fvd']:.0f} | {r['kvd']:.1f} | "
                 f"{100 * r['digit_accuracy']:.1f}% | {100 * r['digit_consistency']:.1f}% |")
  return '\n'.join(lines)


def main():
  common.equal_time_main(__doc__, 'videofusion_quality', list(VARIANTS), run_variant, table,
                         os.path.join(ROOT, 'runs', 'vf_quality'))

if __name__ == '__main__':
  main()
