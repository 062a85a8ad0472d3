"""Tests of the latent path: the autoencoder, VidRD's temporal layers, latent diffusion.

The KL term is checked against a Monte Carlo estimate of its definition;
zero-initialised temporal layers must leave the decoder and the U-Net exactly
as they were; temporal convolutions must never mix an appended image with
another frame; a frozen parameter must get no update (read from the optimizer
state); the autoencoder trainer must resume exactly. One tiny run goes
through the command line end to end: autoencoder, diffusion on its latents,
sample.py and evaluate.py; its first stage starts in a subprocess when the
module starts, so the unit tests run meanwhile.
"""

import json
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs import tiny
from vdm import latent
from vdm import run_lib
from vdm.data import moving_digits
from vdm.methods import autoencoder as autoencoder_method
from vdm.methods import base
from vdm.models import autoencoder
from vdm.models import layers
from vdm.models import unet3d
from vdm.sampling import sample_lib
from vdm.train import train_lib

sys.path.insert(0, os.path.dirname(__file__))
import cli  # pylint: disable=g-import-not-at-top
from model_test import apply, randomized, tiny_config  # pylint: disable=g-import-not-at-top

T = 10  # Frames of the command-line run (the I3D needs >= 9).


def tiny_ae_config(stage='autoencoder', data_dir='data/tfds', **keys):
  c = tiny.get_config(stage)
  c.autoencoder.update(keys)
  c.data.data_dir = data_dir
  c.data.num_workers = 0
  c.training.async_checkpoints = False
  c.sharding.mesh = (('data', 1), ('fsdp', 1))
  return c


def cli_flags(data_dir, workdir):
  return ['--config=configs/tiny.py:autoencoder', f'--workdir={workdir}',
          f'--config.data.num_frames={T}', f'--config.data.data_dir={data_dir}', '--config.data.num_workers=0',
          '--config.training.async_checkpoints=False']


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


def _ae(temporal=False, seed=0, **keys):
  cfg = autoencoder.AutoencoderConfig(channels=1, image_size=16, latent_channels=2,
                                      base_channels=8, channel_mult=(1, 2), norm_groups=4,
                                      temporal_decoder=temporal, **keys)
  return autoencoder.Autoencoder(cfg, rngs=nnx.Rngs(seed))


_encode = nnx.jit(lambda model, x: model.encode(x))
_decode = nnx.jit(lambda model, z, is_image=None: model.decode(z, is_image))


# --- The autoencoder ------------------------------------------------------------------


def test_encoder_decoder_shapes_and_errors():
  model = _ae()
  x = jax.random.uniform(jax.random.key(0), (2, 3, 16, 16, 1), minval=-1, maxval=1)
  mean, logvar = _encode(model, x)
  assert mean.shape == logvar.shape == (2, 3, 8, 8, 2)
  assert _decode(model, mean).shape == x.shape
  with pytest.raises(ValueError, match=r'encodes video \[B, T, 16, 16, 1\]'):
    model.encode(x[..., :8, :8, :])
  with pytest.raises(ValueError, match=r'takes latents \[B, T, 8, 8, 2\]'):
    model.decode(x)
  with pytest.raises(ValueError, match='image_size=10 is not divisible by'):
    autoencoder.AutoencoderConfig(image_size=10, channel_mult=(1, 2, 2))


def test_kl_matches_its_definition_by_monte_carlo():
  rng = np.random.default_rng(0)
  mean = rng.normal(0, 1.5, (2, 3)).astype(np.float32)
  logvar = rng.normal(0, 1.0, (2, 3)).astype(np.float32)
  kl = np.asarray(autoencoder.kl_to_standard_normal(jnp.asarray(mean), jnp.asarray(logvar)))
  # KL(q || p) = E_q[log q(z) - log p(z)], z ~ q, summed over the 3 dimensions.
  std = np.exp(0.5 * logvar)
  z = mean + std * rng.standard_normal((200_000,) + mean.shape)
  log_q = -0.5 * (((z - mean) / std)**2 + logvar + np.log(2 * np.pi))
  log_p = -0.5 * (z**2 + np.log(2 * np.pi))
  estimate = np.mean(np.sum(log_q - log_p, axis=-1), axis=0)
  np.testing.assert_allclose(kl, estimate, rtol=0.02, atol=0.01)
  assert float(autoencoder.kl_to_standard_normal(jnp.zeros((1, 4)), jnp.zeros((1, 4)))[0]) == 0


def test_zero_initialised_temporal_decoder_decodes_exactly_as_before():
  spatial = randomized(_ae())
  temporal = _ae(temporal=True, seed=1)
  _, params = base.copy_matching_params(nnx.state(temporal, nnx.Param),
                                        nnx.state(spatial, nnx.Param), 'spatial')
  nnx.update(temporal, params)
  z = jax.random.normal(jax.random.key(2), (2, 5, 8, 8, 2))
  np.testing.assert_array_equal(_decode(temporal, z), _decode(spatial, z))
  # Trained (non-zero) temporal layers do change the decoding: the check can fail.
  changed = _decode(randomized(temporal, seed=3), z)
  assert not np.allclose(changed, _decode(spatial, z), atol=1e-3)


def test_unet_temporal_conv_starts_as_identity_and_keeps_images_apart():
  # The shapes and model of model_test's masking tests: the plain model's
  # forward pass is compiled once for both files.
  plain = randomized(unet3d.UNet3D(tiny_config(num_classes=3), rngs=nnx.Rngs(0)))
  conv = unet3d.UNet3D(tiny_config(num_classes=3, temporal_conv=True), rngs=nnx.Rngs(1))
  _, params = base.copy_matching_params(nnx.state(conv, nnx.Param), nnx.state(plain, nnx.Param),
                                        'plain')
  nnx.update(conv, params)
  nv = 5
  x = jax.random.normal(jax.random.key(0), (2, nv + 3, 8, 8, 3))
  kw = dict(label=jnp.array([0, 2]), is_image=jnp.array([False] * nv + [True] * 3))
  logsnr = jnp.array([-1.0, 2.0])
  np.testing.assert_array_equal(apply(conv, x, logsnr, **kw), apply(plain, x, logsnr, **kw))
  # Trained temporal layers: images still never mix with other frames.
  conv = randomized(conv, seed=4)
  out = apply(conv, x, logsnr, **kw)
  changed = apply(conv, x.at[:, nv + 1].add(1.0), logsnr, **kw)
  others = [t for t in range(nv + 3) if t != nv + 1]
  np.testing.assert_allclose(changed[:, others], out[:, others], atol=1e-5)
  changed = apply(conv, x.at[:, 2].add(1.0), logsnr, **kw)
  np.testing.assert_allclose(changed[:, nv:], out[:, nv:], atol=1e-5)
  assert not np.allclose(out, apply(plain, x, logsnr, **kw), atol=1e-3)


def test_temporal_conv_never_mixes_an_image_frame():
  conv = layers.TemporalConv(3, 4, rngs=nnx.Rngs(0))
  # Images appended after the video, and one interleaved between video frames.
  is_image = jnp.array([False, True, False, False, False, True])
  x = jax.random.normal(jax.random.key(1), (2, 6, 4, 4, 3))
  run = nnx.jit(lambda m, x: m(x, is_image))
  out = run(conv, x)
  for image in (1, 5):
    changed = run(conv, x.at[:, image].add(1.0))
    others = [t for t in range(6) if t != image]
    np.testing.assert_allclose(changed[:, others], out[:, others], atol=1e-6)
  changed = run(conv, x.at[:, 2].add(1.0))  # A video frame reaches video frames only...
  np.testing.assert_allclose(changed[:, [1, 4, 5]], out[:, [1, 4, 5]], atol=1e-6)
  # ...its neighbours 0 (across the image) and 3.
  assert not np.allclose(changed[:, 0], out[:, 0], atol=1e-3)
  assert not np.allclose(changed[:, 3], out[:, 3], atol=1e-3)
  # The video frames' output equals the conv on the video frames alone.
  alone = nnx.jit(lambda m, x: m(x))(conv, x[:, [0, 2, 3, 4]])
  np.testing.assert_allclose(out[:, [0, 2, 3, 4]], alone, atol=1e-5)


# --- Training the autoencoder ----------------------------------------------------------


def _batch(num_images=2, seed=0):
  video = jax.random.uniform(jax.random.key(seed), (4, 4 + num_images, 16, 16, 1),
                             minval=-1, maxval=1)
  return {'video': video, 'is_image': jnp.array([False] * 4 + [True] * num_images)}


def test_temporal_stage_starts_from_the_image_stage_and_trains_only_its_layers(cli_run, capsys):
  ae_dir = cli_run[1]()
  trainer = train_lib.Trainer(tiny_ae_config('autoencoder_temporal', disc_weight=0.5,
                                             init_from=ae_dir))
  state = trainer.init_state()
  assert 'initialised from step 4' in capsys.readouterr().out
  image_stage = run_lib.restore_run(ae_dir).params
  for a, b in zip(jax.tree.leaves(image_stage['encoder']), jax.tree.leaves(state.params['encoder'])):
    np.testing.assert_array_equal(a, b)
  labels = trainer.method.param_labels(state.params)
  before = jax.tree.map(np.asarray, state.params)
  step = trainer.compile_train_step(state, _batch(num_images=0))
  for i in range(3):
    state, _ = step(state, _batch(num_images=0, seed=i))
  # The optimizer state: the frozen groups have no moments at all (optax's
  # set_to_zero), the trained ones have non-zero first moments.
  (groups,) = [s for s in state.opt_state if hasattr(s, 'inner_states')]  # After clipping.
  inner = groups.inner_states
  for group in ('encoder', 'decoder'):
    assert not jax.tree.leaves(inner[group])
  for group in ('temporal', 'discriminator'):
    mu = [np.asarray(x) for x in jax.tree.leaves(inner[group].inner_state[0].mu)]
    assert mu and any(np.abs(m).max() > 0 for m in mu)
  moved = jax.tree.map(lambda a, b, g: (g, bool(np.any(np.asarray(b) != a))), before,
                       state.params, labels)
  moved = jax.tree.leaves(moved, is_leaf=lambda x: isinstance(x, tuple))
  assert not [g for g, m in moved if g in ('encoder', 'decoder') and m]
  assert any(m for g, m in moved if g == 'temporal')


def test_discriminator_terms_reach_only_their_player():
  """The combined loss: the discriminator learns only its hinge loss, the autoencoder
  only the reconstruction, KL and adversarial terms."""
  cfg = tiny_ae_config(disc_weight=0.5, sample_posterior=False)
  method = autoencoder_method.Method(cfg)
  model = randomized(method.build(nnx.Rngs(0)), scale=0.1)
  graphdef, params = nnx.split(model)
  batch = _batch()
  rng = jax.random.key(3)

  def grads(fn):
    return jax.jit(jax.grad(lambda p: jnp.mean(fn(nnx.merge(graphdef, p)))))(params)

  full = grads(lambda m: method.loss(m, batch, rng)[0])

  def hinge(m):
    recon = jax.lax.stop_gradient(method.reconstruct(m, batch['video'], rng)[0])
    return (jnp.mean(jax.nn.relu(1 - m.discriminator(batch['video'])), axis=(1, 2, 3, 4))
            + jnp.mean(jax.nn.relu(1 + m.discriminator(recon)), axis=(1, 2, 3, 4)))

  def autoencoder_terms(m):
    recon, kl = method.reconstruct(m, batch['video'], rng)
    disc_graph, disc_params = nnx.split(m.discriminator)
    fixed = nnx.merge(disc_graph, jax.lax.stop_gradient(disc_params))
    return (jnp.mean(jnp.abs(recon - batch['video']), axis=(1, 2, 3, 4)) + 1e-6 * kl
            - 0.5 * jnp.mean(fixed(recon), axis=(1, 2, 3, 4)))

  for part, fn in (('discriminator', hinge), ('encoder', autoencoder_terms),
                   ('decoder', autoencoder_terms)):
    for a, b in zip(jax.tree.leaves(full[part]), jax.tree.leaves(grads(fn)[part])):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
  assert any(np.abs(g).max() > 0 for g in jax.tree.leaves(full['discriminator']))


def test_autoencoder_resume_is_exact(tmp_path, cli_run):
  data_dir = cli_run[0]
  config = tiny_ae_config(data_dir=data_dir, disc_weight=0.1)
  config.training.num_steps, config.training.checkpoint_every = 4, 2
  straight = train_lib.train(config, str(tmp_path / 'straight'))
  # The run as a crash after step 2 would have left it.
  shutil.copytree(tmp_path / 'straight', tmp_path / 'resumed')
  shutil.rmtree(tmp_path / 'resumed' / 'checkpoints' / '4')
  resumed = train_lib.train(config, str(tmp_path / 'resumed'))
  for a, b in zip(jax.tree.leaves((straight.params, straight.opt_state)),
                  jax.tree.leaves((resumed.params, resumed.opt_state))):
    np.testing.assert_array_equal(a, b)


def test_autoencoder_config_errors():
  with pytest.raises(ValueError, match="train='temporal' trains the temporal-aware"):
    autoencoder_method.Method(tiny_ae_config(train='temporal')).validate()
  config = tiny_ae_config()
  config.training.num_samples = 2
  with pytest.raises(ValueError, match='training.num_samples=2: an autoencoder run'):
    autoencoder_method.Method(config).validate()


# --- Latent diffusion ----------------------------------------------------------------


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


def test_latent_diffusion_end_to_end_through_the_command_line(tmp_path, cli_run):
  data_dir, ae_dir = cli_run[0], cli_run[1]()
  ldm = str(tmp_path / 'ldm')
  flags = ['--config=configs/tiny.py', f'--workdir={ldm}', f'--config.data.num_frames={T}',
           f'--config.data.data_dir={data_dir}', '--config.data.num_workers=0',
           '--config.data.image_size=16', f'--config.latent.autoencoder={ae_dir}',
           '--config.model.temporal_conv=True', '--config.training.num_steps=2',
           '--config.training.async_checkpoints=False']
  out, _ = cli.finish(cli.start('train.py', *flags))
  assert 'scale factor' in out and 'Wrote samples' in out and 'Done: 2 steps' in out
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
  method = videofusion.Method(config)
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
