"""Continuous-time noise schedules written in log-SNR.

A schedule is a function ``t -> lambda_t`` on t in [0, 1], decreasing, with
lambda_t = log(alpha_t^2 / sigma_t^2). Under the variance-preserving process
alpha_t^2 = sigmoid(lambda_t) and sigma_t^2 = sigmoid(-lambda_t), so everything
else (alpha, sigma, posterior coefficients) follows from lambda alone. Working in
log-SNR lets the network see a continuous noise level instead of a step index.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp

LogSNRFn = Callable[[jax.Array], jax.Array]

SCHEDULES = ('cosine', 'linear_beta')


def cosine_logsnr(t: jax.Array, logsnr_min: float = -20.0,
                  logsnr_max: float = 20.0, logsnr_shift: float = 0.0) -> jax.Array:
  """The cosine schedule of Nichol & Dhariwal, clipped and shifted in log-SNR.

  lambda(t) = shift - 2 log tan(a t + b), with b and a chosen so that
  lambda(0) = logsnr_max and lambda(1) = logsnr_min whatever the shift. A
  negative shift spends more of t (of training examples and of sampling
  steps) at low SNR, where the layout of a video is decided (the shifted
  cosine schedule of Hoogeboom et al., 2023, there for large images, whose
  many pixels reveal the layout at a lower SNR than small ones).

  Args:
    t: times in [0, 1], any shape.
    logsnr_min: log-SNR at t = 1.
    logsnr_max: log-SNR at t = 0.
    logsnr_shift: added to the unclipped schedule's log-SNR (0: the cosine
      schedule itself).

  Returns:
    lambda_t, same shape as t, float32.
  """
  t = jnp.asarray(t, jnp.float32)
  b = math.atan(math.exp(-0.5 * (logsnr_max - logsnr_shift)))
  a = math.atan(math.exp(-0.5 * (logsnr_min - logsnr_shift))) - b
  return logsnr_shift - 2.0 * jnp.log(jnp.tan(a * t + b))


def linear_beta_logsnr(t: jax.Array, beta_start: float = 1e-4,
                       beta_end: float = 2e-2,
                       num_steps: int = 1000) -> jax.Array:
  """The DDPM linear-beta schedule in continuous time.

  beta(s) grows linearly from beta_start to beta_end over num_steps discrete
  steps; in continuous time log alpha_bar(t) = -(num_steps) *
  (beta_start t + (beta_end - beta_start) t^2 / 2), which matches the discrete
  product of (1 - beta_i) to first order in beta.

  Args:
    t: times in [0, 1], any shape.
    beta_start: beta of the first discrete step.
    beta_end: beta of the last discrete step.
    num_steps: number of discrete steps the betas are spread over.

  Returns:
    lambda_t, same shape as t, float32.
  """
  t = jnp.asarray(t, jnp.float32)
  log_alpha_bar = -num_steps * (beta_start * t +
                                0.5 * (beta_end - beta_start) * t**2)
  # lambda = log(abar / (1 - abar)); expm1 keeps precision when abar -> 1.
  return log_alpha_bar - jnp.log(-jnp.expm1(log_alpha_bar))


def get_logsnr_fn(name: str, **kwargs) -> LogSNRFn:
  """Returns the schedule ``t -> lambda_t`` called ``name``.

  Args:
    name: one of SCHEDULES.
    **kwargs: the schedule's own parameters (logsnr_min/logsnr_max/logsnr_shift for cosine;
      beta_start/beta_end/num_steps for linear_beta).

  Returns:
    A function of t.
  """
  fns = {'cosine': cosine_logsnr, 'linear_beta': linear_beta_logsnr}
  if name not in fns:
    raise ValueError(f'config.diffusion.schedule={name!r} is unknown; '
                     f'choose one of {SCHEDULES}.')
  return functools.partial(fns[name], **kwargs)


def logsnr_fn_from_config(diffusion_config) -> LogSNRFn:
  """Builds the schedule named by a ``config.diffusion`` section."""
  if diffusion_config.schedule == 'cosine':
    return get_logsnr_fn('cosine', logsnr_min=diffusion_config.logsnr_min,
                         logsnr_max=diffusion_config.logsnr_max,
                         logsnr_shift=diffusion_config.get('logsnr_shift', 0.0))
  if diffusion_config.schedule == 'linear_beta':
    return get_logsnr_fn('linear_beta',
                         beta_start=diffusion_config.beta_start,
                         beta_end=diffusion_config.beta_end,
                         num_steps=diffusion_config.beta_num_steps)
  return get_logsnr_fn(diffusion_config.schedule)  # Raises the named error.


def alpha_sigma(logsnr: jax.Array) -> tuple[jax.Array, jax.Array]:
  """alpha_t and sigma_t of the variance-preserving process.

  Args:
    logsnr: lambda_t, any shape.

  Returns:
    (alpha, sigma) with alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda).
  """
  return jnp.sqrt(jax.nn.sigmoid(logsnr)), jnp.sqrt(jax.nn.sigmoid(-logsnr))
