"""Where a train step's time goes: every U-Net block timed alone at its real shape.

  python benchmarks/profile_blocks.py [--workload=tiny] [--reps=7]

Walks the network in the order of UNet3D.__call__, records each block with the
input it receives, then times its forward and forward+backward pass jitted on
its own. The sum is close to (not equal to) the whole step: XLA fuses across
block boundaries in the real step. BENCHMARKS.md holds the tables.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
from flax import nnx  # pylint: disable=g-import-not-at-top,wrong-import-position

from vdm.models import layers  # pylint: disable=g-import-not-at-top,wrong-import-position
from vdm.models import unet3d  # pylint: disable=g-import-not-at-top,wrong-import-position


def _median_time(fn, *args, reps=7, warmup=2):
  return statistics.median(common.time_calls(lambda: fn(*args), reps, warmup))


def _rand(key, shape, dtype=jnp.float32):
  return jax.random.normal(jax.random.key(key), shape, dtype)


def _walk_unet(model: unet3d.UNet3D, z, logsnr):
  """Runs the U-Net like UNet3D.__call__ and records every block with its inputs.

  Returns:
    [(name, module, call(module, *inputs), inputs)] in execution order.
  """
  cfg = model.config
  calls = []

  def rec(name, module, fn, *inputs):
    calls.append((name, module, fn, inputs))
    return fn(module, *inputs)

  emb = layers.sinusoidal_embedding(unet3d.LOGSNR_EMBED_SCALE * logsnr, cfg.base_channels)
  emb = model.time_mlp2(jax.nn.silu(model.time_mlp1(emb)))[:, None]  # [B, 1, E]
  conv = lambda m, x: m(x)
  res = lambda m, x, e: m(x, e, None)
  spatial = lambda m, x: m(x)
  temporal = lambda m, x: m(x, None)
  h = rec('conv_in', model.conv_in, conv, z)
  skips = [h]

  def level(prefix, blk, h):
    h = rec(f'{prefix}.res {h.shape[2]}x{h.shape[3]} in {h.shape[-1]}ch', blk.res, res, h, emb)
    if blk.attn is not None:
      h = rec(f'{prefix}.spatial_attn {h.shape[2]}x{h.shape[3]}', blk.attn.spatial, spatial, h)
      h = rec(f'{prefix}.temporal_attn {h.shape[2]}x{h.shape[3]}', blk.attn.temporal,
              temporal, h)
    return h

  blocks = iter(model.down)
  n = 0
  for lvl in range(len(cfg.channel_mult)):
    for _ in range(cfg.num_res_blocks):
      h = level(f'down{n}', next(blocks), h)
      n += 1
      skips.append(h)
    if lvl < len(cfg.channel_mult) - 1:
      h = rec(f'downsample{lvl}', model.downsample[lvl], conv, h)
      skips.append(h)
  h = level('mid1', model.mid1, h)
  h = level('mid2', model.mid2, h)
  blocks = iter(model.up)
  n = 0
  for i, lvl in enumerate(reversed(range(len(cfg.channel_mult)))):
    for _ in range(cfg.num_res_blocks + 1):
      h = jnp.concatenate([h, skips.pop().astype(h.dtype)], axis=-1)
      h = level(f'up{n}', next(blocks), h)
      n += 1
    if lvl > 0:
      h = rec(f'upsample{i}', model.upsample[i], conv, layers.upsample_nearest(h))
  rec('norm_out+conv_out', model,
      lambda m, x: m.conv_out(jax.nn.silu(m.norm_out(x))), h)
  return calls


def _category(name: str) -> str:
  if 'spatial_attn' in name:
    return 'spatial attention'
  if 'temporal_attn' in name:
    return 'temporal attention'
  if '.res' in name:
    return 'residual blocks'
  return 'other convs (in/out/up/down)'


def exp_blocks(reps: int, config) -> dict:
  """Forward and forward+backward time of every block at its real input shape."""
  from vdm import config_lib  # pylint: disable=g-import-not-at-top
  mcfg = config_lib.validate_config(config)
  model = unet3d.UNet3D(mcfg, rngs=nnx.Rngs(0))
  # Non-zero output layers, so that every gradient is a real one.
  for _, p in nnx.iter_graph(model):
    if isinstance(p, nnx.Param) and p[...].ndim >= 2 and not jnp.any(p[...]):
      p[...] = _rand(7, p[...].shape) * 0.02
  b, t, s, c = (config.training.batch_size, config.data.num_frames, config.data.image_size,
                config.data.channels)
  z = _rand(0, (b, t, s, s, c))
  logsnr = jnp.linspace(-5.0, 5.0, b)
  calls = _walk_unet(model, z, logsnr)
  rows = [('block', 'fwd ms', 'fwd+bwd ms', 'share of fwd+bwd')]
  results = []
  for name, module, fn, inputs in calls:
    graphdef, params = nnx.split(module)
    # The norm_out+conv_out entry takes the whole model: split only what it uses.

    def pure(params, *xs, graphdef=graphdef, fn=fn):
      return fn(nnx.merge(graphdef, params), *xs)
    out = pure(params, *inputs)
    ct = _rand(9, out.shape)
    fwd = jax.jit(pure)
    grad = jax.jit(jax.grad(lambda p, xs, ct: jnp.sum(pure(p, *xs) * ct), argnums=(0, 1)))
    tf = _median_time(fwd, params, *inputs, reps=reps)
    tb = _median_time(grad, params, inputs, ct, reps=reps)
    results.append((name, tf, tb))
  total_b = sum(r[2] for r in results)
  total_f = sum(r[1] for r in results)
  for name, tf, tb in results:
    rows.append((name, f'{tf * 1e3:.1f}', f'{tb * 1e3:.1f}', f'{100 * tb / total_b:.1f}%'))
  rows.append(('sum of blocks', f'{total_f * 1e3:.1f}', f'{total_b * 1e3:.1f}', '100%'))
  print('\n== per-block times (tiny workload shapes; each block jitted alone) ==')
  print(common.table(rows))
  cats = {}
  for name, tf, tb in results:
    f0, b0 = cats.get(_category(name), (0.0, 0.0))
    cats[_category(name)] = (f0 + tf, b0 + tb)
  rows = [('category', 'fwd ms', 'fwd+bwd ms', 'share')]
  for cat, (tf, tb) in sorted(cats.items(), key=lambda kv: -kv[1][1]):
    rows.append((cat, f'{tf * 1e3:.1f}', f'{tb * 1e3:.1f}', f'{100 * tb / total_b:.1f}%'))
  print(common.table(rows), flush=True)
  return {'blocks': [dict(name=n, fwd_s=f, fwd_bwd_s=b_) for n, f, b_ in results],
          'categories': {k: dict(fwd_s=v[0], fwd_bwd_s=v[1]) for k, v in cats.items()}}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workload', default='tiny')
  parser.add_argument('--reps', type=int, default=7)
  args = parser.parse_args()
  print(f'machine: {common.cpu_model()}, load {common.load_average()}', flush=True)
  out = exp_blocks(args.reps, common.get_config(args.workload))
  out.update(load_end=common.load_average(), **common.machine_info())
  path = common.write_result(out | {'benchmark': 'profile_blocks', 'workload': args.workload},
                             f'profile_blocks_{args.workload}')
  print(f'(written to {os.path.relpath(path)})')


if __name__ == '__main__':
  main()
