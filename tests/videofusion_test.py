"""Tests of VideoFusion (vdm/methods/videofusion.py, vdm/diffusion/decomposed.py).

The mathematics is checked against closed forms: Gaussian video data N(m, S)
under the decomposed forward process z_t = alpha x + sigma eps, eps ~ N(0, C)
across frames, has the exact eps-predictor sigma C (alpha^2 S + sigma^2 C)^-1
(z - alpha m) (analytic.GaussianData with noise_cov), whose loss is closed
form and with which every sampler must reproduce m and S, and conditional
samplers the exact Gaussian conditional. The data and the statistical checks
are those of samplers_test.py and guidance_test.py. The networks are checked
on tiny U-Nets, and the command line end to end on a tiny run.
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import videofusion_tiny
from vdm import config_lib
from vdm import run_lib
from vdm.data import moving_digits
from vdm.diffusion import analytic
from vdm.diffusion import decomposed
from vdm.diffusion import gaussian
from vdm.diffusion import guidance
from vdm.diffusion import samplers
from vdm.diffusion import schedules
from vdm.methods import vdm as vdm_method
from vdm.methods import videofusion
from vdm.sampling import conditional
from vdm.train import checkpoints
from vdm.train import train_state

sys.path.insert(0, os.path.dirname(__file__))
import cli  # pylint: disable=g-import-not-at-top
from guidance_test import KNOWN_FIRST_TWO, conditional_errors, known_coordinates  # pylint: disable=g-import-not-at-top
from samplers_test import DATA, LOGSNR_FN, exact_model, moment_z_scores  # pylint: disable=g-import-not-at-top

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T, K, S = 4, 2, 8  # Clip frames, appended images and frame size of the tiny configs.


def small_config(**videofusion_keys):
  """configs/videofusion_tiny.py with one-level U-Nets (compiles in seconds)."""
  c = videofusion_tiny.get_config()
  c.model.base_channels = 8
  c.model.channel_mult = (1,)
  c.model.attention_resolutions = ()
  c.model.dropout = 0.1  # Dropout on: its keys must follow the plain method's too.
  vf = c.videofusion
  vf.residual_base_channels = 8
  vf.residual_channel_mult = (1,)
  vf.residual_attention_resolutions = (8,)  # Temporal attention: frames interact.
  vf.update(videofusion_keys)
  config_lib.validate_config(c)
  return c


def law(l=0.5, num_frames=T):
  """The method of a small config with share l, and its frame covariance C."""
  method = videofusion.Method(small_config(l=l))
  return method, decomposed.frame_covariance(method.frame_weights(num_frames))


METHOD, C = law()
# DATA (samplers_test: AR(1) frames, 2x2 pixels) under the decomposed noise.
CORRELATED = analytic.GaussianData.create(
    DATA.mean, DATA.cov, DATA.shape,
    noise_cov=decomposed.expand_frame_covariance(C, DATA.shape[1:]))
SAMPLER = dict(logsnr_fn=LOGSNR_FN, parameterization='eps', clip_x=False)
LAW = dict(noise_fn=METHOD.noise, noise_cov=METHOD.noise_frame_covariance)


# --------------------------------------------------------------------------- the noise law

def test_frame_weights_key_frame_and_their_errors():
  np.testing.assert_array_equal(decomposed.frame_weights(4, 0.5), [0.5, 0.5, 1.0, 0.5])
  np.testing.assert_array_equal(decomposed.frame_weights(5, 0.25), [0.25, 0.25, 1, 0.25, 0.25])
  np.testing.assert_array_equal(decomposed.frame_weights(1, 0.5), [1.0])  # An image.
  np.testing.assert_array_equal(decomposed.frame_weights(3, 0.5, (0.2, 1.0, 0.7)), [0.2, 1, 0.7])
  with pytest.raises(ValueError, match=r'l_per_frame has 3 values but the clip has 4'):
    decomposed.frame_weights(4, 0.5, (0.2, 1.0, 0.7))
  with pytest.raises(ValueError, match=r'l_per_frame\[1\] = 0.5 must be 1'):
    decomposed.frame_weights(3, 0.5, (0.5, 0.5, 0.5))
  with pytest.raises(ValueError, match=r'config\.videofusion\.l: .* \[0, 1\)'):
    decomposed.frame_weights(4, 1.0)
  np.testing.assert_allclose(C[0], [1, 0.5, np.sqrt(0.5), 0.5])


def test_key_frame_noise_is_b_and_frames_have_covariance_c():
  rng = jax.random.PRNGKey(0)
  eps, b, r = decomposed.noise_parts(rng, (20000, T + K, 2, 1, 1), METHOD.frame_weights(T))
  key = decomposed.key_frame(T)
  np.testing.assert_array_equal(eps[:, key], b[:, 0])  # Exactly b.
  np.testing.assert_array_equal(eps[:, T:], r[:, T:])  # Appended images: i.i.d.
  others = [i for i in range(T) if i != key]
  np.testing.assert_allclose(eps[:, others], np.sqrt(0.5) * b + np.sqrt(0.5) * r[:, others],
                             atol=1e-6, rtol=0)
  # The public noise is that law, and its statistics are C across frames,
  # independent across pixels. 5 standard errors of a correlation (1/sqrt(n)):
  # i.i.d. noise (0 off the diagonal) misses C by > 70 of them.
  shape = (20000, T, 2, 1, 1)
  x = np.asarray(METHOD.noise(rng, shape), np.float64)
  np.testing.assert_array_equal(x, decomposed.noise_parts(rng, shape, METHOD.frame_weights(T))[0])
  n = len(x)
  frames = np.cov(x[:, :, 0, 0, 0], rowvar=False)
  assert np.abs(frames - C).max() < 5 * np.sqrt(2 / n)
  assert abs(np.mean(x[:, :, 0] * x[:, :, 1])) < 5 / np.sqrt(n * T)


def test_l_zero_noise_is_the_plain_noise_bit_for_bit():
  method, cov = law(l=0.0)
  shape = (3, T, S, S, 1)
  rng = jax.random.PRNGKey(4)
  np.testing.assert_array_equal(method.noise(rng, shape), samplers.standard_normal(rng, shape))
  np.testing.assert_array_equal(cov, np.eye(T))
  assert method.noise_frame_covariance(T) is None  # Guides take the i.i.d. path.


def test_clip_lengths_work_by_the_rule_or_fail_naming_the_key():
  # A constant l: any N; the key frame moves to N // 2.
  free = videofusion.Method(small_config(residual_frame_index=False))
  np.testing.assert_array_equal(free.frame_weights(7), [0.5, 0.5, 0.5, 1, 0.5, 0.5, 0.5])
  assert free.noise(jax.random.PRNGKey(0), (1, 7, 2, 2, 1)).shape == (1, 7, 2, 2, 1)
  # The frame-index embedding holds config.data.num_frames rows.
  METHOD.noise(jax.random.PRNGKey(0), (1, T - 1, 2, 2, 1))
  with pytest.raises(ValueError, match=r'clips of 5 frames.*residual_frame_index=True.*'
                                       r'num_frames=4'):
    METHOD.noise(jax.random.PRNGKey(0), (1, 5, 2, 2, 1))
  fixed = videofusion.Method(small_config(l_per_frame=(0.3, 0.6, 1.0, 0.6)))
  with pytest.raises(ValueError, match=r'l_per_frame has 4 values but the clip has 3'):
    fixed.noise(jax.random.PRNGKey(0), (1, 3, 2, 2, 1))


# --------------------------------------------------------------------------- closed forms

@pytest.mark.parametrize('logsnr', [-3.0, 0.5, 4.0])
def test_exact_predictor_is_the_closed_form(logsnr):
  b = 3
  z = jax.random.normal(jax.random.PRNGKey(1), (b,) + DATA.shape)
  lam = jnp.full((b,), logsnr)
  alpha2 = 1 / (1 + np.exp(-logsnr))
  alpha, sigma = np.sqrt(alpha2), np.sqrt(1 - alpha2)
  m, s = np.asarray(DATA.mean, np.float64), np.asarray(DATA.cov, np.float64)
  c = decomposed.expand_frame_covariance(C, DATA.shape[1:])
  centred = np.asarray(z, np.float64).reshape(b, -1) - alpha * m
  solve = np.linalg.solve(alpha2 * s + sigma**2 * c, centred.T).T  # (alpha^2 S + sigma^2 C)^-1 (z - alpha m)
  for param, want in (('eps', sigma * solve @ c), ('x', m + alpha * solve @ s)):
    got = np.asarray(CORRELATED.model_output(z, lam, param), np.float64).reshape(b, -1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5)
  # The i.i.d. predictor of the same data is another function here.
  iid = np.asarray(DATA.eps_prediction(z, lam), np.float64).reshape(b, -1)
  assert np.abs(iid - sigma * solve @ c).max() > 0.05


@pytest.mark.slow
def test_loss_of_the_exact_predictor_is_its_closed_form_value():
  # The training loss (gaussian.diffusion_loss with the method's noise law) of
  # the exact predictor at fixed log-SNRs, against
  # tr(C - sigma^2 C (alpha^2 S + sigma^2 C)^-1 C) / D. n examples per level;
  # tolerance 5 standard errors of the mean loss.
  n, levels = 20000, (-2.0, 0.5, 3.0)
  t = jnp.repeat(jnp.asarray([float(schedules_t(l)) for l in levels]), n)
  x = CORRELATED.sample(jax.random.PRNGKey(2), n * len(levels))

  def losses(data, noise_fn):
    fn = jax.jit(lambda rng: gaussian.diffusion_loss(
        lambda z, logsnr, label: data.eps_prediction(z, logsnr), x, rng, logsnr_fn=LOGSNR_FN,
        t=t, noise_fn=noise_fn))
    return np.asarray(fn(jax.random.PRNGKey(3)), np.float64).reshape(len(levels), n)

  exact = losses(CORRELATED, METHOD.noise)
  iid_noise = losses(CORRELATED, samplers.standard_normal)
  iid_predictor = losses(DATA, METHOD.noise)
  z = {}
  for i, logsnr in enumerate(levels):
    want = CORRELATED.expected_eps_loss(float(LOGSNR_FN(t[i * n])))
    se = exact[i].std() / np.sqrt(n)
    z[logsnr] = [(a[i].mean() - want) / se for a in (exact, iid_noise, iid_predictor)]
    print(f'\nlogsnr {logsnr}: closed form {want:.4f}, measured {exact[i].mean():.4f} '
          f'(se {se:.4f}); i.i.d. noise {iid_noise[i].mean():.4f}, i.i.d. predictor '
          f'{iid_predictor[i].mean():.4f}')
  for exact_z, iid_noise_z, iid_predictor_z in z.values():
    assert abs(exact_z) < 5
    # The check can fail: the wrong law, or the wrong predictor, is far off.
    assert abs(iid_noise_z) > 5
    assert iid_predictor_z > 10  # The exact predictor is the optimal one.


def schedules_t(logsnr: float) -> float:
  """The t of the cosine schedule where lambda_t = logsnr (bisection)."""
  lo, hi = 0.0, 1.0
  for _ in range(60):
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if float(LOGSNR_FN(mid)) > logsnr else (lo, mid)
  return 0.5 * (lo + hi)


def run_law_sampler(n, *, noise_fn, z_init_fn=None, num_steps=300, **kwargs):
  shape = (n,) + DATA.shape
  fn = jax.jit(lambda rng: samplers.sample(
      exact_model(CORRELATED, 'eps'), rng, shape, num_steps=num_steps, noise_fn=noise_fn,
      z_init=None if z_init_fn is None else z_init_fn(jax.random.PRNGKey(9), shape),
      **SAMPLER, **kwargs))
  return np.asarray(fn(jax.random.PRNGKey(0)), np.float64).reshape(n, -1)


@pytest.mark.slow
@pytest.mark.optimized
@pytest.mark.parametrize('sampler,gamma', [('ancestral', 0.1), ('ddim', 0.0), ('pc', 0.0)])
def test_samplers_reproduce_gaussian_moments_under_the_law(sampler, gamma):
  # Moments within 5 standard errors, as samplers_test checks i.i.d. noise;
  # 300 steps keep the O(1/N) variance bias near one standard error at n = 4000.
  z = moment_z_scores(run_law_sampler(4000, noise_fn=METHOD.noise, sampler=sampler,
                                      gamma=gamma), CORRELATED)
  print(f'\n{sampler}: max |z| mean {z[0]:.2f}, cov {z[1]:.2f}, trace {z[2]:.2f}')
  assert z[0] < 5 and z[1] < 5 and abs(z[2]) < 5


@pytest.mark.slow
@pytest.mark.optimized
@pytest.mark.parametrize('sampler,iid', [('ancestral', 'step noise'), ('ddim', 'z_1')])
def test_iid_noise_measurably_fails(sampler, iid):
  # The same sampler and exact predictor, with i.i.d. step noise (DDIM has
  # none: i.i.d. z_1): the covariance misses by ~40 standard errors.
  noise = dict(noise_fn=samplers.standard_normal, z_init_fn=METHOD.noise)
  if iid == 'z_1':
    noise = dict(noise_fn=METHOD.noise, z_init_fn=samplers.standard_normal)
  z = moment_z_scores(run_law_sampler(4000, sampler=sampler, **noise), CORRELATED)
  print(f'\n{sampler}, i.i.d. {iid}: max |z| cov {z[1]:.1f}, trace {z[2]:.1f}')
  assert z[1] > 20 and abs(z[2]) > 10


# --------------------------------------------------------------------------- conditional sampling

@pytest.mark.parametrize('logsnr', [-2.0, 1.5])
def test_reconstruction_guidance_step_is_the_closed_form_under_the_law(logsnr):
  # Linear-Gaussian data under noise C: x_hat(z) = m + J (z - alpha m) with
  # J = alpha S M^-1, M = alpha^2 S + sigma^2 C. The guided step is
  #   x~^b = x_hat^b + w_r alpha [C J^T]_ba C_aa^-1 (x^a - x_hat^a),
  # the exact conditional-mean correction with Cov(x^a | z) ~ sigma^2 /
  # (w_r alpha^2) C_aa. The i.i.d. rule (no C) differs by O(1) here.
  w_r, b = 2.0, 2
  rng_z, rng_x, rng_guide = jax.random.split(jax.random.PRNGKey(0), 3)
  x_known = CORRELATED.sample(rng_x, b)
  z = jax.random.normal(rng_z, x_known.shape)
  guide = guidance.reconstruction_guide(x_known, KNOWN_FIRST_TWO, w_r)
  lam = jnp.full((b,), logsnr, jnp.float32)
  denoise = samplers.make_denoise(exact_model(CORRELATED, 'eps'), 'eps', lam)

  def step(noise_cov):
    return samplers.Step(jnp.int32(0), 1, jnp.float32(0.5), lam, METHOD.noise, noise_cov)
  z_used, x_tilde, eps_tilde = guide(denoise, z, step(C), rng_guide)
  _, x_iid_rule, _ = guide(denoise, z, step(None), rng_guide)

  alpha, sigma = (float(v) for v in schedules.alpha_sigma(jnp.float32(logsnr)))
  m, s = np.asarray(DATA.mean, np.float64), np.asarray(DATA.cov, np.float64)
  c = decomposed.expand_frame_covariance(C, DATA.shape[1:])
  jac = alpha * s @ np.linalg.inv(alpha**2 * s + sigma**2 * c)  # J
  known = known_coordinates(KNOWN_FIRST_TWO, DATA)
  x_hat = m + (np.asarray(z_used, np.float64).reshape(b, -1) - alpha * m) @ jac.T
  residual = np.asarray(x_known, np.float64).reshape(b, -1)[:, known] - x_hat[:, known]
  gain = (c @ jac.T)[np.ix_(~known, known)] @ np.linalg.inv(c[np.ix_(known, known)])
  expected_b = x_hat[:, ~known] + w_r * alpha * residual @ gain.T
  got = np.asarray(x_tilde, np.float64).reshape(b, -1)
  np.testing.assert_allclose(got[:, ~known], expected_b, rtol=1e-4, atol=1e-4)
  other = np.asarray(x_iid_rule, np.float64).reshape(b, -1)[:, ~known]
  assert np.abs(other - expected_b).max() > 0.05
  np.testing.assert_allclose(np.asarray(z_used), alpha * np.asarray(x_tilde) +
                             sigma * np.asarray(eps_tilde), atol=1e-5)


@pytest.mark.slow
def test_reconstruction_guidance_gives_the_exact_conditional_under_the_law():
  # Prediction of frames 2, 3 (the key frame among them) from frames 0, 1,
  # against the exact conditional of the Gaussian data. With the noise metric
  # reconstruction guidance (w_r = 2) comes within 0.1 rms of the exact mean;
  # replacement, and guidance with the i.i.d. rule, stay ~0.6 off (the prior
  # is ~1.0 off): the replaced frames' fresh noise and the i.i.d. metric
  # ignore how the noise couples the known and the unknown frames.
  n, steps = 3000, 100
  x_true = DATA.sample(jax.random.PRNGKey(5), 1)[0]  # [T, H, W, C]
  context = jnp.broadcast_to(x_true[:2], (n, 2) + DATA.shape[1:])

  def run(method, noise_cov):
    return conditional.predict_frames(exact_model(CORRELATED, 'eps'), jax.random.PRNGKey(0),
                                   context, T, conditioning=method, w_r=2.0, num_steps=steps,
                                   noise_fn=METHOD.noise, noise_cov=noise_cov, **SAMPLER)
  results = {}
  for name, method, cov in (('reconstruction', 'reconstruction', METHOD.noise_frame_covariance),
                            ('replacement', 'replacement', METHOD.noise_frame_covariance),
                            ('i.i.d. rule', 'reconstruction', None)):
    out = run(method, cov)
    np.testing.assert_array_equal(out[:, :2], context)
    results[name] = conditional_errors(out, CORRELATED, KNOWN_FIRST_TWO, x_true)
  se, gap = results['reconstruction'][2:]
  print('\nunder the law, rms |E[x^b] - exact|: ' + ', '.join(
      f'{k} {v[0]:.4f} (var ratio {v[1]:.2f})' for k, v in results.items()) +
        f'; standard error {se:.4f}, prior gap {gap:.3f}')
  assert results['reconstruction'][0] < 0.15
  assert results['replacement'][0] > 0.4 and results['i.i.d. rule'][0] > 0.4


def test_replaced_frames_carry_the_laws_noise():
  # Replacement draws z^a = alpha x^a + sigma e with e from the method's law:
  # across the two known frames e correlates as C_01 = 0.5 (0 if i.i.d.).
  n, steps = 512, 16
  x_known = CORRELATED.sample(jax.random.PRNGKey(1), n)
  _, trajectory = jax.jit(lambda rng: samplers.sample(
      exact_model(CORRELATED, 'eps'), rng, x_known.shape, num_steps=steps,
      guide=guidance.replacement_guide(x_known, KNOWN_FIRST_TWO), return_trajectory=True,
      **LAW, **SAMPLER))(jax.random.PRNGKey(0))
  alpha, sigma = (a.reshape(steps, 1, 1, 1, 1, 1) for a in
                  schedules.alpha_sigma(LOGSNR_FN(1.0 - jnp.arange(steps) / steps)))
  e = np.asarray((trajectory[:, :, :2] - alpha * x_known[None, :, :2]) / sigma)
  m = n * 4  # Pairs per step (4 pixels).
  corr = np.mean(e[:, :, 0] * e[:, :, 1], axis=(1, 2, 3, 4))  # [steps]
  assert np.abs(corr - C[0, 1]).max() < 5 / np.sqrt(m)


# --------------------------------------------------------------------------- networks

class StandIn(nnx.Module):
  """A U-Net's call signature at a fraction of its compile time.

  out = sigmoid(lambda) M z (M mixes frames, the identity on appended images,
  which stay alone as in the U-Net) + a label's shift, with inverted dropout:
  it reads everything the composition hands a network, and couples frames as
  temporal attention does, so a gradient into the base through z' would show.
  """

  def __init__(self, rngs: nnx.Rngs, frames: int = T + K, num_classes: int = 10):
    eye = jnp.eye(frames)
    self.mix = nnx.Param(eye + 0.3 * jax.random.normal(rngs.params(), (frames, frames)))
    self.shift = nnx.Param(jax.random.normal(rngs.params(), (num_classes + 1,)))

  def __call__(self, z, logsnr, *, label=None, cond=None, is_image=None, dropout_rng=None):
    del cond
    f = z.shape[1]
    mix = self.mix[...][:f, :f]
    if is_image is not None:
      alone = is_image[:, None] | is_image[None, :]
      mix = jnp.where(alone, jnp.eye(f), mix)
    out = jnp.einsum('ij,bj...->bi...', mix, z) * jax.nn.sigmoid(logsnr)[:, None, None, None, None]
    if label is not None:
      label = jnp.where(label < 0, self.shift.shape[0] - 1, label)
      shift = self.shift[...][label]  # [B] or [B, F]
      out = out + shift.reshape(shift.shape + (1,) * (out.ndim - shift.ndim))
    if dropout_rng is not None:
      out = jnp.where(jax.random.bernoulli(dropout_rng, 0.9, out.shape), out / 0.9, 0.0)
    return out


class StandInNetworks(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.base = StandIn(rngs)
    self.residual = StandIn(rngs)


@pytest.fixture(scope='module')
def networks():
  return StandInNetworks(nnx.Rngs(0))


def toy_batch(seed=0):
  rng = np.random.default_rng(seed)
  return {'video': jnp.asarray(rng.uniform(-1, 1, (2, T + K, S, S, 1)), jnp.float32),
          'label': jnp.array([3, 5]),
          'is_image': jnp.array([False] * T + [True] * K)}


@pytest.mark.slow
def test_l_zero_is_the_plain_model(networks):
  # VideoFusion's loss with l = 0 is the plain method's loss of the same
  # predictor: the same times, noise (bit for bit), label dropout, dropout
  # keys and average. With l = 0.5 it is another loss. And sampling with the
  # method's noise options gives the plain samples for the same key.
  method0, _ = law(l=0.0)
  plain = vdm_method.Method(method0.config)
  graphdef, params = nnx.split(networks)
  batch, rng = toy_batch(), jax.random.PRNGKey(11)

  def vf_loss(method):
    return jax.jit(lambda p: method.loss(nnx.merge(graphdef, p), batch, rng)[0])(params)

  def plain_loss(p):
    nets = nnx.merge(graphdef, p)

    def as_plain_network(z, logsnr, *, label, cond, is_image, dropout_rng):
      del is_image  # The base sees appended images one by one anyway.
      return method0.compose(nets, z, logsnr, label, num_video=T, cond=cond,
                             dropout_rng=dropout_rng, training=True)
    return plain.loss(as_plain_network, batch, rng)[0]
  np.testing.assert_array_equal(vf_loss(method0), jax.jit(plain_loss)(params))

  # The composition: b_hat on the key frame; elsewhere sqrt(l) b_hat +
  # sqrt(1 - l) r_hat, r_hat the residual on z' = z - sqrt(l^i) sigma b_hat
  # (l^k = 1: at l = 0 only the key frame of z' differs from z).
  z = jax.random.normal(jax.random.PRNGKey(2), (2, T, S, S, 1))
  lam, label = jnp.array([-1.0, 2.0]), jnp.array([1, 2])
  key = decomposed.key_frame(T)
  b_hat = networks.base(z[:, key:key + 1], lam, label=label)  # [B, 1, ...]
  sigma = schedules.alpha_sigma(lam)[1][:, None, None, None, None]
  others = np.arange(T) != key
  for l, method in ((0.0, method0), (0.5, METHOD)):
    share = jnp.where(others[:, None, None, None], np.sqrt(l), 1.0)  # sqrt(l^i)
    r_hat = networks.residual(z - share * sigma * b_hat, lam, label=label)
    eps = method.denoiser(networks)(z, lam, label)
    np.testing.assert_array_equal(eps[:, key], b_hat[:, 0])
    np.testing.assert_allclose(eps[:, others], (np.sqrt(l) * b_hat + np.sqrt(1 - l) * r_hat)
                               [:, others], rtol=1e-5, atol=1e-6)

  def draw(method, sampler):
    options = run_lib.sampler_options(method.config, method)
    options.update(sampler=sampler, num_steps=6, clip_x=False, logsnr_fn=LOGSNR_FN)
    guide = guidance.reconstruction_guide(DATA.sample(jax.random.PRNGKey(1), 8),
                                          KNOWN_FIRST_TWO, 1.0)
    return jax.jit(lambda rng: samplers.sample(exact_model(DATA, 'eps'), rng, (8,) + DATA.shape,
                                               guide=guide, **options))(jax.random.PRNGKey(3))
  for sampler in ('ancestral', 'pc'):
    np.testing.assert_array_equal(draw(method0, sampler), draw(plain, sampler))
  assert not np.allclose(draw(METHOD, 'pc'), draw(plain, 'pc'), atol=1e-2)


def test_no_gradient_reaches_the_base_through_non_key_frames(networks):
  # The gradients of the logged per-frame losses: the residual loss (non-key
  # video frames) must give the base exactly zero gradient; the base loss (key
  # frame) and the appended images' loss must reach it. Without the
  # stop-gradient the same check fails.
  graphdef, params = nnx.split(networks)
  batch, rng = toy_batch(), jax.random.PRNGKey(5)

  metrics = ('residual_loss', 'base_loss', 'image_loss')

  def largest_gradients(method, names):
    """{metric: (max |d metric / d base|, max |d metric / d residual|)}, one compile."""
    def f(p):
      m = method.loss(nnx.merge(graphdef, p), batch, rng)[1]
      return jnp.stack([m[name] for name in names])
    jac = jax.jit(jax.jacrev(f))(params)  # Leaves [len(names), *param shape].
    return {name: tuple(max(float(jnp.abs(x[i]).max()) for x in jax.tree.leaves(jac[group]))
                        for group in ('base', 'residual'))
            for i, name in enumerate(names)}

  class WithoutStopGradient(videofusion.Method):
    def compose(self, *args, **kwargs):
      return super().compose(*args, **dict(kwargs, training=False))

  g = largest_gradients(METHOD, metrics)
  print(f'\nmax |gradient| (base, residual): {g}')
  assert g['residual_loss'][0] == 0.0 and g['residual_loss'][1] > 1e-4
  assert g['base_loss'][0] > 1e-4 and g['base_loss'][1] == 0.0
  assert g['image_loss'][0] > 1e-4
  assert largest_gradients(WithoutStopGradient(METHOD.config), metrics[:1])['residual_loss'][0] > 1e-4


@pytest.mark.parametrize('base_lr_mult', [0.0, 0.1])
def test_parameter_groups(base_lr_mult, networks):
  method = videofusion.Method(small_config(base_lr_mult=base_lr_mult))
  params = nnx.state(networks)
  labels = method.param_labels(params)
  assert set(jax.tree.leaves(labels['base'])) == {'base'}
  assert set(jax.tree.leaves(labels['residual'])) == {'residual'}
  tx, _ = train_state.make_optimizer(method.config, labels, method.lr_multipliers())
  grads = jax.tree.map(jnp.ones_like, params)
  opt_state = tx.init(params)
  for _ in range(2):  # The first step's warmup learning rate is 0.
    updates, opt_state = jax.jit(tx.update)(grads, opt_state, params)
  largest = {g: max(float(jnp.abs(u).max()) for u in jax.tree.leaves(updates[g]))
             for g in ('base', 'residual')}
  # Adam's first steps move every parameter by the learning rate.
  np.testing.assert_allclose(largest['base'], base_lr_mult * largest['residual'], rtol=1e-5)
  assert largest['residual'] > 0


@pytest.mark.parametrize('key,value,match', [
    ('l', 1.0, r'config\.videofusion\.l'),
    ('l_per_frame', (0.5, 0.5, 0.5, 0.5), r'config\.videofusion\.l_per_frame\[2\]'),
    ('base_lr_mult', -0.1, r'config\.videofusion\.base_lr_mult'),
    ('residual_attention_resolutions', (5,), r'residual generator.*attention_resolutions'),
])
def test_bad_settings_name_the_key(key, value, match):
  config = videofusion_tiny.get_config()
  config.videofusion[key] = value
  with pytest.raises(ValueError, match=match):
    config_lib.validate_config(config)


def test_bad_method_combinations_name_the_key():
  config = videofusion_tiny.get_config()
  config.diffusion.parameterization = 'v'
  with pytest.raises(ValueError, match=r"parameterization='v'"):
    config_lib.validate_config(config)
  config = videofusion_tiny.get_config()
  del config['videofusion']
  with pytest.raises(ValueError, match=r'needs its section config\.videofusion'):
    config_lib.validate_config(config)


def test_every_default_key_is_commented():
  with open(videofusion.__file__) as f:
    source = f.read()
  body = source.split('def default_config')[1].split('return vf')[0]
  lines = [l for l in body.splitlines() if l.strip().startswith('vf.')]
  assert {l.split('=')[0].strip()[3:] for l in lines} == set(videofusion.default_config())
  assert all('#' in l for l in lines)


# --------------------------------------------------------------------------- end to end

E2E_OVERRIDES = {  # Small enough to compile quickly (one level).
    'model.base_channels': 8, 'model.channel_mult': (1,),
    'model.attention_resolutions': (), 'model.head_dim': 8,
    'videofusion.residual_base_channels': 8, 'videofusion.residual_channel_mult': (1,),
    'videofusion.residual_attention_resolutions': (8,),
}


def _flag(value):
  return str(tuple(value)) if isinstance(value, tuple) else str(value)


@pytest.fixture(scope='module')
def plain_run(tmp_path_factory):
  """A plain ('vdm') run with the base's network: one checkpoint, at step 0."""
  config = videofusion_tiny.get_config()
  config.method = 'vdm'
  del config['videofusion']
  for dotted, value in E2E_OVERRIDES.items():
    section, key = dotted.split('.')
    if section != 'videofusion':
      config[section][key] = value
  config.sharding.mesh = (('data', 1), ('fsdp', 1))
  workdir = str(tmp_path_factory.mktemp('plain'))
  layout = train_state.StateLayout(config)
  state = layout.init_state()
  config_lib.save_config(config, workdir)
  ckpt = checkpoints.Checkpointer(os.path.join(workdir, 'checkpoints'), async_save=False)
  ckpt.save(0, state)
  ckpt.close()
  return workdir, jax.device_get(state.ema_params)


@pytest.mark.slow
def test_command_line_train_then_sample(plain_run, tmp_path):
  # train.py with the base initialised from the plain run and frozen, then
  # sample.py with guidance. (Resuming and evaluate.py are the same for every
  # method: train_test.py and evaluate_test.py.)
  plain_dir, plain_params = plain_run
  data_dir = str(tmp_path / 'tfds')
  moving_digits.prepare(data_dir, 32, num_train=32, num_test=8, verbose=False)
  workdir = str(tmp_path / 'run')
  flags = [f'--config.{k}={_flag(v)}' for k, v in E2E_OVERRIDES.items()] + [
      f'--config.data.data_dir={data_dir}', '--config.data.num_workers=0',
      "--config.sharding.mesh=(('data', 1), ('fsdp', 1))", '--config.training.num_steps=2',
      '--config.training.num_samples=0', '--config.training.async_checkpoints=False',
      f'--config.videofusion.base_init_workdir={plain_dir}', '--config.videofusion.base_lr_mult=0']
  out, err = cli.finish(cli.start('train.py', '--config=configs/videofusion_tiny.py',
                        f'--workdir={workdir}', *flags))
  assert 'base generator initialised from the EMA weights of step 0' in err
  assert 'Done: 2 steps' in out
  sample = cli.start('sample.py', f'--workdir={workdir}', '--mode=unconditional', '--num_samples=2',
                     '--steps=2', '--guidance_weight=1.0', f'--output_dir={tmp_path / "samples"}')
  # Meanwhile: the frozen base still holds the plain run's weights exactly.
  run = run_lib.restore_run(workdir)
  assert run.step == 2 and run.config.method == 'videofusion'
  for got, want in zip(jax.tree.leaves(run.params['base']), jax.tree.leaves(plain_params)):
    np.testing.assert_array_equal(got, want)
  _, sample_err = cli.finish(sample)
  assert 'sampling step 2/2' in sample_err
  with np.load(tmp_path / 'samples' / 'samples.npz') as saved:
    assert saved['videos'].shape == (2, T, S, S, 1)
