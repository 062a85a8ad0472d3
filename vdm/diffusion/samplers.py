"""Samplers of the reverse process: ancestral, DDIM and predictor-corrector.

A model enters as ``model_fn(z [B, T, H, W, C], logsnr [B]) -> output`` in a
given parameterization ('eps', 'v' or 'x'); labels, conditioning channels and
image masks are closed over by the caller, so the same loop serves unconditional,
class-conditional, guided and super-resolution models, and the exact analytic
denoiser of Gaussian data in tests.

Time grid: ``num_steps`` = N model evaluations at t_i = 1 - i / N, i = 0..N-1.
Transition i goes from t_i to t_{i+1}; the last one (t_{N-1} -> 0) returns the
denoised estimate x_hat(z_{t_{N-1}}), which is the s -> 0 limit of the
posterior q(z_s | z_t, x_hat) (its mean tends to x_hat, its variance to 0).
The whole loop is one ``jax.lax.scan``, so ``sample`` can be jitted as a unit.

Guidance plugs in through one hook, a ``Guide``:
  guide(denoise, z, step, rng) -> (z, x_hat, eps_hat)
It receives the plain denoiser ``denoise(z) -> (x_hat, eps_hat)`` at the current
time, may change z before denoising (replacement, VidRD's staged guidance),
may differentiate through ``denoise`` (reconstruction guidance), and returns
the z the sampler continues from with a consistent pair (x_hat, eps_hat),
eps_hat = (z - alpha x_hat) / sigma. The guide is applied at every model
evaluation, Langevin corrections included.
"""

from __future__ import annotations

import math
import sys
from typing import Callable, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from vdm.diffusion import gaussian
from vdm.diffusion import schedules

SAMPLERS = ('ancestral', 'ddim', 'pc')

# model_fn(z [B, T, H, W, C], logsnr [B]) -> model output, same shape as z.
ModelFn = Callable[[jax.Array, jax.Array], jax.Array]
# denoise(z) -> (x_hat, eps_hat) at the current step's log-SNR.
Denoise = Callable[[jax.Array], tuple[jax.Array, jax.Array]]
# noise_fn(rng, shape) -> float32 noise of ``shape`` drawn from a method's noise
# law: standard normal for VDM, correlated across frames for VideoFusion. The
# forward process q(z_t | x) = N(alpha_t x, sigma_t^2 C) then has that law's
# covariance C, and so do its posteriors, so every fresh draw of the reverse
# process (z_1, ancestral and Langevin step noise, replaced frames) uses it.
NoiseFn = Callable[[jax.Array, tuple[int, ...]], jax.Array]
# noise_cov(num_frames) -> [T, T] covariance C of noise_fn's law across the
# frames of a clip (the same at every pixel), or None for i.i.d. noise.
# Guides that weigh errors by the noise (reconstruction guidance) need it.
NoiseCovFn = Callable[[int], Optional[np.ndarray]]


class Step(NamedTuple):
  """Where the sampler is, as a guide sees it.

  Attributes:
    index: int32 scalar, i in 0..N-1 (0 at t = 1).
    num_steps: N, a Python int.
    t: float32 scalar, the time t_i = 1 - i / N.
    logsnr: lambda(t_i) repeated over the batch, [B].
    noise_fn: the sampler's noise law (NoiseFn); a guide that draws fresh
      noise (replacement) must use it so that z keeps the method's law.
    noise_cov: [T, T] numpy covariance C of that law across the T frames of
      z, or None for i.i.d. noise (C = I).
  """
  index: jax.Array
  num_steps: int
  t: jax.Array
  logsnr: jax.Array
  noise_fn: 'NoiseFn'
  noise_cov: Optional[np.ndarray] = None


# guide(denoise, z, step, rng) -> (z, x_hat, eps_hat); see the module docstring.
Guide = Callable[[Denoise, jax.Array, Step, jax.Array],
                 tuple[jax.Array, jax.Array, jax.Array]]


def posterior(z_t: jax.Array, x: jax.Array, logsnr_t: jax.Array,
              logsnr_s: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The forward-process posterior q(z_s | z_t, x) for s < t.

  With r = exp(lambda_t - lambda_s):
    mu = r (alpha_s / alpha_t) z_t + (1 - r) alpha_s x,
    sigma~^2_{s|t} = (1 - r) sigma_s^2,   sigma^2_{t|s} = (1 - r) sigma_t^2.

  Args:
    z_t: [B, ...] latent at time t.
    x: [B, ...] clean data (or its estimate x_hat).
    logsnr_t: lambda_t, [B].
    logsnr_s: lambda_s >= lambda_t, [B].

  Returns:
    (mean [B, ...], var_tilde, var_t_given_s), the two variances shaped
    [B, 1, ...] to broadcast against z_t.
  """
  lt = gaussian.expand_to(logsnr_t, z_t).astype(jnp.float32)
  ls = gaussian.expand_to(logsnr_s, z_t).astype(jnp.float32)
  log_r = lt - ls
  one_minus_r = -jnp.expm1(log_r)  # expm1: exact as s -> t, where r -> 1.
  # log alpha = 0.5 log sigmoid(lambda). The ratio alpha_s / alpha_t is ~1e4 at
  # t = 1 while r is ~1e-4 there, so the product is formed in log space.
  log_alpha_t = 0.5 * jax.nn.log_sigmoid(lt)
  log_alpha_s = 0.5 * jax.nn.log_sigmoid(ls)
  mean = (jnp.exp(log_r + log_alpha_s - log_alpha_t) * z_t +
          one_minus_r * jnp.exp(log_alpha_s) * x)
  return mean, one_minus_r * jax.nn.sigmoid(-ls), one_minus_r * jax.nn.sigmoid(-lt)


def make_denoise(model_fn: ModelFn, parameterization: str,
                 logsnr: jax.Array) -> Denoise:
  """The denoiser z -> (x_hat, eps_hat) of a model at one log-SNR.

  Args:
    model_fn: (z, logsnr) -> output in ``parameterization``.
    parameterization: 'eps', 'v' or 'x'.
    logsnr: lambda_t, [B].

  Returns:
    denoise(z [B, T, H, W, C]) -> (x_hat, eps_hat), float32.
  """
  gaussian.check_parameterization(parameterization)

  def denoise(z):
    out = model_fn(z, logsnr).astype(jnp.float32)  # bf16 models: work in f32.
    return gaussian.predict_x_eps(z, logsnr, out, parameterization)

  return denoise


def default_guide(denoise: Denoise, z: jax.Array, step: Step,
                  rng: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The identity guide: plain denoising, z unchanged."""
  del step, rng
  return (z, *denoise(z))


def shift_x(x: jax.Array, eps: jax.Array, dx: jax.Array,
            logsnr: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Moves x_hat by dx and eps_hat with it, keeping z = alpha x + sigma eps.

  Written as an update of eps rather than eps = (z - alpha x) / sigma, which
  would cancel catastrophically near t = 0 where z ~ alpha x.

  Args:
    x: x_hat [B, ...].
    eps: eps_hat [B, ...] consistent with x_hat.
    dx: change of x_hat, broadcastable to x.
    logsnr: lambda_t, [B].

  Returns:
    (x + dx, eps - (alpha / sigma) dx).
  """
  alpha, sigma = schedules.alpha_sigma(gaussian.expand_to(logsnr, x))
  return x + dx, eps - (alpha / sigma) * dx


def standard_normal(rng: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Standard normal float32 noise of ``shape``.

  Drawn as one flat vector and reshaped: the same law, but XLA:CPU runs the
  threefry bit generator several times faster on a flat array than on video
  shapes with tiny minor dimensions such as [B, T, 2, 2, 1].

  Args:
    rng: PRNG key.
    shape: the output shape.

  Returns:
    float32 array of ``shape``.
  """
  return jax.random.normal(rng, (math.prod(shape),), jnp.float32).reshape(shape)


def print_progress(step: int, num_steps: int) -> None:
  """Default progress display: one rewritten line on stderr."""
  step = int(step) + 1
  if step == 1 or step == num_steps or step % max(1, num_steps // 20) == 0:
    end = '\n' if step == num_steps else ''
    print(f'\rsampling step {step}/{num_steps}', end=end, file=sys.stderr, flush=True)


def sample(model_fn: ModelFn, rng: jax.Array, shape: tuple[int, ...], *,
           logsnr_fn: schedules.LogSNRFn, parameterization: str,
           sampler: str = 'ancestral', num_steps: int = 256,
           gamma: Union[float, jax.Array] = 0.0,
           pc_delta: Union[float, jax.Array] = 0.1, pc_corrections: int = 1,
           clip_x: bool = True, z_init: Optional[jax.Array] = None,
           guide: Optional[Guide] = None, noise_fn: Optional[NoiseFn] = None,
           noise_cov: Optional[NoiseCovFn] = None,
           return_trajectory: bool = False,
           trajectory_steps: Optional[int] = None,
           trajectory_frames: Optional[Sequence[int]] = None,
           progress: Union[bool, Callable[[int, int], None]] = False):
  """Draws samples by running the reverse process from t = 1 to t = 0.

  Samplers (see PAPERS.md section 1), each step t -> s:
    'ancestral': z_s = mu(z_t, x_hat) + sqrt(var_tilde^(1-gamma) var_ts^gamma) e.
    'ddim': z_s = alpha_s x_hat + sigma_s eps_hat (deterministic, eta = 0).
    'pc': the ancestral step followed by ``pc_corrections`` Langevin moves
      z <- z - 0.5 delta sigma_s eps_hat(z) + sqrt(delta) sigma_s e'.
  Model evaluations: N for 'ancestral' and 'ddim', N + (N - 1) * corrections
  for 'pc' (no correction after the final denoising step).

  Args:
    model_fn: (z [B, T, H, W, C], logsnr [B]) -> output in ``parameterization``.
    rng: PRNG key.
    shape: [B, T, H, W, C] (any [B, ...] works for models that accept it).
    logsnr_fn: the schedule t -> lambda_t.
    parameterization: 'eps', 'v' or 'x', what model_fn predicts.
    sampler: one of SAMPLERS.
    num_steps: N >= 1 model evaluations of the predictor (static).
    gamma: ancestral variance interpolation in [0, 1]; 0 is the posterior
      variance, 1 the forward-step variance. Ignored by 'ddim'.
    pc_delta: Langevin step size delta of 'pc' (the paper's 0.1).
    pc_corrections: Langevin moves after each ancestral step (static).
    clip_x: clip x_hat to [-1, 1] (static thresholding; eps_hat follows).
      Turn off for data that is not in [-1, 1].
    z_init: optional starting latent at t = 1, [B, ...]; drawn from noise_fn
      when None (VidRD's reused noise enters here).
    guide: optional Guide (see module docstring) applied at every model
      evaluation; None denoises plainly.
    noise_fn: the noise law of every fresh draw (z_init, the ancestral and
      Langevin step noise, and the guide's through Step.noise_fn);
      standard_normal when None.
    noise_cov: NoiseCovFn of noise_fn's law, handed to guides as
      Step.noise_cov for the clip's shape[1] frames; None: i.i.d. noise.
    return_trajectory: also return the latents the model saw (after the
      guide), one per step.
    trajectory_steps: with return_trajectory, record only the first K steps
      (t_0 .. t_{K-1}), 1 <= K <= N (static), into a [K, ...] buffer carried
      through the loop, so memory is K latents instead of N; None records all.
    trajectory_frames: with return_trajectory, record only these indices of
      axis 1 (the frames of [B, T, H, W, C]), in the order given; None records
      every frame.
    progress: True prints a progress line via jax.debug.callback; a callable
      (step, num_steps) is called instead; False (default) adds nothing.

  Returns:
    x [B, ...] float32, the final denoised sample; with return_trajectory,
    (x, trajectory [N, B, ...]) where trajectory[i] is the z seen at t_i
    ([K, B, len(trajectory_frames), ...] with the two options above).
  """
  if sampler not in SAMPLERS:
    raise ValueError(f'sampler={sampler!r} is unknown; choose one of {SAMPLERS}.')
  if num_steps < 1:
    raise ValueError(f'num_steps={num_steps} must be >= 1.')
  if pc_corrections < 0:
    raise ValueError(f'pc_corrections={pc_corrections} must be >= 0.')
  if not return_trajectory and (trajectory_steps is not None or trajectory_frames is not None):
    raise ValueError('trajectory_steps and trajectory_frames need return_trajectory=True.')
  if trajectory_steps is not None and not 1 <= trajectory_steps <= num_steps:
    raise ValueError(f'trajectory_steps={trajectory_steps} must be in [1, num_steps={num_steps}].')
  gaussian.check_parameterization(parameterization)
  guide = default_guide if guide is None else guide
  callback = print_progress if progress is True else (progress or None)
  batch = shape[0]
  noise_fn = standard_normal if noise_fn is None else noise_fn
  frame_cov = None if noise_cov is None or len(shape) < 2 else noise_cov(shape[1])
  rng_init, rng_loop = jax.random.split(rng)
  if z_init is None:
    z_init = noise_fn(rng_init, tuple(shape))  # [B, T, H, W, C]
  z_init = jnp.asarray(z_init, jnp.float32)
  if z_init.shape != tuple(shape):
    raise ValueError(f'z_init has shape {z_init.shape}, expected {tuple(shape)}.')

  def at(i):
    """The Step of grid index i; t_N = 0 only enters as the last target."""
    t = (num_steps - i).astype(jnp.float32) / num_steps
    return Step(i, num_steps, t, jnp.full((batch,), logsnr_fn(t), jnp.float32), noise_fn,
                frame_cov)

  def denoise_at(z, step, rng):
    """Guide, then static thresholding: the (z, x_hat, eps_hat) the step uses."""
    z, x, eps = guide(make_denoise(model_fn, parameterization, step.logsnr), z, step, rng)
    if clip_x:
      x, eps = shift_x(x, eps, jnp.clip(x, -1.0, 1.0) - x, step.logsnr)
    return z, x, eps

  def langevin(z, step, rng):
    """The corrector at t_i: ``pc_corrections`` Langevin moves."""
    sigma = schedules.alpha_sigma(gaussian.expand_to(step.logsnr, z))[1]

    def move(j, z):
      rng_guide, rng_noise = jax.random.split(jax.random.fold_in(rng, j))
      z, _, eps = denoise_at(z, step, rng_guide)
      noise = noise_fn(rng_noise, z.shape)
      return z - 0.5 * pc_delta * sigma * eps + jnp.sqrt(pc_delta) * sigma * noise

    return jax.lax.fori_loop(0, pc_corrections, move, z)

  def record(z):
    """The part of z that the trajectory keeps."""
    return z if trajectory_frames is None else jnp.take(z, jnp.asarray(trajectory_frames), axis=1)

  def body(carry, i):
    z, buffer = carry
    if callback is not None:
      jax.debug.callback(callback, i, num_steps)
    rng_corr, rng_guide, rng_noise = jax.random.split(jax.random.fold_in(rng_loop, i), 3)
    step, target = at(i), at(i + 1)
    if sampler == 'pc' and pc_corrections:
      # The correction after the ancestral step into t_i runs here, at t_i, so
      # that one body serves every step; at t_0 = 1 there was no such step.
      # step is closed over, not an operand, so step.num_steps stays a Python int.
      z = jax.lax.cond(i > 0, lambda z: langevin(z, step, rng_corr), lambda z: z, z)
    z, x, eps = denoise_at(z, step, rng_guide)
    if buffer is not None:
      # Steps from K on rewrite slot K - 1 with its own value: one loop body, no cond.
      slot = jnp.minimum(i, trajectory_steps - 1)
      kept = jnp.where(i < trajectory_steps, record(z), buffer[slot])
      buffer = jax.lax.dynamic_update_index_in_dim(buffer, kept, slot, 0)
    if sampler == 'ddim':
      alpha_s, sigma_s = schedules.alpha_sigma(gaussian.expand_to(target.logsnr, z))
      z_s = alpha_s * x + sigma_s * eps
    else:
      mean, var_tilde, var_ts = posterior(z, x, step.logsnr, target.logsnr)
      std = jnp.sqrt(var_tilde**(1.0 - gamma) * var_ts**gamma)
      z_s = mean + std * noise_fn(rng_noise, z.shape)
    # Last transition (to t = 0): the posterior collapses onto x_hat.
    z_next = jnp.where(i == num_steps - 1, x, z_s)
    return (z_next, buffer), (record(z) if return_trajectory and buffer is None else None)

  buffer = None
  if trajectory_steps is not None:
    buffer = jnp.zeros((trajectory_steps,) + jax.eval_shape(record, z_init).shape,
                       jnp.float32)
  (x, buffer), trajectory = jax.lax.scan(body, (z_init, buffer),
                                         jnp.arange(num_steps, dtype=jnp.int32))
  if buffer is not None:
    trajectory = buffer
  return (x, trajectory) if return_trajectory else x
