"""Shared code of the benchmark scripts: workloads, timing, memory, FLOPs, output.

Every script in benchmarks/ measures through these functions, so a training
step, a sampling step and the peer comparison are timed, sized and reported the
same way:

  * workloads: ``WORKLOADS[name]`` builds the full config (``tiny`` for CPU
    comparisons with the peer, ``ucf64`` / ``bair64`` the paper configs for
    GPUs); ``make_batch`` a synthetic batch of the right shapes.
  * timing: the step is lowered and compiled once (compile time measured), run
    ``warmup`` times, then ``iters`` times; each run is timed to
    ``block_until_ready`` and the median is reported.
  * memory: on CPU two host peaks, read from the kernel's RSS high-water mark
    (VmHWM): the setup peak (model build, init, compile, warm-up) and the
    peak over the timed steps alone (the mark reset through
    /proc/self/clear_refs after warm-up), which is what a running job holds;
    on GPU/TPU the device's ``peak_bytes_in_use``.
  * FLOPs: XLA's ``compiled.cost_analysis()['flops']`` (every op, elementwise
    included, but a loop body counted once and padding taps skipped) and the
    matmul/convolution FLOPs counted on the jaxpr (what torch's
    FlopCounterMode counts: the model FLOPs), so both sides of a comparison
    are counted alike; the achieved rate and the MFU against the device's
    dense bf16 peak use the model FLOPs.

Run the scripts from the repository root (or anywhere: they put the root on
sys.path themselves).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(ROOT, 'benchmarks', 'results')
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np

# Host memory lives in rss.py (standard library only) so that the peer's
# torch-only worker measures itself with the same code; re-exported here.
from rss import host_peak_rss_bytes  # pylint: disable=unused-import
from rss import reset_rss_high_water_mark
from rss import rss_high_water_mark_bytes

# Dense bf16 peak FLOP/s by device kind (substring of jax's device_kind,
# matched case-insensitively, first match wins).
PEAK_BF16_FLOPS = (
    ('h200', 989e12),          # H200 SXM: same tensor cores as H100 SXM.
    ('h100 pcie', 756e12),
    ('h100', 989e12),          # H100 SXM (device_kind 'NVIDIA H100 80GB HBM3').
    ('a100', 312e12),
    ('l40s', 362e12),
    ('tpu v5 lite', 197e12),
    ('tpu v5', 459e12),
    ('tpu v4', 275e12),
)


# --------------------------------------------------------------------------- workloads

@dataclasses.dataclass(frozen=True)
class Workload:
  """A named benchmark setting.

  Attributes:
    name: the --workload name.
    description: one line for tables.
    make_config: () -> full ConfigDict.
    accelerator: True when it is meant for a GPU/TPU (too big for 2 CPU cores).
  """
  name: str
  description: str
  make_config: Callable[[], Any]
  accelerator: bool = False


def _tiny_config():
  """Peer-matched CPU workload: batch 2 x 8 frames x 32x32x3.

  Same shapes and widths as lucidrains' video-diffusion-pytorch
  Unet3D(dim=32, dim_mults=(1, 2, 4), attn_heads=8, attn_dim_head=32), whose
  parameter count is 3,161,939. With one residual block per level and spatial +
  temporal attention at 8x8 (and in the middle) ours has 3,649,411 (+15%);
  with no attention outside the middle block it would have 2,855,299 (-10%),
  with attention also at 16x16 4,049,155 (+28%, outside the 20% band).
  Unconditional and without dropout or appended images, like the peer's
  training step.
  """
  from configs import default  # pylint: disable=g-import-not-at-top
  c = default.get_config()
  c.data.num_frames = 8
  c.data.num_images = 0
  c.data.image_size = 32
  c.data.channels = 3
  c.data.label_key = ''
  m = c.model
  m.base_channels = 32
  m.channel_mult = (1, 2, 4)
  m.num_res_blocks = 1
  m.attention_resolutions = (8,)
  m.num_heads = 8
  m.head_dim = 32
  m.norm_groups = 8
  m.dropout = 0.0
  m.num_classes = 0
  m.dtype = 'float32'
  c.diffusion.cond_drop_prob = 0.0
  c.training.batch_size = 2
  c.sampling.sampler = 'ancestral'
  return c


def _digits_config(module: str = 'default', **model):
  """A config of the bundled moving digits at 32x32, as the benchmarks measured it.

  Batch 4 x (10 + 2 image) frames x 32x32x1, attention at 8x8,
  class-conditional: pinned here, so the workloads stay what BENCHMARKS.md
  measured whatever configs/default.py trains.

  Args:
    module: the configs/ module.
    **model: config.model overrides.
  """
  import importlib  # pylint: disable=g-import-not-at-top
  c = importlib.import_module(f'configs.{module}').get_config()
  c.data.image_size = 32
  c.data.num_frames = 10
  c.data.num_images = 2
  c.training.batch_size = 4
  c.model.attention_resolutions = (8,)
  c.model.update(model)
  return c


def _paper_config(module: str, batch_size: int):
  import importlib  # pylint: disable=g-import-not-at-top
  c = importlib.import_module(f'configs.{module}').get_config()
  # The configs' batch 128 is global over 8 accelerators; one device gets 16.
  c.training.batch_size = batch_size
  return c


WORKLOADS = {
    'tiny': Workload('tiny', 'B2 x 8f x 32x32x3, base 32, mult (1,2,4), 8 heads x 32, fp32',
                     _tiny_config),
    'digits': Workload('digits', 'configs/default.py at 32x32: B4 x (10+2)f x 32x32x1, '
                       'base 32, 1,259,969 params', _digits_config),
    # The plain model with the parameters of digits_videofusion (1,578,530):
    # 36 channels, GroupNorm 4, 2 heads as the 32-channel model has at 8x8.
    'digits36': Workload('digits36', 'configs/default.py at base 36 (norm groups 4, 2 heads): '
                         '1,574,345 params', lambda: _digits_config(
                             base_channels=36, norm_groups=4, num_heads=2)),
    'digits_videofusion': Workload(
        'digits_videofusion', 'configs/videofusion_digits.py: base 32 (1,259,969) + residual 16 '
        '(318,561) = 1,578,530 params', lambda: _digits_config('videofusion_digits')),
    'ucf64': Workload('ucf64', 'configs/ucf101_64.py: B16 x (16+8)f x 64x64x3, base 256, bf16',
                      lambda: _paper_config('ucf101_64', 16), accelerator=True),
    'bair64': Workload('bair64', 'configs/bair_64.py: B16 x 16f x 64x64x3, base 128, bf16',
                       lambda: _paper_config('bair_64', 16), accelerator=True),
}


def get_config(name: str, batch_size: int = 0, overrides: Sequence[str] = ()):
  """The full config of a workload, with optional batch size and overrides.

  Args:
    name: a key of WORKLOADS.
    batch_size: replaces config.training.batch_size when > 0.
    overrides: 'section.key=value' strings (value parsed as JSON, else str).

  Returns:
    The ConfigDict.
  """
  if name not in WORKLOADS:
    raise SystemExit(f'--workload={name!r} is unknown; choose one of {sorted(WORKLOADS)}.')
  config = WORKLOADS[name].make_config()
  if batch_size > 0:
    config.training.batch_size = batch_size
  for item in overrides:
    key, _, value = item.partition('=')
    section, _, field = key.partition('.')
    try:
      parsed = json.loads(value)
    except json.JSONDecodeError:
      parsed = value
    if isinstance(parsed, list):
      parsed = tuple(parsed)
    config[section][field] = parsed
  return config


def make_batch(config, seed: int = 0) -> dict:
  """A synthetic global batch with the shapes the input pipeline produces.

  Returns:
    {'video': f32 [B, T+K, H, W, C] in [-1, 1], 'label': int32 [B] (conditional
    models), 'is_image': bool [T+K] (when K appended images)}, as numpy.
  """
  d = config.data
  rng = np.random.default_rng(seed)
  frames = d.num_frames + d.num_images
  b = config.training.batch_size
  batch = {'video': rng.uniform(-1, 1, (b, frames, d.image_size, d.image_size,
                                        d.channels)).astype(np.float32)}
  if config.model.num_classes:
    batch['label'] = rng.integers(0, config.model.num_classes, (b,)).astype(np.int32)
  if d.num_images:
    is_image = np.zeros(frames, bool)
    is_image[d.num_frames:] = True
    batch['is_image'] = is_image
  return batch


# --------------------------------------------------------------------------- machine

def cpu_model() -> str:
  """The CPU model name from /proc/cpuinfo (platform.processor() elsewhere)."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def load_average() -> tuple[float, float, float]:
  try:
    return os.getloadavg()
  except OSError:
    return (float('nan'),) * 3


def machine_info() -> dict:
  dev = jax.devices()[0]
  return {
      'platform': dev.platform,
      'device_kind': dev.device_kind,
      'num_devices': jax.device_count(),
      'cpu': cpu_model(),
      'cpu_cores': os.cpu_count(),
      'jax': jax.__version__,
      'date': datetime.date.today().isoformat(),
  }


def peak_flops(device_kind: str) -> Optional[float]:
  """Dense bf16 peak FLOP/s of an accelerator, None when unknown (or a CPU)."""
  kind = device_kind.lower()
  for key, value in PEAK_BF16_FLOPS:
    if key in kind:
      return value
  return None


# --------------------------------------------------------------------------- memory

def device_memory_stats() -> dict:
  """Peak/in-use bytes of device 0 where the backend reports them (GPU, TPU)."""
  try:
    stats = jax.devices()[0].memory_stats() or {}
  except Exception:  # pylint: disable=broad-except
    stats = {}
  keys = ('peak_bytes_in_use', 'bytes_in_use', 'bytes_limit')
  return {k: int(stats[k]) for k in keys if k in stats}


# --------------------------------------------------------------------------- FLOPs

def xla_flops(compiled) -> Optional[float]:
  """FLOPs of one call of a compiled executable from XLA's cost analysis."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  flops = (cost or {}).get('flops')
  return float(flops) if flops is not None and flops >= 0 else None


def xla_memory(compiled) -> dict:
  """XLA's static buffer sizes of a compiled executable (bytes)."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return {}
  if m is None:
    return {}
  out = {}
  for key in ('temp_size_in_bytes', 'argument_size_in_bytes', 'output_size_in_bytes',
              'alias_size_in_bytes', 'generated_code_size_in_bytes'):
    if hasattr(m, key):
      out[key.replace('_size_in_bytes', '_bytes')] = int(getattr(m, key))
  return out


def _subjaxprs(params: dict):
  for value in params.values():
    items = value if isinstance(value, (list, tuple)) else (value,)
    for item in items:
      if isinstance(item, jax.extend.core.ClosedJaxpr):
        yield item.jaxpr
      elif isinstance(item, jax.extend.core.Jaxpr):
        yield item


def matmul_flops_of_jaxpr(jaxpr) -> float:
  """2 x multiply-adds of every dot_general and convolution in a jaxpr.

  This is what torch.utils.flop_counter.FlopCounterMode counts (matmuls,
  convolutions, attention), so it compares like with like across frameworks.
  Loops count their trip count (scan); cond counts its costliest branch.
  """
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'dot_general':
      (lc, _), _ = eqn.params['dimension_numbers']
      lhs = eqn.invars[0].aval.shape
      k = math.prod(lhs[i] for i in lc)
      total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * k
    elif name == 'conv_general_dilated':
      rhs = eqn.invars[1].aval.shape
      dn = eqn.params['dimension_numbers']
      spec = dn.rhs_spec  # (out feature dim, in feature dim, spatial dims...)
      k = rhs[spec[1]] * math.prod(rhs[i] for i in spec[2:])
      total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * k
    elif name == 'scan':
      total += eqn.params['length'] * matmul_flops_of_jaxpr(eqn.params['jaxpr'].jaxpr)
    elif name == 'cond':
      total += max(matmul_flops_of_jaxpr(b.jaxpr) for b in eqn.params['branches'])
    else:
      for sub in _subjaxprs(eqn.params):
        total += matmul_flops_of_jaxpr(sub)
  return total


def matmul_flops(fn: Callable, *args) -> Optional[float]:
  """Matmul + convolution FLOPs of fn(*args), counted on its jaxpr."""
  try:
    return matmul_flops_of_jaxpr(jax.make_jaxpr(fn)(*args).jaxpr)
  except Exception as e:  # pylint: disable=broad-except
    print(f'(matmul FLOP count failed: {e!r})', file=sys.stderr)
    return None


# --------------------------------------------------------------------------- timing

def block(tree):
  return jax.block_until_ready(tree)


def time_calls(fn: Callable[[], Any], iters: int, warmup: int = 1) -> list[float]:
  """Seconds of each of ``iters`` calls of fn() after ``warmup`` untimed calls.

  fn must return something to block on (its outputs are waited for).
  """
  for _ in range(warmup):
    block(fn())
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    block(fn())
    times.append(time.perf_counter() - start)
  return times


def matmul_rate(n: int = 2048, iters: int = 5, dtype=jnp.float32) -> float:
  """Measured FLOP/s of an n x n matmul on device 0 (median of iters)."""
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype)
  b = jnp.asarray(np.random.default_rng(1).standard_normal((n, n)), dtype)
  f = jax.jit(jnp.dot)
  times = time_calls(lambda: f(a, b), iters, warmup=2)
  return 2.0 * n**3 / statistics.median(times)


# --------------------------------------------------------------------------- benchmarks

def _with_mesh(trainer):
  if hasattr(jax, 'set_mesh'):
    return jax.set_mesh(trainer.mesh)
  import contextlib  # pylint: disable=g-import-not-at-top
  return contextlib.nullcontext()


@dataclasses.dataclass
class Prepared:
  """A compiled step ready to time.

  Attributes:
    step: () -> something to block on; one training or sampling step.
    compiled: the XLA executable (for cost and memory analysis).
    info: benchmark, shapes, param_count, compile_s, FLOPs, ...
  """
  step: Callable[[], Any]
  compiled: Any
  info: dict


def prepare_train(config, seed: int = 0) -> Prepared:
  """Builds the Trainer, its state and a batch, and compiles train_step.

  The step is Trainer.train_step's own jit (forward, backward, optimizer and
  EMA update, donated state), lowered and compiled ahead of time so that the
  compile time is measured on its own.
  """
  from vdm import sharding  # pylint: disable=g-import-not-at-top
  from vdm.train import train_lib
  trainer = train_lib.Trainer(config)
  state = trainer.init_state()
  nparams = count_params(state.params)
  batch = sharding.global_batch(make_batch(config, seed), trainer.mesh)
  start = time.perf_counter()
  with _with_mesh(trainer):
    # As train_lib.train does it: compiled ahead of time, then the compiler's
    # freed heap is returned to the OS.
    compiled = trainer.compile_train_step(state, batch)
  compile_s = time.perf_counter() - start
  flops_mm = matmul_flops(trainer._train_step, state, batch)  # pylint: disable=protected-access
  holder = {'state': state}
  del state

  def step():
    holder['state'], metrics = compiled(holder['state'], batch)
    return metrics['loss']

  info = dict(benchmark='train_step', batch_size=config.training.batch_size,
              frames=config.data.num_frames + config.data.num_images,
              image_size=config.data.image_size, param_count=nparams,
              dtype=config.model.dtype, compile_s=compile_s, xla_flops=xla_flops(compiled),
              matmul_flops=flops_mm)
  return Prepared(step, compiled, info)


def sample_fn_and_args(config, trainer, params, seed: int = 0):
  """The jitted one-step sampler of Trainer.sample and its arguments.

  It is the very function Trainer.sample compiles (run_lib.sample over
  run_lib.model_fn), with num_steps=1: one denoiser evaluation plus the
  sampler's update (with classifier-free guidance, w != 0, both branches run
  as one evaluation on a doubled batch).
  """
  from vdm import run_lib  # pylint: disable=g-import-not-at-top
  c = config.copy_and_resolve_references()
  c.sampling.num_steps = 1
  shape = (c.training.batch_size, c.data.num_frames, c.data.image_size,
           c.data.image_size, c.data.channels)
  num_classes = trainer.method.num_classes()
  labels = jnp.arange(shape[0]) % num_classes if num_classes else None
  fn = run_lib.model_fn(trainer.method, trainer.graphdef, params, labels=labels,
                        guidance_weight=c.sampling.guidance_weight)
  options = run_lib.sampler_options(c, trainer.method)
  args = (fn, jax.random.PRNGKey(seed), jnp.float32(options['gamma']),
          jnp.float32(options['pc_delta']), None)  # No sample ids: one batch.
  guided = bool(num_classes) and c.sampling.guidance_weight != 0
  return run_lib.jitted_sampler(shape, options), args, shape, guided


def prepare_sample(config, seed: int = 0) -> Prepared:
  """Compiles one sampling step with the EMA parameters (Trainer.sample's path)."""
  from vdm.train import train_lib  # pylint: disable=g-import-not-at-top
  trainer = train_lib.Trainer(config)
  state = trainer.init_state()
  params = state.ema_params
  nparams = count_params(params)
  del state
  fn, args, shape, guided = sample_fn_and_args(config, trainer, params, seed)
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - start
  flops_mm = matmul_flops(fn, *args)
  info = dict(benchmark='sample_step', batch_size=shape[0], frames=shape[1],
              image_size=shape[2], param_count=nparams, dtype=config.model.dtype,
              sampler=config.sampling.sampler,
              denoiser_batch=shape[0] * (2 if guided else 1),
              compile_s=compile_s, xla_flops=xla_flops(compiled), matmul_flops=flops_mm)
  return Prepared(lambda: compiled(*args), compiled, info)


def count_params(params) -> int:
  """Scalar parameters of a parameter tree."""
  return sum(x.size for x in jax.tree.leaves(params))


PREPARE = {'train': prepare_train, 'sample': prepare_sample}


def run_benchmark(kind: str, config, iters: int, warmup: int = 2, seed: int = 0) -> dict:
  """Prepares, warms up and times a step; returns the full record.

  Args:
    kind: 'train' or 'sample'.
    config: full config.
    iters: timed steps.
    warmup: untimed steps after compiling.
    seed: seed of the batch and the state.
  """
  rss_start = host_peak_rss_bytes()
  prepared = PREPARE[kind](config, seed)
  for _ in range(warmup):
    block(prepared.step())
  setup_peak = rss_high_water_mark_bytes()  # Build, init, compile, warm-up.
  hwm_reset = reset_rss_high_water_mark()
  seconds = time_calls(prepared.step, iters, warmup=0)
  steady = rss_high_water_mark_bytes() if hwm_reset else None
  med = statistics.median(seconds)
  info = machine_info()
  record = dict(prepared.info)
  # Model FLOPs for rates and MFU: the matmul/conv count on the jaxpr. XLA's
  # cost analysis counts a loop body once (the conv kernel gradient's 9-tap
  # fori_loop) and skips padding taps, so it undercounts the train step.
  flops = record['matmul_flops'] or record['xla_flops']
  peak = peak_flops(info['device_kind']) if info['platform'] != 'cpu' else None
  record.update(
      median_s=med, min_s=min(seconds), times_s=[round(t, 6) for t in seconds],
      achieved_tflops=(flops / med / 1e12) if flops else None,
      peak_bf16_flops=peak, mfu=(flops / med / peak) if (flops and peak) else None,
      xla_memory=xla_memory(prepared.compiled), rss_before_bytes=rss_start,
      # ru_maxrss follows the reset above on Linux: the timed steps' peak.
      peak_rss_bytes=host_peak_rss_bytes(), steady_peak_rss_bytes=steady,
      setup_peak_rss_bytes=setup_peak,
      device_memory=device_memory_stats(),
      load_average=[round(x, 2) for x in load_average()], **info)
  return record


# --------------------------------------------------------------------------- output

def _fmt_bytes(n: Optional[float]) -> str:
  return '-' if n is None else f'{n / 2**20:,.0f} MiB'


def _fmt(v, spec: str) -> str:
  return '-' if v is None else format(v, spec)


def table(rows: Sequence[Sequence[str]]) -> str:
  """A plain aligned text table; rows[0] is the header."""
  widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
  lines = []
  for j, r in enumerate(rows):
    lines.append('  '.join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    if j == 0:
      lines.append('  '.join('-' * w for w in widths))
  return '\n'.join(lines)


def summary_table(record: dict) -> str:
  """A readable two-column table of one benchmark record."""
  dev = record.get('device_memory', {})
  rows = [
      ('quantity', 'value'),
      ('workload', f"{record['workload']} ({record.get('description', '')})"),
      # What actually ran: --batch_size and --set change the workload's defaults.
      ('batch size, overrides', f"{record['batch_size']}; "
                                f"{', '.join(record.get('overrides') or []) or 'none'}"),
      ('benchmark', record['benchmark']),
      ('machine', f"{record['platform']}: {record['device_kind']} x{record['num_devices']}; "
                  f"{record['cpu']} ({record['cpu_cores']} cores)"),
      ('median s/step', f"{record['median_s']:.4f}  (min {record['min_s']:.4f}, "
                        f"{len(record['times_s'])} runs)"),
      ('compile s', f"{record['compile_s']:.1f}"),
      ('parameters', f"{record['param_count']:,}"),
      ('XLA GFLOP/step', _fmt(record['xla_flops'] and record['xla_flops'] / 1e9, ',.2f')),
      ('matmul+conv GFLOP/step', _fmt(record['matmul_flops'] and record['matmul_flops'] / 1e9,
                                      ',.2f')),
      ('achieved TFLOP/s', _fmt(record['achieved_tflops'], '.4f')),
      ('MFU (bf16 peak, model FLOPs)', _fmt(record['mfu'] and 100 * record['mfu'], '.1f') +
       ('%' if record['mfu'] else ' (no accelerator peak)')),
      ('peak RSS, setup (build, compile, warm-up)',
       _fmt_bytes(record.get('setup_peak_rss_bytes'))),
      ('peak RSS, timed steps', _fmt_bytes(record.get('steady_peak_rss_bytes')
                                           or record['peak_rss_bytes'])),
      ('XLA temp buffers', _fmt_bytes(record['xla_memory'].get('temp_bytes'))),
      ('device peak memory', _fmt_bytes(dev.get('peak_bytes_in_use'))),
      ('load average', ' '.join(f'{x:.2f}' for x in record['load_average'])),
  ]
  return table(rows)


def write_result(record: dict, name: Optional[str] = None) -> str:
  """Writes benchmarks/results/<name>.json and prints the JSON line."""
  os.makedirs(RESULTS_DIR, exist_ok=True)
  name = name or f"{record['benchmark']}_{record['workload']}"
  path = os.path.join(RESULTS_DIR, f'{name}.json')
  line = json.dumps(record, sort_keys=True)
  with open(path, 'w') as f:
    f.write(line + '\n')
  return path


def common_flags(parser, default_iters: int = 10) -> None:
  parser.add_argument('--workload', default='tiny', help=f'one of {sorted(WORKLOADS)}')
  parser.add_argument('--iters', type=int, default=default_iters, help='timed steps')
  parser.add_argument('--warmup', type=int, default=2, help='untimed steps after compiling')
  parser.add_argument('--batch_size', type=int, default=0,
                      help='override config.training.batch_size (0: the workload\'s)')
  parser.add_argument('--set', action='append', default=[], metavar='SECTION.KEY=VALUE',
                      help='config override, e.g. --set model.remat=true (repeatable)')
  parser.add_argument('--json_only', action='store_true', help='print only the JSON line')


def run_main(args, kind: str) -> dict:
  """Shared main of train_step.py and sample_step.py."""
  workload = WORKLOADS.get(args.workload)
  config = get_config(args.workload, args.batch_size, args.set)
  if workload and workload.accelerator and jax.devices()[0].platform == 'cpu':
    print(f'note: --workload={args.workload} is sized for a GPU; on this CPU it will be very '
          'slow (try --batch_size=1 --iters=1).', file=sys.stderr)
  record = run_benchmark(kind, config, iters=args.iters, warmup=args.warmup)
  record.update(workload=args.workload, description=workload.description if workload else '',
                overrides=list(args.set), command=' '.join([os.path.basename(sys.argv[0])] +
                                                           sys.argv[1:]))
  path = write_result(record)
  if not args.json_only:
    print(summary_table(record))
    print(f'(written to {os.path.relpath(path, os.getcwd())})')
  print(json.dumps(record, sort_keys=True), flush=True)
  return record


class Deadline(Exception):
  """Raised by ``deadline_hook`` once the budget is spent (after a checkpoint)."""


def deadline_hook(budget_s: float, record: dict):
  """A train_lib hook for runs at equal wall-clock: saves and stops after budget_s.

  The clock starts at the end of the first step, so compilation is not
  counted; ``record`` gets 'steps' and 'seconds' (trained, after step 1).
  """

  def hook(step, state, checkpointer):
    now = time.time()
    if 'start' not in record:
      record['start'], record['first_step'] = now, step
      return
    record['steps'], record['seconds'] = step, now - record['start']
    if now - record['start'] >= budget_s:
      checkpointer.save(step, state)
      raise Deadline()
  return hook


def equal_time_config(config, max_steps: int = 5000):
  """``config`` set up for a run at equal wall-clock time (``train_within``).

  The learning rate is constant after warm-up, so that no run is cut off
  in the middle of its decay; the deadline hook writes the last checkpoint.
  """
  config.optimizer.decay = 'none'
  # The rate the equal-time tables of BENCHMARKS.md were measured at (the
  # default until 2026-12-03; 2e-3 was measured only with cosine decay).
  config.optimizer.learning_rate = 1e-3
  config.training.num_steps = max_steps
  config.training.checkpoint_every = max_steps
  return config


def train_within(config, workdir: str, budget_s: float) -> dict:
  """Trains ``config`` in ``workdir`` for ``budget_s`` seconds after its first step.

  A workdir that already holds checkpoints is kept as it is (a rerun of a
  benchmark only evaluates again).

  Returns:
    {'steps', 'seconds'} of the training done here; empty when none was.
  """
  from vdm.train import train_lib  # pylint: disable=g-import-not-at-top
  record = {}
  if not os.path.exists(os.path.join(workdir, 'checkpoints')):
    try:
      train_lib.train(config, workdir, hooks=[deadline_hook(budget_s, record)])
    except Deadline:
      pass
  return record


def equal_time_main(doc: str, name: str, variants: Sequence[str],
                    run_variant: Callable[[str, Any], dict], table: Callable[[list], str],
                    default_root: str, add_flags: Optional[Callable[[Any], None]] = None):
  """The command line of a benchmark of variants trained for equal wall-clock time.

  Runs the chosen variants one by one (``run_variant(variant, args)`` -> a row
  with a 'workdir' key) and keeps every finished row in
  benchmarks/results/<name>.json, merged with the rows of earlier invocations
  whose workdirs lie under the same --root; prints ``table`` of all of them,
  in the order of ``variants``, at the end.
  """
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=doc.split('\n')[0])
  parser.add_argument('--variants', default=','.join(variants))
  parser.add_argument('--budget_s', type=float, default=300.0,
                      help='training seconds per variant, after its first step')
  parser.add_argument('--max_steps', type=int, default=5000)
  parser.add_argument('--num_samples', type=int, default=64, help='N of the evaluation')
  parser.add_argument('--batch_size', type=int, default=16)
  parser.add_argument('--root', default=default_root, help='where the workdirs go')
  if add_flags is not None:
    add_flags(parser)
  args = parser.parse_args()
  out = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results', f'{name}.json')
  rows = {}
  if os.path.exists(out):
    with open(out) as f:
      rows = {r['variant']: r for r in json.load(f)
              if r.get('workdir', '').startswith(args.root)}
  for variant in args.variants.split(','):
    rows[variant] = run_variant(variant, args)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, 'w') as f:
      json.dump(list(rows.values()), f, indent=2, sort_keys=True)
  print(table([rows[v] for v in variants if v in rows]))
  print(f'Wrote {out}')
