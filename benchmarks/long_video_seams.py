"""Long-video drivers compared at their seams on a trained digit model.

  python benchmarks/long_video_seams.py --workdir=runs/default --num_samples=64 --steps=16

For each driver of --drivers (NAME=evaluate.py flags), runs `python
evaluate.py --workdir=... --mode=long --num_frames=F --num_samples=N
--steps=S <flags>` and collects FVD, digit accuracy and consistency, the
seam scores (vdm.evaluation.seams: pixel and digit-track ratios, class
consistency across the seam, with the real clips' figures) and the time.
Then draws 4 videos per driver with sample.py's extend mode (the same
driver, from an unconditional first clip) and writes the frames around the
first seam, one row per video, to docs/long_video_seams.png, to look at.

Writes --out (benchmarks/results/long_video_seams.json) and prints a markdown
table; the real clips' row holds the ceilings (digit consistency of real
clips of the same length, and their seam scores).
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

DRIVERS = (
    'independent=--long_method=independent --sampler=ancestral',
    'reconstruction=--long_method=reconstruction --sampler=ancestral',
    'vidrd=--long_method=vidrd',
    'vidrd_forward=--long_method=vidrd --vidrd_order=forward',
)
FIGURES = ('fvd', 'digit_accuracy', 'digit_consistency', 'seam_track_ratio',
           'seam_pixel_ratio', 'seam_class_consistency', 'seam_jumps_seam', 'seam_jumps_inside',
           'seam_videos_without_jump', 'seconds')


def evaluate(args, flags: list[str]) -> dict:
  cmd = [sys.executable, os.path.join(common.ROOT, 'evaluate.py'), f'--workdir={args.workdir}',
         '--mode=long', f'--num_frames={args.num_frames}', f'--num_samples={args.num_samples}',
         f'--steps={args.steps}', *flags]
  if args.data_dir:
    cmd.append(f'--data_dir={args.data_dir}')
  out = subprocess.run(cmd, cwd=common.ROOT, check=True, capture_output=True, text=True).stdout
  return json.loads([l for l in out.splitlines() if l.startswith('{')][-1])


def seam_frames(args, name: str, flags: list[str], seam: int) -> np.ndarray:
  """4 long videos of the driver; their frames seam-3 .. seam+2 as rows: uint8 [H', W']."""
  out_dir = os.path.join(args.workdir, 'sample_out', f'seams_{name}')
  cmd = [sys.executable, os.path.join(common.ROOT, 'sample.py'), f'--workdir={args.workdir}',
         '--mode=extend', f'--num_frames={args.num_frames}', '--num_samples=4',
         f'--steps={args.steps}', f'--output_dir={out_dir}',
         *flags]
  subprocess.run(cmd, cwd=common.ROOT, check=True, capture_output=True, text=True)
  with np.load(os.path.join(out_dir, 'samples.npz')) as f:
    videos = f['videos'][:, seam - 3:seam + 3, ..., 0]  # [4, 6, H, W]
  rows = []
  for v in videos:
    frames = [np.pad(f, 1, constant_values=96) for f in v]
    frames.insert(3, np.full((v.shape[1] + 2, 3), 255, np.uint8))  # The seam: a white bar.
    rows.append(np.concatenate(frames, axis=1))
  return np.concatenate(rows, axis=0)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--num_samples', type=int, default=64)
  parser.add_argument('--num_frames', type=int, default=20)
  parser.add_argument('--steps', type=int, default=16)
  parser.add_argument('--drivers', default=';'.join(DRIVERS),
                      help='NAME=evaluate.py flags, separated by ";"')
  parser.add_argument('--png', default=os.path.join(common.ROOT, 'docs', 'long_video_seams.png'))
  parser.add_argument('--no_frames', action='store_true', help='skip the picture')
  parser.add_argument('--data_dir', default='',
                      help='real clips from here (evaluate.py --data_dir): a build of the '
                      'bundled data with videos of at least --num_frames frames')
  parser.add_argument('--out', default=os.path.join(common.ROOT, 'benchmarks', 'results',
                                                    'long_video_seams.json'))
  args = parser.parse_args()
  drivers = [d.split('=', 1) for d in args.drivers.split(';') if d]
  record = dict(benchmark='long_video_seams', date=time.strftime('%Y-%m-%d %H:%M UTC',
                                                                  time.gmtime()),
                workdir=args.workdir, num_samples=args.num_samples, num_frames=args.num_frames,
                steps=args.steps, results={})
  for name, flags in drivers:
    start = time.perf_counter()
    result = evaluate(args, flags.split())
    record['results'][name] = result
    print(f'{name}: ' + ', '.join(f'{k} {result.get(k)}' for k in FIGURES)
          + f' ({time.perf_counter() - start:.0f} s)', flush=True)
  first = next(iter(record['results'].values()))
  record['real'] = {'digit_consistency': first.get('digit_consistency_ceiling'),
                    **{k: first.get(f'real_{k}') for k in FIGURES[3:-1]}}
  rows = [('driver', *FIGURES)]
  for name, r in record['results'].items():
    rows.append((name, *[f'{r[k]:.3g}' if isinstance(r.get(k), float) else str(r.get(k, '-'))
                         for k in FIGURES]))
  rows.append(('real clips', '-', '-', *[f'{v:.3g}' if v is not None else '-'
                                        for v in record['real'].values()], '-'))
  print(common.table(rows))
  if not args.no_frames:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    seam = int(first['seams'][0])
    blocks = []
    for name, flags in drivers:
      block = seam_frames(args, name, flags.split(), seam)
      blocks += [block, np.full((4, block.shape[1]), 255, np.uint8)]
    image = np.concatenate(blocks[:-1], axis=0)
    Image.fromarray(image).resize((image.shape[1] * 4, image.shape[0] * 4),
                                  Image.NEAREST).save(args.png)
    record['png'] = os.path.relpath(args.png, common.ROOT)
    print(f'frames around the seam: {args.png} (rows: {", ".join(n for n, _ in drivers)}, '
          '4 videos each)')
  path = args.out
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(record, f, indent=1, sort_keys=True)
  print(json.dumps(record, sort_keys=True))


if __name__ == '__main__':
  main()
