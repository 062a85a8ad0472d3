"""The peer's side of compare_peer.py: lucidrains' video-diffusion-pytorch 0.7.0.

Runs inside benchmarks/.peer (a separate venv with a CPU torch); it imports
torch only, never jax or this repository. compare_peer.py starts it as

  benchmarks/.peer/bin/python benchmarks/peer_worker.py --kind=train|sample ...

and talks to it over stdin/stdout, one JSON object per line:
  it prints {"ready": ...setup facts...} once built and warmed up;
  "run N" -> {"times": [N seconds]}; "stats" -> {"peak_rss_bytes": ...};
  "quit" -> exits.

Workload 'tiny' (the only one it knows): Unet3D(dim=32, dim_mults=(1, 2, 4),
attn_heads=8, attn_dim_head=32) in GaussianDiffusion(image_size=32,
num_frames=8, loss_type='l2') on a batch of 2 x 3 x 8 x 32 x 32.
  train: loss = diffusion(x); loss.backward(); Adam step; zero_grad.
  sample: diffusion.p_sample(z, t) under inference_mode: one Unet3D forward
    plus the posterior step (one step of the peer's own sampling loop).
"""

import argparse
import json
import sys
import time

import rss  # benchmarks/rss.py: this script's folder is on sys.path.


def _reply(obj):
  sys.stdout.write(json.dumps(obj) + '\n')
  sys.stdout.flush()


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--kind', choices=('train', 'sample'), required=True)
  parser.add_argument('--workload', default='tiny')
  parser.add_argument('--threads', type=int, default=2)
  parser.add_argument('--warmup', type=int, default=2)
  args = parser.parse_args()
  if args.workload != 'tiny':
    raise SystemExit(f'peer_worker knows only --workload=tiny, not {args.workload!r}')

  import torch  # pylint: disable=g-import-not-at-top
  from torch.utils.flop_counter import FlopCounterMode
  torch.set_num_threads(args.threads)
  try:
    torch.set_num_interop_threads(1)
  except RuntimeError:
    pass
  import warnings  # pylint: disable=g-import-not-at-top
  warnings.filterwarnings('ignore')
  from video_diffusion_pytorch import GaussianDiffusion, Unet3D  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  batch, channels, frames, size = 2, 3, 8, 32
  model = Unet3D(dim=32, dim_mults=(1, 2, 4), channels=channels, attn_heads=8, attn_dim_head=32)
  diffusion = GaussianDiffusion(model, image_size=size, num_frames=frames, channels=channels,
                                timesteps=1000, loss_type='l2')
  nparams = sum(p.numel() for p in model.parameters())
  x = torch.rand(batch, channels, frames, size, size)  # the peer normalises [0, 1] data

  if args.kind == 'train':
    opt = torch.optim.Adam(diffusion.parameters(), lr=1e-4)

    def step():
      loss = diffusion(x)
      loss.backward()
      opt.step()
      opt.zero_grad()
      return loss
  else:
    diffusion.eval()
    z = torch.randn(batch, channels, frames, size, size)
    t = torch.full((batch,), 500, dtype=torch.long)

    def step():
      return diffusion.p_sample(z, t)

  for _ in range(args.warmup):
    step()
  with FlopCounterMode(display=False) as counter:
    step()
  flops = counter.get_total_flops()
  # The machine's float32 matmul rate as torch (MKL/oneDNN) sees it.
  n = 2048
  a, b = torch.randn(n, n), torch.randn(n, n)
  for _ in range(2):
    torch.mm(a, b)
  mm = []
  for _ in range(5):
    start = time.perf_counter()
    torch.mm(a, b)
    mm.append(time.perf_counter() - start)
  mm_rate = 2.0 * n**3 / sorted(mm)[len(mm) // 2]
  del a, b
  setup_peak = rss.rss_high_water_mark_bytes()  # Model build and warm-up steps.
  hwm_reset = rss.reset_rss_high_water_mark()
  _reply({'ready': True, 'param_count': nparams, 'flops': flops, 'torch': torch.__version__,
          'threads': torch.get_num_threads(), 'matmul_rate': mm_rate, 'hwm_reset': hwm_reset,
          'setup_peak_rss_bytes': setup_peak})
  for line in sys.stdin:
    cmd = line.split()
    if not cmd:
      continue
    if cmd[0] == 'run':
      times = []
      for _ in range(int(cmd[1])):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
      _reply({'times': times})
    elif cmd[0] == 'stats':
      _reply({'peak_rss_bytes': rss.host_peak_rss_bytes(),
              'steady_peak_rss_bytes': rss.rss_high_water_mark_bytes() if hwm_reset else None})
    elif cmd[0] == 'quit':
      break


if __name__ == '__main__':
  main()
