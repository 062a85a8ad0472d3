"""The Gaussian forward process, the three parameterizations, and the loss.

Nothing here has parameters: the loss takes any ``denoise_fn`` so that tests can
plug in an exact analytic denoiser. Shapes are channels-last video
[B, T, H, W, C]; per-example scalars (t, lambda) are [B] and are broadcast.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from vdm.diffusion import conditions
from vdm.diffusion import schedules

PARAMETERIZATIONS = ('eps', 'v', 'x')
LOSS_TYPES = ('eps_mse', 'v_mse')
NULL_LABEL = conditions.NULL_LABEL

# denoise_fn(z_t [B, T, H, W, C], logsnr [B], condition) -> model output in the
# configured parameterization, same shape as z_t; the condition is labels [B]
# or [B, T], a {'label', 'text'} dict (vdm.diffusion.conditions) or None.
DenoiseFn = Callable[[jax.Array, jax.Array, Optional[jax.Array]], jax.Array]


def expand_to(per_example: jax.Array, like: jax.Array) -> jax.Array:
  """Reshapes a [B] array to broadcast against ``like`` ([B, ...])."""
  per_example = jnp.asarray(per_example)
  return per_example.reshape(per_example.shape + (1,) * (like.ndim - per_example.ndim))


def _alpha_sigma_like(logsnr, like):
  alpha, sigma = schedules.alpha_sigma(expand_to(logsnr, like))
  return alpha.astype(like.dtype), sigma.astype(like.dtype)


def q_sample(x: jax.Array, logsnr: jax.Array, eps: jax.Array) -> jax.Array:
  """Samples z_t ~ q(z_t | x) = N(alpha_t x, sigma_t^2 I) with the given noise.

  Args:
    x: clean data [B, ...].
    logsnr: lambda_t, [B] (or broadcastable to x).
    eps: standard normal noise, same shape as x.

  Returns:
    z_t = alpha_t x + sigma_t eps.
  """
  alpha, sigma = _alpha_sigma_like(logsnr, x)
  return alpha * x + sigma * eps


def v_from_x_eps(x, eps, logsnr):
  """v = alpha eps - sigma x (Salimans & Ho's velocity target)."""
  alpha, sigma = _alpha_sigma_like(logsnr, x)
  return alpha * eps - sigma * x


def x_from_z_eps(z, eps, logsnr):
  """x = (z - sigma eps) / alpha."""
  alpha, sigma = _alpha_sigma_like(logsnr, z)
  return (z - sigma * eps) / alpha


def eps_from_z_x(z, x, logsnr):
  """eps = (z - alpha x) / sigma."""
  alpha, sigma = _alpha_sigma_like(logsnr, z)
  return (z - alpha * x) / sigma


def x_from_z_v(z, v, logsnr):
  """x = alpha z - sigma v (exact, since alpha^2 + sigma^2 = 1)."""
  alpha, sigma = _alpha_sigma_like(logsnr, z)
  return alpha * z - sigma * v


def eps_from_z_v(z, v, logsnr):
  """eps = sigma z + alpha v."""
  alpha, sigma = _alpha_sigma_like(logsnr, z)
  return sigma * z + alpha * v


def check_parameterization(parameterization: str) -> None:
  if parameterization not in PARAMETERIZATIONS:
    raise ValueError(
        f'config.diffusion.parameterization={parameterization!r} is unknown; '
        f'choose one of {PARAMETERIZATIONS}.')


def check_loss_type(loss_type: str) -> None:
  if loss_type not in LOSS_TYPES:
    raise ValueError(f'config.diffusion.loss_type={loss_type!r} is unknown; '
                     f'choose one of {LOSS_TYPES}.')


def predict_x_eps(z: jax.Array, logsnr: jax.Array, model_out: jax.Array,
                  parameterization: str) -> tuple[jax.Array, jax.Array]:
  """Converts a model output into the denoised estimate and the noise estimate.

  Args:
    z: z_t [B, T, H, W, C].
    logsnr: lambda_t [B].
    model_out: network output in ``parameterization``, same shape as z.
    parameterization: 'eps', 'v' or 'x'.

  Returns:
    (x_hat, eps_hat), each shaped like z.
  """
  check_parameterization(parameterization)
  if parameterization == 'eps':
    return x_from_z_eps(z, model_out, logsnr), model_out
  if parameterization == 'v':
    return x_from_z_v(z, model_out, logsnr), eps_from_z_v(z, model_out, logsnr)
  return model_out, eps_from_z_x(z, model_out, logsnr)


def drop_condition(rng: jax.Array, label: conditions.Condition, drop_prob: float,
                   is_image: Optional[jax.Array] = None) -> conditions.Condition:
  """Replaces conditions by their null with probability ``drop_prob``.

  Training this way gives one network both the conditional and the
  unconditional model that classifier-free guidance combines. A video's
  frames share one decision (its caption is dropped or kept as a whole);
  each appended image, an independent example with its own label, gets its
  own.

  Args:
    rng: PRNG key.
    label: int labels [B], or per frame [B, T]; or a {'label', 'text'}
      condition (vdm.diffusion.conditions), whose parts drop together.
    drop_prob: probability of dropping each example's condition.
    is_image: [T] bool, True for appended image frames (per-frame labels
      only); None treats every frame as part of the video.

  Returns:
    ``label`` with the dropped entries set to the null condition.
  """
  shape = conditions.frames_shape(label)
  drop = jax.random.bernoulli(rng, drop_prob, shape)  # [B] or [B, T]
  if len(shape) == 2:
    video_drop = drop[:, :1]  # [B, 1]: one draw for all video frames.
    drop = video_drop if is_image is None else jnp.where(is_image[None], drop, video_drop)
    drop = jnp.broadcast_to(drop, shape)
  return conditions.where_null(drop, label)


def sample_times(rng: jax.Array, batch_size: int, low_discrepancy: bool) -> jax.Array:
  """Draws t ~ U[0, 1] per example, optionally stratified over the batch.

  The low-discrepancy draw (Kingma et al., 2021) spaces the B times evenly with
  one random offset, which lowers the variance of the batch loss at no cost.
  """
  u = jax.random.uniform(rng, (batch_size,))
  if not low_discrepancy:
    return u
  return jnp.mod(u[0] + jnp.arange(batch_size) / batch_size, 1.0)


def diffusion_loss(denoise_fn: DenoiseFn, x: jax.Array, rng: jax.Array, *,
                   logsnr_fn: schedules.LogSNRFn, parameterization: str = 'eps',
                   loss_type: str = 'eps_mse', label: Optional[jax.Array] = None,
                   cond_drop_prob: float = 0.0, low_discrepancy: bool = True,
                   t: Optional[jax.Array] = None,
                   noise_fn: Optional[Callable[[jax.Array, tuple[int, ...]], jax.Array]] = None,
                   is_image: Optional[jax.Array] = None, frame_losses: bool = False,
                   target_x_fn: Optional[Callable[..., jax.Array]] = None):
  """The denoising loss of each example.

  The mean is over every pixel of every frame, video frames and appended image
  frames alike (joint image-video training weights them equally).

  Args:
    denoise_fn: (z_t, logsnr, label) -> model output in ``parameterization``.
    x: clean data [B, T, H, W, C] in [-1, 1].
    rng: PRNG key for t, the noise and condition dropout.
    logsnr_fn: the schedule t -> lambda_t.
    parameterization: what denoise_fn predicts: 'eps', 'v' or 'x'.
    loss_type: 'eps_mse' (||eps - eps_hat||^2, the paper's) or 'v_mse'.
    label: the condition (int labels [B] or per frame [B, T], or a
      vdm.diffusion.conditions dict with text), or None for an unconditional
      model.
    cond_drop_prob: probability of replacing a condition by its null.
    low_discrepancy: stratify t over the batch (see sample_times).
    t: optional fixed times [B]; drawn when None.
    noise_fn: (rng, shape) -> eps, the method's noise law; standard normal
      when None.
    is_image: [T] bool mask of appended image frames: with per-frame labels,
      each image's label is dropped on its own (see drop_condition).
    frame_losses: also return the loss of each frame (a method's metrics).
    target_x_fn: (z_t, logsnr, t, condition) -> the x to learn instead of the
      clean data (a distillation target, vdm.diffusion.distillation); the
      error is then taken against that x and the eps it implies at z_t.

  Returns:
    The loss of each example, [B] float32; with frame_losses, (that loss,
    the mean over each frame's pixels [B, T]).
  """
  check_parameterization(parameterization)
  check_loss_type(loss_type)
  rng_t, rng_eps, rng_drop = jax.random.split(rng, 3)
  if t is None:
    t = sample_times(rng_t, x.shape[0], low_discrepancy)
  logsnr = logsnr_fn(t)  # [B]
  if noise_fn is None:
    eps = jax.random.normal(rng_eps, x.shape, x.dtype)
  else:
    eps = noise_fn(rng_eps, x.shape).astype(x.dtype)
  z = q_sample(x, logsnr, eps)
  if label is not None and cond_drop_prob > 0:
    label = drop_condition(rng_drop, label, cond_drop_prob, is_image)
  if target_x_fn is not None:
    x = jax.lax.stop_gradient(target_x_fn(z, logsnr, t, label)).astype(jnp.float32)
    eps = eps_from_z_x(z, x, logsnr)
  model_out = denoise_fn(z, logsnr, label).astype(jnp.float32)
  x_hat, eps_hat = predict_x_eps(z, logsnr, model_out, parameterization)
  if loss_type == 'eps_mse':
    err = eps - eps_hat
  else:
    err = v_from_x_eps(x, eps, logsnr) - v_from_x_eps(x_hat, eps_hat, logsnr)
  square = jnp.square(err)
  losses = jnp.mean(square, axis=tuple(range(1, x.ndim)))
  if frame_losses:
    return losses, jnp.mean(square, axis=tuple(range(2, x.ndim)))
  return losses
