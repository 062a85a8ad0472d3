"""Samplers of the reverse process: ancestral, DDIM, DDIM with renoising,
predictor-corrector and DPM-Solver++ (multistep, second and third order).

A model enters as ``model_fn(z [B, T, H, W, C], logsnr [B]) -> output`` in a
given parameterization ('eps', 'v' or 'x'); labels, conditioning channels and
image masks are closed over by the caller, so the same loop serves unconditional,
class-conditional, guided and super-resolution models, and the exact analytic
denoiser of Gaussian data in tests.

Time grid: ``num_steps`` = N model evaluations at t_0 = 1 > t_1 > ... > t_{N-1},
and t_N = 0 (see ``make_time_grid``): 'uniform_t' is t_i = 1 - i / N, 'uniform_logsnr'
spaces lambda_1..lambda_{N-1} evenly in log-SNR. Transition i goes from t_i to
t_{i+1}; the last one (t_{N-1} -> 0) returns the denoised estimate
x_hat(z_{t_{N-1}}), which is the s -> 0 limit of the posterior
q(z_s | z_t, x_hat) (its mean tends to x_hat, its variance to 0), and of the
DDIM step. The whole loop is one ``jax.lax.scan``, so ``sample`` can be jitted
as a unit.

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

SAMPLERS = ('ancestral', 'ddim', 'ddim_renoise', 'pc', 'dpm++2m', 'dpm++3m')
# 'auto' is each sampler's own grid: 'uniform_t' for the first four (their
# behaviour before the grid was a choice), 'uniform_logsnr' for DPM-Solver++.
TIME_GRIDS = ('auto', 'uniform_t', 'uniform_logsnr')
# The log-SNR span of the 'uniform_logsnr' grid: EDM's sigma in [0.002, 80]
# (Karras et al., 2022; lambda = -2 log sigma) for data in [-1, 1]. Below it
# x_hat is nearly the data mean whatever z, above it the noise is below one 8-bit
# level, so a grid spread over the schedule's whole clipped range [-20, 20]
# would spend about half its evaluations where nothing changes.
LOGSNR_RANGE = (-2.0 * math.log(80.0), -2.0 * math.log(0.002))
# DPM-Solver++ samplers and the order of their multistep extrapolation.
_MULTISTEP_ORDER = {'dpm++2m': 2, 'dpm++3m': 3}

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
    t: float32 scalar, the time t_i of the sampler's time grid.
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
  return mean, one_minus_r * jax.nn.sigmoid(-ls), forward_step(x, logsnr_s, logsnr_t)[1]


def forward_step(z_s: jax.Array, logsnr_s: jax.Array,
                 logsnr_t: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The forward process q(z_t | z_s) for t > s: more noise on a noisy z_s.

  mean = (alpha_t / alpha_s) z_s,  sigma^2_{t|s} = sigma_t^2 - (alpha_t / alpha_s)^2 sigma_s^2
  = (1 - r) sigma_t^2 with r = exp(lambda_t - lambda_s), formed in log space so
  that lambda_s = +inf (t = 0, z_s = x) gives q(z_t | x).

  Args:
    z_s: [B, ...] latent at time s.
    logsnr_s: lambda_s, [B].
    logsnr_t: lambda_t <= lambda_s, [B].

  Returns:
    (mean [B, ...], sigma^2_{t|s} shaped [B, 1, ...] to broadcast against z_s).
  """
  ls = gaussian.expand_to(logsnr_s, z_s).astype(jnp.float32)
  lt = gaussian.expand_to(logsnr_t, z_s).astype(jnp.float32)
  ratio = jnp.exp(0.5 * (jax.nn.log_sigmoid(lt) - jax.nn.log_sigmoid(ls)))
  return ratio * z_s, -jnp.expm1(lt - ls) * jax.nn.sigmoid(-lt)


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


def per_sample_noise(noise_fn: NoiseFn, sample_ids: jax.Array) -> NoiseFn:
  """A noise law whose row j depends only on the key and on ``sample_ids[j]``.

  Row j of every draw is ``noise_fn(fold_in(rng, sample_ids[j]), (1, ...))``,
  so a sample's noise (and so the sample) is a function of its index alone:
  the same video whichever batch, chunk or device it is drawn in. Rows stay
  independent, and within a row the law is ``noise_fn``'s (VideoFusion's
  frame correlation included).

  Args:
    noise_fn: the method's law (NoiseFn).
    sample_ids: int32 [B], the global index of each row.

  Returns:
    A NoiseFn for shapes [B, ...].
  """
  def draw(rng, shape):
    if shape[0] != sample_ids.shape[0]:
      raise ValueError(f'noise of shape {shape} for {sample_ids.shape[0]} sample ids.')
    one = lambda i: noise_fn(jax.random.fold_in(rng, i), (1,) + tuple(shape[1:]))[0]
    return jax.vmap(one)(sample_ids)
  return draw


def noise_law(noise_fn: Optional[NoiseFn], sample_ids: Optional[jax.Array]) -> NoiseFn:
  """The law of every fresh draw of a sampler: ``noise_fn`` (standard normal
  when None), row by row (``per_sample_noise``) when sample ids are given."""
  noise_fn = standard_normal if noise_fn is None else noise_fn
  return noise_fn if sample_ids is None else per_sample_noise(noise_fn, sample_ids)


def _inverse_schedule(logsnr_fn: schedules.LogSNRFn, logsnr: jax.Array,
                      iterations: int = 40) -> jax.Array:
  """t with lambda(t) = logsnr, by bisection on [0, 1] (any decreasing schedule).

  Args:
    logsnr_fn: the schedule t -> lambda_t.
    logsnr: targets, any shape, within [lambda(1), lambda(0)].
    iterations: halvings of the bracket; 40 reach float32 resolution.

  Returns:
    float32 t, same shape as logsnr.
  """
  def halve(_, bracket):
    lo, hi = bracket
    mid = 0.5 * (lo + hi)
    above = logsnr_fn(mid) > logsnr  # lambda decreases: the root is later.
    return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

  lo, hi = jax.lax.fori_loop(0, iterations, halve,
                             (jnp.zeros_like(logsnr), jnp.ones_like(logsnr)))
  return 0.5 * (lo + hi)


def make_time_grid(logsnr_fn: schedules.LogSNRFn, num_steps: int, grid: str,
                   logsnr_range: tuple[float, float] = LOGSNR_RANGE
                   ) -> tuple[jax.Array, jax.Array]:
  """The sampler's times t_0 = 1 > ... > t_{N-1} > t_N = 0 and their log-SNRs.

  'uniform_t': t_i = 1 - i / N.
  'uniform_logsnr': lambda_i = lo + (hi - lo) i / (N - 1) for i = 1..N-1, with
    (lo, hi) = ``logsnr_range`` clipped to the schedule's [lambda(1),
    lambda(0)]; the first point lo moves to t_0 = 1, where z_1 is drawn (below
    lo x_hat barely depends on z, so the longer first step, a DDIM step there,
    is exact up to O(alpha^2) = O(e^lambda_1), ~2e-4 on the Gaussian test
    data), and the last evaluation is at hi, whose x_hat is the output.
    lambda_N = lambda(0) is only the target of the last transition.

  Args:
    logsnr_fn: the schedule t -> lambda_t.
    num_steps: N >= 1 (static).
    grid: 'uniform_t' or 'uniform_logsnr'.
    logsnr_range: (lo, hi) of 'uniform_logsnr', lo < hi.

  Returns:
    (t [N + 1], logsnr [N + 1]) float32.
  """
  i = jnp.arange(num_steps + 1)
  if grid == 'uniform_t':
    t = (num_steps - i).astype(jnp.float32) / num_steps
    return t, logsnr_fn(t).astype(jnp.float32)
  if grid != 'uniform_logsnr':
    raise ValueError(f'time_grid={grid!r} is unknown; choose one of {TIME_GRIDS}.')
  lo, hi = logsnr_range
  if not lo < hi:
    raise ValueError(f'logsnr_range={logsnr_range} must be (lo, hi) with lo < hi.')
  first, last = logsnr_fn(jnp.float32(1.0)), logsnr_fn(jnp.float32(0.0))
  lo, hi = jnp.clip(lo, first, last), jnp.clip(hi, first, last)
  logsnr = lo + (hi - lo) * i.astype(jnp.float32) / max(num_steps - 1, 1)
  logsnr = jnp.where(i == 0, first, jnp.where(i == num_steps, last, logsnr))
  t = _inverse_schedule(logsnr_fn, logsnr)
  # The ends exactly: lambda(0) may be +inf (linear_beta), no bisection target.
  t = jnp.where(i == 0, 1.0, jnp.where(i == num_steps, 0.0, t))
  return t, logsnr.astype(jnp.float32)


def multistep_x(x: jax.Array, history: tuple[jax.Array, ...], h: jax.Array,
                h_prev: tuple[jax.Array, ...]) -> jax.Array:
  """DPM-Solver++'s extrapolated data prediction D over one step of size h.

  The exact step of the probability-flow ODE in half log-SNR l = lambda / 2 is
    z_s = (sigma_s / sigma_t) z_t + sigma_s int_{l_t}^{l_s} e^l x_hat(l) dl,
  and with x_hat constant (= x_hat(z_t)) it is the DDIM step. Multistep
  solvers replace that constant by a polynomial through the previous x_hat;
  this returns D with z_s = (sigma_s / sigma_t) z_t + alpha_s (1 - e^-h) D:
    no history: D = x (DDIM, first order);
    one previous x1: D = x + (x - x1) / (2 r0), r0 = h_prev[0] / h
      (Lu et al. 2022, Algorithm 2: DPM-Solver++(2M));
    two, x1 and x2: the quadratic through x, x1, x2, x(l_t + v h) =
      x + a v + b v^2 / 2, integrated exactly against e^l:
      D = x + (phi2 a - phi3 b) / (1 - e^-h), phi2 = 1 - (1 - e^-h) / h,
      phi3 = phi2 / h - 1/2 (third order, DPM-Solver++(3M)).
  The second difference b = 2 (d0 - d1) / (r0 + r1) carries the factor 2 of
  the quadratic's v^2 / 2 term; implementations that drop it (diffusers, the
  official DPM-Solver code) are second order (docs/vdm.md, "Samplers";
  pinned by tests/samplers_test.py::test_convergence_order_on_the_exact_ode).
  The first step has no history (DDIM, first order), so on grids whose first
  step is no longer than the rest the global order is at most 2.

  Args:
    x: x_hat at the current step, [B, ...].
    history: the previous x_hat, newest first (length 0, 1 or 2), [B, ...].
    h: l_s - l_t > 0 of this step, a scalar.
    h_prev: the sizes of the previous steps, newest first, one per history
      entry.

  Returns:
    D, [B, ...].
  """
  if not history:
    return x
  r0 = h_prev[0] / h
  d0 = (x - history[0]) / r0  # ~ h x_hat' (at the middle of the last step).
  if len(history) == 1:
    return x + 0.5 * d0
  r1 = h_prev[1] / h
  d1 = (history[0] - history[1]) / r1
  b = 2.0 * (d0 - d1) / (r0 + r1)  # ~ h^2 x_hat''
  a = d0 + 0.5 * r0 * b  # ~ h x_hat' at l_t
  one_minus = -jnp.expm1(-h)  # 1 - e^-h
  phi2 = 1.0 - one_minus / h
  phi3 = phi2 / h - 0.5
  return x + (phi2 * a - phi3 * b) / one_minus


def print_progress(step: int, num_steps: int) -> None:
  """Default progress display on stderr.

  On a terminal, one line rewritten in place (about 20 updates); in a log
  file (stderr not a terminal), whole lines at about every 10%, so the log
  does not become one long line of carriage-return updates.
  """
  step = int(step) + 1
  tty = sys.stderr.isatty()
  every = max(1, num_steps // (20 if tty else 10))
  if step == 1 or step == num_steps or step % every == 0:
    if tty:
      end = '\n' if step == num_steps else ''
      print(f'\rsampling step {step}/{num_steps}', end=end, file=sys.stderr, flush=True)
    else:
      print(f'sampling step {step}/{num_steps}', file=sys.stderr, flush=True)


def sample(model_fn: ModelFn, rng: jax.Array, shape: tuple[int, ...], *,
           logsnr_fn: schedules.LogSNRFn, parameterization: str,
           sampler: str = 'ancestral', num_steps: int = 256,
           gamma: Union[float, jax.Array] = 0.0,
           pc_delta: Union[float, jax.Array] = 0.1, pc_corrections: int = 1,
           clip_x: bool = True, time_grid: str = 'auto',
           logsnr_range: tuple[float, float] = LOGSNR_RANGE,
           z_init: Optional[jax.Array] = None,
           guide: Optional[Guide] = None, noise_fn: Optional[NoiseFn] = None,
           noise_cov: Optional[NoiseCovFn] = None,
           sample_ids: Optional[jax.Array] = None,
           return_trajectory: bool = False,
           trajectory_steps: Optional[int] = None,
           trajectory_frames: Optional[Sequence[int]] = None,
           progress: Union[bool, Callable[[int, int], None]] = False):
  """Draws samples by running the reverse process from t = 1 to t = 0.

  Samplers (see docs/vdm.md, "Samplers"), each step t -> s:
    'ancestral': z_s = mu(z_t, x_hat) + sqrt(var_tilde^(1-gamma) var_ts^gamma) e.
    'ddim': z_s = alpha_s x_hat + sigma_s eps_hat (deterministic, eta = 0).
    'ddim_renoise': the stochastic sampler of few-step distilled students
      (Meng et al., 2023): the DDIM step to the grid point after s,
      z_u = alpha_u x_hat + sigma_u eps_hat, then the forward process back
      to s, z_s = (alpha_s / alpha_u) z_u + sigma_{s|u} e, with
      sigma_{s|u}^2 = sigma_s^2 - (alpha_s / alpha_u)^2 sigma_u^2. With exact
      steps each step maps the marginal at t onto the one at s, as the
      ancestral step does; the move itself is a DDIM step (twice the grid's
      length), the kind of step a distilled student's x_hat is made for,
      which the ancestral posterior mean is not.
    'pc': the ancestral step followed by ``pc_corrections`` Langevin moves
      z <- z - 0.5 delta sigma_s eps_hat(z) + sqrt(delta) sigma_s e'.
    'dpm++2m', 'dpm++3m': DPM-Solver++ (Lu et al., 2022), multistep, in the
      data (x) formulation: the DDIM step with x_hat replaced by its
      extrapolation D through the last one or two x_hat (``multistep_x``),
      z_s = alpha_s x_hat + sigma_s eps_hat + alpha_s (1 - e^-h) (D - x_hat),
      h = (lambda_s - lambda_t) / 2; the first steps use the history there is.
      Deterministic; second and third order in the step size.
  Model evaluations: N for 'ancestral', 'ddim', 'ddim_renoise' and 'dpm++', N + (N - 1) *
  corrections for 'pc' (no correction after the final denoising step).

  Args:
    model_fn: (z [B, T, H, W, C], logsnr [B]) -> output in ``parameterization``.
    rng: PRNG key.
    shape: [B, T, H, W, C] (any [B, ...] works for models that accept it).
    logsnr_fn: the schedule t -> lambda_t.
    parameterization: 'eps', 'v' or 'x', what model_fn predicts.
    sampler: one of SAMPLERS.
    num_steps: N >= 1 model evaluations of the predictor (static).
    gamma: ancestral variance interpolation in [0, 1]; 0 is the posterior
      variance, 1 the forward-step variance. Used by 'ancestral' and 'pc' only.
    pc_delta: Langevin step size delta of 'pc' (the paper's 0.1).
    pc_corrections: Langevin moves after each ancestral step (static).
    clip_x: clip x_hat to [-1, 1] (static thresholding; eps_hat follows;
      DPM-Solver++ extrapolates the clipped x_hat). Turn off for data that is
      not in [-1, 1].
    time_grid: one of TIME_GRIDS (see ``make_time_grid``); 'auto' is 'uniform_t'
      for 'ancestral', 'ddim', 'ddim_renoise' and 'pc', 'uniform_logsnr' for
      DPM-Solver++.
    logsnr_range: (lo, hi), the log-SNR span of the 'uniform_logsnr' grid.
    z_init: optional starting latent at t = 1, [B, ...]; drawn from noise_fn
      when None (VidRD's reused noise enters here).
    guide: optional Guide (see module docstring) applied at every model
      evaluation; None denoises plainly.
    noise_fn: the noise law of every fresh draw (z_init, the ancestral and
      Langevin step noise, and the guide's through Step.noise_fn);
      standard_normal when None.
    noise_cov: NoiseCovFn of noise_fn's law, handed to guides as
      Step.noise_cov for the clip's shape[1] frames; None: i.i.d. noise.
    sample_ids: optional int32 [B], the global index of each sample: every
      draw then goes through ``per_sample_noise``, so that sample i is the
      same whatever the batch it is drawn in (sharded and chunked sampling).
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
  if time_grid not in TIME_GRIDS:
    raise ValueError(f'time_grid={time_grid!r} is unknown; choose one of {TIME_GRIDS}.')
  gaussian.check_parameterization(parameterization)
  order = _MULTISTEP_ORDER.get(sampler, 0)
  if time_grid == 'auto':
    time_grid = 'uniform_logsnr' if order else 'uniform_t'
  guide = default_guide if guide is None else guide
  callback = print_progress if progress is True else (progress or None)
  batch = shape[0]
  noise_fn = noise_law(noise_fn, sample_ids)
  frame_cov = None if noise_cov is None or len(shape) < 2 else noise_cov(shape[1])
  rng_init, rng_loop = jax.random.split(rng)
  if z_init is None:
    z_init = noise_fn(rng_init, tuple(shape))  # [B, T, H, W, C]
  z_init = jnp.asarray(z_init, jnp.float32)
  if z_init.shape != tuple(shape):
    raise ValueError(f'z_init has shape {z_init.shape}, expected {tuple(shape)}.')

  ts, logsnrs = make_time_grid(logsnr_fn, num_steps, time_grid, logsnr_range)  # [N + 1] each
  half_steps = 0.5 * (logsnrs[1:] - logsnrs[:-1])  # [N], h_i in half log-SNR

  def at(i):
    """The Step of grid index i; t_N = 0 only enters as the last target."""
    return Step(i, num_steps, ts[i], jnp.full((batch,), logsnrs[i], jnp.float32), noise_fn,
                frame_cov)

  def denoise_at(z, step, rng):
    """Guide, then static thresholding: the (z, x_hat, eps_hat) the step uses."""
    z, x, eps = guide(make_denoise(model_fn, parameterization, step.logsnr), z, step, rng)
    if clip_x:
      x, eps = shift_x(x, eps, jnp.clip(x, -1.0, 1.0) - x, step.logsnr)
    return z, x, eps

  def corrected_denoise(z, step, rng_corr, rng_guide):
    """'pc' at t_i: the Langevin moves, then the denoising the step uses.

    One loop whose body holds the only call of the denoiser: move j denoises
    with its own keys and moves z; the last pass denoises for the step. So
    the compiled program holds the network (and a guide's gradient of it)
    once, not twice. At t_0 = 1 there was no ancestral step to correct, and
    the loop starts at the last pass.
    """
    sigma = schedules.alpha_sigma(gaussian.expand_to(step.logsnr, z))[1]

    def move_or_denoise(j, carry):
      z = carry[0]
      is_move = j < pc_corrections
      rng_g, rng_n = jax.lax.cond(
          is_move, lambda: tuple(jax.random.split(jax.random.fold_in(rng_corr, j))),
          lambda: (rng_guide, rng_guide))
      z, x, eps = denoise_at(z, step, rng_g)
      noise = noise_fn(rng_n, z.shape)
      moved = z - 0.5 * pc_delta * sigma * eps + jnp.sqrt(pc_delta) * sigma * noise
      return jnp.where(is_move, moved, z), x, eps

    first = jnp.where(step.index > 0, 0, pc_corrections)
    return jax.lax.fori_loop(first, pc_corrections + 1, move_or_denoise, (z, z, z))

  def record(z):
    """The part of z that the trajectory keeps."""
    return z if trajectory_frames is None else jnp.take(z, jnp.asarray(trajectory_frames), axis=1)

  def multistep_correction(x, history, i, alpha_s):
    """DPM-Solver++'s alpha_s (1 - e^-h) (D - x_hat) at step i, D of the
    highest order the history holds (step i has i previous x_hat)."""
    h = half_steps[i]
    correction = jnp.zeros_like(x)
    for k in range(1, len(history) + 1):  # k previous x_hat: order k + 1.
      h_prev = tuple(half_steps[jnp.maximum(i - 1 - j, 0)] for j in range(k))
      correction = jnp.where(i >= k, multistep_x(x, history[:k], h, h_prev) - x, correction)
    # The last transition returns x_hat; its h may be infinite (lambda(0) = inf).
    correction = jnp.where(i < num_steps - 1, correction, 0.0)
    return alpha_s * -jnp.expm1(-h) * correction

  def body(carry, i):
    z, buffer, history = carry
    if callback is not None:
      jax.debug.callback(callback, i, num_steps)
    rng_corr, rng_guide, rng_noise = jax.random.split(jax.random.fold_in(rng_loop, i), 3)
    step, target = at(i), at(i + 1)
    if sampler == 'pc' and pc_corrections:
      # The correction after the ancestral step into t_i runs here, at t_i, so
      # that one body serves every step.
      z, x, eps = corrected_denoise(z, step, rng_corr, rng_guide)
    else:
      z, x, eps = denoise_at(z, step, rng_guide)
    if buffer is not None:
      # Steps from K on rewrite slot K - 1 with its own value: one loop body, no cond.
      slot = jnp.minimum(i, trajectory_steps - 1)
      kept = jnp.where(i < trajectory_steps, record(z), buffer[slot])
      buffer = jax.lax.dynamic_update_index_in_dim(buffer, kept, slot, 0)
    if sampler == 'ddim' or order:
      alpha_s, sigma_s = schedules.alpha_sigma(gaussian.expand_to(target.logsnr, z))
      z_s = alpha_s * x + sigma_s * eps
      if order:
        z_s = z_s + multistep_correction(x, history, i, alpha_s)
        history = (x,) + history[:-1]
    elif sampler == 'ddim_renoise':
      # At i = N - 2 the point after s is t_N = 0 (z_u = x_hat); the last
      # transition (i = N - 1) returns x_hat below.
      beyond = at(jnp.minimum(i + 2, num_steps))
      alpha_u, sigma_u = schedules.alpha_sigma(gaussian.expand_to(beyond.logsnr, z))
      z_u = alpha_u * x + sigma_u * eps
      mean, var = forward_step(z_u, beyond.logsnr, target.logsnr)
      z_s = mean + jnp.sqrt(var) * noise_fn(rng_noise, z.shape)
    else:
      mean, var_tilde, var_ts = posterior(z, x, step.logsnr, target.logsnr)
      std = jnp.sqrt(var_tilde**(1.0 - gamma) * var_ts**gamma)
      z_s = mean + std * noise_fn(rng_noise, z.shape)
    # Last transition (to t = 0): the posterior collapses onto x_hat.
    z_next = jnp.where(i == num_steps - 1, x, z_s)
    return (z_next, buffer, history), (record(z) if return_trajectory and buffer is None else None)

  buffer = None
  if trajectory_steps is not None:
    buffer = jnp.zeros((trajectory_steps,) + jax.eval_shape(record, z_init).shape,
                       jnp.float32)
  # DPM-Solver++ carries its previous x_hat, newest first (zeros until written).
  history = tuple(jnp.zeros_like(z_init) for _ in range(order - 1)) if order else ()
  (x, buffer, _), trajectory = jax.lax.scan(body, (z_init, buffer, history),
                                            jnp.arange(num_steps, dtype=jnp.int32))
  if buffer is not None:
    trajectory = buffer
  return (x, trajectory) if return_trajectory else x
