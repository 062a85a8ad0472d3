"""Tests of vdm/diffusion/guidance.py and the drivers of vdm/sampling/conditional.py.

Conditional sampling is checked against the closed-form conditional of
Gaussian video data (analytic.GaussianData.conditional) with the exact
denoiser; see samplers_test.py for the data.
"""

import dataclasses
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm.diffusion import gaussian
from vdm.diffusion import guidance
from vdm.diffusion import samplers
from vdm.diffusion import schedules
from vdm.sampling import conditional

sys.path.insert(0, os.path.dirname(__file__))
from samplers_test import DATA, LOGSNR_FN, exact_model, stationary_gaussian  # pylint: disable=g-import-not-at-top

SAMPLER = dict(logsnr_fn=LOGSNR_FN, parameterization='eps', clip_x=False)
KNOWN_FIRST_TWO = np.array([True, True, False, False])


def known_coordinates(frame_mask, data):
  """[D] bool: the coordinates of the known frames in the flattened video."""
  return np.repeat(np.asarray(frame_mask, bool), np.prod(data.shape[1:]))


def conditional_errors(samples, data, frame_mask, x_true):
  """RMS error of the sample mean of x^b, and the mean variance ratio.

  Args:
    samples: [n, T, H, W, C] conditional samples.
    data: the GaussianData they should follow.
    frame_mask: [T] bool, known frames.
    x_true: [T, H, W, C] video whose known frames were given.

  Returns:
    (rms error of the mean over D_b, mean of sample var / exact conditional
    var, rms of the exact mean's standard error, rms prior-to-conditional gap).
  """
  known = known_coordinates(frame_mask, data)
  mean, cov = data.conditional(known, np.asarray(x_true).reshape(-1)[known])
  xb = np.asarray(samples, np.float64).reshape(len(samples), -1)[:, ~known]
  err = np.sqrt(np.mean((xb.mean(0) - mean) ** 2))
  ratio = np.mean(xb.var(0) / np.diag(cov))
  se = np.sqrt(np.mean(np.diag(cov)) / len(samples))
  gap = np.sqrt(np.mean((np.asarray(data.mean)[~known] - mean) ** 2))
  return err, ratio, se, gap


@pytest.mark.slow
@pytest.mark.parametrize('sampler', ['ancestral', 'pc'])
def test_zero_weight_reconstruction_is_replacement(sampler):
  n = 256
  x_known = DATA.sample(jax.random.PRNGKey(1), n)

  def run(guide):
    return np.asarray(jax.jit(lambda rng: samplers.sample(
        exact_model(DATA, 'eps'), rng, x_known.shape, sampler=sampler, num_steps=30,
        guide=guide, **SAMPLER))(jax.random.PRNGKey(0)))

  replacement = run(guidance.replacement_guide(x_known, KNOWN_FIRST_TWO))
  # A Python 0 is the replacement code path: identical bits.
  np.testing.assert_array_equal(
      run(guidance.reconstruction_guide(x_known, KNOWN_FIRST_TWO, 0.0)), replacement)
  # A traced 0 runs the gradient through the model and adds 0 x gradient; it
  # uses the same noise, so only float rounding (XLA fuses the forward pass
  # differently when it is also differentiated) may differ.
  traced = run(guidance.reconstruction_guide(x_known, KNOWN_FIRST_TWO, jnp.float32(0.0)))
  np.testing.assert_allclose(traced, replacement, rtol=0, atol=1e-5)
  np.testing.assert_array_equal(replacement[:, :2], x_known[:, :2])


@pytest.mark.parametrize('weight', [0.0, 3.0])
def test_known_latents_are_fresh_forward_samples(weight):
  # Both methods overwrite z^a at every step with alpha_t x^a + sigma_t e with
  # NEW noise e: in the recorded trajectory, e must be standard normal and
  # uncorrelated between consecutive steps.
  n, steps = 512, 16
  x_known = DATA.sample(jax.random.PRNGKey(1), n)
  guide = guidance.reconstruction_guide(x_known, KNOWN_FIRST_TWO, weight)
  _, trajectory = jax.jit(lambda rng: samplers.sample(
      exact_model(DATA, 'eps'), rng, x_known.shape, num_steps=steps, guide=guide,
      return_trajectory=True, **SAMPLER))(jax.random.PRNGKey(0))
  logsnr = LOGSNR_FN(1.0 - jnp.arange(steps) / steps)
  alpha, sigma = (a.reshape(steps, 1, 1, 1, 1, 1) for a in
                  schedules.alpha_sigma(logsnr))
  e = np.asarray((trajectory[:, :, :2] - alpha * x_known[None, :, :2]) / sigma)
  e = e.reshape(steps, -1)  # [steps, n * known numbers]
  m = e.shape[1]
  # 5 standard errors: of a mean of m unit normals 1/sqrt(m), of their
  # variance sqrt(2/m), of a correlation 1/sqrt(m).
  assert np.abs(e.mean(1)).max() < 5 / np.sqrt(m)
  assert np.abs(e.var(1) - 1).max() < 5 * np.sqrt(2 / m)
  assert np.abs(np.mean(e[1:] * e[:-1], axis=1)).max() < 5 / np.sqrt(m)


@pytest.mark.slow
@pytest.mark.optimized
@pytest.mark.parametrize('task', ['prediction', 'interpolation'])
def test_reconstruction_guidance_beats_replacement(task):
  # Over 8 given videos (500 samples each): how far one method's conditional
  # mean lands depends on the video (replacement's error grows with the gap
  # between prior and conditional, reconstruction guidance's barely), so a
  # single given video could make either comparison a coin toss.
  videos, per_video, weight = 8, 500, 3.0
  x_true = DATA.sample(jax.random.PRNGKey(5), videos)  # [V, T, H, W, C]
  frames = jnp.repeat(x_true, per_video, axis=0)  # [V * n, T, H, W, C]
  if task == 'prediction':
    mask = KNOWN_FIRST_TWO
    run = lambda **kw: conditional.predict_frames(
        exact_model(DATA, 'eps'), jax.random.PRNGKey(0), frames[:, :2], 4,
        num_steps=128, **SAMPLER, **kw)
  else:
    mask = np.array([True, False, False, True])
    run = lambda **kw: conditional.interpolate_frames(
        exact_model(DATA, 'eps'), jax.random.PRNGKey(0), frames[:, ::3], 3,
        num_steps=128, **SAMPLER, **kw)
  results = {}
  for method in conditional.CONDITIONINGS:
    out = np.asarray(run(conditioning=method, w_r=weight))
    np.testing.assert_array_equal(out[:, mask], frames[:, mask])
    groups = out.reshape((videos, per_video) + DATA.shape)
    per = np.array([conditional_errors(g, DATA, mask, x) for g, x in zip(groups, x_true)])
    results[method] = np.sqrt(np.mean(per**2, axis=0))  # RMS over the given videos.
  (err_rg, ratio_rg, se, gap), (err_rep, ratio_rep, _, _) = (
      results['reconstruction'], results['replacement'])
  print(f'\n{task}: |E[x^b] - exact| rms: replacement {err_rep:.4f}, reconstruction '
        f'(w_r={weight}) {err_rg:.4f} (standard error {se:.4f}, prior gap {gap:.4f}); '
        f'var / exact var: replacement {ratio_rep:.3f}, reconstruction {ratio_rg:.3f}')
  assert err_rep > 10 * se  # The test can tell the methods apart.
  assert err_rg < 0.5 * err_rep


@pytest.mark.slow
def test_dpm_solver_under_replacement_and_reconstruction_guidance():
  # The guide runs at every evaluation of the multistep solver too: known
  # frames come out exact, and in 20 steps reconstruction guidance is still
  # much closer to the exact conditional mean than replacement (measured:
  # 0.16 against 0.53 rms; 20 DDIM steps give 0.20 against 0.56).
  n, weight = 2000, 3.0
  x_true = DATA.sample(jax.random.PRNGKey(5), 1)[0]  # [T, H, W, C]
  frames = jnp.broadcast_to(x_true, (n,) + DATA.shape)
  errors = {}
  for method in conditional.CONDITIONINGS:
    out = conditional.predict_frames(
        exact_model(DATA, 'eps'), jax.random.PRNGKey(0), frames[:, :2], 4, conditioning=method,
        w_r=weight, num_steps=20, **dict(SAMPLER, sampler='dpm++2m'))
    assert bool(np.all(np.isfinite(out)))
    np.testing.assert_array_equal(out[:, :2], frames[:, :2])
    errors[method], _, se, _ = conditional_errors(out, DATA, KNOWN_FIRST_TWO, x_true)
  print(f'\ndpm++2m, 20 steps: |E[x^b] - exact| rms: replacement {errors["replacement"]:.4f}, '
        f'reconstruction {errors["reconstruction"]:.4f} (standard error {se:.4f})')
  assert errors['replacement'] > 10 * se
  assert errors['reconstruction'] < 0.5 * errors['replacement']


def label_model(counter):
  """A class-conditional exact Gaussian model fn(z, logsnr, label), eps output.

  Class c shifts the mean by (c + 1) * 0.5; the null label (and any negative
  label) is the unshifted law. Each traced call records its batch size.
  """
  laws = [dataclasses.replace(DATA, mean=DATA.mean + shift) for shift in (0.0, 0.5, 1.0)]

  def fn(z, logsnr, label):
    counter.append(z.shape[0])
    outs = jnp.stack([law.model_output(z, logsnr, 'eps') for law in laws])  # [3, B, ...]
    index = jnp.where(label < 0, 0, label + 1)  # [B]
    return jnp.take_along_axis(outs, index[None, :, None, None, None, None], 0)[0]

  return fn


@pytest.mark.slow
def test_classifier_free_guidance():
  n = 64
  label = jnp.arange(n) % 2
  calls = []
  fn = label_model(calls)

  def run(model_fn):
    return np.asarray(jax.jit(lambda rng: samplers.sample(
        model_fn, rng, (n,) + DATA.shape, num_steps=20, **SAMPLER))(jax.random.PRNGKey(0)))

  conditional = run(lambda z, logsnr: fn(z, logsnr, label))
  calls.clear()
  guided = run(guidance.classifier_free(fn, label, 0.0))
  assert calls == [2 * n]  # One traced call per step, both branches batched.
  np.testing.assert_allclose(guided, conditional, rtol=0, atol=1e-6)

  # Mixing outputs in the model's parameterization = the paper's eps mixing.
  w = 2.0
  v_fn = lambda z, logsnr, lab: gaussian.v_from_x_eps(
      *reversed(gaussian.predict_x_eps(z, logsnr, fn(z, logsnr, lab), 'eps')), logsnr)
  z = jax.random.normal(jax.random.PRNGKey(3), (n,) + DATA.shape)
  logsnr = jnp.linspace(-5.0, 5.0, n)
  eps_of = lambda out: gaussian.predict_x_eps(z, logsnr, out, 'v')[1]
  got = eps_of(guidance.classifier_free(v_fn, label, w)(z, logsnr))
  want = ((1 + w) * eps_of(v_fn(z, logsnr, label)) -
          w * eps_of(v_fn(z, logsnr, jnp.full_like(label, gaussian.NULL_LABEL))))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_super_resolution():
  n, size, low = 1000, (4, 4), (2, 2)
  data = stationary_gaussian(2, *size, amplitude=1.0, length_scale=1.5, nugget=0.05)
  x_true = data.sample(jax.random.PRNGKey(1), 1)
  y = guidance.bilinear_downsample(x_true, low)  # [1, T, 2, 2, 1]
  y_batch = jnp.broadcast_to(y, (n,) + y.shape[1:])
  # The downsampling operator as a matrix A, to condition N(m, S) on A x = y.
  d = int(np.prod(data.shape))
  basis = jnp.eye(d).reshape((d, 1) + data.shape)
  a = np.asarray(jax.vmap(lambda e: guidance.bilinear_downsample(e, low))(basis),
                 np.float64).reshape(d, -1).T  # [d_low, d]
  m, s = np.asarray(data.mean, np.float64), np.asarray(data.cov, np.float64)
  gain = s @ a.T @ np.linalg.inv(a @ s @ a.T)
  exact_mean = m + gain @ (np.asarray(y, np.float64).ravel() - a @ m)

  errors = {}
  for weight in (0.0, 10.0):  # 0: no guidance, the unconditional baseline.
    x = conditional.super_resolve(exact_model(data, 'eps'), jax.random.PRNGKey(0), y_batch,
                               size, w_r=weight, num_steps=128, **SAMPLER)
    assert x.shape == (n,) + data.shape
    recon = np.sqrt(np.mean((guidance.bilinear_downsample(x, low) - y_batch) ** 2))
    mean_err = np.sqrt(np.mean((np.asarray(x).reshape(n, -1).mean(0) - exact_mean) ** 2))
    errors[weight] = (float(recon), float(mean_err))
  print(f'\nsuper-resolution rms ||down(x) - y||, rms mean error: unguided '
        f'{errors[0.0]}, w_r=10 {errors[10.0]}')
  assert errors[10.0][0] < 0.05 and errors[10.0][0] < 0.1 * errors[0.0][0]
  assert errors[10.0][1] < 0.05 < errors[0.0][1]


@pytest.mark.slow
def test_extend_video():
  n, length = 2000, 8
  long = stationary_gaussian(length)  # The same process as DATA, over 8 frames.
  x_true = long.sample(jax.random.PRNGKey(3), 1)[0]
  init = jnp.broadcast_to(x_true[:1], (n, 1) + x_true.shape[1:])
  mask = np.arange(length) < 1
  results = {}
  for method in conditional.CONDITIONINGS:
    video = conditional.extend_video(
        exact_model(DATA, 'eps'), jax.random.PRNGKey(0), length, clip_frames=4,
        context_frames=2, init_frames=init, conditioning=method, w_r=3.0,
        num_steps=128, **SAMPLER)
    assert video.shape == (n, length) + x_true.shape[1:]
    np.testing.assert_array_equal(video[:, :1], init)
    results[method] = conditional_errors(video, long, mask, x_true)
  (err_rg, ratio_rg, se, gap), (err_rep, ratio_rep, _, _) = (
      results['reconstruction'], results['replacement'])
  print(f'\nextension 1 -> 8 frames in clips of 4: rms mean error replacement '
        f'{err_rep:.4f}, reconstruction {err_rg:.4f} (se {se:.4f}, gap {gap:.4f}); '
        f'var ratio {ratio_rep:.3f}, {ratio_rg:.3f}')
  # The process is Markov in time, so clips conditioned on their last frames
  # compose into the exact law of the next frames if each clip is exact.
  # Tolerance: 4 standard errors of the sample mean plus 0.05 for the bias of
  # reconstruction guidance itself (an approximation: 0.02 to 0.08 rms on
  # single clips of this law at w_r = 3, see the test above).
  assert err_rg < 4 * se + 0.05
  assert err_rg < 0.5 * err_rep

  # From scratch: an unconditional first clip, progress printed per clip.
  video = conditional.extend_video(exact_model(DATA, 'eps'), jax.random.PRNGKey(0), 7,
                                clip_frames=4, context_frames=1, clip_shape=(3, 2, 2, 1),
                                num_steps=8, w_r=3.0, verbose=True, **SAMPLER)
  assert video.shape == (3, 7, 2, 2, 1) and np.all(np.isfinite(video))


@pytest.mark.slow
@pytest.mark.parametrize('logsnr', [-2.0, 1.5])
def test_reconstruction_guidance_step_matches_closed_form(logsnr):
  # Linear-Gaussian data: x_hat(z) = m + K (z - alpha m) with
  # K = alpha S (alpha^2 S + sigma^2 I)^-1, so the gradient of
  # ||x^a - x_hat^a||^2 with respect to z^b is -2 K_ab^T (x^a - x_hat^a) and one
  # guided step must give x~^b = x_hat^b + w_r alpha K_ab^T (x^a - x_hat^a).
  # Dropping the 1/2, or alpha^2 for alpha, moves x~^b by a factor of 2 or
  # 1 / alpha (1.06 at lambda = 1.5, 2.9 at -2) on the guided term.
  w_r, b = 3.0, 2
  rng_z, rng_x, rng_guide = jax.random.split(jax.random.PRNGKey(0), 3)
  x_known = DATA.sample(rng_x, b)
  z = jax.random.normal(rng_z, x_known.shape)
  step = samplers.Step(jnp.int32(0), 1, jnp.float32(0.5), jnp.full((b,), logsnr, jnp.float32),
                       samplers.standard_normal)
  denoise = samplers.make_denoise(exact_model(DATA, 'eps'), 'eps', step.logsnr)
  guide = guidance.reconstruction_guide(x_known, KNOWN_FIRST_TWO, w_r)
  z_used, x_tilde, eps_tilde = guide(denoise, z, step, rng_guide)

  alpha, sigma = (float(v) for v in schedules.alpha_sigma(jnp.float32(logsnr)))
  m, s = np.asarray(DATA.mean, np.float64), np.asarray(DATA.cov, np.float64)
  gain = alpha * s @ np.linalg.inv(alpha**2 * s + sigma**2 * np.eye(len(m)))  # K
  known = known_coordinates(KNOWN_FIRST_TWO, DATA)
  zf = np.asarray(z_used, np.float64).reshape(b, -1)
  x_hat = m + (zf - alpha * m) @ gain.T  # [B, D]
  residual = np.asarray(x_known, np.float64).reshape(b, -1)[:, known] - x_hat[:, known]
  expected_b = x_hat[:, ~known] + w_r * alpha * residual @ gain[np.ix_(known, ~known)]
  got = np.asarray(x_tilde, np.float64).reshape(b, -1)
  np.testing.assert_allclose(got[:, ~known], expected_b, rtol=1e-4, atol=1e-5)
  # The guided term is not negligible here, so the tolerance above pins it.
  assert np.abs(expected_b - x_hat[:, ~known]).max() > 0.05
  # z^a is a fresh forward sample of x^a, x~^a = x^a, and eps stays consistent.
  np.testing.assert_array_equal(got[:, known], np.asarray(x_known).reshape(b, -1)[:, known])
  np.testing.assert_allclose(np.asarray(z_used), alpha * np.asarray(x_tilde) +
                             sigma * np.asarray(eps_tilde), atol=1e-5)
