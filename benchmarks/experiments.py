"""Where the tiny workload's time goes, and prototypes that move it.

  python benchmarks/experiments.py --exp=blocks      # per-block fwd / fwd+bwd times
  python benchmarks/experiments.py --exp=ops         # conv, GroupNorm, attention variants
  python benchmarks/experiments.py --exp=variants    # whole train/sample step, A/B
  python benchmarks/experiments.py --exp=all

Nothing here changes vdm/: the variants are installed by monkey-patching
vdm.models.layers / vdm.models.attention inside a subprocess (see VARIANTS), so
each can be measured against the unchanged code, alternately, in the same run.
A variant that wins is a recommendation for vdm/ (BENCHMARKS.md says which).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
from flax import nnx  # pylint: disable=g-import-not-at-top,wrong-import-position

from vdm.models import attention as attention_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from vdm.models import layers  # pylint: disable=g-import-not-at-top,wrong-import-position
from vdm.models import unet3d  # pylint: disable=g-import-not-at-top,wrong-import-position


def _median_time(fn, *args, reps=7, warmup=2):
  return statistics.median(common.time_calls(lambda: fn(*args), reps, warmup))


def _rand(key, shape, dtype=jnp.float32):
  return jax.random.normal(jax.random.PRNGKey(key), shape, dtype)


def _fwd_bwd(f):
  """jit(grad of sum(f(*args) * cotangent)) w.r.t. every argument."""
  def loss(args, ct):
    return jnp.sum(f(*args) * ct)
  return jax.jit(jax.grad(loss))


# =========================================================================== op variants

def conv_xla_autodiff(x, k):
  """XLA's convolution with XLA's own gradients (no custom VJP)."""
  return layers._conv_same(x, k, 1)  # pylint: disable=protected-access


def _im2col(x, kh, kw):
  n, h, w, c = x.shape
  xp = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
  return jnp.concatenate([xp[:, i:i + h, j:j + w, :] for i in range(kh) for j in range(kw)],
                         axis=-1)  # [N, H, W, kh*kw*C]


def conv_im2col(x, k):
  """SAME stride-1 conv as one matmul of the im2col patches (autodiff through)."""
  kh, kw, ci, co = k.shape
  n, h, w, _ = x.shape
  y = jnp.dot(_im2col(x, kh, kw).reshape(-1, kh * kw * ci), k.reshape(kh * kw * ci, co))
  return y.reshape(n, h, w, co)


def conv_shiftsum(x, k):
  """SAME stride-1 conv as ONE matmul x @ [Ci, kh*kw*Co], then a sum of shifts."""
  kh, kw, ci, co = k.shape
  n, h, w, _ = x.shape
  z = jnp.dot(x.reshape(-1, ci), jnp.transpose(k, (2, 0, 1, 3)).reshape(ci, kh * kw * co))
  z = z.reshape(n, h, w, kh, kw, co)
  zp = jnp.pad(z, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0), (0, 0), (0, 0)))
  out = 0
  for i in range(kh):
    for j in range(kw):
      out = out + zp[:, i:i + h, j:j + w, i, j, :]
  return out


@jax.custom_vjp
def conv_vjp_im2col(x, k):
  """XLA forward and input gradient; kernel gradient as ONE im2col matmul."""
  return layers._conv_same(x, k, 1)  # pylint: disable=protected-access


def _cvi_fwd(x, k):
  return layers._conv_same(x, k, 1), (x, k)  # pylint: disable=protected-access


def _cvi_bwd(res, g):
  x, k = res
  kh, kw, ci, co = k.shape
  _, vjp = jax.vjp(lambda x_: layers._conv_same(x_, k, 1), x)  # pylint: disable=protected-access
  (dx,) = vjp(g)
  dk = jnp.dot(_im2col(x, kh, kw).reshape(-1, kh * kw * ci).T, g.reshape(-1, co))
  return dx, dk.reshape(k.shape)


conv_vjp_im2col.defvjp(_cvi_fwd, _cvi_bwd)


@jax.custom_vjp
def conv_all_matmul(x, k):
  """Forward: im2col matmul. Input grad: shift-sum matmul. Kernel grad: im2col.

  Only x is saved for the backward pass (the patches are rebuilt there), so
  the residual memory is the same as XLA's convolution.
  """
  return conv_im2col(x, k)


def _cam_fwd(x, k):
  return conv_im2col(x, k), (x, k)


def _cam_bwd(res, g):
  x, k = res
  kh, kw, ci, co = k.shape
  # dx = conv(g, flipped and transposed kernel): again a SAME 3x3 conv.
  k_t = jnp.transpose(k[::-1, ::-1], (0, 1, 3, 2))  # [kh, kw, Co, Ci]
  dx = conv_im2col(g, k_t)
  dk = jnp.dot(_im2col(x, kh, kw).reshape(-1, kh * kw * ci).T, g.reshape(-1, co))
  return dx, dk.reshape(k.shape)


conv_all_matmul.defvjp(_cam_fwd, _cam_bwd)


@jax.custom_vjp
def conv_xla_fwd_matmul_bwd(x, k):
  """XLA forward; backward: im2col matmuls for both the input and kernel grads."""
  return layers._conv_same(x, k, 1)  # pylint: disable=protected-access


def _cxm_fwd(x, k):
  return layers._conv_same(x, k, 1), (x, k)  # pylint: disable=protected-access


conv_xla_fwd_matmul_bwd.defvjp(_cxm_fwd, _cam_bwd)


# vdm's conv2d (kernel-gradient taps in a fori_loop since b6d3527), kept here
# because variants patch layers.conv2d.
conv2d_loop = layers.conv2d


def conv_dk_loop(x, k):
  return conv2d_loop(x, k, 1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d_unrolled(x, kernel, stride=1):
  """vdm's conv2d before commit b6d3527: the 9 kernel-gradient taps unrolled."""
  return layers._conv_same(x, kernel, stride)  # pylint: disable=protected-access


def _c2u_bwd(stride, residuals, grad):
  x, kernel = residuals
  # vdm's input gradient; its kernel gradient is unused, and XLA drops it.
  dx, _ = layers._conv2d_bwd(stride, residuals, grad)  # pylint: disable=protected-access
  kh, kw, cin, cout = kernel.shape
  pads = jax.lax.padtype_to_pads(x.shape[1:3], (kh, kw), (stride, stride), 'SAME')
  xp = jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
  oh, ow = grad.shape[1:3]
  g = grad.reshape(-1, cout)
  taps = []
  for i in range(kh):
    for j in range(kw):
      window = xp[:, i:i + (oh - 1) * stride + 1:stride, j:j + (ow - 1) * stride + 1:stride]
      taps.append(jnp.dot(window.reshape(-1, cin).T, g, preferred_element_type=jnp.float32))
  return dx, jnp.stack(taps).reshape(kh, kw, cin, cout).astype(kernel.dtype)


conv2d_unrolled.defvjp(layers._conv2d_fwd, _c2u_bwd)  # pylint: disable=protected-access


CONV_VARIANTS = {
    'unrolled taps dk (vdm before b6d3527)': lambda x, k: conv2d_unrolled(x, k, 1),
    'XLA autodiff': conv_xla_autodiff,
    'XLA fwd/dx, im2col dk': conv_vjp_im2col,
    'XLA fwd/dx, dk taps in a loop': conv_dk_loop,
    'XLA fwd, im2col dx+dk': conv_xla_fwd_matmul_bwd,
    'im2col fwd/dx/dk (custom vjp)': conv_all_matmul,
    'im2col autodiff': conv_im2col,
    'shift-sum autodiff': conv_shiftsum,
}


def group_norm_current(x, scale, bias, groups, eps=1e-6):
  """vdm's GroupNorm before the folded form: normalise, then scale and shift."""
  *lead, h, w, c = x.shape
  xf = x.astype(jnp.float32).reshape(*lead, h, w, groups, c // groups)
  mean = jnp.mean(xf, axis=(-4, -3, -1), keepdims=True)
  var = jnp.mean(jnp.square(xf - mean), axis=(-4, -3, -1), keepdims=True)
  y = ((xf - mean) * jax.lax.rsqrt(var + eps)).reshape(x.shape)
  return y * scale + bias


def group_norm_onepass(x, scale, bias, groups, eps=1e-6):
  """Statistics from sum(x) and sum(x^2) in one pass; the affine folded in."""
  *lead, h, w, c = x.shape
  xf = x.astype(jnp.float32).reshape(*lead, h * w, groups, c // groups)
  mean = jnp.mean(xf, axis=(-3, -1), keepdims=True)
  meansq = jnp.mean(jnp.square(xf), axis=(-3, -1), keepdims=True)
  inv = jax.lax.rsqrt(jnp.maximum(meansq - jnp.square(mean), 0.0) + eps)
  g_scale = scale.reshape(groups, c // groups) * inv        # [..., 1, G, C/G]
  g_shift = bias.reshape(groups, c // groups) - mean * g_scale
  return (xf * g_scale + g_shift).reshape(x.shape)


def group_norm_folded(x, scale, bias, groups, eps=1e-6):
  """Two-pass statistics (as now), the normalisation and affine folded into one
  multiply-add per element: y = x * a + b with a = scale * rsqrt(var + eps) and
  b = bias - mean * a, both per (frame, channel)."""
  *lead, h, w, c = x.shape
  xf = x.astype(jnp.float32).reshape(*lead, h * w, groups, c // groups)
  mean = jnp.mean(xf, axis=(-3, -1), keepdims=True)
  var = jnp.mean(jnp.square(xf - mean), axis=(-3, -1), keepdims=True)
  a = scale.reshape(groups, c // groups) * jax.lax.rsqrt(var + eps)
  b = bias.reshape(groups, c // groups) - mean * a
  return (xf * a + b).reshape(x.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def group_norm_vjp(x, scale, bias, groups, eps=1e-6):
  return group_norm_onepass(x, scale, bias, groups, eps)


def _gn_fwd(x, scale, bias, groups, eps):
  *lead, h, w, c = x.shape
  xf = x.astype(jnp.float32).reshape(*lead, h * w, groups, c // groups)
  mean = jnp.mean(xf, axis=(-3, -1), keepdims=True)
  var = jnp.maximum(jnp.mean(jnp.square(xf), axis=(-3, -1), keepdims=True) - mean**2, 0.0)
  inv = jax.lax.rsqrt(var + eps)
  g_scale = scale.reshape(groups, c // groups) * inv
  y = (xf * g_scale + (bias.reshape(groups, c // groups) - mean * g_scale)).reshape(x.shape)
  return y, (x, scale, mean, inv)


def _gn_bwd(groups, eps, res, g):
  del eps
  x, scale, mean, inv = res
  *lead, h, w, c = x.shape
  xf = x.astype(jnp.float32).reshape(*lead, h * w, groups, c // groups)
  gf = g.astype(jnp.float32).reshape(xf.shape)
  xhat = (xf - mean) * inv
  red = tuple(range(len(lead)))
  dscale = jnp.sum(gf * xhat, axis=red + (len(lead),)).reshape(c)
  dbias = jnp.sum(gf, axis=red + (len(lead),)).reshape(c)
  gy = gf * scale.reshape(groups, c // groups)
  m1 = jnp.mean(gy, axis=(-3, -1), keepdims=True)
  m2 = jnp.mean(gy * xhat, axis=(-3, -1), keepdims=True)
  dx = (inv * (gy - m1 - xhat * m2)).reshape(x.shape).astype(x.dtype)
  return dx, dscale, dbias


group_norm_vjp.defvjp(_gn_fwd, _gn_bwd)

GN_VARIANTS = {
    'two-pass, separate affine (vdm before)': group_norm_current,
    'two-pass stats, folded affine (vdm now)': group_norm_folded,
    'one-pass stats, folded affine': group_norm_onepass,
    'one-pass + analytic custom vjp': group_norm_vjp,
}


def attn_xla(q, k, v, bias=None):
  return jax.nn.dot_product_attention(q, k, v, bias=bias)


def attn_einsum(q, k, v, bias=None):
  """Plain softmax attention on [B, L, N, D] with einsums."""
  scale = q.shape[-1] ** -0.5
  s = jnp.einsum('blnd,bmnd->bnlm', q * scale, k)
  if bias is not None:
    s = s + bias
  p = jax.nn.softmax(s, axis=-1)
  return jnp.einsum('bnlm,bmnd->blnd', p, v)


def attn_einsum_heads_first(q, k, v, bias=None):
  """As attn_einsum, with q, k, v moved to [B, N, L, D] once (batched matmuls)."""
  scale = q.shape[-1] ** -0.5
  qt, kt, vt = (jnp.swapaxes(a, 1, 2) for a in (q * scale, k, v))
  s = jnp.matmul(qt, jnp.swapaxes(kt, -1, -2))
  if bias is not None:
    s = s + bias
  p = jax.nn.softmax(s, axis=-1)
  return jnp.swapaxes(jnp.matmul(p, vt), 1, 2)


ATTN_VARIANTS = {
    'jax.nn.dot_product_attention': attn_xla,
    'einsum softmax': attn_einsum,
    'heads-first matmul softmax': attn_einsum_heads_first,
}


def exp_ops(reps: int) -> dict:
  """Micro-benchmarks at the tiny workload's shapes (fwd and fwd+bwd)."""
  out = {}
  print('\n== 3x3 convolution, [16 frames, H, W, Cin] -> Cout (ms) ==')
  rows = [('variant', 'shape', 'fwd', 'fwd+bwd', 'max err')]
  shapes = [(16, 32, 32, 64, 32), (16, 32, 32, 96, 32), (16, 32, 32, 32, 32),
            (16, 16, 16, 128, 64), (16, 8, 8, 256, 128)]
  for n, h, w, ci, co in shapes:
    x, k = _rand(0, (n, h, w, ci)), _rand(1, (3, 3, ci, co)) * 0.05
    ct = _rand(2, (n, h, w, co))
    ref = _fwd_bwd(conv_xla_autodiff)((x, k), ct)
    for name, f in CONV_VARIANTS.items():
      fwd = jax.jit(f)
      grad = _fwd_bwd(f)
      err = max(float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-9))
                for a, b in zip(grad((x, k), ct), ref))
      tf = _median_time(fwd, x, k, reps=reps) * 1e3
      tb = _median_time(grad, (x, k), ct, reps=reps) * 1e3
      rows.append((name, f'{h}x{w} {ci}->{co}', f'{tf:.2f}', f'{tb:.2f}', f'{err:.1e}'))
      out[f'conv {name} {h}x{w} {ci}->{co}'] = dict(fwd_ms=tf, fwd_bwd_ms=tb)
  print(common.table(rows), flush=True)

  print('\n== GroupNorm (8 groups) fwd and fwd+bwd (ms) ==')
  rows = [('variant', 'shape', 'fwd', 'fwd+bwd', 'max err')]
  for shape in [(2, 8, 32, 32, 64), (2, 8, 32, 32, 96), (2, 8, 16, 16, 128), (2, 8, 8, 8, 128)]:
    c = shape[-1]
    x = _rand(0, shape) * 3 + 1
    scale, bias = 1 + 0.1 * _rand(1, (c,)), 0.1 * _rand(2, (c,))
    ct = _rand(3, shape)
    ref = _fwd_bwd(lambda a, s, b: group_norm_current(a, s, b, 8))((x, scale, bias), ct)
    for name, f in GN_VARIANTS.items():
      g = functools.partial(lambda f_, a, s, b: f_(a, s, b, 8), f)
      fwd, grad = jax.jit(g), _fwd_bwd(g)
      err = max(float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-9))
                for a, b in zip(grad((x, scale, bias), ct), ref))
      tf = _median_time(fwd, x, scale, bias, reps=reps) * 1e3
      tb = _median_time(grad, (x, scale, bias), ct, reps=reps) * 1e3
      rows.append((name, 'x'.join(map(str, shape)), f'{tf:.2f}', f'{tb:.2f}', f'{err:.1e}'))
      out[f'groupnorm {name} {shape}'] = dict(fwd_ms=tf, fwd_bwd_ms=tb)
  print(common.table(rows), flush=True)

  print('\n== attention, 8 heads x 32 (ms) ==')
  rows = [('variant', 'case', 'fwd', 'fwd+bwd', 'max err')]
  cases = [('spatial 8x8', (16, 64), False), ('spatial 16x16', (16, 256), False),
           ('spatial 32x32', (16, 1024), False), ('temporal @8x8', (128, 8), True),
           ('temporal @32x32', (2048, 8), True)]
  for label, (b, l), with_bias in cases:
    q, k, v = (_rand(i, (b, l, 8, 32)) for i in range(3))
    bias = _rand(4, (1, 8, l, l)) * 0.1 if with_bias else None
    ct = _rand(5, (b, l, 8, 32))
    ref = _fwd_bwd(lambda q_, k_, v_: attn_einsum(q_, k_, v_, bias))((q, k, v), ct)
    for name, f in ATTN_VARIANTS.items():
      g = functools.partial(lambda f_, q_, k_, v_: f_(q_, k_, v_, bias), f)
      fwd, grad = jax.jit(g), _fwd_bwd(g)
      err = max(float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-9))
                for a, b in zip(grad((q, k, v), ct), ref))
      tf = _median_time(fwd, q, k, v, reps=reps) * 1e3
      tb = _median_time(grad, (q, k, v), ct, reps=reps) * 1e3
      rows.append((name, label, f'{tf:.2f}', f'{tb:.2f}', f'{err:.1e}'))
      out[f'attention {name} {label}'] = dict(fwd_ms=tf, fwd_bwd_ms=tb)
  print(common.table(rows), flush=True)
  return out


# =========================================================================== per block

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
  emb = model.time_mlp2(jax.nn.silu(model.time_mlp1(emb)))
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
      h = jnp.concatenate([h, skips.pop()], axis=-1)
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


def exp_blocks(reps: int, config=None) -> dict:
  """Forward and forward+backward time of every block at its real input shape."""
  config = config or common.get_config('tiny')
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


# =========================================================================== variants

def _patch_conv(fn):
  """Replaces stride-1 3x3 convs of SpatialConv by fn (others keep conv2d)."""
  original = layers.conv2d

  def conv2d(x, kernel, stride=1):
    if stride == 1 and kernel.shape[0] == 3:
      return fn(x, kernel)
    return original(x, kernel, stride)
  layers.conv2d = conv2d


def _patch_groupnorm(fn):
  def call(self, x):
    y = fn(x, self.scale[...], self.bias[...], self.num_groups, self.eps)
    return y.astype(self.dtype)
  layers.GroupNorm.__call__ = call


def _patch_attention(fn):
  """Swaps jax.nn.dot_product_attention as vdm.models.attention calls it."""
  real = jax.nn.dot_product_attention

  def dpa(q, k, v, bias=None, mask=None, **kw):
    if mask is not None or kw:
      return real(q, k, v, bias=bias, mask=mask, **kw)
    return fn(q, k, v, bias)

  class _Nn:
    def __getattr__(self, name):
      return dpa if name == 'dot_product_attention' else getattr(jax.nn, name)

  class _Jax:
    nn = _Nn()

    def __getattr__(self, name):
      return getattr(jax, name)
  attention_lib.jax = _Jax()


def _patch_malloc_trim():
  """Returns compile-time heap to the OS before the timed steps (glibc)."""
  import ctypes  # pylint: disable=g-import-not-at-top
  libc = ctypes.CDLL('libc.so.6')
  original = common.time_calls

  def time_calls(fn, iters, warmup=1):
    libc.malloc_trim(0)
    return original(fn, iters, warmup)
  common.time_calls = time_calls
  original_prepare = common.PREPARE['train']

  def prepare(config, seed=0):
    p = original_prepare(config, seed)
    libc.malloc_trim(0)
    return p
  common.PREPARE['train'] = prepare
  from vdm import train_lib  # pylint: disable=g-import-not-at-top
  original_init_state = train_lib.Trainer.init_state

  def init_state(self):
    state = jax.block_until_ready(original_init_state(self))
    libc.malloc_trim(0)
    return state
  train_lib.Trainer.init_state = init_state


def _patch_no_trim():
  """vdm without its malloc_trim after init and compile (glibc keeps the heap)."""
  from vdm import host_memory  # pylint: disable=g-import-not-at-top
  host_memory.release_host_memory = lambda: False


# Environment of a variant's subprocess (glibc malloc reads it at start):
# a fixed mmap threshold keeps big buffers out of the heap (freed memory goes
# back to the OS), trimming returns the heap's free top.
VARIANT_ENV = {
    'malloc_env': {'MALLOC_MMAP_THRESHOLD_': '131072', 'MALLOC_TRIM_THRESHOLD_': '131072'},
}
# Config overrides of a variant.
VARIANT_SET = {'remat': ['model.remat=true']}


VARIANTS = {
    'baseline': lambda: None,
    'malloc_env': lambda: None,
    'remat': lambda: None,
    'conv_dk_loop': lambda: setattr(layers, 'conv2d', conv2d_loop),  # = vdm since b6d3527
    'conv_dk_unrolled': lambda: setattr(layers, 'conv2d', conv2d_unrolled),  # vdm before
    'conv_im2col_dk': lambda: _patch_conv(conv_vjp_im2col),
    'conv_xla_fwd_matmul_bwd': lambda: _patch_conv(conv_xla_fwd_matmul_bwd),
    'conv_all_matmul': lambda: _patch_conv(conv_all_matmul),
    'conv_shiftsum': lambda: _patch_conv(conv_shiftsum),
    'gn_onepass': lambda: _patch_groupnorm(group_norm_onepass),
    'gn_folded': lambda: _patch_groupnorm(group_norm_folded),  # = vdm since this change
    'conv_xla': lambda: _patch_conv(conv_xla_autodiff),
    'gn_vjp': lambda: _patch_groupnorm(group_norm_vjp),
    'attn_einsum': lambda: _patch_attention(attn_einsum),
    'malloc_trim': _patch_malloc_trim,  # vdm trims after init and compile itself now
    # The two changes taken into vdm, undone, to measure what they bring.
    'gn_separate': lambda: _patch_groupnorm(group_norm_current),
    'no_trim': _patch_no_trim,
}


def variant_worker(names: str, kind: str, iters: int, overrides) -> dict:
  """In a subprocess: applies the variants ('+'-joined), runs one benchmark."""
  for name in names.split('+'):
    VARIANTS[name]()
  extra = [o for n in names.split('+') for o in VARIANT_SET.get(n, [])]
  config = common.get_config('tiny', overrides=list(overrides) + extra)
  record = common.run_benchmark(kind, config, iters=iters, warmup=2)
  keep = ('median_s', 'min_s', 'compile_s', 'peak_rss_bytes', 'steady_peak_rss_bytes',
          'xla_flops', 'matmul_flops', 'xla_memory', 'load_average')
  return {k: record[k] for k in keep}


def exp_variants(variants: list[str], kinds: list[str], rounds: int, iters: int,
                 overrides=(), with_: str = '') -> dict:
  """Alternates the variants, each in a fresh subprocess, for several rounds."""
  results = {}
  for kind in kinds:
    per = {v: [] for v in variants}
    for r in range(rounds):
      for v in variants:
        full = '+'.join(x for x in [with_, v] if x and x != 'baseline') or 'baseline'
        cmd = [sys.executable, os.path.abspath(__file__), '--variant_worker', full, '--kind', kind,
               '--iters', str(iters)] + [f'--set={o}' for o in overrides]
        env = dict(os.environ)
        for name in full.split('+'):
          env.update(VARIANT_ENV.get(name, {}))
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        if proc.returncode:
          print(proc.stderr[-3000:])
          raise SystemExit(f'variant {v} failed')
        rec = json.loads(proc.stdout.strip().splitlines()[-1])
        per[v].append(rec)
        print(f'{kind} round {r + 1} {v}: {rec["median_s"]:.4f} s/step, peak RSS '
              f'{rec["peak_rss_bytes"] / 2**20:,.0f} MiB, XLA temp '
              f'{rec["xla_memory"].get("temp_bytes", 0) / 2**20:,.0f} MiB, compile '
              f'{rec["compile_s"]:.0f} s (load {rec["load_average"][0]:.2f})', flush=True)
    base = per[variants[0]]
    rows = [('variant', 'median s', 'vs ' + variants[0], 'peak RSS MiB', 'XLA temp MiB',
             'compile s')]
    for v in variants:
      med = statistics.median(x['median_s'] for x in per[v])
      ratios = [b['median_s'] / x['median_s'] for b, x in zip(base, per[v])]
      rows.append((v, f'{med:.4f}', f'{statistics.median(ratios):.2f}x',
                   f"{statistics.median(x['peak_rss_bytes'] for x in per[v]) / 2**20:,.0f}",
                   f"{per[v][0]['xla_memory'].get('temp_bytes', 0) / 2**20:,.0f}",
                   f"{statistics.median(x['compile_s'] for x in per[v]):.0f}"))
    print(f'\n== {kind} step, variants alternated over {rounds} rounds '
          f'(ratio = {variants[0]} time / variant time, pair by pair) ==')
    print(common.table(rows), flush=True)
    results[kind] = per
  return results


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--exp', default='all', help='blocks, ops, variants or all')
  parser.add_argument('--reps', type=int, default=7)
  parser.add_argument('--variants', default='baseline,conv_im2col_dk,gn_vjp,attn_einsum')
  parser.add_argument('--kinds', default='train,sample')
  parser.add_argument('--rounds', type=int, default=2)
  parser.add_argument('--iters', type=int, default=5)
  parser.add_argument('--set', action='append', default=[])
  parser.add_argument('--with', dest='with_', default='',
                      help="'+'-joined variants applied to every variant, baseline included")
  parser.add_argument('--variant_worker', default='', help=argparse.SUPPRESS)
  parser.add_argument('--kind', default='train', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.variant_worker:
    print(json.dumps(variant_worker(args.variant_worker, args.kind, args.iters, args.set)))
    return
  print(f'machine: {common.cpu_model()}, load {common.load_average()}', flush=True)
  out = {}
  exps = ['ops', 'blocks', 'variants'] if args.exp == 'all' else args.exp.split(',')
  if 'ops' in exps:
    out['ops'] = exp_ops(args.reps)
  if 'blocks' in exps:
    out['blocks'] = exp_blocks(args.reps)
  if 'variants' in exps:
    out['variants'] = exp_variants(args.variants.split(','), args.kinds.split(','),
                                   args.rounds, args.iters, args.set, args.with_)
  out.update(load_end=common.load_average(), **common.machine_info())
  name = 'experiments_' + '_'.join(exps) + ('_' + '_'.join(args.kinds.split(','))
                                            if 'variants' in exps else '')
  path = common.write_result(out | {'benchmark': 'experiments', 'workload': 'tiny'}, name)
  print(f'(written to {os.path.relpath(path)})')


if __name__ == '__main__':
  main()
