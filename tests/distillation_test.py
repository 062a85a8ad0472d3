"""Distillation against closed forms: an exact Gaussian teacher, no training.

With Gaussian data the teacher's denoiser is exact (vdm.diffusion.analytic)
and affine in z, so the student's target, its loss and its sampler all have
closed forms to check against.
"""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from vdm.diffusion import analytic
from vdm.diffusion import conditions
from vdm.diffusion import decomposed
from vdm.diffusion import distillation
from vdm.diffusion import samplers
from vdm.diffusion import schedules
from vdm.methods import distill

SHAPE = (4, 2, 2, 1)  # [T, H, W, C]: D = 16 numbers per video.
D = int(np.prod(SHAPE))
LOGSNR_FN = schedules.logsnr_fn_from_config(default.get_config().diffusion)


def gaussian_data(seed=0, correlated_noise=False, mean_shift=0.0):
  """N(m, S) with a random S; with correlated_noise, VideoFusion's law (l = 0.5)."""
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(D, D)) / np.sqrt(D)
  cov = 0.3 * a @ a.T + 0.05 * np.eye(D)
  mean = 0.3 * rng.normal(size=D) + mean_shift
  noise_cov = None
  if correlated_noise:
    frames = decomposed.frame_covariance(decomposed.frame_weights(SHAPE[0], 0.5))
    noise_cov = decomposed.expand_frame_covariance(frames, SHAPE[1:])
  return analytic.GaussianData.create(mean, cov, SHAPE, noise_cov=noise_cov)


def exact_x(data):
  return lambda z, logsnr: data.model_output(z, logsnr, 'x')


def ddim_reference(data, z, t, s):
  """One DDIM step of the exact teacher in float64 numpy, written out on its own;
  s = 0 returns x_hat, as the samplers' last step does."""
  logsnr_t = np.float64(LOGSNR_FN(jnp.float32(t)))
  alpha_t, sigma_t = np.sqrt(1 / (1 + np.exp(-logsnr_t))), np.sqrt(1 / (1 + np.exp(logsnr_t)))
  x = np.asarray(data.model_output(jnp.asarray(z, jnp.float32),
                                   jnp.full(z.shape[:1], logsnr_t, jnp.float32), 'x'), np.float64)
  if s == 0:
    return x
  logsnr_s = np.float64(LOGSNR_FN(jnp.float32(s)))
  alpha_s, sigma_s = np.sqrt(1 / (1 + np.exp(-logsnr_s))), np.sqrt(1 / (1 + np.exp(logsnr_s)))
  return alpha_s * x + sigma_s * (z - alpha_t * x) / sigma_t


@pytest.mark.parametrize('correlated_noise', [False, True])
@pytest.mark.parametrize('num_steps', [1, 2, 8])
def test_one_student_step_lands_on_two_teacher_steps(correlated_noise, num_steps):
  data = gaussian_data(correlated_noise=correlated_noise)
  grid = np.arange(1, num_steps + 1) / num_steps  # Every time of the student's grid.
  z = np.random.default_rng(1).normal(size=(len(grid),) + SHAPE)
  half = 0.5 / num_steps
  expected = np.stack([ddim_reference(data, ddim_reference(data, z[i:i + 1], t, t - half),
                                      t - half, max(t - 2 * half, 0.0))[0]
                       for i, t in enumerate(grid)])
  t = jnp.asarray(grid, jnp.float32)
  x_target = distillation.target_x(exact_x(data), jnp.asarray(z, jnp.float32), t, num_steps,
                                   LOGSNR_FN)
  final = t - 2 * half < 0.5 * half
  landed = distillation.ddim_step(jnp.asarray(z, jnp.float32), x_target, LOGSNR_FN(t),
                                  LOGSNR_FN(jnp.maximum(t - 2 * half, 0.0)), final)
  scale = np.abs(expected).max()
  np.testing.assert_allclose(np.asarray(landed), expected, atol=2e-5 * scale)
  # The target is not just the teacher's one-step x_hat (that would miss by the
  # curvature of the two steps), except where both steps end at the same x.
  one_step = np.asarray(data.model_output(jnp.asarray(z, jnp.float32), LOGSNR_FN(t), 'x'))
  assert np.abs(np.asarray(x_target) - one_step).max() > 1e-3


def grid_time(num_steps, logsnr_fn=LOGSNR_FN):
  """t of a log-SNR on the 'uniform_t' grid of N steps (the student sees only log-SNR)."""
  ts, logsnrs = samplers.make_time_grid(logsnr_fn, num_steps, 'uniform_t')

  def t_of(logsnr):
    i = jnp.argmin(jnp.abs(logsnrs[None, :-1] - logsnr[:, None]), axis=1)
    return ts[i]
  return t_of


def exact_student(data, num_steps, parameterization='v', logsnr_fn=LOGSNR_FN):
  """The student that does the exact teacher's two DDIM steps in one: x_hat = x~."""
  t_of = grid_time(num_steps, logsnr_fn)

  def model_fn(z, logsnr):
    x = distillation.target_x(exact_x(data), z, t_of(logsnr), num_steps, logsnr_fn)
    alpha, sigma = schedules.alpha_sigma(logsnr.reshape(-1, 1, 1, 1, 1))
    eps = (z - alpha * x) / sigma
    return {'x': x, 'eps': eps, 'v': alpha * eps - sigma * x}[parameterization]
  return model_fn


@pytest.mark.parametrize('correlated_noise, logsnr_shift', [(False, 0.0), (True, 0.0),
                                                           (False, 2.0)])
def test_student_sampler_equals_teacher_sampler_at_twice_the_steps(correlated_noise,
                                                                    logsnr_shift):
  """Also on the shifted grid configs/distill.py gives students: the target
  and the sampler must both use the run's schedule."""
  data = gaussian_data(seed=2, correlated_noise=correlated_noise)
  n = 4
  config = default.get_config().diffusion
  config.logsnr_shift = logsnr_shift
  logsnr_fn = schedules.logsnr_fn_from_config(config)
  common = dict(logsnr_fn=logsnr_fn, parameterization='v', sampler='ddim', clip_x=False,
                time_grid='uniform_t', return_trajectory=True)
  z1 = jax.random.normal(jax.random.PRNGKey(3), (6,) + SHAPE)
  teacher_x, teacher_path = samplers.sample(lambda z, l: data.model_output(z, l, 'v'),
                                            jax.random.PRNGKey(0), z1.shape, num_steps=2 * n,
                                            z_init=z1, **common)
  student_x, student_path = samplers.sample(exact_student(data, n, logsnr_fn=logsnr_fn),
                                            jax.random.PRNGKey(0),
                                            z1.shape, num_steps=n, z_init=z1, **common)
  scale = float(jnp.abs(teacher_x).max())
  np.testing.assert_allclose(student_path, teacher_path[::2], atol=3e-5 * scale)
  np.testing.assert_allclose(student_x, teacher_x, atol=3e-5 * scale)
  # N DDIM steps of the teacher itself land elsewhere: the check can fail.
  coarse = samplers.sample(lambda z, l: data.model_output(z, l, 'v'), jax.random.PRNGKey(0),
                           z1.shape, num_steps=n, z_init=z1,
                           **dict(common, return_trajectory=False))
  assert float(jnp.abs(coarse - teacher_x).max()) > 100 * 3e-5 * scale


def distill_method(num_steps, guidance_embed=False, teacher_guidance_embed=False):
  """The distill Method of a small config (networks are never built here)."""
  config = default.get_config()
  config.method = 'distill'
  config.distill = distill.default_config()
  config.distill.teacher_workdir = 'unused'
  config.distill.num_steps = num_steps
  config.distill.teacher_guidance_embed = teacher_guidance_embed
  config.model.guidance_embed = guidance_embed
  config.data.num_images = 0
  config.data.image_size, config.data.channels = SHAPE[1], SHAPE[3]
  config.data.num_frames = SHAPE[0]
  config.model.num_classes = 2
  config.model.channel_mult, config.model.attention_resolutions = (1,), ()
  config.diffusion.cond_drop_prob = 0.0
  method = distill.Method(config)
  method.validate()
  return method


def plug(method, teacher_fn, student_fn):
  """Replaces the method's networks by closed-form functions (z, logsnr, condition) -> v."""
  method.teacher.denoiser = lambda networks, conditioning=None: teacher_fn
  method.student.denoiser = lambda networks, conditioning=None: student_fn
  return types.SimpleNamespace(student=None, teacher=None)


def as_condition_fn(model_fn):
  return lambda z, logsnr, condition: model_fn(z, logsnr)


def test_loss_zero_for_exact_student_and_closed_form_for_teacher():
  data = gaussian_data(seed=4)
  n, b = 4, 4096
  method = distill_method(n)
  teacher_v = lambda z, logsnr: data.model_output(z, logsnr, 'v')
  batch = {'video': data.sample(jax.random.PRNGKey(5), b), 'label': jnp.zeros((b,), jnp.int32)}
  rng = jax.random.PRNGKey(6)

  networks = plug(method, as_condition_fn(teacher_v), as_condition_fn(exact_student(data, n)))
  exact_losses, _ = jax.jit(lambda batch: method.loss(networks, batch, rng))(batch)
  assert float(jnp.max(exact_losses)) < 1e-7

  networks = plug(method, as_condition_fn(teacher_v), as_condition_fn(teacher_v))
  teacher_losses, _ = jax.jit(lambda batch: method.loss(networks, batch, rng))(batch)
  # Closed form: x~ - x_hat is linear in z_t - alpha_t m (both are m there),
  # x~ - x_hat = M (z_t - alpha_t m) with z_t ~ N(alpha_t m, alpha_t^2 S + sigma_t^2 I),
  # and the v-error is -(x~ - x_hat) / sigma_t: the expected loss at t is
  # trace(M Cov(z_t) M^T) / (D sigma_t^2), averaged over the N grid times.
  expected = []
  for i in range(1, n + 1):
    t = jnp.full((D,), i / n, jnp.float32)
    logsnr = LOGSNR_FN(t)
    alpha, sigma = schedules.alpha_sigma(logsnr[0])
    basis = jnp.eye(D).reshape((D,) + SHAPE)
    offset = alpha * data.mean.reshape(SHAPE)
    diff = lambda z: (distillation.target_x(exact_x(data), z, t, n, LOGSNR_FN)
                      - exact_x(data)(z, logsnr))
    m = (diff(basis + offset[None]) - diff(jnp.broadcast_to(offset, basis.shape))
         ).reshape(D, D).T  # Column k: M applied to basis vector k.
    cov_z = alpha**2 * data.cov + sigma**2 * jnp.eye(D)
    expected.append(float(jnp.trace(m @ cov_z @ m.T)) / (D * float(sigma)**2))
  expected = np.mean(expected)
  assert expected > 1e-3  # The teacher itself is no two-step student.
  mean, stderr = float(jnp.mean(teacher_losses)), float(jnp.std(teacher_losses)) / np.sqrt(b)
  assert abs(mean - expected) < 4 * stderr + 1e-3 * expected, (mean, expected, stderr)


def test_guidance_distillation_target_is_the_guided_teacher():
  """Two Gaussians as the conditional and unconditional models; a student
  taking w must output (1 + w) out_c - w out_u at every w and t."""
  cond_data, uncond_data = gaussian_data(seed=7, mean_shift=0.5), gaussian_data(seed=8)

  def teacher_fn(z, logsnr, label):
    label = jnp.asarray(label).reshape(-1, *(1,) * (z.ndim - 1))
    return jnp.where(label >= 0, cond_data.model_output(z, logsnr, 'v'),
                     uncond_data.model_output(z, logsnr, 'v'))

  def guided_student(z, logsnr, condition):
    label, w = conditions.split_guidance_weight(condition)
    w = w.reshape(-1, 1, 1, 1, 1)
    return (1 + w) * teacher_fn(z, logsnr, label) - w * teacher_fn(z, logsnr, -1 - 0 * label)

  b = 512
  method = distill_method(0, guidance_embed=True)
  batch = {'video': cond_data.sample(jax.random.PRNGKey(9), b),
           'label': jnp.zeros((b,), jnp.int32)}
  networks = plug(method, teacher_fn, guided_student)
  losses, metrics = method.loss(networks, batch, jax.random.PRNGKey(10))
  assert float(jnp.max(losses)) < 1e-8
  assert 1.0 < float(metrics['guidance_weight']) < 3.0  # w ~ U[0, 4] was drawn.
  # A student that ignores w (the conditional model alone) is wrong wherever w > 0.
  networks = plug(method, teacher_fn, lambda z, logsnr, c: teacher_fn(
      z, logsnr, conditions.split_guidance_weight(c)[0]))
  losses, _ = method.loss(networks, batch, jax.random.PRNGKey(10))
  assert float(jnp.mean(losses)) > 1e-3

  # A guidance-distilled teacher gets w as its input, and runs once.
  calls = []
  method = distill_method(2, guidance_embed=True, teacher_guidance_embed=True)

  def counting_teacher(z, logsnr, condition):
    calls.append(z.shape[0])
    return guided_student(z, logsnr, condition)
  networks = plug(method, counting_teacher, guided_student)
  method.loss(networks, batch, jax.random.PRNGKey(11))
  assert calls == [b, b]  # Two DDIM steps, each one pass of batch b (no doubled batch).


@pytest.mark.parametrize('change, message', [
    ({'diffusion.loss_type': 'eps_mse'}, 'v_mse'),
    ({'data.num_images': 2}, 'num_images'),
    ({'distill.num_steps': 0}, 'guidance_embed=True'),
    ({'distill.teacher_workdir': ''}, 'teacher_workdir is empty'),
    ({'distill.base_method': 'trip'}, 'predict noise'),
    ({'diffusion.parameterization': 'eps'}, "'v' or 'x'"),
])
def test_bad_config_is_refused_naming_the_key(change, message):
  config = distill_method(4).config
  for dotted, value in change.items():
    section, key = dotted.split('.')
    config[section][key] = value
  with pytest.raises(ValueError, match=message):
    distill.Method(config).validate()


def test_guidance_input_starts_silent_then_moves_the_output():
  """A fresh w input leaves a trained net (here: randomized) as it was at
  every w; once its last layer trains, w changes the output. A net without
  the input refuses w."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import model_test  # pylint: disable=g-import-not-at-top
  from vdm.models import unet3d  # pylint: disable=g-import-not-at-top
  config = model_test.tiny_config(num_classes=3, guidance_embed=True)
  net = model_test.randomized(unet3d.UNet3D(config, rngs=nnx.Rngs(0)))
  fresh = unet3d.UNet3D(config, rngs=nnx.Rngs(1))
  nnx.update(net.guidance_mlp2, nnx.state(fresh.guidance_mlp2))
  z = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 8, 8, 3))
  logsnr, label = jnp.array([0.0, 2.0]), jnp.array([0, 2])
  at = lambda w: np.asarray(net(z, logsnr, label=label, guidance_weight=w))
  np.testing.assert_array_equal(at(jnp.array([0.0, 0.0])), at(jnp.array([3.0, 1.0])))
  model_test.randomized(net.guidance_mlp2, seed=2)
  assert np.abs(at(jnp.array([0.0, 0.0])) - at(jnp.array([3.0, 1.0]))).max() > 1e-3
  plain = unet3d.UNet3D(model_test.tiny_config(num_classes=3), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='guidance_embed'):
    plain(z, logsnr, label=label, guidance_weight=jnp.ones(2))
