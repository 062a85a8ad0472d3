"""Reconstruction quality of autoencoder runs, per frame and across frames.

For each autoencoder workdir (its EMA weights, newest checkpoint), the first
N clips of the test split are encoded to their posterior means and decoded
(what a latent diffusion run's decoder sees at the end of sampling), and

  psnr            mean PSNR per frame (dB, uint8 frames) of the reconstruction;
  frame_diff_rmse RMSE between the frame differences x^{t+1} - x^t of the
                  reconstruction and of the real clip, in [0, 255] units:
                  the temporal-consistency figure (flicker a per-frame
                  decoder adds raises it even where each frame looks fine);

are printed as a Markdown table and written to
benchmarks/results/autoencoder_quality.json; four clips and their
reconstructions (rows alternating) go to <workdir>/reconstructions.npz:

  python benchmarks/autoencoder_quality.py runs/ae_image runs/ae_temporal --num_clips=128
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from vdm import latent  # pylint: disable=g-import-not-at-top
from vdm import video_io
from vdm.data import pipeline


def reconstruction_scores(real: np.ndarray, recon: np.ndarray) -> dict:
  """PSNR per frame and frame-difference RMSE of uint8 videos [N, T, H, W, C]."""
  real, recon = real.astype(np.float64), recon.astype(np.float64)
  mse = np.mean((real - recon)**2, axis=(2, 3, 4))  # [N, T]
  psnr = 10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))
  diff = np.diff(recon, axis=1) - np.diff(real, axis=1)
  return dict(psnr=float(np.mean(psnr)), frame_diff_rmse=float(np.sqrt(np.mean(diff**2))),
              pixel_rmse=float(np.sqrt(np.mean(mse))))


def evaluate(workdir: str, num_clips: int, batch_size: int = 16) -> dict:
  space = latent.LatentSpace(workdir)
  config = space.config
  real, recon = [], []
  for batch in pipeline.make_eval_iterator(config, config.data.eval_split,
                                           num_examples=num_clips, batch_size=batch_size,
                                           process_index=0, process_count=1):
    video = batch['video'][batch['mask']]
    decoded = latent.decode_videos(space, latent.encode_videos(space, video_io.to_model_range(
        video)))
    real.append(video)
    recon.append(video_io.to_uint8(decoded))
  real, recon = np.concatenate(real), np.concatenate(recon)
  scores = reconstruction_scores(real, recon)
  # Four clips to look at: rows real, reconstruction, real, ...
  pairs = np.stack([real[:4], recon[:4]], axis=1).reshape((-1,) + real.shape[1:])
  np.savez_compressed(os.path.join(workdir, 'reconstructions.npz'), videos=pairs)
  scores.update(workdir=workdir, step=space.step, num_clips=num_clips,
                temporal_decoder=bool(config.autoencoder.temporal_decoder),
                latent_shape=[space.ae_config.latent_size] * 2 + [space.ae_config.latent_channels],
                scale=space.scale)
  return scores


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('workdirs', nargs='+')
  parser.add_argument('--num_clips', type=int, default=128)
  args = parser.parse_args()
  rows = [evaluate(w, args.num_clips) for w in args.workdirs]
  print('| run | step | temporal decoder | PSNR per frame (dB) | frame-difference RMSE | '
        'pixel RMSE |')
  print('|---|---|---|---|---|---|')
  for r in rows:
    print(f"| {r['workdir']} | {r['step']} | {r['temporal_decoder']} | {r['psnr']:.2f} | "
          f"{r['frame_diff_rmse']:.2f} | {r['pixel_rmse']:.2f} |")
  out = os.path.join(ROOT, 'benchmarks', 'results', 'autoencoder_quality.json')
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, 'w') as f:
    json.dump(rows, f, indent=2)
  print(f'Wrote {out}')


if __name__ == '__main__':
  main()
