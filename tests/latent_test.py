"""Tests of the latent path's networks: the autoencoder and VidRD's temporal layers.

The KL term is checked against a Monte Carlo estimate of its definition;
zero-initialised temporal layers must leave the decoder and the U-Net exactly
as they were; temporal convolutions must never mix an appended image with
another frame; a frozen parameter must get no update (read from the optimizer
state). The tests on trained runs (the temporal stage, exact resume, the
latent scale, diffusion on latents end to end) are in latent_cli_test.py.
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import tiny
from vdm.methods import autoencoder as autoencoder_method
from vdm.methods import base
from vdm.models import autoencoder
from vdm.models import layers
from vdm.models import unet3d

sys.path.insert(0, os.path.dirname(__file__))
from model_test import (  # pylint: disable=g-import-not-at-top
    apply, apply_default_codegen, randomized, tiny_config)

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


def _ae(temporal=False, seed=0, **keys):
  cfg = autoencoder.AutoencoderConfig(channels=1, image_size=16, latent_channels=2,
                                      base_channels=8, channel_mult=(1, 2), norm_groups=4,
                                      temporal_decoder=temporal, **keys)
  return autoencoder.Autoencoder(cfg, rngs=nnx.Rngs(seed))


_encode = nnx.jit(lambda model, x: model.encode(x))
_decode = nnx.jit(lambda model, z, is_image=None: model.decode(z, is_image))


# --- The autoencoder ------------------------------------------------------------------


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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
  np.testing.assert_array_equal(apply_default_codegen(conv, x, logsnr, **kw),
                                apply_default_codegen(plain, x, logsnr, **kw))
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


@pytest.mark.slow
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


def test_autoencoder_config_errors():
  with pytest.raises(ValueError, match="train='temporal' trains the temporal-aware"):
    autoencoder_method.Method(tiny_ae_config(train='temporal')).validate()
  config = tiny_ae_config()
  config.training.num_samples = 2
  with pytest.raises(ValueError, match='training.num_samples=2: an autoencoder run'):
    autoencoder_method.Method(config).validate()


# --- Latent diffusion ----------------------------------------------------------------
