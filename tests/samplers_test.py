"""Tests of vdm/diffusion/samplers.py against closed forms.

Gaussian data N(m, S) has an exact denoiser (vdm.diffusion.analytic), so a
correct sampler driven by it must reproduce m and S up to the sampling error
of a finite sample and a small discretization error. The covariance used here
is a stationary Gaussian process over time (AR(1) between frames, a smooth
kernel between pixels), so frames are strongly correlated.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vdm.diffusion import analytic
from vdm.diffusion import guidance
from vdm.diffusion import samplers
from vdm.diffusion import schedules
from vdm.models import unet3d

LOGSNR_FN = schedules.cosine_logsnr


def stationary_gaussian(num_frames: int, height: int = 2, width: int = 2, *,
                        rho: float = 0.9, amplitude: float = 0.5,
                        length_scale: float = 1.0,
                        nugget: float = 0.3) -> analytic.GaussianData:
  """A Gaussian video law, stationary in time, over [T, H, W, 1].

  Covariance: rho^|i - j| between frames i, j (an AR(1) process, so the next
  frames depend on the past only through the last frame) times a squared
  exponential kernel plus a nugget between pixels. Mean: a fixed pattern
  repeated in every frame. The law of any num_frames consecutive frames is
  the same, so one clip model describes a video of any length.
  """
  t = np.arange(num_frames)
  k_time = rho**np.abs(t[:, None] - t[None, :])  # [T, T]
  yy, xx = np.meshgrid(np.arange(height), np.arange(width), indexing='ij')
  pos = np.stack([yy.ravel(), xx.ravel()], 1).astype(np.float64)  # [H*W, 2]
  d2 = np.sum((pos[:, None] - pos[None]) ** 2, -1)
  k_space = amplitude * np.exp(-d2 / (2 * length_scale**2)) + nugget * np.eye(len(pos))
  mean_frame = 0.3 * np.cos(1.7 * np.arange(len(pos)) + 0.5)
  return analytic.GaussianData.create(np.tile(mean_frame, num_frames),
                                      np.kron(k_time, k_space),
                                      (num_frames, height, width, 1))


def exact_model(data: analytic.GaussianData, parameterization: str):
  """The exact denoiser of ``data`` as a sampler model_fn."""
  return lambda z, logsnr: data.model_output(z, logsnr, parameterization)


def run_sampler(data, rng, n, *, parameterization='eps', **kwargs):
  """n samples of ``data``'s exact model, flattened to [n, D] float64."""
  fn = jax.jit(lambda rng: samplers.sample(
      exact_model(data, parameterization), rng, (n,) + data.shape,
      logsnr_fn=LOGSNR_FN, parameterization=parameterization, **kwargs))
  return np.asarray(fn(rng), np.float64).reshape(n, -1)


DATA = stationary_gaussian(4)


def moment_z_scores(x: np.ndarray, data: analytic.GaussianData) -> tuple[float, float, float]:
  """How far samples' moments are from the data law, in standard errors.

  For n Gaussian samples the standard error of a mean is sqrt(S_ii / n), of a
  covariance entry sqrt((S_ii S_jj + S_ij^2) / n), and of the total variance
  tr(cov) sqrt(2 tr(S^2) / n).

  Args:
    x: [n, D] float64 samples.
    data: the law they should follow.

  Returns:
    (max |z| of the mean entries, max |z| of the covariance entries, z of the
    trace).
  """
  n = len(x)
  m = np.asarray(data.mean, np.float64)
  s = np.asarray(data.cov, np.float64)
  d = np.diag(s)
  cov = np.cov(x, rowvar=False)
  z_mean = (x.mean(0) - m) / np.sqrt(d / n)
  z_cov = (cov - s) / np.sqrt((np.outer(d, d) + s**2) / n)
  z_trace = (np.trace(cov) - np.trace(s)) / np.sqrt(2 * np.sum(s * s) / n)
  return float(np.abs(z_mean).max()), float(np.abs(z_cov).max()), float(z_trace)


@pytest.mark.slow
@pytest.mark.optimized
@pytest.mark.parametrize('sampler,gamma,parameterization', [
    ('ancestral', 0.0, 'eps'),
    ('ancestral', 0.1, 'eps'),
    ('ddim', 0.0, 'eps'),
    ('ddim', 0.0, 'v'),
    ('ddim', 0.0, 'x'),
    ('ddim_renoise', 0.0, 'v'),
    ('pc', 0.0, 'eps'),
])
def test_sampler_reproduces_gaussian_moments(sampler, gamma, parameterization):
  n = 6000
  x = run_sampler(DATA, jax.random.PRNGKey(0), n, parameterization=parameterization,
                  sampler=sampler, num_steps=500, gamma=gamma, clip_x=False)
  # Every error must stay below 5 standard errors (moment_z_scores): for the
  # 16 + 136 entries the chance of a false alarm from sampling alone is ~1e-4.
  # The trace (standard error ~0.9% of tr S here) catches a uniform variance
  # error of a few percent that single entries miss. Finite steps shrink the
  # variance by O(1/N): about -4.7/N of tr S for 'ancestral', -3/N for 'ddim'
  # (measured, and predicted by the exact linear recursion of the steps for
  # Gaussian data), so 500 steps keep that bias near one standard error.
  z_mean, z_cov, z_trace = moment_z_scores(x, DATA)
  print(f'\n{sampler} gamma={gamma} {parameterization}: max |z| mean '
        f'{z_mean:.2f}, cov {z_cov:.2f}, trace {z_trace:.2f}')
  assert z_mean < 5
  assert z_cov < 5
  assert abs(z_trace) < 5


@pytest.mark.parametrize('sampler', ['dpm++2m', 'dpm++3m'])
def test_dpm_solver_reproduces_gaussian_moments_in_20_steps(sampler):
  # The same law and the same 5-standard-error demands in 20 steps instead of
  # 500 (its default log-SNR grid). Measured: the variance comes out 3.7% too
  # large for 2M (z_trace ~ 4), 1.2% for 3M; DDIM in 20 steps is 14% short.
  n = 6000
  x = run_sampler(DATA, jax.random.PRNGKey(0), n, sampler=sampler, num_steps=20, clip_x=False)
  z_mean, z_cov, z_trace = moment_z_scores(x, DATA)
  print(f'\n{sampler} 20 steps: max |z| mean {np.abs(z_mean).max():.2f}, '
        f'cov {np.abs(z_cov).max():.2f}, trace {z_trace:.2f}')
  assert np.abs(z_mean).max() < 5
  assert np.abs(z_cov).max() < 5
  assert abs(z_trace) < 5


def linear_sampler_law(data: analytic.GaussianData, num_steps: int, renoise: bool):
  """The exact law of 'ddim' (renoise False) or 'ddim_renoise' output on Gaussian data.

  The exact denoiser is affine, x_hat = m + K_t (z - alpha_t m) with
  K_t = alpha_t S (alpha_t^2 S + sigma_t^2 I)^-1, so every step is an affine
  map of z plus independent Gaussian noise, and the mean and covariance of z
  follow in closed form from z_1 ~ N(0, I) (float64, the sampler's grid).

  Returns:
    (mean [D], cov [D, D]) of the final x_hat.
  """
  m, s = np.asarray(data.mean, np.float64), np.asarray(data.cov, np.float64)
  eye = np.eye(len(m))
  logsnr = np.asarray(samplers.make_time_grid(LOGSNR_FN, num_steps, 'uniform_t')[1], np.float64)
  alpha = lambda lam: np.sqrt(1 / (1 + np.exp(-lam)))
  sigma = lambda lam: np.sqrt(1 / (1 + np.exp(lam)))
  mu, p = np.zeros_like(m), eye

  def denoiser(lam):  # x_hat = gain z + offset
    a, sg = alpha(lam), sigma(lam)
    gain = a * s @ np.linalg.inv(a * a * s + sg * sg * eye)
    return gain, m - a * gain @ m

  for i in range(num_steps - 1):
    gain, offset = denoiser(logsnr[i])
    a_t, s_t = alpha(logsnr[i]), sigma(logsnr[i])
    l_s, l_u = logsnr[i + 1], logsnr[min(i + 2, num_steps)] if renoise else logsnr[i + 1]
    # DDIM to u: alpha_u x_hat + sigma_u (z - alpha_t x_hat) / sigma_t.
    w = alpha(l_u) - sigma(l_u) * a_t / s_t
    step, shift = w * gain + sigma(l_u) / s_t * eye, w * offset
    ratio = alpha(l_s) / alpha(l_u)
    var = sigma(l_s) ** 2 - ratio**2 * sigma(l_u) ** 2
    mu, p = ratio * (step @ mu + shift), ratio**2 * step @ p @ step.T + var * eye
  gain, offset = denoiser(logsnr[num_steps - 1])
  return gain @ mu + offset, gain @ p @ gain.T


def test_ddim_renoise_has_its_closed_form_law_in_few_steps():
  # With 4 steps the sampler is far from the data law, which makes its own
  # law (the affine recursion above) a sharp check of the step: the DDIM step
  # two grid points ahead, then the forward process back one. DDIM's law at
  # the same N is many standard errors away, so a sampler that skipped the
  # renoising, or renoised to the wrong time, fails.
  n, steps = 6000, 4
  x = run_sampler(DATA, jax.random.PRNGKey(1), n, parameterization='v',
                  sampler='ddim_renoise', num_steps=steps, clip_x=False)
  law = analytic.GaussianData.create(*linear_sampler_law(DATA, steps, renoise=True), DATA.shape)
  ddim = analytic.GaussianData.create(*linear_sampler_law(DATA, steps, renoise=False), DATA.shape)
  z_mean, z_cov, z_trace = moment_z_scores(x, law)
  print(f'\nddim_renoise, 4 steps: max |z| mean {z_mean:.2f}, cov {z_cov:.2f}, '
        f'trace {z_trace:.2f}; against DDIM\'s law: trace {moment_z_scores(x, ddim)[2]:.1f}, '
        f'against the data: trace {moment_z_scores(x, DATA)[2]:.1f}')
  assert z_mean < 5 and z_cov < 5 and abs(z_trace) < 5
  assert abs(moment_z_scores(x, ddim)[2]) > 10
  assert abs(moment_z_scores(x, DATA)[2]) > 10


@pytest.mark.slow
def test_convergence_order_on_the_exact_ode():
  # The deterministic samplers discretize the probability-flow ODE, whose flow
  # is closed form for Gaussian data (analytic.GaussianData.ode_solution). As
  # N grows each sampler tends to x_hat at its last evaluation lambda_{N-1} of
  # the exact trajectory from the same z_1 (on the log-SNR grid lambda_{N-1}
  # is the same for every N); the RMS distance to that falls as N^-order.
  n, steps = 64, (5, 10, 20, 40)
  z1 = jax.random.normal(jax.random.PRNGKey(3), (n,) + DATA.shape)

  @functools.partial(jax.jit, static_argnums=0)
  def rms_errors(sampler, z1):
    # One compiled program per sampler for all N: compile time dominates.
    errors = []
    for num_steps in steps:
      x = samplers.sample(exact_model(DATA, 'eps'), jax.random.PRNGKey(0), z1.shape,
                          logsnr_fn=LOGSNR_FN, parameterization='eps', sampler=sampler,
                          num_steps=num_steps, clip_x=False, time_grid='uniform_logsnr',
                          z_init=z1)
      logsnr = samplers.make_time_grid(LOGSNR_FN, num_steps, 'uniform_logsnr')[1]
      first, last = jnp.full((n,), logsnr[0]), jnp.full((n,), logsnr[num_steps - 1])
      exact = DATA.model_output(DATA.ode_solution(z1, first, last), last, 'x')
      errors.append(jnp.sqrt(jnp.mean((x - exact) ** 2)))
    return jnp.stack(errors)

  errors = {}
  for sampler in ('ddim', 'dpm++2m', 'dpm++3m'):
    errors[sampler] = np.asarray(rms_errors(sampler, z1))
  slope = {k: np.polyfit(np.log(steps), np.log(v), 1)[0] for k, v in errors.items()}
  # 3M reaches a floor of ~3e-4 near N = 40: the first step, a DDIM step from
  # t = 1 (lambda = -20) to lambda_1 > -8.8, takes x_hat as constant, which is
  # exact only up to O(alpha^2) = O(e^lambda_1) ~ 2e-4. Its slope is fitted
  # on N = 5, 10, 20.
  slope['dpm++3m'] = np.polyfit(np.log(steps[:3]), np.log(errors['dpm++3m'][:3]), 1)[0]
  print('\nRMS error against the exact ODE, N = ' + ', '.join(map(str, steps)))
  for k, v in errors.items():
    print(f'  {k:8s} ' + ' '.join(f'{e:.2e}' for e in v) + f'   slope {slope[k]:.2f}')
  assert abs(slope['ddim'] + 1) < 0.25
  assert abs(slope['dpm++2m'] + 2) < 0.3
  assert abs(slope['dpm++3m'] + 3) < 0.4
  assert errors['dpm++2m'][1] < errors['ddim'][3]  # 10 steps beat 40.


def test_exact_ode_flow_carries_the_marginals_under_correlated_noise():
  # analytic.GaussianData.ode_solution with a noise covariance C: the flow is
  # linear, z_s - alpha_s m = M (z_t - alpha_t m), and must carry the marginal
  # covariance alpha_t^2 S + sigma_t^2 C to alpha_s^2 S + sigma_s^2 C; flowing
  # t -> u -> s must equal t -> s.
  rng = np.random.default_rng(0)
  d, shape = 6, (3, 1, 1, 2)
  a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
  cov, noise_cov = a @ a.T / d, b @ b.T / d + 0.5 * np.eye(d)
  data = analytic.GaussianData.create(rng.normal(size=d), cov, shape, noise_cov=noise_cov)
  lam_t, lam_u, lam_s = -2.0, 0.5, 3.0
  alpha_sigma = lambda lam: (1 / (1 + np.exp(-lam)), 1 / (1 + np.exp(lam)))  # squares

  def flow(z, lt, ls):
    n = z.shape[0]
    return np.asarray(data.ode_solution(jnp.asarray(z, jnp.float32).reshape((n,) + shape),
                                        jnp.full((n,), lt), jnp.full((n,), ls))).reshape(n, d)

  at, _ = alpha_sigma(lam_t)
  origin = np.sqrt(at) * np.asarray(data.mean)
  m = flow(origin + np.eye(d), lam_t, lam_s) - flow(origin[None], lam_t, lam_s)  # rows: M^T
  marginal = lambda lam: alpha_sigma(lam)[0] * cov + alpha_sigma(lam)[1] * noise_cov
  np.testing.assert_allclose(m.T @ marginal(lam_t) @ m, marginal(lam_s), rtol=1e-3, atol=1e-4)
  z = rng.normal(size=(4, d))
  np.testing.assert_allclose(flow(flow(z, lam_t, lam_u), lam_u, lam_s), flow(z, lam_t, lam_s),
                             rtol=1e-4, atol=1e-4)


def test_time_grids():
  steps = 8
  t, logsnr = samplers.make_time_grid(LOGSNR_FN, steps, 'uniform_t')
  np.testing.assert_allclose(t, 1 - np.arange(steps + 1) / steps, atol=1e-7)
  np.testing.assert_allclose(logsnr, LOGSNR_FN(t))
  lo, hi = samplers.LOGSNR_RANGE
  t, logsnr = map(np.asarray, samplers.make_time_grid(LOGSNR_FN, steps, 'uniform_logsnr'))
  assert float(t[0]) == 1.0 and float(t[-1]) == 0.0
  np.testing.assert_allclose(logsnr[[0, -1]], LOGSNR_FN(jnp.array([1.0, 0.0])))
  np.testing.assert_allclose(logsnr[1:-1], np.linspace(lo, hi, steps)[1:], rtol=1e-5)
  np.testing.assert_allclose(LOGSNR_FN(t[1:-1]), logsnr[1:-1], rtol=1e-4, atol=1e-4)
  # linear_beta ends at lambda(1) ~ -10 and lambda(0) = +inf: lo is clipped.
  linear = schedules.get_logsnr_fn('linear_beta')
  t, logsnr = map(np.asarray, samplers.make_time_grid(linear, steps, 'uniform_logsnr',
                                                       (-12.0, 10.0)))
  assert float(t[-1]) == 0.0 and np.isinf(logsnr[-1])
  np.testing.assert_allclose(logsnr[steps - 1], 10.0)
  np.testing.assert_allclose(linear(t[1:-1]), logsnr[1:-1], rtol=1e-4, atol=1e-4)
  assert float(logsnr[1]) > float(linear(1.0))
  with pytest.raises(ValueError, match='time_grid'):
    samplers.sample(exact_model(DATA, 'eps'), jax.random.PRNGKey(0), (2,) + DATA.shape,
                    logsnr_fn=LOGSNR_FN, parameterization='eps', time_grid='karras')


def test_posterior_matches_gaussian_conditioning():
  # q(z_s | z_t, x) by conditioning the joint Gaussian of (z_s, z_t) given x:
  # z_t = alpha_{t|s} z_s + sigma_{t|s} e with alpha_{t|s} = alpha_t / alpha_s.
  rng = np.random.default_rng(0)
  ls, lt = np.array([3.0, -1.0, 15.0]), np.array([1.0, -6.0, 14.5])
  z = rng.normal(size=(3, 2, 2, 2, 1)).astype(np.float32)
  x = rng.normal(size=(3, 2, 2, 2, 1)).astype(np.float32)
  mean, var_tilde, var_ts = samplers.posterior(jnp.asarray(z), jnp.asarray(x), lt, ls)
  a_s, a_t = np.sqrt(1 / (1 + np.exp(-ls))), np.sqrt(1 / (1 + np.exp(-lt)))
  s2_s, s2_t = 1 - a_s**2, 1 - a_t**2
  a_ts = a_t / a_s
  s2_ts = s2_t - a_ts**2 * s2_s
  gain = (a_ts * s2_s / s2_t)[:, None, None, None, None]
  want_mean = a_s[:, None, None, None, None] * x + gain * (
      z - a_t[:, None, None, None, None] * x)
  np.testing.assert_allclose(mean, want_mean, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.ravel(var_tilde), s2_s - a_ts**2 * s2_s**2 / s2_t,
                             rtol=1e-4)
  np.testing.assert_allclose(np.ravel(var_ts), s2_ts, rtol=1e-4)


def test_options_clip_trajectory_progress_and_one_step():
  n, steps, seen = 64, 5, []
  data = stationary_gaussian(4, amplitude=2.0)  # Samples well outside [-1, 1].
  x, trajectory = jax.jit(lambda rng: samplers.sample(
      exact_model(data, 'eps'), rng, (n,) + data.shape, logsnr_fn=LOGSNR_FN,
      parameterization='eps', num_steps=steps, return_trajectory=True,
      progress=lambda i, total: seen.append((int(i), int(total)))))(jax.random.PRNGKey(1))
  jax.effects_barrier()
  assert x.shape == (n,) + data.shape and trajectory.shape == (steps, n) + data.shape
  assert float(jnp.abs(x).max()) <= 1.0  # clip_x defaults to on.
  assert sorted(seen) == [(i, steps) for i in range(steps)]
  one = samplers.sample(exact_model(data, 'eps'), jax.random.PRNGKey(1), (n,) + data.shape,
                        logsnr_fn=LOGSNR_FN, parameterization='eps', num_steps=1,
                        sampler='ddim', clip_x=False)
  # One step denoises pure noise at t = 1, where the best guess is the mean.
  np.testing.assert_allclose(one.mean(0).ravel(), data.mean, atol=0.02)
  with pytest.raises(ValueError, match='sampler'):
    samplers.sample(exact_model(data, 'eps'), jax.random.PRNGKey(1), (n,) + data.shape,
                    logsnr_fn=LOGSNR_FN, parameterization='eps', sampler='euler')


@pytest.mark.slow
@pytest.mark.parametrize('sampler', ['ddim', 'pc'])
def test_partial_trajectory(sampler):
  # trajectory_steps / trajectory_frames keep a slice of the full trajectory,
  # exactly, and change nothing else.
  n, steps, frames = 8, 6, [3, 0]
  run = lambda **kw: jax.jit(lambda rng: samplers.sample(
      exact_model(DATA, 'eps'), rng, (n,) + DATA.shape, logsnr_fn=LOGSNR_FN,
      parameterization='eps', sampler=sampler, num_steps=steps, return_trajectory=True,
      **kw))(jax.random.PRNGKey(2))
  x, full = run()
  x_part, part = run(trajectory_steps=4, trajectory_frames=frames)
  assert part.shape == (4, n, 2) + DATA.shape[1:]
  np.testing.assert_array_equal(part, full[:4][:, :, frames])
  np.testing.assert_array_equal(x_part, x)
  np.testing.assert_array_equal(run(trajectory_steps=steps)[1], full)
  with pytest.raises(ValueError, match='trajectory_steps'):
    run(trajectory_steps=steps + 1)
  with pytest.raises(ValueError, match='return_trajectory'):
    samplers.sample(exact_model(DATA, 'eps'), jax.random.PRNGKey(2), (n,) + DATA.shape,
                    logsnr_fn=LOGSNR_FN, parameterization='eps', trajectory_frames=[0])


def tiny_unet(num_classes: int = 0):
  """The tiny U-Net of the smoke tests, as fn(z, logsnr, label)."""
  cfg = unet3d.UNetConfig(channels=1, image_size=8, base_channels=16, channel_mult=(1, 2),
                          num_res_blocks=1, attention_resolutions=(4,), head_dim=8,
                          norm_groups=8, num_classes=num_classes, dropout=0.0)
  model = unet3d.UNet3D(cfg, rngs=nnx.Rngs(0))
  # The output conv starts at zero; random weights make the output depend on z,
  # so the gradient of reconstruction guidance is not trivially zero.
  kernel = model.conv_out.kernel
  kernel[...] = 0.1 * jax.random.normal(jax.random.key(1), kernel[...].shape)
  graphdef, state = nnx.split(model)
  return lambda z, logsnr, label=None: nnx.merge(graphdef, state)(z, logsnr, label=label)


@pytest.mark.slow
@pytest.mark.parametrize('sampler', samplers.SAMPLERS)
def test_unet_smoke(sampler):
  # Each sampler, jitted, with the real network: 'ancestral' under
  # classifier-free guidance, 'pc' under reconstruction guidance.
  shape = (2, 4, 8, 8, 1)
  net = tiny_unet(num_classes=3)
  label = jnp.array([0, 2])
  model_fn, guide = (lambda z, logsnr: net(z, logsnr, label)), None
  if sampler == 'ancestral':
    model_fn = guidance.classifier_free(net, label, 1.0)
  if sampler == 'pc':
    known = jax.random.uniform(jax.random.key(2), shape, minval=-1, maxval=1)
    guide = guidance.reconstruction_guide(known, jnp.array([True, False, False, False]), 2.0)
  x = jax.jit(lambda rng: samplers.sample(
      model_fn, rng, shape, logsnr_fn=LOGSNR_FN, parameterization='v', sampler=sampler,
      num_steps=4, gamma=0.1, guide=guide))(jax.random.PRNGKey(0))
  assert x.shape == shape
  assert bool(jnp.all(jnp.isfinite(x)))
  if guide is not None:
    np.testing.assert_array_equal(x[:, 0], known[:, 0])  # Known frame kept.


def test_progress_prints_whole_lines_when_not_a_terminal(capsys):
  for i in range(40):
    samplers.print_progress(i, 40)
  err = capsys.readouterr().err
  assert '\r' not in err
  lines = err.splitlines()
  assert lines[0] == 'sampling step 1/40' and lines[-1] == 'sampling step 40/40'
  assert len(lines) == 11  # Step 1 and every 4th: a line per 10%.
