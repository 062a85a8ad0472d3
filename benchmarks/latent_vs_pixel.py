"""A latent diffusion model against the pixel model at equal training wall-clock time.

Both are configs/default.py at the autoencoder's frame size (--image_size:
32 or 64; single digits, class-conditional, v-prediction): `pixel` diffuses
the frames (e.g. 32x32x1), `latent` the latents of a trained autoencoder run
(--autoencoder, e.g. VidRD's temporal-aware stage of
configs/autoencoder_digits.py: 8x8x4 at 32x32). Both U-Nets have the same
parameters, attention at their lowest level. Each trains for the
same wall-clock budget (from the end of its compiling first step, constant
learning rate after warm-up), then evaluate.py's code scores N class-
conditional samples of it: FVD/KVD against real test clips and the digit
classifier's accuracy and consistency.

  python benchmarks/latent_vs_pixel.py --autoencoder=runs/ae_temporal --budget_s=300 \\
      --num_samples=64 --root=runs/latent_vs_pixel
  python benchmarks/latent_vs_pixel.py --autoencoder=runs/ae64_image --image_size=64 \\
      --dataset=moving_digits/single_64 --budget_s=300 --num_samples=32 --steps=16 \\
      --guidance_weight=0 --root=runs/latent_vs_pixel64

Prints one JSON line per side and a Markdown table (with seconds per
training step); writes benchmarks/results/latent_vs_pixel.json, and ten
videos per side (labels 0-9) to <root>/<side>/look/samples.{gif,npz}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs import default  # pylint: disable=wrong-import-position
from vdm.evaluation import evaluate_lib  # pylint: disable=wrong-import-position
from vdm.sampling import sample_lib  # pylint: disable=wrong-import-position


def config_of(side: str, args):
  config = default.get_config()
  config.data.image_size = args.image_size
  if args.dataset:
    config.data.dataset = args.dataset
  if side == 'pixel':
    # Attention at the lowest level, as in the latent U-Net (4x4 on 4x-downsampled latents).
    config.model.attention_resolutions = (args.image_size // 4,)
  else:
    config.latent.autoencoder = args.autoencoder
  config.training.num_samples = 0
  return common.equal_time_config(config, args.max_steps)


def run_side(side: str, args) -> dict:
  workdir = os.path.join(args.root, side)
  record = common.train_within(config_of(side, args), workdir, args.budget_s)
  start = time.time()
  overrides = {'sampling.num_steps': args.steps, 'sampling.guidance_weight': args.guidance_weight}
  result = evaluate_lib.evaluate(
      workdir, evaluate_lib.EvalRequest(num_samples=args.num_samples, batch_size=args.batch_size),
      overrides)
  keep = ('fvd', 'kvd', 'digit_accuracy', 'digit_accuracy_ceiling', 'digit_consistency',
          'digit_consistency_ceiling', 'step', 'num_samples', 'sampling_steps')
  row = {k: result[k] for k in keep if k in result}
  # Ten videos, labels 0..9, to look at (samples.gif / samples.npz).
  sample_start = time.time()
  sample_lib.sample(workdir, os.path.join(workdir, 'look'), sample_lib.SampleRequest(
      mode='unconditional', num_samples=10), overrides, progress=False)
  row['sample_10_seconds'] = round(time.time() - sample_start, 1)
  steps = record.get('steps', row.get('step', 0)) - record.get('first_step', 1)
  row.update(side=side, workdir=workdir, budget_s=args.budget_s, image_size=args.image_size,
             guidance_weight=args.guidance_weight,
             train_s_per_step=record['seconds'] / max(steps, 1) if 'seconds' in record else None,
             eval_seconds=round(time.time() - start, 1), load=os.getloadavg())
  print(json.dumps(row, sort_keys=True), flush=True)
  return row


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--autoencoder', required=True)
  parser.add_argument('--sides', default='latent,pixel')
  parser.add_argument('--image_size', type=int, default=32, help="The autoencoder's frame size.")
  parser.add_argument('--dataset', default='', help='TFDS name; the default config\'s when empty.')
  parser.add_argument('--guidance_weight', type=float, default=None,
                      help="Classifier-free w of every sample; the config's (1) when unset.")
  parser.add_argument('--budget_s', type=float, default=300.0)
  parser.add_argument('--max_steps', type=int, default=5000)
  parser.add_argument('--num_samples', type=int, default=64)
  parser.add_argument('--steps', type=int, default=32)
  parser.add_argument('--batch_size', type=int, default=16)
  parser.add_argument('--root', default=os.path.join(ROOT, 'runs', 'latent_vs_pixel'))
  args = parser.parse_args()
  rows = [run_side(side, args) for side in args.sides.split(',')]
  print('| model | steps in budget | s / train step | FVD | digit accuracy | consistency |')
  print('|---|---|---|---|---|---|')
  for r in rows:
    print(f"| {r['side']} | {r['step']} | {r['train_s_per_step'] or float('nan'):.2f} | "
          f"{r['fvd']:.0f} | {r.get('digit_accuracy', float('nan')):.3f} | "
          f"{r.get('digit_consistency', float('nan')):.3f} |")
  suffix = '' if args.image_size == 32 else f'_{args.image_size}'
  out = os.path.join(ROOT, 'benchmarks', 'results', f'latent_vs_pixel{suffix}.json')
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, 'w') as f:
    json.dump(rows, f, indent=2, sort_keys=True)
  print(f'Wrote {out}')


if __name__ == '__main__':
  main()
