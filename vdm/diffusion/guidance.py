"""Guidance: classifier-free guidance, replacement and reconstruction guidance.

Classifier-free guidance wraps a label-conditioned network into the plain
``model_fn(z, logsnr)`` that the samplers take. Conditional sampling (known
frames, or a known low-resolution video) is a ``samplers.Guide`` that the
sampler calls at every model evaluation; see vdm/diffusion/samplers.py.

Conventions:
  * Classifier-free weight w is the paper's: eps~ = (1 + w) eps(z, c) - w eps(z);
    w = 0 is the plain conditional model (diffusers/imagen's scale s = 1 + w).
  * Reconstruction guidance (docs/vdm.md, "Conditional sampling"):
      x~^b = x_hat^b - (w_r alpha_t / 2) grad_{z_t^b} || x^a - x_hat^a(z_t) ||^2
    with the squared norm a sum over every known number, applied on top of
    replacement (z^a <- a fresh sample of q(z_t^a | x^a) before denoising), so
    w_r = 0 is the replacement method.
  * Correlated noise (a method whose noise has covariance C across frames,
    Step.noise_cov, e.g. VideoFusion's): the squared norm is taken in the
    noise's metric, ||r||^2_{C_aa^-1} = r^T C_aa^-1 r over the frames the
    residual covers, and its gradient is mapped back through C:
      x~^b = x_hat^b - (w_r alpha_t / 2) [C grad_{z_t} ||x^a - x_hat^a(z_t)||^2_{C_aa^-1}]^b.
    For Gaussian data the exact conditional mean is
      E[x^b | z_t, x^a] = x_hat^b + (sigma^2 / alpha) [C J^T]_ba Cov(x^a | z_t)^-1 (x^a - x_hat^a)
    with J = dx_hat / dz_t; the rule above is that with Cov(x^a | z_t)
    approximated by sigma^2 / (w_r alpha^2) C_aa, the covariance of the noise
    that denoising removes. With C = I it is the paper's rule, bit for bit.
    Under VideoFusion's law (l = 0.5) the i.i.d. rule misses the exact
    conditional mean by about as much as replacement does
    (tests/videofusion_test.py).
  * Super-resolution: the observation is ``bilinear_downsample(x)``
    (jax.image.resize, method 'linear', antialias=True: a triangle filter
    widened by the downsampling factor). Nothing is replaced; the whole z is
    unknown and the loss is taken on the downsampled x_hat.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from vdm.diffusion import conditions
from vdm.diffusion import gaussian
from vdm.diffusion import samplers
from vdm.diffusion import schedules

# fn(z [B, ...], logsnr [B], label [B] int) -> model output, same shape as z.
LabelModelFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def classifier_free(fn: LabelModelFn, label: jax.Array,
                    guidance_weight: float | jax.Array) -> samplers.ModelFn:
  """Classifier-free guidance as a model_fn for the samplers.

  The conditional and the unconditional branch run in ONE call of ``fn`` on a
  doubled batch [z; z] with labels [label; NULL_LABEL].

  The outputs are mixed directly in the model's own parameterization. That is
  exactly the paper's mixing in eps space: at fixed z every parameterization is
  an affine map of eps (eps itself; v = (eps - sigma z) / alpha; x = (z - sigma
  eps) / alpha) and the weights (1 + w) and -w sum to one, so the affine offset
  passes through unchanged. Mixing outputs avoids converting to eps and back,
  which loses precision where alpha or sigma is tiny.

  Args:
    fn: (z, logsnr, label) -> output of a network trained with label dropout.
    label: int labels [B] (or per frame [B, T]), or a {'label', 'text'}
      condition (vdm.diffusion.conditions); null entries sample
      unconditionally.
    guidance_weight: w >= 0 in the paper's convention (0: no guidance).

  Returns:
    model_fn(z [B, ...], logsnr [B]) -> guided output [B, ...], float32.
  """
  label = conditions.as_int(label)

  def model_fn(z, logsnr):
    b = z.shape[0]
    shape = conditions.frames_shape(label)
    if shape[:1] != (b,) or len(shape) > 2:
      raise ValueError(f'label must be [B] or [B, T] with B = {b}; got shape {shape}.')
    out = fn(jnp.concatenate([z, z]), jnp.concatenate([logsnr, logsnr]),
             conditions.concatenate(label, conditions.null(label)))
    # The mix amplifies the difference of the branches by w: in bfloat16 that
    # difference would keep only a few significant bits.
    out = out.astype(jnp.float32)
    cond, uncond = out[:b], out[b:]  # [B, T, H, W, C] each
    return (1.0 + guidance_weight) * cond - guidance_weight * uncond

  return model_fn


def label_model_fn(fn: LabelModelFn, label: Optional[jax.Array],
                   guidance_weight: float | jax.Array, *, guided: bool) -> samplers.ModelFn:
  """A network that takes labels as a model_fn for the samplers.

  The one place that decides between the unconditional network, the plain
  conditional one and classifier-free guidance. With w = 0 guidance is the
  conditional branch alone, so ``guided=False`` skips the unconditional half
  of the doubled batch (half the work, the same output).

  Args:
    fn: (z, logsnr, label or None) -> output.
    label: int labels [B] or [B, T], or None for an unconditional network.
    guidance_weight: w of ``classifier_free`` (used when guided).
    guided: whether to mix in the unconditional branch. A Python bool, since
      it changes the traced program; callers derive it as w != 0.

  Returns:
    model_fn(z [B, ...], logsnr [B]) -> output [B, ...].
  """
  if label is None:
    return lambda z, logsnr: fn(z, logsnr, None)
  if not guided:
    return lambda z, logsnr: fn(z, logsnr, label)
  return classifier_free(fn, label, guidance_weight)


def bilinear_downsample(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Antialiased bilinear resize of every frame to ``size``.

  Args:
    x: video [B, T, H, W, C].
    size: (h, w) of the output frames.

  Returns:
    [B, T, h, w, C].
  """
  b, t, _, _, c = x.shape
  return jax.image.resize(x, (b, t, *size, c), method='linear', antialias=True)


def _frame_mask(mask: jax.Array, like: jax.Array) -> jax.Array:
  """A [T] bool mask shaped [1, T, 1, 1, 1] to broadcast against video."""
  mask = jnp.asarray(mask, bool)
  if mask.shape != like.shape[1:2]:
    raise ValueError(f'frame_mask must be [T] = [{like.shape[1]}]; got {mask.shape}.')
  return mask.reshape((1, -1) + (1,) * (like.ndim - 2))


def _is_static_zero(weight) -> bool:
  return isinstance(weight, (int, float)) and weight == 0


def _frames_matmul(matrix: jax.Array, video: jax.Array) -> jax.Array:
  """Applies a [T, T] matrix along the frame axis of [B, T, ...]."""
  return jnp.einsum('ij,bj...->bi...', matrix.astype(video.dtype), video)


def _residual_metric(noise_cov: np.ndarray, frames: Optional[jax.Array]) -> jax.Array:
  """C_aa^-1 of the residual's frames a, as a [T, T] matrix (I on the others).

  Args:
    noise_cov: [T, T] noise covariance across frames.
    frames: [T] bool, the frames the residual covers (may be traced); None
      for all.

  Returns:
    [T, T] float32: inverse of the block of C on those frames, placed there.
  """
  cov = jnp.asarray(noise_cov, jnp.float32)
  if frames is None:
    return jnp.linalg.inv(cov)
  frames = jnp.asarray(frames, bool)
  both = frames[:, None] & frames[None, :]
  # Block-diagonal: C_aa on the residual's frames, the identity elsewhere.
  return jnp.linalg.inv(jnp.where(both, cov, jnp.eye(len(cov), dtype=cov.dtype)))


def conditional_guide(*, x_known: Optional[jax.Array] = None,
                      frame_mask: Optional[jax.Array] = None,
                      residual_fn: Optional[Callable[[jax.Array], jax.Array]] = None,
                      w_r: float | jax.Array = 0.0,
                      residual_frames: Optional[jax.Array] = None) -> samplers.Guide:
  """The general conditional guide: replacement and/or reconstruction guidance.

  At each model evaluation, in this order:
    1. if ``frame_mask`` is given: z^a <- alpha_t x^a + sigma_t e with fresh
       noise e of the sampler's noise law (a fresh sample of q(z_t^a | x^a));
    2. x_hat, eps_hat = denoise(z); unless ``w_r`` is a Python 0, the
       gradient g = grad_z sum(residual_fn(x_hat(z))^2) is taken through the
       whole denoiser and x_hat <- x_hat - (w_r alpha_t / 2) g, eps_hat kept
       consistent (samplers.shift_x); under correlated noise
       (step.noise_cov = C) the sum is r^T C_aa^-1 r along frames and g is
       replaced by C g (module docstring);
    3. if ``frame_mask`` is given: x_hat^a <- x^a and eps_hat^a <- e, the exact
       pair of the replaced z^a (the next step replaces z^a anyway, and the
       final output then carries the known frames exactly).
  A traced w_r of 0 takes the gradient path and gives the same result as a
  Python 0, which skips the backward pass.

  Args:
    x_known: [B, T, H, W, C] video whose masked frames are x^a (other frames
      are ignored); needed with frame_mask.
    frame_mask: [T] bool, True for known frames; None replaces nothing.
    residual_fn: x_hat [B, T, H, W, C] -> residual [B, T, ...] whose squared
      sum is the reconstruction loss; None (or w_r 0) means no reconstruction
      term.
    w_r: the reconstruction guidance weight.
    residual_frames: [T] bool, the frames where the residual can be nonzero
      (the known frames), for the noise metric C_aa^-1; None: all frames.

  Returns:
    A samplers.Guide.
  """
  if (frame_mask is None) != (x_known is None):
    raise ValueError('x_known and frame_mask go together.')
  use_gradient = residual_fn is not None and not _is_static_zero(w_r)

  def guide(denoise, z, step, rng):
    if frame_mask is not None:
      mask = _frame_mask(frame_mask, z)  # [1, T, 1, 1, 1]
      noise = step.noise_fn(rng, z.shape)  # The method's law, as the sampler's.
      z = jnp.where(mask, gaussian.q_sample(x_known, step.logsnr, noise), z)
    if use_gradient:
      correlated = step.noise_cov is not None
      metric = _residual_metric(step.noise_cov, residual_frames) if correlated else None

      def loss(z):
        x, eps = denoise(z)
        r = residual_fn(x)  # [B, T, ...]
        weighted = r if metric is None else _frames_matmul(metric, r)
        return jnp.sum(r * weighted), (x, eps)
      grad, (x, eps) = jax.grad(loss, has_aux=True)(z)  # grad: [B, T, H, W, C]
      if correlated:
        grad = _frames_matmul(jnp.asarray(step.noise_cov, jnp.float32), grad)
      alpha = schedules.alpha_sigma(gaussian.expand_to(step.logsnr, z))[0]
      x, eps = samplers.shift_x(x, eps, -0.5 * w_r * alpha * grad, step.logsnr)
    else:
      x, eps = denoise(z)
    if frame_mask is not None:
      x = jnp.where(mask, x_known, x)
      eps = jnp.where(mask, noise, eps)
    return z, x, eps

  return guide


def replacement_guide(x_known: jax.Array, frame_mask: jax.Array) -> samplers.Guide:
  """The replacement method for known frames.

  Args:
    x_known: [B, T, H, W, C], the known frames at the masked positions.
    frame_mask: [T] bool, True for known frames.

  Returns:
    A samplers.Guide.
  """
  return conditional_guide(x_known=x_known, frame_mask=frame_mask)


def reconstruction_guide(x_known: jax.Array, frame_mask: jax.Array,
                         w_r: float | jax.Array) -> samplers.Guide:
  """Reconstruction guidance for known frames, on top of replacement.

  Args:
    x_known: [B, T, H, W, C], the known frames at the masked positions.
    frame_mask: [T] bool, True for known frames.
    w_r: the reconstruction guidance weight (the paper: 50 on BAIR, 9 on
      Kinetics); 0 is replacement.

  Returns:
    A samplers.Guide.
  """
  x_known = jnp.asarray(x_known, jnp.float32)

  def residual(x):
    return jnp.where(_frame_mask(frame_mask, x), x_known - x, 0.0)

  return conditional_guide(x_known=x_known, frame_mask=frame_mask,
                           residual_fn=residual, w_r=w_r, residual_frames=frame_mask)


def super_resolution_guide(
    low_res: jax.Array, w_r: float | jax.Array,
    downsample: Optional[Callable[[jax.Array, tuple[int, int]], jax.Array]] = None
) -> samplers.Guide:
  """Reconstruction guidance towards a known low-resolution video.

  Args:
    low_res: [B, T, h, w, C] observation.
    w_r: the reconstruction guidance weight.
    downsample: (x [B, T, H, W, C], (h, w)) -> [B, T, h, w, C]; defaults to
      bilinear_downsample.

  Returns:
    A samplers.Guide (replaces nothing; guides the whole z).
  """
  low_res = jnp.asarray(low_res, jnp.float32)
  downsample = downsample or bilinear_downsample
  size = low_res.shape[2:4]

  def residual(x):
    return low_res - downsample(x, size)

  return conditional_guide(residual_fn=residual, w_r=w_r)
