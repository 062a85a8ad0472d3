"""Tests of evaluate.py / vdm.evaluation.evaluate_lib on a tiny trained run.

One module-scoped run: configs/tiny.py with 10-frame 8x8 clips (the I3D needs
>= 9 frames), trained 2 steps on a small moving-digits build (32 train / 16
test videos) in a temporary data_dir. Everything evaluates N = 4 videos in
batches of 4, so the sampler and the I3D compile one shape each. The real
I3D runs at 224x224 on CPU (about 2 s per clip here), which dominates the
runtime.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from configs import tiny
from vdm import config_lib
from vdm import run_lib
from vdm.data import moving_digits
from vdm.evaluation import evaluate_lib
from vdm.evaluation import i3d
from vdm.evaluation import periodic
from vdm.evaluation import real
from vdm.evaluation import records
from vdm.sampling import long_video
from vdm.train import train_lib

sys.path.insert(0, os.path.dirname(__file__))
import cli  # pylint: disable=g-import-not-at-top

# Every test here samples from, or trains, a run.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 4


def _config(data_dir, **data):
  c = tiny.get_config()
  c.data.num_frames = 10
  c.data.image_size = 8
  c.data.data_dir = data_dir
  c.data.num_workers = 0
  c.data.update(data)
  c.training.num_steps = 2
  c.training.checkpoint_every = 2
  c.training.num_samples = 0  # No sample GIFs: saves a sampler compile.
  c.training.async_checkpoints = False
  c.sharding.mesh = (('data', 1), ('fsdp', 1))
  c.eval.num_samples = N
  c.eval.batch_size = N
  return c


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """(config, workdir, final train state) of a 2-step tiny run."""
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  # One digit per video, so the digit classifier scores the samples too.
  moving_digits.prepare(data_dir, 'single_32', num_train=32, num_test=16, verbose=False)
  config = _config(data_dir, dataset='moving_digits/single_32')
  workdir = str(tmp_path_factory.mktemp('run'))
  state = train_lib.train(config, workdir)
  return config, workdir, state


def _json_line(out: str) -> dict:
  """The result line: evaluate prints exactly one JSON object on stdout."""
  lines = [l for l in out.splitlines() if l.startswith('{')]
  assert len(lines) == 1, out
  return json.loads(lines[0])


class _CountPasses:
  """Wraps real.read_clips and records which passes computed I3D."""

  def __init__(self, monkeypatch):
    self.feature_passes = 0
    self._orig = real.read_clips
    monkeypatch.setattr(real, 'read_clips', self)

  def __call__(self, *args, **kwargs):
    if kwargs.get('features', True):
      self.feature_passes += 1
    return self._orig(*args, **kwargs)


def _cache_files(config):
  d = real.default_cache_dir(config)
  return {f: os.path.getmtime(os.path.join(d, f)) for f in os.listdir(d)} if os.path.isdir(d) else {}


def test_select_indices_spread_and_distinct():
  np.testing.assert_array_equal(real.select_indices(16, 4), [0, 4, 8, 12])
  np.testing.assert_array_equal(real.select_indices(5, 5), np.arange(5))
  idx = real.select_indices(3783, 2048)
  assert len(np.unique(idx)) == 2048 and idx[-1] < 3783 and idx[-1] > 3700
  with pytest.raises(ValueError, match='without replacement'):
    real.select_indices(10, 11)


def test_result_file_names_tell_apart_evaluation_settings():
  saved = tiny.get_config()

  def tag(num=None, split='test', batch_size=None, seed=0, **sampling):
    used = saved.copy_and_resolve_references()
    used.sampling.update(sampling)
    return records.settings_tag(
        saved, used, num=num or saved.eval.num_samples, split=split,
        batch_size=batch_size or saved.eval.batch_size, seed=seed)

  # The run's own settings keep the plain name PeriodicEvaluation writes.
  assert tag() == ''
  assert records.result_name(600, 'unconditional', tag=tag()) == '600.json'
  assert tag(guidance_weight=0.5, num=64) == '_w0.5_n64'
  assert tag(sampler='ancestral', num_steps=64, seed=1) == '_ancestral-64_seed1'
  assert tag(sampler='dpm++2m', num_steps=16) == '_dpm++2m-16'  # Steps apart from the '2m'.
  assert tag(split='train', batch_size=3, w_r=1.0) == '_wr1_train_bs3'
  assert tag(vidrd_order='forward', vidrd_beta=0.2) == '_beta0.2_forward'
  # Every departure gets its own name.
  variants = [tag(), tag(num_steps=8), tag(time_grid='uniform_logsnr'),
              tag(guidance_weight=1.0), tag(num=7), tag(seed=2), tag(vidrd_overlap=2)]
  assert len(set(variants)) == len(variants)
  assert records.result_name(2, 'predict', 2, tag='_w0') == '2_predict2_w0.json'


# The one-device figure of the fixture's run, kept by the end-to-end test for
# the device-count test below (which computes it itself when run alone).
_ONE_DEVICE = {}


def test_evaluate_end_to_end(run, capsys, monkeypatch):
  config, workdir, _ = run
  counter = _CountPasses(monkeypatch)
  result = cli.evaluate(workdir, num_samples=N)
  _ONE_DEVICE['result'] = result
  line = _json_line(capsys.readouterr().out)
  assert line == result
  assert np.isfinite(line['fvd']) and line['fvd'] >= 0.0
  assert np.isfinite(line['kvd'])
  assert line['step'] == 2 and line['mode'] == 'unconditional'
  assert (line['num_samples'], line['num_real'], line['split']) == (N, N, 'test')
  assert (line['frames'], line['resolution'], line['frameskip']) == (10, 8, 1)
  assert line['replacement'] == 'without'
  assert line['protocol_version'] == i3d.FVD_PROTOCOL['version']
  assert line['dataset'] == 'moving_digits/single_32'
  assert line['sample_labels'] == 'labels of the real clips'  # tiny is class-conditional.
  # The digit classifier, fitted on the 32 train clips, scored every frame.
  for key in ('digit_accuracy', 'digit_consistency', 'digit_accuracy_ceiling',
              'digit_consistency_ceiling'):
    assert 0.0 <= line[key] <= 1.0, key
  assert line['digit_accuracy'] * N * 10 == pytest.approx(round(line['digit_accuracy'] * N * 10))
  path = os.path.join(workdir, 'eval', '2.json')
  with open(path) as f:
    assert json.load(f) == line
  # Real features and labels were computed in one pass and cached.
  assert counter.feature_passes == 1
  assert len(_cache_files(config)) == 2


def test_predict_mode_keeps_context_and_reuses_real_cache(run, capsys, monkeypatch):
  config, workdir, _ = run
  # Fills the cache if this test runs alone; a cheap hit after the test above.
  real.real_features(config, 'test', N, batch_size=N, with_labels=True)
  before = _cache_files(config)
  counter = _CountPasses(monkeypatch)
  # The I3D path is the one tested above; here it only records the generated
  # videos, which keeps this test to the cost of the sampler.
  seen = []

  def fake_features(videos, mesh=None):
    seen.append(np.array(videos))
    return np.random.default_rng(len(seen)).normal(size=(len(videos), i3d.NUM_CLASSES))
  monkeypatch.setattr(i3d, 'batch_features', fake_features)
  # One sampling step: reconstruction guidance differentiates through the
  # network, which runs ~15x slower under jax_disable_most_optimizations.
  cli.evaluate(workdir, num_samples=N, mode='predict', context_frames=2, w_r=1.0,
                        steps=1)
  line = _json_line(capsys.readouterr().out)
  assert counter.feature_passes == 0  # Cache hit: no I3D on real clips.
  assert _cache_files(config) == before  # Nothing rewritten.
  assert line['mode'] == 'predict' and line['context_frames'] == 2
  assert line['reconstruction_guidance_weight'] == 1.0 and line['sampling_steps'] == 1
  assert np.isfinite(line['fvd']) and line['fvd'] >= 0.0
  assert os.path.exists(os.path.join(workdir, 'eval', '2_predict2_ddim-1_wr1.json'))
  # The generated clips start with the first 2 frames of the N real clips.
  (generated,) = seen
  assert generated.shape == (N, 10, 8, 8, 1) and generated.dtype == np.uint8
  clips = real.read_clips(config, 'test', real.select_indices(16, N), N,
                          features=False, keep_videos=True)['videos']
  np.testing.assert_array_equal(generated[:, :2], clips[:, :2])


def test_long_mode_scores_videos_longer_than_a_clip(run, capsys, monkeypatch):
  # Independent clips of the 10-frame model joined to 15 frames, against real
  # clips of 15 frames; the I3D is replaced as above (its path is tested
  # there), so this checks the shapes, the real side's length and the record.
  _, workdir, _ = run
  seen = []

  def fake_features(videos, mesh=None):
    seen.append(np.array(videos))
    return np.random.default_rng(len(seen)).normal(size=(len(videos), i3d.NUM_CLASSES))
  monkeypatch.setattr(i3d, 'batch_features', fake_features)
  cli.evaluate(workdir, num_samples=N, mode='long', num_frames=15,
                        long_method='independent', steps=1)
  line = _json_line(capsys.readouterr().out)
  assert line['mode'] == 'long' and line['frames'] == 15 and line['clip_frames'] == 10
  assert line['long_method'] == 'independent'
  assert [v.shape for v in seen] == [(N, 15, 8, 8, 1)] * 2  # Real clips, then generated.
  # Seams: one, where the second clip begins; real motion is as smooth there as inside.
  assert line['seams'] == [10] and line['seam_pixel_ratio'] > 0
  assert 0.5 < line['real_seam_pixel_ratio'] < 2
  assert os.path.exists(os.path.join(workdir, 'eval', '2_long15_independent_ddim-1.json'))
  with pytest.raises(ValueError, match=r'needs num_frames > config.data.num_frames=10'):
    cli.evaluate(workdir, num_samples=N, mode='long', num_frames=10)


def test_long_mode_takes_the_extension_drivers_context_and_conditioning(run, capsys,
                                                                        monkeypatch):
  # The replacement baseline and a context length other than half a clip reach
  # the driver, the seams and the record (the drivers themselves are tested in
  # guidance_test and long_video_test).
  _, workdir, _ = run
  monkeypatch.setattr(i3d, 'batch_features', lambda videos, mesh=None: np.random.default_rng(
      0).normal(size=(len(videos), i3d.NUM_CLASSES)))
  calls = []
  generate = long_video.generate

  def spy(*args, **kwargs):
    calls.append((kwargs['context_frames'], kwargs['conditioning']))
    return generate(*args, **kwargs)
  monkeypatch.setattr(long_video, 'generate', spy)
  cli.evaluate(workdir, num_samples=N, mode='long', num_frames=15, long_method='reconstruction',
               context_frames=7, conditioning='replacement', steps=1)
  line = _json_line(capsys.readouterr().out)
  assert calls == [(7, 'replacement')]
  assert (line['context_frames'], line['conditioning']) == (7, 'replacement')
  assert 'reconstruction_guidance_weight' not in line
  assert line['seams'] == [10, 13]  # 10 frames, then 3 new ones a clip.
  (name,) = [f for f in os.listdir(os.path.join(workdir, 'eval')) if '_long15_replacement' in f]
  assert name.startswith('2_long15_replacement_k7')
  # Replacement takes no w_r; independent clips take neither flag.
  with pytest.raises(ValueError, match='w_r=1.0 applies to .* conditioning=reconstruction'):
    cli.evaluate(workdir, num_samples=N, mode='long', num_frames=15,
                 conditioning='replacement', w_r=1.0)
  with pytest.raises(ValueError, match='context_frames=2 applies to'):
    cli.evaluate(workdir, num_samples=N, mode='long', num_frames=15,
                 long_method='independent', context_frames=2)
  with pytest.raises(ValueError, match='context_frames=10 must be in'):
    cli.evaluate(workdir, num_samples=N, mode='long', num_frames=15, context_frames=10)


def test_periodic_evaluation_hook_matches_cli_and_writes_scalars(run, capsys):
  config, workdir, state = run

  class Writer:
    def __init__(self):
      self.scalars = []

    def write_scalars(self, step, scalars):
      self.scalars.append((step, dict(scalars)))

  config = config.copy_and_resolve_references()
  config.eval.every_steps = 2
  writer = Writer()
  hook = periodic.PeriodicEvaluation(config, workdir, writer=writer)
  assert hook(1, state, None) is None  # Not an evaluation step.
  result = hook(2, state, None)
  # FVD, KVD and (single-digit data) the digit figures, as TensorBoard scalars.
  assert writer.scalars == [(2, {k: result[k] for k in (
      'fvd', 'kvd', 'digit_accuracy', 'digit_consistency')})]
  with open(os.path.join(workdir, 'eval', '2.json')) as f:
    cli = json.load(f)
  # Same weights, seed, N and batch size as evaluate(): the same samples.
  assert result['fvd'] == pytest.approx(cli['fvd'], rel=1e-4)
  assert result['kvd'] == pytest.approx(cli['kvd'], rel=1e-4, abs=1e-6)


def test_real_vs_real(run, capsys, monkeypatch):
  config, workdir, _ = run
  # Two sets of n = N / 2 select the same 2n = N clips as a model evaluation
  # with N samples, so the features come from the cache (no I3D run here).
  real.real_features(config, 'test', N, batch_size=N)
  counter = _CountPasses(monkeypatch)
  n = N // 2
  result = cli.evaluate(workdir, num_samples=n, real_vs_real=True)
  line = _json_line(capsys.readouterr().out)
  assert counter.feature_passes == 0
  assert line == result and line['mode'] == 'real_vs_real'
  # The split has 16 >= 2n clips: two disjoint sets of n.
  assert (line['num_samples'], line['num_real']) == (n, n)
  assert np.isfinite(line['fvd']) and line['fvd'] >= 0.0
  assert line['replacement'] == 'without'
  assert os.path.exists(os.path.join(workdir, 'eval', f'real_vs_real_test_{n}.json'))
  # Without a run: the data described by a config alone; no file is written.
  line2 = cli.evaluate(config=config, num_samples=n, real_vs_real=True)
  assert line2['fvd'] == line['fvd']


def test_too_few_frames_fails_early_in_cli(tmp_path):
  # A workdir with only a config: the check must come before any checkpoint
  # or data is read.
  config = _config(str(tmp_path / 'no_data'), num_frames=8)
  config_lib.save_config(config, str(tmp_path))
  env = cli.env(None, JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, os.path.join(REPO, 'evaluate.py'),
                        f'--workdir={tmp_path}', '--num_samples=4'],
                       env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode != 0
  assert 'at least 9 frames' in out.stderr and 'num_frames=8' in out.stderr
  assert not os.path.exists(tmp_path / 'no_data')


def test_bad_predict_context_and_config_misuse(run):
  config, workdir, _ = run
  with pytest.raises(ValueError, match='context_frames=10'):
    evaluate_lib.check_config(config, 'predict', 10)
  with pytest.raises(ValueError, match='only for --real_vs_real'):
    cli.evaluate(workdir, config=config, num_samples=N)


def _on_the_whole_mesh(workdir, path):
  """A copy of the run whose config spans every device, as a run trained on
  the whole mesh has (the fixture's was trained on one device)."""
  shutil.copytree(workdir, path, ignore=shutil.ignore_patterns('eval'))
  config = run_lib.load_config(path)
  config.sharding.mesh = (('data', -1), ('fsdp', 1))
  config_lib.save_config(config, path)
  return path


@pytest.mark.multiprocess
def test_fvd_on_eight_devices_and_on_two_hosts_is_the_one_device_figure(run, tmp_path, capsys):
  # Sample i is drawn with the noise of index i wherever it runs, so the
  # figure does not depend on the devices: 1 device, 8 (4 videos padded to one
  # chunk of 8, the I3D split over them too), and two processes of 2 devices
  # each as two hosts, each sampling its half. Only float rounding of
  # differently batched kernels separates them.
  _, workdir, _ = run
  whole = _on_the_whole_mesh(workdir, str(tmp_path / 'whole'))
  one = _ONE_DEVICE.get('result') or cli.evaluate(workdir, num_samples=N)
  eight = cli.evaluate(whole, num_samples=N)
  capsys.readouterr()
  print(f"\nFVD 1 device {one['fvd']!r}, 8 devices {eight['fvd']!r}")
  assert eight['fvd'] == pytest.approx(one['fvd'], rel=1e-5)
  assert eight['kvd'] == pytest.approx(one['kvd'], rel=1e-4, abs=1e-7)
  assert eight['digit_accuracy'] == one['digit_accuracy']

  hosts = _on_the_whole_mesh(workdir, str(tmp_path / 'hosts'))
  port = cli.free_port()
  env = cli.env(2, JAX_PLATFORMS='cpu')
  procs = [subprocess.Popen(
      [sys.executable, os.path.join(REPO, 'evaluate.py'), f'--workdir={hosts}',
       f'--num_samples={N}', f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
       f'--process_id={i}'], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  outputs = [p.communicate(timeout=900) for p in procs]
  for p, (out, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  assert 'on 4 device(s) of 2 process(es)' in outputs[0][1]
  line = _json_line(outputs[0][0])
  assert not [l for l in outputs[1][0].splitlines() if l.startswith('{')]  # Process 1 is quiet.
  assert os.listdir(os.path.join(hosts, 'eval')) == ['2.json']
  print(f"FVD two hosts {line['fvd']!r}")
  assert line['fvd'] == pytest.approx(one['fvd'], rel=1e-5)
  assert line['kvd'] == pytest.approx(one['kvd'], rel=1e-4, abs=1e-7)
  assert line['digit_accuracy'] == one['digit_accuracy']
