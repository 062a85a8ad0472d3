"""Sampling on the mesh against device count, and what an FVD of N samples costs.

  python benchmarks/sharded_sampling.py                        # configs/default.py, 1/2/4/8 devices
  python benchmarks/sharded_sampling.py --devices=1,8 --num_samples=32 --fvd_samples=2048

Part 1 runs the loop of sample.py and evaluate.py (vdm.sampling.mesh_sampling: chunks
of --batch_size split over the mesh's batch axes, per-sample noise, weights
laid out as in training) with a freshly initialised model of the config
(speed does not depend on the weights) on meshes of the first k devices, and
checks that every mesh draws the same videos as one device. On a CPU the
devices are fake (--xla_force_host_platform_device_count, set here when
unset) and share the same cores: the table shows the cost of splitting, not a
speed-up. On a GPU host the devices are real.

Part 2 times the I3D features per video (the FVD protocol's network, real
weights) at the config's clip shape and gives the time of an FVD of
--fvd_samples videos on one device of this machine:
  N (sampling + I3D) for the generated videos + N I3D for the real clips
  (their features are cached after the first evaluation).
With --workdir (a trained run of the config) it also runs evaluate.py's
library call for --num_samples videos and prints its measured time beside
that model's prediction for the same N, so the estimate is checked.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import jax  # noqa: E402  pylint: disable=wrong-import-position
import numpy as np  # noqa: E402  pylint: disable=wrong-import-position

import common  # noqa: E402  pylint: disable=wrong-import-position
from vdm import latent  # noqa: E402  pylint: disable=wrong-import-position
from vdm import run_lib  # noqa: E402  pylint: disable=wrong-import-position
from vdm import sharding  # noqa: E402  pylint: disable=wrong-import-position
from vdm.evaluation import i3d  # noqa: E402  pylint: disable=wrong-import-position
from vdm.sampling import mesh_sampling  # noqa: E402  pylint: disable=wrong-import-position
from vdm.train import train_state  # noqa: E402  pylint: disable=wrong-import-position


def load_config(path: str):
  spec = importlib.util.spec_from_file_location('bench_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def sample_all(config, layout, params, mesh, num: int, batch_size: int) -> np.ndarray:
  """uint8 [N, T, H, W, C]: the sample.py / evaluate.py loop for unconditional clips."""
  method = layout.method
  size, channels = method.frame_shape
  classes = method.num_classes()
  labels = np.arange(num, dtype=np.int32) % classes if classes else None
  options = run_lib.sampler_options(config, method)
  space = latent.space(config, mesh)
  rng = jax.random.PRNGKey(0)
  videos = []
  for chunk in mesh_sampling.chunks(num, batch_size, mesh, {'labels': labels},
                                    what=f'{mesh.size} device(s)'):
    fn = run_lib.model_fn(method, layout.graphdef, params, labels=chunk.inputs.get('labels'),
                          guidance_weight=config.sampling.guidance_weight)
    out = run_lib.sample(fn, rng, (chunk.size, config.data.num_frames, size, size, channels),
                         options, chunk.sample_ids)
    videos.append(sharding.to_host(mesh_sampling.uint8_videos(space, out))[:chunk.rows])
  return np.concatenate(videos)


def device_sweep(config, devices: list[int], num: int, batch_size: int) -> list[dict]:
  rows, reference = [], None
  for k in devices:
    mesh = sharding.create_mesh((('data', -1), ('fsdp', 1)), jax.devices()[:k])
    layout = train_state.StateLayout(config, mesh)
    params = layout.init_state().ema_params
    start = time.perf_counter()
    first = sample_all(config, layout, params, mesh, num, batch_size)
    with_compile = time.perf_counter() - start
    start = time.perf_counter()
    videos = sample_all(config, layout, params, mesh, num, batch_size)
    seconds = time.perf_counter() - start
    assert np.array_equal(first, videos)
    if reference is None:
      reference = videos
    diff = np.abs(videos.astype(int) - reference)
    rows.append({'devices': k, 'batch': mesh_sampling.chunk_size(batch_size, num, mesh),
                 'seconds': seconds, 'compile_seconds': with_compile - seconds,
                 'samples_per_s': num / seconds,
                 'max_uint8_diff_vs_first': int(diff.max()),
                 'equal_pixels_vs_first': float((diff == 0).mean())})
    print(json.dumps(rows[-1]), flush=True)
  return rows


def i3d_seconds_per_video(config, batch_size: int) -> float:
  d = config.data
  clips = np.random.default_rng(0).integers(
      0, 256, (batch_size, d.num_frames, d.image_size, d.image_size, d.channels), np.uint8)
  times = common.time_calls(lambda: i3d.extract_features(clips, batch_size=batch_size),
                            iters=2, warmup=1)
  return min(times) / batch_size


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default=os.path.join(os.path.dirname(HERE), 'configs',
                                                        'default.py'))
  parser.add_argument('--devices', default='1,2,4,8', help='mesh sizes to time')
  parser.add_argument('--num_samples', type=int, default=32)
  parser.add_argument('--batch_size', type=int, default=0,
                      help='videos per sampler call (0: config.eval.batch_size)')
  parser.add_argument('--steps', type=int, default=0, help='override config.sampling.num_steps')
  parser.add_argument('--fvd_samples', type=int, default=2048)
  parser.add_argument('--workdir', default='', help='a trained run of --config: also time '
                      'evaluate() on --num_samples videos')
  args = parser.parse_args()
  config = load_config(args.config)
  if args.steps:
    config.sampling.num_steps = args.steps
  bs = args.batch_size or int(config.eval.batch_size)
  devices = [int(k) for k in args.devices.split(',')]
  record = {'benchmark': 'sharded_sampling', 'config': os.path.relpath(args.config),
            'machine': common.machine_info(), 'load_before': common.load_average(),
            'num_samples': args.num_samples, 'batch_size': bs,
            'sampler': str(config.sampling.sampler),
            'sampling_steps': int(config.sampling.num_steps)}
  record['sweep'] = device_sweep(config, devices, args.num_samples, bs)
  one = next(r for r in record['sweep'] if r['devices'] == min(devices))
  sample_s = one['seconds'] / args.num_samples
  i3d_s = i3d_seconds_per_video(config, bs)
  n = args.fvd_samples
  record.update(sample_seconds_per_video=sample_s, i3d_seconds_per_video=i3d_s,
                fvd_samples=n, fvd_seconds_cached_real=n * (sample_s + i3d_s),
                fvd_seconds_first=n * (sample_s + 2 * i3d_s))
  if args.workdir:
    from vdm.evaluation import evaluate_lib  # pylint: disable=g-import-not-at-top
    start = time.perf_counter()
    mesh = sharding.create_mesh((('data', -1), ('fsdp', 1)), jax.devices()[:min(devices)])
    result = evaluate_lib.evaluate(
        args.workdir, evaluate_lib.EvalRequest(num_samples=args.num_samples, batch_size=bs),
        {'sampling.num_steps': args.steps or None}, mesh=mesh)
    record['evaluate_measured_seconds'] = time.perf_counter() - start
    record['evaluate_predicted_seconds'] = args.num_samples * (sample_s + 2 * i3d_s)
    record['evaluate_fvd'] = result['fvd']
  record['load_after'] = common.load_average()
  rows = [['devices', 'batch', 'samples/s', 's (warm)', 'compile s', 'max |diff| vs 1st']]
  for r in record['sweep']:
    rows.append([str(r['devices']), str(r['batch']), f"{r['samples_per_s']:.2f}",
                 f"{r['seconds']:.1f}", f"{r['compile_seconds']:.1f}",
                 str(r['max_uint8_diff_vs_first'])])
  print(common.table(rows))
  print(f'sampling {sample_s:.2f} s/video, I3D {i3d_s:.2f} s/video: FVD of {n} samples '
        f'{record["fvd_seconds_first"] / 60:.0f} min with the real features to compute, '
        f'{record["fvd_seconds_cached_real"] / 60:.0f} min once they are cached')
  if args.workdir:
    print(f'evaluate() on {args.num_samples}: {record["evaluate_measured_seconds"]:.0f} s '
          f'measured, {record["evaluate_predicted_seconds"]:.0f} s predicted')
  path = common.write_result(record, 'sharded_sampling')
  print(f'(written to {os.path.relpath(path, os.getcwd())})')


if __name__ == '__main__':
  main()
