"""Text-to-video on captioned digits: alignment against guidance, and the samples to look at.

  python benchmarks/text_alignment.py --workdir=runs/text_digits --num_samples=256 \
      --guidance_weights=0,1,3
  python benchmarks/text_alignment.py --workdir=runs/text_digits --frames_only

For each guidance weight w, `python evaluate.py --workdir=... --num_samples=N
--guidance_weight=w` samples every video with the caption of the real test
clip in its row and scores digit and direction accuracy on seen and on
held-out compositions (vdm.evaluation.text_alignment) and FVD. Then the
direction probe (the eight directions of one digit, paired by noise), the
denoiser probe (one denoising step of real test clips under captions that
differ from their own in one word: does the net read that word?), and one
video per prompt of FRAME_PROMPTS (seen and held-out compositions) is
sampled with the run's own guidance weight, and every frame is written to
docs/text_digits_frames.png (one row per prompt, in that order) and the
videos to docs/text_digits_samples.gif.

Writes benchmarks/results/text_alignment.json and prints a markdown table.
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

# Five compositions the train split shows, then the five held-out ones of
# digits 0-4 (digit d never moves in direction d mod 8 in training).
FRAME_PROMPTS = (
    'a zero moving left, quickly', 'a three moving right, quickly',
    'a five moving down, slowly', 'a seven moving up, quickly',
    'a nine moving down and to the left, quickly',
    'a zero moving right, quickly', 'a one moving up and to the right, quickly',
    'a two moving up, quickly', 'a three moving up and to the left, quickly',
    'a four moving left, quickly',
)
FIGURES = ('digit_accuracy_seen', 'direction_accuracy_seen', 'digit_accuracy_held_out',
           'direction_accuracy_held_out', 'fvd')


def evaluate(workdir: str, num_samples: int, guidance_weight: float) -> dict:
  cmd = [sys.executable, os.path.join(common.ROOT, 'evaluate.py'), f'--workdir={workdir}',
         f'--num_samples={num_samples}', f'--guidance_weight={guidance_weight}']
  out = subprocess.run(cmd, cwd=common.ROOT, check=True, capture_output=True, text=True).stdout
  return json.loads([l for l in out.splitlines() if l.startswith('{')][-1])


def frames(workdir: str, png: str, gif: str) -> list[str]:
  """Samples one video per FRAME_PROMPTS entry; writes every frame as a PNG grid."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from vdm import video_io  # pylint: disable=g-import-not-at-top
  from vdm.sampling import sample_lib  # pylint: disable=g-import-not-at-top
  out = sample_lib.sample(workdir, os.path.join(workdir, 'sample_out', 'text_frames'),
                          sample_lib.SampleRequest(num_samples=len(FRAME_PROMPTS),
                                                   prompts=FRAME_PROMPTS))
  videos = out.videos  # [N, T, H, W, 1] uint8
  # One row per prompt, its frames left to right, a grey line between frames.
  rows = [np.concatenate([np.pad(f[..., 0], 1, constant_values=96) for f in v], axis=1)
          for v in videos]
  image = np.concatenate(rows, axis=0)
  scale = max(1, 64 // videos.shape[2])
  Image.fromarray(image).resize((image.shape[1] * scale, image.shape[0] * scale),
                                Image.NEAREST).save(png)
  tiled = video_io.upscale(video_io.grid(videos, columns=5), max(1, 128 // videos.shape[2]))
  video_io.save_gif(gif, tiled, fps=8)
  return list(FRAME_PROMPTS)


def direction_probe(workdir: str, digit: int, num_samples: int) -> dict:
  """Does the direction word move the digit? Prompts that differ only in it.

  Video i of every prompt starts from the same noise (same seed, same index),
  so a model that ignores the direction word draws the same video for all
  eight prompts. Returns, per direction, the share of videos that move that
  way (chance 1/8) and their mean centroid velocity (dy, dx) in pixels/frame.
  """
  from vdm.data import digit_captions  # pylint: disable=g-import-not-at-top
  from vdm.sampling import sample_lib  # pylint: disable=g-import-not-at-top
  probe = {}
  for k, direction in enumerate(digit_captions.DIRECTIONS):
    prompt = digit_captions.caption(digit_captions.Motion(digit, k, 1))
    videos = sample_lib.sample(
        workdir, os.path.join(workdir, 'sample_out', 'direction_probe'),
        sample_lib.SampleRequest(num_samples=num_samples, prompts=(prompt,)),
        progress=False).videos  # [N, T, H, W, 1] uint8
    track = digit_captions.centroids(videos)  # [N, T, 2]
    frames = np.arange(track.shape[1])
    velocity = np.polyfit(frames, track.transpose(1, 0, 2).reshape(len(frames), -1), 1)[0]
    probe[direction] = {
        'prompt': prompt,
        'moves_that_way': float(np.mean(digit_captions.measured_direction(videos) == k)),
        'mean_velocity': velocity.reshape(-1, 2).mean(axis=0).round(3).tolist(),
    }
  return probe


# Captions that differ from a clip's own in one part, for the denoiser probe.
CAPTION_VARIANTS = ('own caption', 'opposite direction', 'next digit', 'null text')


def _variant(caption: str, kind: str) -> str:
  from vdm.data import digit_captions  # pylint: disable=g-import-not-at-top
  motion = digit_captions.parse(caption)
  if kind == 'opposite direction':
    motion = motion._replace(direction=(motion.direction + 4) % len(digit_captions.DIRECTIONS))
  elif kind == 'next digit':
    motion = motion._replace(digit=(motion.digit + 1) % len(digit_captions.DIGIT_WORDS))
  elif kind == 'null text':
    return ''
  return digit_captions.caption(motion)


def denoiser_probe(workdir: str, num_videos: int, logsnrs=(-10.0, -6.0, -3.0, 0.0)) -> dict:
  """Does the denoiser read each word? One step, no sampling.

  Real test clips x are noised to z at each log-SNR (the same noise for every
  caption) and denoised with their own caption, with the direction reversed,
  with the next digit and with the null text. A word the net ignores leaves
  the error |x_hat - x|^2 unchanged when it is swapped; a word it reads makes
  the wrong caption's error larger. Also the motion of x_hat's brightness
  centroid along the clip's own direction, in pixels per frame, beside the
  clips' own: at low SNR, where z hardly shows the digit, it is the motion
  the caption alone asks for.

  Returns:
    {variant: {logsnr: {'mse': float, 'motion_along': float}}}, and the
    clips' own motion under 'real clips': {'motion_along': float}.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from vdm import run_lib, video_io  # pylint: disable=g-import-not-at-top
  from vdm.data import digit_captions, pipeline  # pylint: disable=g-import-not-at-top
  from vdm.diffusion import gaussian, samplers  # pylint: disable=g-import-not-at-top
  from vdm.models import tokenizer  # pylint: disable=g-import-not-at-top
  run = run_lib.restore_run(workdir)
  if run.config.get('method', 'vdm') != 'vdm' or run.config.latent.autoencoder:
    raise ValueError('the denoiser probe reads a pixel-space vdm run (its x_hat is frames).')
  batch = next(iter(pipeline.make_eval_iterator(run.config, 'test', num_examples=num_videos,
                                                batch_size=num_videos, process_index=0,
                                                process_count=1)))
  x = video_io.to_model_range(batch['video'])  # [N, T, H, W, 1]
  captions = [str(c) for c in batch['caption']]
  directions = np.stack([digit_captions.unit_vector(digit_captions.parse(c).direction)
                         for c in captions])  # [N, 2] (dy, dx)
  tokens = tokenizer.from_config(run.config)
  parameterization = run.config.diffusion.parameterization

  @jax.jit
  def denoise(model_fn, z, logsnr):  # The conditional net alone: w = 0.
    return samplers.make_denoise(model_fn, parameterization, logsnr)(z)[0]

  def motion_along(videos):  # [N, T, H, W, 1] -> mean px/frame along each clip's caption
    track = digit_captions.centroids(videos)  # [N, T, 2]
    velocity = (track[:, -1] - track[:, 0]) / (track.shape[1] - 1)  # [N, 2]
    return float(np.mean((velocity * directions).sum(-1)))

  eps = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
  out = {kind: {} for kind in CAPTION_VARIANTS}
  out['real clips'] = {'motion_along': motion_along(x)}
  for logsnr in logsnrs:
    logsnr_batch = jnp.full((len(x),), logsnr, jnp.float32)
    z = gaussian.q_sample(jnp.asarray(x), logsnr_batch, jnp.asarray(eps))
    for kind in CAPTION_VARIANTS:
      model_fn = run_lib.model_fn(run.method, run.graphdef, run.params,
                                  text=tokens([_variant(c, kind) for c in captions]))
      x_hat = np.clip(np.asarray(denoise(model_fn, z, logsnr_batch)), -1.0, 1.0)
      out[kind][logsnr] = {'mse': float(np.mean((x_hat - x)**2)),
                           'motion_along': motion_along(x_hat)}
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--num_samples', type=int, default=256)
  parser.add_argument('--guidance_weights', default='0,1,3')
  parser.add_argument('--frames_only', action='store_true')
  parser.add_argument('--probe_digit', type=int, default=3,
                      help='digit of the direction probe (all eight directions, quickly)')
  parser.add_argument('--probe_samples', type=int, default=12,
                      help='videos per direction in the probe (0 skips it)')
  parser.add_argument('--denoiser_probe_videos', type=int, default=256,
                      help='test clips of the denoiser probe (0 skips it)')
  parser.add_argument('--png', default=os.path.join(common.ROOT, 'docs', 'text_digits_frames.png'))
  parser.add_argument('--gif', default=os.path.join(common.ROOT, 'docs', 'text_digits_samples.gif'))
  args = parser.parse_args()
  record = {'workdir': args.workdir, 'machine': common.machine_info(), 'results': []}
  if not args.frames_only:
    rows = [['w', 'digit seen', 'direction seen', 'digit held out', 'direction held out', 'FVD',
             'seconds']]
    for w in [float(x) for x in args.guidance_weights.split(',')]:
      r = evaluate(args.workdir, args.num_samples, w)
      record['results'].append(r)
      rows.append([f'{w:g}'] + [f'{r[k]:.1%}' if 'accuracy' in k else f'{r[k]:.1f}'
                                for k in FIGURES] + [f'{r["seconds"]:.0f}'])
      print(common.table(rows), flush=True)
    real = record['results'][0]
    print('real clips: ' + ', '.join(f'{k} {real["real_" + k]:.1%}' for k in FIGURES[:4]))
  if args.probe_samples:
    probe = direction_probe(args.workdir, args.probe_digit, args.probe_samples)
    record['direction_probe'] = probe
    rows = [['prompt', 'moves that way', 'mean velocity (dy, dx) px/frame']]
    rows += [[p['prompt'], f'{p["moves_that_way"]:.0%}',
              '({:+.2f}, {:+.2f})'.format(*p['mean_velocity'])] for p in probe.values()]
    print(common.table(rows), flush=True)
  if args.denoiser_probe_videos:
    probe = denoiser_probe(args.workdir, args.denoiser_probe_videos)
    record['denoiser_probe'] = probe
    logsnrs = list(probe[CAPTION_VARIANTS[0]])
    rows = [['caption'] + [f'λ = {l:g}: error, motion' for l in logsnrs]]
    rows += [[kind] + [f'{probe[kind][l]["mse"]:.4f}, {probe[kind][l]["motion_along"]:+.2f}'
                       for l in logsnrs] for kind in CAPTION_VARIANTS]
    print(common.table(rows), flush=True)
    print(f'real clips move {probe["real clips"]["motion_along"]:.2f} px/frame along their '
          'captions', flush=True)
  record['frame_prompts'] = frames(args.workdir, args.png, args.gif)
  path = os.path.join(common.ROOT, 'benchmarks', 'results', 'text_alignment.json')
  with open(path, 'w') as f:
    json.dump(record, f, indent=1, default=str)
  print(f'Wrote {path}, {args.png}, {args.gif}')


if __name__ == '__main__':
  main()
