"""The latent path on trained runs: a tiny autoencoder trained through train.py,
its temporal-aware decoder stage, its latent scale, and diffusion on its
latents (the plain method, VideoFusion, TRIP) through the command line.

The autoencoder's run starts in a subprocess when the module starts, so the
tests that need no trained run go on meanwhile. The unit tests of the
autoencoder and the temporal layers are in latent_test.py.
"""

import json
import os
import shutil
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from configs import tiny
from vdm import latent
from vdm import run_lib
from vdm.data import moving_digits
from vdm.data import prepare_lib
from vdm.methods import autoencoder as autoencoder_method
from vdm.methods import base
from vdm.train import train_lib

sys.path.insert(0, os.path.dirname(__file__))
import cli  # pylint: disable=g-import-not-at-top
from latent_test import T, _decode, _encode, cli_flags, tiny_ae_config  # pylint: disable=g-import-not-at-top

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module', autouse=True)
def cli_run(tmp_path_factory):
  """Builds a small dataset and starts train.py on the tiny autoencoder (4 steps).

  Yields (data_dir, trained): trained() waits for the run and returns its workdir.
  """
  root = tmp_path_factory.mktemp('latent_cli')
  data_dir = str(root / 'tfds')
  moving_digits.prepare(data_dir, 32, num_train=32, num_test=8, verbose=False)
  workdir = str(root / 'ae')
  proc = cli.start('train.py', *cli_flags(data_dir, workdir))
  finished = {}

  def trained():
    """Waits (once) for the autoencoder run; returns its workdir."""
    if not finished:
      finished['out'] = cli.finish(proc)
    return workdir
  yield data_dir, trained
  if proc.poll() is None:
    proc.kill()
    proc.communicate()


@pytest.fixture(scope='module')
def latent_data(cli_run):
  """The digits prepared with the autoencoder's latents stored (prepare.py
  --autoencoder), whole videos; returns (data_dir, report)."""
  data_dir, ae_dir = cli_run[0], cli_run[1]()
  out = os.path.join(os.path.dirname(data_dir), 'prepared')
  config = _latent_config(data_dir, ae_dir)
  report = prepare_lib.run(config, 'tfds:moving_digits/32', 'digit_latents', out,
                           source_options=dict(tfds_data_dir=data_dir, label_key='label'),
                           clip_frames=0, encoder=latent.FrameEncoder(ae_dir), progress=False)
  return out, report


def _latent_config(data_dir, ae_dir):
  """tiny's diffusion config on the autoencoder's latents, one device."""
  config = tiny.get_config()
  # No flips: the encoder is not mirror-symmetric, so stored latents cannot be flipped.
  config.data.update(data_dir=data_dir, num_workers=0, image_size=16, random_flip=False)
  config.latent.autoencoder = ae_dir
  config.training.update(num_steps=1, num_samples=0, async_checkpoints=False)
  config.sharding.mesh = (('data', 1), ('fsdp', 1))
  return config


def test_temporal_stage_trains_only_its_layers_and_resumes_exactly(tmp_path, cli_run, capsys):
  """VidRD's second stage from the image stage's run, discriminator on: the
  encoder and decoder stay the image stage's, only the temporal layers (and
  the discriminator) learn, and a run resumed from step 2 ends bit for bit
  where the uninterrupted one does."""
  data_dir, ae_dir = cli_run[0], cli_run[1]()
  config = tiny_ae_config('autoencoder_temporal', data_dir=data_dir, disc_weight=0.5,
                          init_from=ae_dir)
  config.training.num_steps, config.training.checkpoint_every = 4, 2
  straight = train_lib.train(config, str(tmp_path / 'straight'))
  assert 'initialised from step 4' in capsys.readouterr().err
  # The run as a crash after step 2 would have left it.
  shutil.copytree(tmp_path / 'straight', tmp_path / 'resumed')
  shutil.rmtree(tmp_path / 'resumed' / 'checkpoints' / '4')
  resumed = train_lib.train(config, str(tmp_path / 'resumed'))
  assert 'Resumed from step 2' in capsys.readouterr().err
  for a, b in zip(jax.tree.leaves((straight.params, straight.opt_state)),
                  jax.tree.leaves((resumed.params, resumed.opt_state))):
    np.testing.assert_array_equal(a, b)

  # The optimizer state: the frozen groups have no moments at all (optax's
  # set_to_zero), the trained ones have non-zero first moments.
  (groups,) = [s for s in straight.opt_state if hasattr(s, 'inner_states')]  # After clipping.
  inner = groups.inner_states
  for group in ('encoder', 'decoder'):
    assert not jax.tree.leaves(inner[group])
  for group in ('temporal', 'discriminator'):
    mu = [np.asarray(x) for x in jax.tree.leaves(inner[group].inner_state[0].mu)]
    assert mu and any(np.abs(m).max() > 0 for m in mu)
  # Frozen leaves are still the image stage's EMA weights; trained ones moved
  # (their EMA, which starts at the same values, now lags behind them).
  image_stage = {base.param_path(p): np.asarray(v) for p, v in
                 jax.tree_util.tree_flatten_with_path(run_lib.restore_run(ae_dir).params)[0]}
  method = autoencoder_method.Method(config)
  labels = jax.tree.leaves(method.param_labels(straight.params))
  flat = jax.tree_util.tree_flatten_with_path(straight.params)[0]
  ema = jax.tree.leaves(straight.ema_params)
  frozen = [(base.param_path(p), v) for (p, v), g in zip(flat, labels) if g in ('encoder', 'decoder')]
  assert frozen
  for path, value in frozen:
    np.testing.assert_array_equal(value, image_stage[path], err_msg=path)
  trained = [not np.array_equal(v, e) for (_, v), e, g in zip(flat, ema, labels) if g == 'temporal']
  assert trained and any(trained)


def test_latent_run_refuses_an_autoencoder_of_other_frames(tmp_path, cli_run):
  ae_dir = cli_run[1]()
  config = tiny.get_config()
  config.latent.autoencoder = ae_dir
  with pytest.raises(ValueError, match=r'encodes 16x16 frames .* config.data.image_size=8'):
    run_lib.resolve_latent_shape(config)
  config.latent.autoencoder = str(tmp_path)
  with pytest.raises(FileNotFoundError, match='config.json'):
    run_lib.resolve_latent_shape(config)


def test_latent_scale_gives_unit_variance(cli_run):
  ae_dir = cli_run[1]()
  space = latent.LatentSpace(ae_dir)
  with open(os.path.join(ae_dir, latent.SCALE_FILE)) as f:
    record = json.load(f)
  assert record['step'] == space.step and record['scale'] == pytest.approx(space.scale)
  from vdm.data import pipeline  # pylint: disable=g-import-not-at-top
  (batch,) = list(pipeline.make_eval_iterator(space.config, 'train', num_examples=32,
                                              batch_size=32, process_index=0, process_count=1))
  latents = latent.encode_videos(space, batch['video'] / 127.5 - 1.0)
  assert latents.shape == (32, T, 8, 8, 2)
  assert float(np.std(latents)) == pytest.approx(1.0, rel=1e-3)
  # Decoding inverts the scale: the decoder sees the unscaled posterior mean.
  recon = latent.decode_videos(space, latents[:2])
  mean, _ = _encode(nnx.merge(space._graphdef, space._params), batch['video'][:2] / 127.5 - 1)
  np.testing.assert_allclose(recon, np.clip(
      _decode(nnx.merge(space._graphdef, space._params), mean), -1, 1), atol=1e-5)


def test_stored_latents_are_the_encoded_frames_and_refuse_another_autoencoder(
    tmp_path, cli_run, latent_data):
  """prepare.py --autoencoder stores every frame's latents beside it; the
  pipeline reads them (config.data.latent_key) in the rows it would encode,
  and training refuses latents that another autoencoder (here: another scale)
  made. The command-line test below trains on them."""
  data_dir, ae_dir = cli_run[0], cli_run[1]()
  out, report = latent_data
  assert report.metadata['latents']['autoencoder'] == os.path.abspath(ae_dir)
  assert '--config.data.latent_key=latents' in report.summary()
  space = latent.LatentSpace(ae_dir)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  records = tfds.data_source('digit_latents', data_dir=out, split='train')
  rows = [records[i] for i in range(2)]
  videos = np.stack([r['video'] for r in rows]).astype(np.float32) / 127.5 - 1.0
  stored = np.stack([r['latents'] for r in rows])  # [2, 20, 8, 8, 2]
  assert stored.dtype == np.float16 and stored.shape == (2, 20, 8, 8, 2)
  np.testing.assert_allclose(stored, latent.encode_videos(space, videos), rtol=2e-3, atol=2e-3)

  config = _latent_config(out, ae_dir)
  config.data.dataset = 'digit_latents'
  from vdm.data import pipeline  # pylint: disable=g-import-not-at-top
  frames_batch = next(pipeline.make_train_iterator(config))
  config.data.latent_key = 'latents'
  latents_batch = next(pipeline.make_train_iterator(config))
  # The same rows (clip starts, appended images): encoded in the step, or read.
  np.testing.assert_array_equal(latents_batch['is_image'], frames_batch['is_image'])
  np.testing.assert_allclose(latents_batch['video'],
                             latent.encode_videos(space, frames_batch['video']),
                             rtol=2e-3, atol=2e-3)

  rescaled = str(tmp_path / 'ae_rescaled')
  shutil.copytree(ae_dir, rescaled)
  with open(os.path.join(rescaled, latent.SCALE_FILE)) as f:
    record = json.load(f)
  with open(os.path.join(rescaled, latent.SCALE_FILE), 'w') as f:
    json.dump(dict(record, scale=2 * record['scale']), f)
  config.latent.autoencoder = rescaled
  with pytest.raises(ValueError, match=r'differ from those of config\.latent\.autoencoder=.* '
                                       r'in: scale\. Prepare the dataset again'):
    train_lib.train(config, str(tmp_path / 'refused'))
  config.latent.autoencoder = ae_dir
  config.data.dataset, config.data.data_dir = 'moving_digits/32', data_dir
  with pytest.raises(KeyError, match=r"latent_key='latents' is not a feature"):
    train_lib.train(config, str(tmp_path / 'no_latents'))


def test_latent_diffusion_end_to_end_through_the_command_line(tmp_path, cli_run, latent_data):
  """Trained on the stored latents (no encoder in the step), sampled and
  evaluated on decoded pixels."""
  ae_dir = cli_run[1]()
  ldm = str(tmp_path / 'ldm')
  flags = ['--config=configs/tiny.py', f'--workdir={ldm}', f'--config.data.num_frames={T}',
           f'--config.data.data_dir={latent_data[0]}', '--config.data.dataset=digit_latents',
           '--config.data.latent_key=latents', '--config.data.random_flip=False',
           '--config.data.num_workers=0', '--config.data.image_size=16',
           f'--config.latent.autoencoder={ae_dir}',
           '--config.model.temporal_conv=True', '--config.training.num_steps=2',
           '--config.training.async_checkpoints=False']
  out, err = cli.finish(cli.start('train.py', *flags))
  assert 'scale factor' in err and 'Wrote samples' in err and 'Done: 2 steps' in out
  assert 'the train step runs no encoder' in err
  with np.load(os.path.join(ldm, 'samples', 'step_2.npz')) as saved:
    assert saved['videos'].shape == (2, T, 16, 16, 1)  # Decoded pixels, not latents.
  sample = cli.start('sample.py', f'--workdir={ldm}', '--mode=predict', '--num_samples=2',
                     '--steps=2', f'--output_dir={tmp_path / "out"}')
  evaluate = cli.start('evaluate.py', f'--workdir={ldm}', '--num_samples=2', '--batch_size=2',
                       '--steps=2')
  cli.finish(sample)
  with np.load(tmp_path / 'out' / 'samples.npz') as saved:
    assert saved['videos'].shape == (2, T, 16, 16, 1) and saved['videos'].dtype == np.uint8
  out, _ = cli.finish(evaluate)
  (line,) = [l for l in out.splitlines() if l.startswith('{')]
  result = json.loads(line)
  assert result['step'] == 2 and np.isfinite(result['fvd'])
  with pytest.raises(ValueError, match='superres .* a latent run'):
    cli.sample(ldm, str(tmp_path / 'sr'), mode='superres', num_samples=2)
  # A diffusion run is no autoencoder to start from.
  method = autoencoder_method.Method(tiny_ae_config(init_from=ldm))
  with pytest.raises(ValueError, match="is a run of method 'vdm'; it must be a run of method "
                                       "'autoencoder'"):
    run_lib.restore_pretrained(method.pretrained_runs()['init_from'])


def test_videofusion_builds_both_generators_for_the_latents(cli_run):
  """VideoFusion's noise law does not care which space it is in; its two U-Nets
  must be built for the latents (the residual's config has its own path)."""
  from configs import videofusion_tiny  # pylint: disable=g-import-not-at-top
  from vdm.methods import videofusion  # pylint: disable=g-import-not-at-top
  config = videofusion_tiny.get_config()
  config.data.image_size = 16
  config.latent.autoencoder = cli_run[1]()
  # Methods are built from the config alone: the trainer fills the latent shape first.
  method = videofusion.Method(run_lib.resolve_latent_shape(config))
  for unet in (method.base_config, method.residual_config):
    assert (unet.image_size, unet.channels) == (8, 2)


def test_trip_trains_and_samples_i2v_on_latents(tmp_path, cli_run):
  """TRIP's first frame is encoded with the clip: prior, fusion and i2v work unchanged."""
  data_dir, ae_dir = cli_run[0], cli_run[1]()
  config = tiny.get_config('trip')
  config.data.update(data_dir=data_dir, num_workers=0, image_size=16, num_frames=4)
  config.latent.autoencoder = ae_dir
  config.training.update(num_steps=1, num_samples=0, async_checkpoints=False)
  config.sharding.mesh = (('data', 1), ('fsdp', 1))
  workdir = str(tmp_path / 'trip')
  state = train_lib.train(config, workdir)
  # The U-Net sees 8x8x2 latents: its input convolution says so.
  (kernel,) = [np.shape(v) for p, v in jax.tree_util.tree_flatten_with_path(state.params)[0]
               if base.param_path(p) == 'unet/conv_in/kernel']
  assert kernel[2] == 2
  result = cli.sample(workdir, str(tmp_path / 'out'), mode='i2v', num_samples=2, steps=2,
                             progress=False)
  assert result.videos.shape == (2, 4, 16, 16, 1) and result.videos.dtype == np.uint8
