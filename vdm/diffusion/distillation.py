"""Progressive distillation (Salimans & Ho, 2022): the target a student learns.

A student sampled with N deterministic DDIM steps on the grid t_i = 1 - i / N
(the sampler's 'uniform_t' grid) learns, at each of its grid times t, to do in
one step what its teacher does in two on the grid of 2N steps:

  z'  = DDIM_teacher(z_t, t -> t - 1/(2N)),
  z'' = DDIM_teacher(z',  t - 1/(2N) -> s),   s = t - 1/N,

and one student DDIM step z_s = alpha_s x + (sigma_s / sigma_t)(z_t - alpha_t x)
lands on z'' exactly when its x-prediction is

  x~ = (z'' - (sigma_s / sigma_t) z_t) / (alpha_s - (sigma_s / sigma_t) alpha_t).

The denominator is sigma_s (alpha_s / sigma_s - alpha_t / sigma_t) > 0, since
the log-SNR grows towards t = 0. The last step of every sampler returns x_hat
itself rather than a DDIM step to t = 0 (where the schedule's clipped log-SNR
leaves sigma_0 ~ 5e-5, not 0); the target treats s = 0 the same way, alpha_s = 1
and sigma_s = 0, so that N student steps reproduce 2N teacher steps to float
precision on an exact teacher (tests/distillation_test.py).

Guidance distillation (Meng et al., 2023) is the same loss with the guided
teacher (1 + w) out(z, c) - w out(z) inside the DDIM steps and w an input of
the student; vdm.methods.distill builds both.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from vdm.diffusion import gaussian
from vdm.diffusion import samplers
from vdm.diffusion import schedules

# x_fn(z [B, T, H, W, C], logsnr [B]) -> x_hat [B, T, H, W, C]: a teacher's
# prediction of the clean video (conditioning and guidance already applied).
XFn = Callable[[jax.Array, jax.Array], jax.Array]


def student_times(rng: jax.Array, batch_size: int, num_steps: int) -> jax.Array:
  """Times of the student's grid t = i / N, i uniform in {1, ..., N}, per example.

  Args:
    rng: PRNG key.
    batch_size: B.
    num_steps: N, the student's sampling steps.

  Returns:
    t [B] float32 in {1/N, ..., 1}.
  """
  i = jax.random.randint(rng, (batch_size,), 1, num_steps + 1)
  return i.astype(jnp.float32) / num_steps


def _alpha_sigma(logsnr, like, final):
  """alpha, sigma of lambda ([B]) shaped like ``like``; (1, 0) where ``final``."""
  alpha, sigma = schedules.alpha_sigma(gaussian.expand_to(logsnr, like).astype(jnp.float32))
  final = gaussian.expand_to(final, like)
  return jnp.where(final, 1.0, alpha), jnp.where(final, 0.0, sigma)


def ddim_step(z_t: jax.Array, x: jax.Array, logsnr_t: jax.Array, logsnr_s: jax.Array,
              final: jax.Array) -> jax.Array:
  """One deterministic DDIM step from t to s < t given the prediction x.

  z_s = alpha_s x + sigma_s eps_hat with eps_hat = (z_t - alpha_t x) / sigma_t;
  at the last step (``final``) the samplers return x itself.

  Args:
    z_t: [B, T, H, W, C].
    x: the x-prediction at (z_t, lambda_t), same shape.
    logsnr_t: lambda_t [B].
    logsnr_s: lambda_s [B].
    final: [B] bool, s = 0.

  Returns:
    z_s, same shape as z_t.
  """
  alpha_s, sigma_s = _alpha_sigma(logsnr_s, z_t, final)
  return alpha_s * x + sigma_s * gaussian.eps_from_z_x(z_t, x, logsnr_t)


def target_x(teacher_x: XFn, z_t: jax.Array, t: jax.Array, num_steps: int,
             logsnr_fn: schedules.LogSNRFn) -> jax.Array:
  """The x a student of N steps must predict at (z_t, t) (the module's x~).

  Args:
    teacher_x: the teacher's x-prediction (see XFn).
    z_t: [B, T, H, W, C] on the student's grid time t.
    t: [B], each in {1/N, ..., 1}.
    num_steps: N, the student's steps (the teacher takes 2N).
    logsnr_fn: the schedule t -> lambda_t.

  Returns:
    x~ [B, T, H, W, C] float32, with no gradient to the teacher.
  """
  z_t = z_t.astype(jnp.float32)
  half = 0.5 / num_steps
  t_mid, t_s = t - half, jnp.maximum(t - 2 * half, 0.0)
  # Rounding of t - 1/N near 0 must not leave a tiny positive s.
  final = t_s < 0.5 * half
  logsnr_t, logsnr_mid, logsnr_s = logsnr_fn(t), logsnr_fn(t_mid), logsnr_fn(t_s)
  never = jnp.zeros_like(final)
  z_mid = ddim_step(z_t, teacher_x(z_t, logsnr_t), logsnr_t, logsnr_mid, never)
  z_s = ddim_step(z_mid, teacher_x(z_mid, logsnr_mid), logsnr_mid, logsnr_s, final)
  alpha_t, sigma_t = _alpha_sigma(logsnr_t, z_t, never)
  alpha_s, sigma_s = _alpha_sigma(logsnr_s, z_t, final)
  ratio = sigma_s / sigma_t
  return jax.lax.stop_gradient((z_s - ratio * z_t) / (alpha_s - ratio * alpha_t))


def x_fn(model_fn: samplers.ModelFn, parameterization: str) -> XFn:
  """A network's output in ``parameterization`` as an x-prediction (see XFn)."""
  return lambda z, logsnr: samplers.make_denoise(model_fn, parameterization, logsnr)(z)[0]
