"""Tests of the diffusion core against closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from vdm.diffusion import analytic
from vdm.diffusion import gaussian
from vdm.diffusion import schedules


def test_cosine_endpoints_and_monotone():
  t = jnp.linspace(0.0, 1.0, 1001)
  lam = np.asarray(schedules.cosine_logsnr(t, -20.0, 20.0))
  np.testing.assert_allclose(lam[[0, -1]], [20.0, -20.0], atol=5e-3)  # float32 tan near pi/2
  assert (np.diff(lam) < 0).all()
  # The midpoint of the unclipped cosine schedule has lambda = 0.
  np.testing.assert_allclose(schedules.cosine_logsnr(0.5, -20.0, 20.0), 0.0, atol=1e-4)


@pytest.mark.parametrize('shift', [-3.0, 2.0])
def test_shifted_cosine_keeps_its_ends_and_moves_its_middle(shift):
  t = jnp.linspace(0.0, 1.0, 1001)
  lam = np.asarray(schedules.cosine_logsnr(t, -20.0, 20.0, logsnr_shift=shift))
  np.testing.assert_allclose(lam[[0, -1]], [20.0, -20.0], atol=1e-2)  # float32 tan at its ends
  assert (np.diff(lam) < 0).all()
  # Away from the clipped ends the shift is added to the cosine schedule:
  # the SNR at every such t is multiplied by e^shift.
  plain = np.asarray(schedules.cosine_logsnr(t, -20.0, 20.0))
  middle = (t > 0.05) & (t < 0.95)
  np.testing.assert_allclose(lam[middle] - plain[middle], shift, atol=0.02)
  # Shifting down gives more of t to low SNR: the share of t with lambda < 0.
  assert ((lam < 0).mean() > (plain < 0).mean()) == (shift < 0)
  # The config key reaches the schedule every method builds.
  diffusion = default.get_config().diffusion
  diffusion.logsnr_shift = shift
  np.testing.assert_allclose(schedules.logsnr_fn_from_config(diffusion)(t), lam, atol=1e-5)


def test_linear_beta_matches_discrete_product():
  lam = np.asarray(schedules.linear_beta_logsnr(jnp.linspace(0.0, 1.0, 101)))
  assert (np.diff(lam) < 0).all()
  betas = np.linspace(1e-4, 2e-2, 1000)
  alpha_bar_discrete = np.prod(1 - betas)
  alpha_bar = jax.nn.sigmoid(schedules.linear_beta_logsnr(1.0))
  np.testing.assert_allclose(alpha_bar, alpha_bar_discrete, rtol=0.15)
  half = jax.nn.sigmoid(schedules.linear_beta_logsnr(0.5))
  np.testing.assert_allclose(half, np.prod(1 - betas[:500]), rtol=0.05)


def test_alpha_sigma_variance_preserving():
  lam = jnp.linspace(-20, 20, 41)
  alpha, sigma = schedules.alpha_sigma(lam)
  np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, atol=1e-6)
  np.testing.assert_allclose(jnp.log(alpha**2 / sigma**2), lam, atol=1e-3)


def test_unknown_schedule_names_key():
  with pytest.raises(ValueError, match=r'config\.diffusion\.schedule'):
    schedules.get_logsnr_fn('sigmoid')


@pytest.mark.parametrize('logsnr', [-8.0, -1.0, 0.0, 3.0, 8.0])
def test_parameterization_round_trips(logsnr):
  key_x, key_e = jax.random.split(jax.random.key(0))
  x = jax.random.uniform(key_x, (3, 2, 4, 4, 1), minval=-1, maxval=1)
  eps = jax.random.normal(key_e, x.shape)
  lam = jnp.full((3,), logsnr)
  z = gaussian.q_sample(x, lam, eps)
  v = gaussian.v_from_x_eps(x, eps, lam)
  for out, param in ((eps, 'eps'), (v, 'v'), (x, 'x')):
    x_hat, eps_hat = gaussian.predict_x_eps(z, lam, out, param)
    # Dividing by alpha (eps) or sigma (x) amplifies float32 rounding of z.
    alpha, sigma = schedules.alpha_sigma(logsnr)
    tol_x = 2e-6 / min(float(alpha), 1.0) * (10 if param == 'eps' else 1)
    tol_e = 2e-6 / min(float(sigma), 1.0) * (10 if param == 'x' else 1)
    np.testing.assert_allclose(x_hat, x, atol=tol_x)
    np.testing.assert_allclose(eps_hat, eps, atol=tol_e)
  np.testing.assert_allclose(gaussian.eps_from_z_v(z, v, lam), eps, atol=1e-5)
  np.testing.assert_allclose(gaussian.x_from_z_v(z, v, lam), x, atol=1e-5)


def _constant_schedule(value):
  return lambda t: jnp.full(jnp.shape(t), value, jnp.float32)


@pytest.mark.parametrize('parameterization', ['eps', 'v', 'x'])
@pytest.mark.parametrize('loss_type', ['eps_mse', 'v_mse'])
def test_loss_zero_for_exact_point_mass_denoiser(parameterization, loss_type):
  x0 = jax.random.uniform(jax.random.key(1), (4, 2, 4, 4, 1), minval=-1, maxval=1)

  def exact(z, logsnr, label):
    del label
    eps = gaussian.eps_from_z_x(z, x0, logsnr)
    return {'eps': eps, 'x': x0, 'v': gaussian.v_from_x_eps(x0, eps, logsnr)}[parameterization]

  def wrong(z, logsnr, label):
    return exact(z, logsnr, label) + 0.1

  kw = dict(logsnr_fn=schedules.get_logsnr_fn('cosine', logsnr_min=-10.0, logsnr_max=10.0),
            parameterization=parameterization, loss_type=loss_type)
  loss = gaussian.diffusion_loss(exact, x0, jax.random.key(2), **kw)
  assert float(jnp.max(loss)) < 1e-6
  bad = gaussian.diffusion_loss(wrong, x0, jax.random.key(2), **kw)
  assert float(jnp.min(bad)) > 1e-4


@pytest.mark.parametrize('logsnr', [-2.0, 0.0, 2.5])
def test_gaussian_data_loss_matches_closed_form(logsnr):
  """E||eps - E[eps|z]||^2 / D = mean_i alpha^2 l_i / (alpha^2 l_i + sigma^2)."""
  shape = (4, 2, 2, 1)  # T, H, W, C
  d = int(np.prod(shape))
  rng = np.random.default_rng(0)
  frames = np.arange(shape[0])
  # Frames correlated over time (AR(1)-like), pixels within a frame partly too.
  time_cov = 0.8 ** np.abs(frames[:, None] - frames[None, :])
  cov = np.kron(time_cov, 0.3 + 0.7 * np.eye(d // shape[0])) * 0.25
  data = analytic.GaussianData.create(rng.normal(size=d) * 0.3, cov, shape)
  n = 20000
  x = data.sample(jax.random.key(0), n)
  loss = gaussian.diffusion_loss(
      lambda z, lam, label: data.eps_prediction(z, lam), x, jax.random.key(1),
      logsnr_fn=_constant_schedule(logsnr), parameterization='eps')
  expected = data.expected_eps_loss(logsnr)
  stderr = float(np.std(loss)) / np.sqrt(n)
  assert abs(float(np.mean(loss)) - expected) < 4 * stderr + 1e-6, (float(np.mean(loss)), expected)
  # A worse denoiser (scaled) has a strictly larger loss.
  worse = gaussian.diffusion_loss(
      lambda z, lam, label: 0.8 * data.eps_prediction(z, lam), x, jax.random.key(1),
      logsnr_fn=_constant_schedule(logsnr), parameterization='eps')
  assert float(np.mean(worse)) > expected + 4 * stderr


def test_condition_dropout_rate():
  label = jnp.arange(20000) % 7
  dropped = gaussian.drop_condition(jax.random.key(0), label, 0.1)
  frac = float(jnp.mean(dropped == gaussian.NULL_LABEL))
  assert abs(frac - 0.1) < 4 * np.sqrt(0.1 * 0.9 / 20000)
  kept = dropped != gaussian.NULL_LABEL
  np.testing.assert_array_equal(dropped[kept], label[kept])


def test_low_discrepancy_times_cover_unit_interval():
  t = np.sort(np.asarray(gaussian.sample_times(jax.random.key(0), 8, True)))
  np.testing.assert_allclose(np.diff(t), 1 / 8, atol=1e-6)
  assert 0 <= t.min() < 1 / 8 and t.max() < 1
