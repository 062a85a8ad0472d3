"""Conditional and long-video sampling drivers on top of the samplers.

Every driver takes a ``model_fn(z [B, T, H, W, C], logsnr [B]) -> output`` (a
network closure, a classifier-free guided wrapper from
vdm.diffusion.guidance.classifier_free, or the exact Gaussian denoiser in
tests) and passes any further keyword (logsnr_fn, parameterization, sampler,
num_steps, gamma, pc_delta, pc_corrections, clip_x, progress) on to
vdm.diffusion.samplers.sample.

Uses:
  * prediction / single-clip extension: ``predict_frames`` (the first k frames
    of a clip known, e.g. BAIR's 1 -> 15);
  * interpolation: ``interpolate_frames`` (keyframes every ``stride`` frames);
  * any known-frame pattern: ``sample_given_frames``;
  * spatial super-resolution with an unconditional high-resolution model:
    ``super_resolve``;
  * autoregressive extension to any length: ``extend_video``.

jit: the single-clip drivers are jit-able as a whole (wrap them in jax.jit with
the sampler options static). ``extend_video`` jits its per-clip sampler once.
For a large network, pass ``model_fn`` as ``jax.tree_util.Partial(apply,
params)``: extend_video then hands the weights to the compiled sampler as
arguments instead of baking them into the program as constants.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from vdm import progress as progress_lib
from vdm import sharding
from vdm.diffusion import guidance
from vdm.diffusion import samplers

# How known frames enter (docs/vdm.md). The reconstruction weight w_r
# has no default here: its one default is config.sampling.w_r.
CONDITIONINGS = ('reconstruction', 'replacement')


def _frames_guide(x_known: jax.Array, frame_mask: jax.Array, conditioning: str,
                  w_r) -> samplers.Guide:
  if conditioning == 'reconstruction':
    return guidance.reconstruction_guide(x_known, frame_mask, w_r)
  if conditioning == 'replacement':
    return guidance.replacement_guide(x_known, frame_mask)
  raise ValueError(f'conditioning={conditioning!r} is unknown; choose one of {CONDITIONINGS}.')


def sample_given_frames(model_fn: samplers.ModelFn, rng: jax.Array,
                        x_known: jax.Array, frame_mask: jax.Array, *,
                        conditioning: str = 'reconstruction', w_r, **sampler_kwargs) -> jax.Array:
  """Samples the unknown frames of a clip given its known frames.

  Args:
    model_fn: (z, logsnr) -> model output.
    rng: PRNG key.
    x_known: [B, T, H, W, C]; the frames where frame_mask is True are x^a,
      the others are ignored (zeros are fine).
    frame_mask: [T] bool, True for known frames (may be traced).
    conditioning: 'reconstruction' (replacement plus reconstruction guidance) or
      'replacement'.
    w_r: the reconstruction guidance weight (ignored by replacement).
    **sampler_kwargs: passed to samplers.sample (logsnr_fn and
      parameterization are required there).

  Returns:
    [B, T, H, W, C] video; the known frames equal x_known exactly.
  """
  x_known = jnp.asarray(x_known, jnp.float32)
  guide = _frames_guide(x_known, frame_mask, conditioning, w_r)
  return samplers.sample(model_fn, rng, x_known.shape, guide=guide, **sampler_kwargs)


def _place_frames(frames: jax.Array, positions: np.ndarray,
                  num_frames: int) -> tuple[jax.Array, np.ndarray]:
  """Puts frames [B, k, ...] at ``positions`` of a zero clip of num_frames."""
  b, _, *rest = frames.shape
  clip = jnp.zeros((b, num_frames, *rest), jnp.float32).at[:, positions].set(frames)
  mask = np.zeros(num_frames, bool)
  mask[positions] = True
  return clip, mask


def predict_frames(model_fn: samplers.ModelFn, rng: jax.Array, context: jax.Array,
                   num_frames: int, **kwargs) -> jax.Array:
  """Continues a video: its first k frames are given, the rest of a clip sampled.

  Args:
    model_fn: (z, logsnr) -> model output.
    rng: PRNG key.
    context: [B, k, H, W, C], the first frames (k < num_frames).
    num_frames: T, the clip length the model runs on (BAIR: 1 given -> 16).
    **kwargs: conditioning, w_r and sampler options, as for
      sample_given_frames.

  Returns:
    [B, num_frames, H, W, C], starting with ``context``.
  """
  k = context.shape[1]
  if not 0 < k < num_frames:
    raise ValueError(f'{k} context frames do not leave room in a clip of {num_frames}.')
  clip, mask = _place_frames(context, np.arange(k), num_frames)
  return sample_given_frames(model_fn, rng, clip, mask, **kwargs)


def interpolate_frames(model_fn: samplers.ModelFn, rng: jax.Array,
                       keyframes: jax.Array, stride: int, **kwargs) -> jax.Array:
  """Fills stride - 1 frames between consecutive keyframes.

  Args:
    model_fn: (z, logsnr) -> model output on clips of (K - 1) stride + 1 frames.
    rng: PRNG key.
    keyframes: [B, K, H, W, C], K >= 2.
    stride: distance between keyframes in the output (>= 2).
    **kwargs: conditioning, w_r and sampler options, as for
      sample_given_frames.

  Returns:
    [B, (K - 1) stride + 1, H, W, C] with keyframe i at frame i * stride.
  """
  k = keyframes.shape[1]
  if k < 2 or stride < 2:
    raise ValueError(f'interpolation needs >= 2 keyframes and stride >= 2; got {k}, {stride}.')
  clip, mask = _place_frames(keyframes, np.arange(k) * stride, (k - 1) * stride + 1)
  return sample_given_frames(model_fn, rng, clip, mask, **kwargs)


def super_resolve(model_fn: samplers.ModelFn, rng: jax.Array, low_res: jax.Array,
                  size: tuple[int, int], *, w_r, downsample=None,
                  **sampler_kwargs) -> jax.Array:
  """Spatial super-resolution by reconstruction guidance on an unconditional model.

  The high-resolution model is unconditional; the low-resolution video only
  enters through the guidance loss || low_res - downsample(x_hat) ||^2.

  Args:
    model_fn: (z [B, T, H, W, C], logsnr) -> output of the high-resolution model.
    rng: PRNG key.
    low_res: [B, T, h, w, C].
    size: (H, W) of the output frames.
    w_r: the reconstruction guidance weight.
    downsample: (x, (h, w)) -> low-resolution x; guidance.bilinear_downsample
      (antialiased) when None.
    **sampler_kwargs: passed to samplers.sample.

  Returns:
    [B, T, H, W, C].
  """
  b, t, _, _, c = low_res.shape
  guide = guidance.super_resolution_guide(low_res, w_r, downsample)
  return samplers.sample(model_fn, rng, (b, t, *size, c), guide=guide, **sampler_kwargs)


def _as_pytree_fn(model_fn):
  """model_fn as a pytree, so jit takes its weights (if any) as arguments."""
  if isinstance(model_fn, jax.tree_util.Partial):
    return model_fn
  return jax.tree_util.Partial(model_fn)


def extend_video(model_fn: samplers.ModelFn, rng: jax.Array, num_frames: int, *,
                 clip_frames: int, context_frames: int,
                 init_frames: Optional[jax.Array] = None,
                 clip_shape: Optional[tuple[int, int, int, int]] = None,
                 conditioning: str = 'reconstruction', w_r: float, verbose: bool = False,
                 sample_ids: Optional[jax.Array] = None, mesh=None,
                 **sampler_kwargs) -> np.ndarray:
  """Generates a video of any length, clip by clip.

  Starts from ``init_frames`` or from an unconditional first clip, then
  repeatedly samples a clip of ``clip_frames`` whose first frames are the last
  ``context_frames`` frames so far (fewer if fewer exist) and appends its new
  frames, until ``num_frames``. Memory on the device is one clip: finished
  frames go to host memory; the conditional clip sampler is compiled once (the
  context length is a traced mask) and reused for every clip.

  Args:
    model_fn: (z [B, clip_frames, H, W, C], logsnr) -> model output; preferably
      a jax.tree_util.Partial holding the weights (see module docstring).
    rng: PRNG key.
    num_frames: total frames of the output.
    clip_frames: T, frames per model call.
    context_frames: k, frames each new clip is conditioned on (0 < k < T).
    init_frames: [B, n0, H, W, C] given first frames, kept in the output; None
      starts with an unconditional clip.
    clip_shape: (B, H, W, C), needed when init_frames is None.
    conditioning: 'reconstruction' or 'replacement'.
    w_r: the reconstruction guidance weight (needed with 'reconstruction').
    verbose: print one progress line per clip.
    sample_ids: optional int32 [B] global sample indices (see
      samplers.per_sample_noise): sample i is then the same in any batch.
    mesh: optional device mesh: each clip's batch is split over its batch
      axes (vdm.sharding.shard_rows) and the frames are gathered to every
      process (multi-host).
    **sampler_kwargs: passed to samplers.sample.

  Returns:
    numpy [B, num_frames, H, W, C] float32.
  """
  if not 0 < context_frames < clip_frames:
    raise ValueError(f'context_frames={context_frames} must be in (0, clip_frames='
                     f'{clip_frames}).')
  pytree_fn = _as_pytree_fn(model_fn)

  @jax.jit
  def conditional_clip(fn, rng, x_known, frame_mask, ids):
    return sample_given_frames(fn, rng, x_known, frame_mask, conditioning=conditioning, w_r=w_r,
                               sample_ids=ids, **sampler_kwargs)

  progress = progress_lib.Progress('extend_video', num_frames, 'frames')

  def report(frames_done, clip):
    if verbose:
      progress(frames_done, f'clip {clip} done')

  rng_first, rng = jax.random.split(rng)
  if init_frames is None:
    if clip_shape is None:
      raise ValueError('extend_video needs clip_shape (B, H, W, C) without init_frames.')
    b, h, w, c = clip_shape
    first = jax.jit(lambda fn, rng, ids: samplers.sample(
        fn, rng, (b, clip_frames, h, w, c), sample_ids=ids, **sampler_kwargs))(
            pytree_fn, rng_first, sample_ids)
    video = [sharding.to_host(first)]
  else:
    video = [sharding.to_host(init_frames).astype(np.float32)]
  context = video[0][:, -context_frames:]  # [B, k', H, W, C], k' <= k
  done = video[0].shape[1]
  report(done, 0)
  clip = 0
  while done < num_frames:
    clip += 1
    k = context.shape[1]
    x_known, mask = _place_frames(context, np.arange(k), clip_frames)
    out = conditional_clip(pytree_fn, jax.random.fold_in(rng, clip),
                           sharding.shard_rows(x_known, mesh), mask, sample_ids)
    video.append(sharding.to_host(out)[:, k:])  # The new frames only.
    context = np.concatenate([context, video[-1]], axis=1)[:, -context_frames:]
    done += clip_frames - k
    report(done, clip)
  return np.concatenate(video, axis=1)[:, :num_frames]
