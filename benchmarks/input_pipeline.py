"""Clips per second delivered by the training input pipeline, against workers.

  python benchmarks/input_pipeline.py                       # both datasets, both loaders
  python benchmarks/input_pipeline.py --datasets=ucf64 --workers=0,2 --loaders=grain
  python benchmarks/input_pipeline.py --data_dir=/path/to/tfds   # a real ucf101 build

Measures `pipeline.make_train_iterator` (rows of the global batch per second,
after a warm-up that includes opening the dataset and starting any worker
processes) for

  * default: configs/default.py (moving_digits/single_32 read at 16x16,
    batch 8, 10 frames + 2 images, grayscale);
  * ucf64: configs/ucf101_64.py's data settings (16 frames + 8 images, 64x64
    RGB, flips) on TFDS `ucf101` when it is prepared in --data_dir, else on a
    SYNTHETIC dataset of the same storage: array_record, a
    `tfds.features.Video` of PNG-encoded 320x240 RGB frames, 100-200 frames a
    video, and a 101-class label. Its frames are smooth random textures that
    pan in two layers, with sensor-like noise, so that PNG decoding costs about
    what a real frame costs; it is built once into --synthetic_dir.

  * ucf64_png, ucf64_raw, ucf64_zlib: the same source prepared once by
    prepare.py (64x64 RGB windows of 2 x 16 frames, stored as PNG per frame,
    raw uint8 bytes or zlib), built into --synthetic_dir (or beside a real
    ucf101 build); the preparation's videos/s is recorded too;
  * folder_png, folder_raw, folder_zlib: the example folder of real video
    files (vdm.data.example_videos) prepared the same way, for frames of real
    video rather than the synthetic textures;
  * ucf64_latents, folder_latents: prepared raw with --autoencoder=
    --autoencoder (a 64x64x3 autoencoder run: what it learned does not change
    the bytes read) and read as its stored float16 latents
    (config.data.latent_key; flips off, as stored latents require);

for each loader (config.data.loader: 'threads' = StepIterator, 'grain' =
GrainStepIterator, one map call per step) and each --workers count.
`--prepare_folder` also times prepare.py on the example folder of real
video files (vdm.data.example_videos) at 64x64 with 1 and 2 workers. It also times the CPU
train step of configs/default.py (benchmarks/common.py's prepare_train), the
rate the pipeline has to beat on this machine. Prints a table and one JSON
line, also written to benchmarks/results/input_pipeline.json.
"""

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

SYNTHETIC_NAME = 'synthetic_ucf101'
# TFDS ucf101's stored frames.
UCF_HEIGHT, UCF_WIDTH = 240, 320
UCF_CLASSES = 101

# Planning figures: bair64 measured ~5.94 TFLOP per clip per
# training step (BENCHMARKS.md#gpu-rows: 5,940 GFLOP at batch 1), and the
# goal is 40% MFU in bfloat16 on an H100/H200 (989 TFLOP/s dense peak).
FLOP_PER_CLIP = 5.94e12
PEAK_BF16 = 989e12
MFU_GOAL = 0.40
GPUS_PER_HOST = 8


def load1() -> float:
  return round(os.getloadavg()[0], 2)


# --------------------------------------------------------------------------- synthetic ucf101


def synthetic_video(rng: np.random.Generator, num_frames: int) -> np.ndarray:
  """A smooth random texture in two layers panning at different speeds.

  Args:
    rng: the video's random stream.
    num_frames: T0.

  Returns:
    uint8 [T0, 240, 320, 3].
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top

  def texture(cells: int) -> np.ndarray:  # float [H, W, 3] in [0, 255]
    low = rng.uniform(0, 255, (cells * 3 // 4, cells, 3)).astype(np.uint8)
    img = Image.fromarray(low).resize((UCF_WIDTH, UCF_HEIGHT), Image.Resampling.BICUBIC)
    return np.asarray(img, np.float32)

  # Coarse and finer structure, so the frames hold edges at several scales
  # as a scene does, not one flat gradient.
  back = 0.6 * texture(8) + 0.4 * texture(40)  # [H, W, 3]
  front = texture(24)
  v_back = rng.uniform(-2, 2, 2)
  v_front = rng.uniform(-4, 4, 2)
  out = np.empty((num_frames, UCF_HEIGHT, UCF_WIDTH, 3), np.uint8)
  for t in range(num_frames):
    b = np.roll(back, tuple(np.round(v_back * t).astype(int)), axis=(0, 1))
    f = np.roll(front, tuple(np.round(v_front * t).astype(int)), axis=(0, 1))
    # Sensor-like noise: real frames are never exactly smooth, and it is what
    # keeps PNG from compressing them to almost nothing.
    noise = rng.normal(0, 3, (UCF_HEIGHT, UCF_WIDTH, 1))
    out[t] = np.clip(0.65 * b + 0.35 * f + noise, 0, 255).astype(np.uint8)
  return out


def build_synthetic(data_dir: str, num_videos: int, seed: int = 0) -> None:
  """Builds SYNTHETIC_NAME (array_record) into data_dir; a no-op when built."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from vdm.data import prepare_lib  # pylint: disable=g-import-not-at-top

  class SyntheticUcf101(tfds.core.GeneratorBasedBuilder):
    """UCF101's storage (PNG frames of 320x240 RGB, 101 labels), synthetic pixels."""
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          features=tfds.features.FeaturesDict({
              'video': tfds.features.Video(shape=(None, UCF_HEIGHT, UCF_WIDTH, 3),
                                           encoding_format='png'),
              'label': tfds.features.ClassLabel(num_classes=UCF_CLASSES),
          }),
          description='Synthetic stand-in for ucf101 (benchmarks/input_pipeline.py).')

    def _split_generators(self, dl_manager):
      del dl_manager
      return {'train': self._generate_examples()}

    def _generate_examples(self):
      for i in range(num_videos):
        rng = np.random.default_rng([seed, i])
        video = synthetic_video(rng, int(rng.integers(100, 201)))
        yield i, {'video': prepare_lib.png_frames(video), 'label': int(rng.integers(UCF_CLASSES))}

  builder = SyntheticUcf101(data_dir=data_dir)
  if not builder.is_prepared():
    builder.download_and_prepare(file_format='array_record')


def ucf_config(data_dir: str, batch_size: int):
  """configs/ucf101_64.py's data settings, reading from `data_dir`."""
  from configs import ucf101_64  # pylint: disable=g-import-not-at-top
  c = ucf101_64.get_config()
  c.training.batch_size = batch_size
  c.data.data_dir = data_dir
  return c


def ucf_dataset(args):
  """(config, note): the real ucf101 when prepared in --data_dir, else synthetic."""
  import glob  # pylint: disable=g-import-not-at-top
  # A finished TFDS build has dataset_info.json in its version folder. Looked
  # for on disk: asking tfds.builder('ucf101') would load TensorFlow (the
  # ucf101 builder module imports it) into the process that is timed.
  # (ucf101/<config>/<version>/: 'ucf101' alone means its first config, ucf101_1_256.)
  if args.data_dir and glob.glob(os.path.join(args.data_dir, 'ucf101', 'ucf101_1_256', '*',
                                              'dataset_info.json')):
    return ucf_config(args.data_dir, args.ucf_batch_size), 'ucf101 (real)'
  d = os.path.abspath(args.synthetic_dir)
  built = os.path.isdir(os.path.join(d, SYNTHETIC_NAME))
  if not built:
    print(f'ucf101 is not prepared in --data_dir={args.data_dir!r}: building the '
          f'SYNTHETIC stand-in {SYNTHETIC_NAME} ({args.synthetic_videos} videos) into {d} '
          '(once).', flush=True)
    start = time.perf_counter()
    # In a child process, so that TensorFlow (TFDS writes tf.train.Example
    # records) is never loaded in the process that is timed.
    subprocess.run([sys.executable, os.path.abspath(__file__), '--build_synthetic', d,
                    f'--synthetic_videos={args.synthetic_videos}'], check=True)
    print(f'built in {time.perf_counter() - start:.0f} s', flush=True)
  c = ucf_config(d, args.ucf_batch_size)
  c.data.dataset = SYNTHETIC_NAME
  return c, f'SYNTHETIC ucf101-shaped ({SYNTHETIC_NAME} in {d})'


def prepared_dataset(args, source: str, storage: str):
  """(config, note, facts): a source prepared by prepare.py with `storage`.

  source 'ucf64' is the ucf64 dataset above (real or synthetic); 'folder' is
  the example folder of real video files (vdm.data.example_videos). Prepared
  once, in a child process, at configs/ucf101_64.py's 64x64 RGB; facts hold
  the preparation's rate and the bytes a stored window takes.
  """
  latents = storage == 'latents'
  if latents:
    if not args.autoencoder:
      raise SystemExit(f'{source}_latents needs --autoencoder=WORKDIR (a 64x64x3 autoencoder run).')
    storage = 'raw'
  if source == 'ucf64':
    source_config, note = ucf_dataset(args)
    d = str(source_config.data.data_dir)
    flags = [f'--source=tfds:{source_config.data.dataset}', f'--tfds_data_dir={d}',
             '--label_key=label', '--splits=train']
    name = f'{source_config.data.dataset}_prepared_{storage}'.replace('/', '_')
  else:
    from vdm.data import example_videos  # pylint: disable=g-import-not-at-top
    d, note = os.path.abspath(args.synthetic_dir), 'example folder of real video files'
    folder = os.path.join(d, 'example_videos')
    if not os.path.isdir(folder):
      example_videos.write_folder(folder)
    flags, name = [f'--source={folder}', '--test_fraction=0'], f'example_videos_{storage}'
  if latents:
    flags.append(f'--autoencoder={os.path.abspath(args.autoencoder)}')
    name += '_latents'
  cmd = [sys.executable, os.path.join(ROOT, 'prepare.py'), '--config=' +
         os.path.join(ROOT, 'configs', 'ucf101_64.py'), *flags, f'--name={name}',
         f'--out={d}', f'--storage={storage}', f'--workers={args.prepare_workers}']
  info = os.path.join(d, name, '1.0.0', 'dataset_info.json')
  seconds = None
  if not os.path.exists(info):
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    seconds = time.perf_counter() - start
  with open(os.path.join(d, name, '1.0.0', 'metadata.json')) as f:
    meta = json.load(f)
  train = meta['splits']['train']
  facts = dict(prepared_from=note, storage=storage, windows=train['records'],
               kib_per_window=train['bytes'] / train['records'] / 1024,
               disk_kib_per_window=sum(
                   os.path.getsize(os.path.join(d, name, '1.0.0', f))
                   for f in os.listdir(os.path.join(d, name, '1.0.0'))
                   if '.array_record-' in f) / 1024 / train['records'],
               prepare_s=seconds, prepare_videos_per_s=seconds and train['videos'] / seconds,
               prepare_workers=args.prepare_workers)
  c = ucf_config(d, args.ucf_batch_size)
  c.data.dataset = name
  c.data.label_key = 'label' if source == 'ucf64' else ''
  if latents:
    c.data.update(latent_key='latents', random_flip=False)
    c.latent.autoencoder = os.path.abspath(args.autoencoder)
    storage = f'{storage} + float16 latents {meta["latents"]["shape"]}'
    facts['storage'] = storage
  return c, f'{note}, prepared ({storage})', facts


def prepare_folder_rate(workers: int) -> dict:
  """Videos/s of prepare.py on the example folder of real files, at 64x64 RGB."""
  import tempfile  # pylint: disable=g-import-not-at-top
  from vdm.data import example_videos  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    example_videos.write_folder(os.path.join(tmp, 'videos'))
    cmd = [sys.executable, os.path.join(ROOT, 'prepare.py'),
           '--config=' + os.path.join(ROOT, 'configs', 'ucf101_64.py'),
           f'--source={tmp}/videos', '--name=example', f'--out={tmp}/out',
           f'--workers={workers}', '--videos_per_shard=1']
    load_before = load1()
    start, cpu0 = time.perf_counter(), os.times()
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
    seconds = time.perf_counter() - start
    cpu1 = os.times()
    with open(os.path.join(tmp, 'out', 'example', '1.0.0', 'metadata.json')) as f:
      meta = json.load(f)
  videos = sum(c['videos'] for c in meta['splits'].values())
  frames_note = 'carphone x3, bikes, bigbuckbunny (720p), 6 pan/zoom, thumbnail, corrupt'
  return dict(workers=workers, videos=videos, seconds=seconds, videos_per_s=videos / seconds,
              child_cpu_s=(cpu1.children_user + cpu1.children_system
                           - cpu0.children_user - cpu0.children_system),
              load_before=load_before, load_after=load1(), folder=frames_note)


def storage_facts(config) -> dict:
  """Videos, mean frames and mean PNG bytes per frame of the train split."""
  from vdm.data import sources  # pylint: disable=g-import-not-at-top
  spec = sources.read_spec(config)
  ds = sources.open_split(spec, spec.train_split)
  n = min(len(ds.source), 8)
  examples = ds.source.__getitems__(list(range(n)))
  frames = [len(ex[ds.video_key]) for ex in examples]
  facts = dict(videos=len(ds.source), mean_frames=float(np.mean(frames)))
  if ds.decode_frame is not None:
    facts['mean_png_kib'] = float(np.mean([len(f) for ex in examples
                                           for f in ex[ds.video_key]]) / 1024)
    start = time.perf_counter()
    for f in examples[0][ds.video_key][:20]:
      ds.decode_frame(f)
    facts['decode_ms_per_frame'] = (time.perf_counter() - start) / 20 * 1e3
  return facts


# --------------------------------------------------------------------------- measuring


def cpu_seconds() -> float:
  """User + system CPU seconds of this process, all its threads."""
  t = os.times()
  return t.user + t.system


def make_iterator(config, loader: str):
  from vdm.data import pipeline  # pylint: disable=g-import-not-at-top
  c = copy.deepcopy(config)
  c.data.loader = loader
  return pipeline.make_train_iterator(c, process_index=0, process_count=1)


def measure(config, loader: str, workers: int, warmup: int, batches: int) -> dict:
  """Clips/s of one loader at one worker count.

  The warm-up (opening the dataset, starting workers, `warmup` batches, and at
  least three per worker) is timed separately as start-up. Batches are taken
  as fast as they come, so the batches the workers prepared during the warm-up
  (up to about three per worker) come out at once; the rate is therefore taken
  over the second half of the timed batches, when the buffers have drained and
  only production limits it.
  """
  c = copy.deepcopy(config)
  c.data.num_workers = workers
  b = c.training.batch_size
  load_before = load1()
  start = time.perf_counter()
  it = make_iterator(c, loader)
  for _ in range(max(warmup, 3 * workers)):
    next(it)
  stamps = [time.perf_counter()]
  half = batches // 2
  for i in range(batches):
    if i == half:
      cpu_half = cpu_seconds()
    next(it)
    stamps.append(time.perf_counter())
  cpu_end = cpu_seconds()
  it.close()
  steady = (stamps[-1] - stamps[half]) / (batches - half)  # s/batch
  # CPU seconds per clip of this process (its threads included, array_record's
  # readers too): the whole cost of a clip where no worker process helps.
  cpu_per_clip = ((cpu_end - cpu_half) / ((batches - half) * b)
                  if loader == 'threads' or workers == 0 else None)
  return dict(loader=loader, workers=workers, batch_size=b, batches=batches,
              clips_per_s=b / steady, s_per_batch=steady,
              clips_per_s_whole_window=batches * b / (stamps[-1] - stamps[0]),
              cpu_s_per_clip=cpu_per_clip,
              startup_s=stamps[0] - start, load_before=load_before, load_after=load1())


def train_step_rate(iters: int) -> dict:
  """Clips/s of configs/default.py's CPU train step (Trainer.train_step)."""
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import common  # pylint: disable=g-import-not-at-top
  from configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  load_before = load1()
  prepared = common.prepare_train(config)
  seconds = common.time_calls(prepared.step, iters, warmup=2)
  med = statistics.median(seconds)
  b = config.training.batch_size
  return dict(s_per_step=med, clips_per_s=b / med, batch_size=b, iters=iters,
              load_before=load_before, load_after=load1())


# --------------------------------------------------------------------------- main


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--datasets', default='default,ucf64', help='default and/or ucf64')
  parser.add_argument('--loaders', default='threads,grain',
                      help='threads, grain (comma-separated)')
  parser.add_argument('--workers', default='0,1,2,4', help='config.data.num_workers values')
  parser.add_argument('--warmup', type=int, default=3, help='untimed batches (at least workers + 1)')
  parser.add_argument('--batches', type=int, default=200, help='timed batches, default config')
  parser.add_argument('--ucf_batches', type=int, default=12, help='timed batches, ucf64')
  parser.add_argument('--ucf_batch_size', type=int, default=4,
                      help='ucf64 batch (rows are independent, so clips/s hardly depends on it; '
                      'small keeps the warm-up short)')
  parser.add_argument('--data_dir', default='data/tfds', help='TFDS data_dir to look for ucf101 in')
  parser.add_argument('--synthetic_dir', default='/tmp/vdm_synthetic_tfds',
                      help='where the synthetic ucf101 stand-in is built (once)')
  parser.add_argument('--synthetic_videos', type=int, default=32)
  parser.add_argument('--train_iters', type=int, default=5,
                      help='timed CPU train steps of configs/default.py (0: skip)')
  parser.add_argument('--prepare_workers', type=int, default=2,
                      help='prepare.py --workers for the ucf64_* prepared datasets')
  parser.add_argument('--prepare_folder', action='store_true',
                      help='also time prepare.py on the example folder of real videos')
  parser.add_argument('--autoencoder', default='',
                      help='*_latents datasets: workdir of a 64x64x3 autoencoder run')
  parser.add_argument('--build_synthetic', default='', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.build_synthetic:
    build_synthetic(args.build_synthetic, args.synthetic_videos)
    return None

  from configs import default  # pylint: disable=g-import-not-at-top
  workers = [int(w) for w in args.workers.split(',')]
  loaders = args.loaders.split(',')
  record = dict(benchmark='input_pipeline', cpu_cores=os.cpu_count(),
                date=time.strftime('%Y-%m-%d'), results=[], datasets={},
                command=' '.join([os.path.basename(sys.argv[0])] + (argv or sys.argv[1:])))
  for name in [n for n in args.datasets.split(',') if n]:
    if name == 'default':
      config, note, batches = default.get_config(), 'moving_digits/single_32', args.batches
    elif name == 'ucf64':
      (config, note), batches = ucf_dataset(args), args.ucf_batches
    elif name.startswith(('ucf64_', 'folder_')):
      config, note, prepared = prepared_dataset(args, *name.split('_', 1))
      batches = args.ucf_batches
    else:
      raise SystemExit(f'--datasets: {name!r} is not default, ucf64, ucf64_STORAGE or '
                       'folder_STORAGE (STORAGE: png, raw, zlib, latents)')
    facts = storage_facts(config)
    if '_' in name:
      facts.update(prepared)
    record['datasets'][name] = dict(note=note, **facts)
    print(f'{name}: {note}; {json.dumps(facts)}', flush=True)
    for loader in loaders:
      for w in workers:
        r = measure(config, loader, w, args.warmup, batches)
        r['dataset'] = name
        record['results'].append(r)
        print(f"  {loader:9s} workers={w}: {r['clips_per_s']:8.1f} clips/s  "
              f"(start-up {r['startup_s']:.1f} s, load {r['load_before']}->"
              f"{r['load_after']})", flush=True)
  if args.prepare_folder:
    record['prepare_folder'] = [prepare_folder_rate(w) for w in (1, 2)]
    for r in record['prepare_folder']:
      print(f"prepare.py on the example folder, {r['workers']} workers: {r['videos']} videos in "
            f"{r['seconds']:.1f} s = {r['videos_per_s']:.2f} videos/s "
            f"({r['child_cpu_s']:.1f} CPU s)", flush=True)
  if args.train_iters:
    record['train_step_default'] = train_step_rate(args.train_iters)

  rows = [('dataset', 'loader', 'workers', 'clips/s', 's/batch', 'CPU ms/clip', 'start-up s',
           'load 1-min')]
  for r in record['results']:
    cpu = r['cpu_s_per_clip']
    rows.append((r['dataset'], r['loader'], r['workers'], f"{r['clips_per_s']:.1f}",
                 f"{r['s_per_batch']:.3f}", '-' if cpu is None else f'{cpu * 1e3:.1f}',
                 f"{r['startup_s']:.1f}", f"{r['load_before']}-{r['load_after']}"))
  print()
  import common  # pylint: disable=g-import-not-at-top
  print(common.table(rows))
  need_gpu = MFU_GOAL * PEAK_BF16 / FLOP_PER_CLIP
  record['gpu_need'] = dict(clips_per_s_per_gpu=need_gpu,
                            clips_per_s_per_host=need_gpu * GPUS_PER_HOST)
  print(f'\nGPU goal: {MFU_GOAL:.0%} MFU at {FLOP_PER_CLIP / 1e12:.2f} TFLOP/clip = '
        f'{need_gpu:.0f} clips/s per GPU, {need_gpu * GPUS_PER_HOST:.0f} per host of '
        f'{GPUS_PER_HOST}.')
  for name in sorted({r['dataset'] for r in record['results'] if r['dataset'] != 'default'}):
    ucf = [r for r in record['results'] if r['dataset'] == name]
    # One core's rate from the CPU time a clip costs (the synchronous loader
    # already reads with array_record's threads, so wall-clock rates on 2
    # shared cores say little about one core).
    cpu = [r['cpu_s_per_clip'] for r in ucf if r['cpu_s_per_clip']]
    if cpu:
      per_core = 1.0 / statistics.median(cpu)
      record['gpu_need'][f'{name}_clips_per_s_per_core'] = per_core
      record['gpu_need'][f'{name}_cores_per_gpu'] = need_gpu / per_core
      print(f'{name} ({record["datasets"][name]["note"]}): {1e3 / per_core:.1f} CPU ms a '
            f'clip = {per_core:.1f} clips/s per core, so {need_gpu / per_core:.2f} cores per '
            f'GPU, {need_gpu * GPUS_PER_HOST / per_core:.1f} per host of {GPUS_PER_HOST}.')
  if 'train_step_default' in record:
    t = record['train_step_default']
    print(f"default config CPU train step: {t['s_per_step']:.3f} s/step = "
          f"{t['clips_per_s']:.1f} clips/s (load {t['load_before']}->{t['load_after']})")
  os.makedirs(os.path.join(ROOT, 'benchmarks', 'results'), exist_ok=True)
  path = os.path.join(ROOT, 'benchmarks', 'results', 'input_pipeline.json')
  with open(path, 'w') as f:
    f.write(json.dumps(record, sort_keys=True) + '\n')
  print(f'(written to {os.path.relpath(path, os.getcwd())})')
  print(json.dumps(record, sort_keys=True), flush=True)
  return record


if __name__ == '__main__':
  main()
