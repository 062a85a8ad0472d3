"""Long-video drivers: VidRD (Reuse and Diffuse) beside reconstruction-guided extension.

Both drivers generate a video of any length clip by clip with a model that
runs on clips of a fixed length, over the one loop in
vdm.diffusion.samplers.sample:

  * ``extend_video`` (defined in vdm.sampling, re-exported here): each new clip
    is sampled conditioned on the last frames so far, by reconstruction
    guidance (or replacement), and only its new frames are kept.
  * ``vidrd_video``: VidRD (Gu et al., 2023; docs/vidrd.md). Clip i of N
    frames reuses clip i-1's initial noise and, during its first DDIM steps,
    clip i-1's latent trajectory on its first M (overlap) frames:
      - FNR, frame-level noise reversion: z_T^{i,j} = z_T^{i-1,s(j)}, j < M;
      - PNS, past-dependent noise sampling: for j >= M,
        z_T^{i,j} = a / sqrt(1 + a^2) z_T^{i-1,N-1-j} + e, e ~ N(0, I / (1 + a^2)),
        so every element keeps unit variance;
      - DSG, denoising with staged guidance: overlap frame j is overwritten by
        clip i-1's latent of frame s(j) at the same step for the first
        ceil((M - r_j) (T / M) beta) steps, r_j = N - 1 - s(j) the distance of
        its source from the previous clip's last frame; beta = 0 is plain DDIM.
    ``order`` picks the source s(j) of the overlap frames:
      - 'reversed' (the paper and its official code): s(j) = N - 1 - j, so r_j
        = j (the official M = 4, T = 50, beta = 0.4 pins frames 0..3 for 20,
        15, 10 and 5 steps), and every clip is kept whole in the output, the
        overlap frames included, as the official code concatenates them;
      - 'forward': s(j) = N - M + j, the new clip's frame j continues the
        previous clip's frame N - M + j, so r_j = M - 1 - j (the frame next to
        the new frames is pinned longest), and the overlap frames are dropped
        from the output. PNS keeps the paper's source N - 1 - j: with the
        forward overlap sources it is still a permutation of the previous
        clip's frames, so no two frames of a clip share a noise.

VidRD with a method whose noise couples the frames (VideoFusion's shared
base noise, covariance C across frames): FNR and PNS act on the whitened noise
L^-1 z_T (C = L L^T), where the frames are i.i.d., and the result is mapped
back, so every clip's initial noise follows the method's law exactly
(``next_initial_noise``).

VidRD with other samplers: FNR and PNS only set z_init; DSG pins the overlap
frames to the latents the previous clip's model saw at the same step, which is
defined for any sampler, so 'ancestral' and 'pc' are allowed (for 'pc' the
Langevin corrections of a pinned step see the same pinned latents). But the
pinning only ties the clips together when the steps after it are
deterministic: a stochastic sampler adds fresh noise to the overlap frames at
every unpinned step, so they drift away from the previous clip's frames
(docs/vidrd.md measures how far). The paper and its official code use DDIM,
which is the default of this driver and of config.sampling.vidrd_sampler
(``driver_sampler``).

Memory: DSG needs clip i-1's latents only at its first K = ceil(beta T) steps
and only at the M source frames; samplers.sample records exactly that
(``trajectory_steps``, ``trajectory_frames``) in a [K, B, M, H, W, C] float32
buffer, 4 K B M H W C bytes (official setting, B = 4, 4x32x32 latents: 5.2 MB;
B = 8 pixel clips of 64x64x3: 31 MB). It stays on the device, where the next
clip reads it, together with clip i-1's initial noise (one clip). The official
code keeps all T steps of all N frames (T N / (K M) = 10x more for N = 16).
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from vdm import progress as progress_lib
from vdm import sharding
from vdm.diffusion import samplers
from vdm.sampling import conditional
from vdm.sampling.conditional import extend_video  # noqa: F401  (re-exported: one home for long-video drivers)

ORDERS = ('reversed', 'forward')
# Keywords the driver sets itself on samplers.sample.
_RESERVED = ('z_init', 'guide', 'return_trajectory', 'trajectory_steps', 'trajectory_frames')


def _check_order(order: str) -> None:
  if order not in ORDERS:
    raise ValueError(f'order={order!r} is unknown; choose one of {ORDERS}.')


def overlap_sources(clip_frames: int, overlap: int, order: str = 'reversed') -> np.ndarray:
  """The previous clip's frame s(j) that overlap frame j of the next clip reuses.

  Args:
    clip_frames: N.
    overlap: M, 0 <= M < N.
    order: 'reversed' (s(j) = N - 1 - j, the paper's) or 'forward'
      (s(j) = N - M + j).

  Returns:
    int array [M].
  """
  _check_order(order)
  j = np.arange(overlap)
  return clip_frames - 1 - j if order == 'reversed' else clip_frames - overlap + j


def pinned_steps(clip_frames: int, overlap: int, num_steps: int, beta: float,
                 order: str = 'reversed') -> np.ndarray:
  """DSG's schedule: for how many first steps each overlap frame is pinned.

  Overlap frame j is pinned at steps i < (M - r_j) (T / M) beta, the official
  code's rule, r_j = N - 1 - s(j) the distance of its source from the previous
  clip's last frame (r_j = j in the reversed order).

  Args:
    clip_frames: N.
    overlap: M.
    num_steps: T, the sampler's steps.
    beta: in [0, 1]; 0 pins nothing, 1 pins the frame next to the seam for
      all T steps.
    order: as for overlap_sources.

  Returns:
    int array [M], each in [0, T].
  """
  rank = clip_frames - 1 - overlap_sources(clip_frames, overlap, order)  # [M]
  # Rounded first so that float noise such as 20.000000000000004 does not
  # count a step that the exact threshold 20 excludes.
  bound = np.round((overlap - rank) * num_steps * beta / max(overlap, 1), 9)
  return np.minimum(np.ceil(bound), num_steps).astype(np.int32)


def frame_noise_reversion(z_prev: jax.Array, overlap: int, order: str = 'reversed') -> jax.Array:
  """FNR: the first M initial noises of the next clip, copied from the previous clip's.

  Args:
    z_prev: the previous clip's initial noise [B, N, H, W, C].
    overlap: M.
    order: as for overlap_sources.

  Returns:
    [B, M, H, W, C], frame j = z_prev frame s(j).
  """
  return jnp.take(z_prev, overlap_sources(z_prev.shape[1], overlap, order), axis=1)


def past_dependent_noise(z_prev: jax.Array, fresh: jax.Array, overlap: int,
                         noise_a: float) -> jax.Array:
  """PNS: the initial noises of the next clip's frames j >= M.

  z^j = a / sqrt(1 + a^2) z_prev^{N-1-j} + e^j with e = fresh / sqrt(1 + a^2),
  so each element keeps the variance of the noise law (1 for standard
  normal). The official code draws e with this same standard deviation; its
  noise-prior helpers (randn_mixed, randn_progressive), which PNS does not
  use, are the ones that pass variances as standard deviations.

  Args:
    z_prev: the previous clip's initial noise [B, N, H, W, C].
    fresh: a fresh draw of the noise law [B, N, H, W, C]; drawn for the whole
      clip because a method's law may couple frames, of which frames M.. are
      used.
    overlap: M.
    noise_a: a >= 0; 0 is fresh noise, the official code uses 4 (weights 0.970
      and 0.243).

  Returns:
    [B, N - M, H, W, C].
  """
  n = z_prev.shape[1]
  source = np.arange(n - 1 - overlap, -1, -1)  # N - 1 - j for j = M..N-1
  scale = 1.0 / math.sqrt(1.0 + noise_a**2)
  return noise_a * scale * jnp.take(z_prev, source, axis=1) + scale * fresh[:, overlap:]


def next_initial_noise(z_prev: jax.Array, fresh: jax.Array, *, overlap: int,
                       noise_a: float, order: str = 'reversed',
                       frame_cov: Optional[np.ndarray] = None) -> jax.Array:
  """The next clip's initial noise z_T: FNR on frames < M, PNS on the rest.

  FNR and PNS move noise between frames, which keeps the law only when the
  frames are i.i.d. For a law that couples the frames with a covariance C
  (VideoFusion's shared base noise), both act on the whitened noise
  L^-1 z (C = L L^T, i.i.d. standard normal frames), and the result is
  mapped back by L: a permutation of i.i.d. frames mixed with fresh i.i.d.
  frames is again i.i.d., so the new clip's noise has covariance C exactly.
  Whitening serves any method's covariance; splitting a law into its parts
  (VideoFusion's base and residuals) would serve that law alone.

  Args:
    z_prev: the previous clip's initial noise [B, N, H, W, C].
    fresh: a fresh draw of the noise law [B, N, H, W, C].
    overlap: M.
    noise_a: PNS's a.
    order: as for overlap_sources.
    frame_cov: [N, N] covariance of the law across frames (the method's
      noise_frame_covariance); None for i.i.d. frames.

  Returns:
    [B, N, H, W, C]; with M = 0 and a = 0 exactly ``fresh``.
  """
  chol = None
  if frame_cov is not None:
    chol = jnp.asarray(np.linalg.cholesky(np.asarray(frame_cov, np.float64)), jnp.float32)
    whiten = lambda z: jnp.moveaxis(jax.scipy.linalg.solve_triangular(
        chol, jnp.moveaxis(z, 1, -2), lower=True), -2, 1)  # L^-1 along frames
    z_prev, fresh = whiten(z_prev), whiten(fresh)
  z = jnp.concatenate([frame_noise_reversion(z_prev, overlap, order),
                       past_dependent_noise(z_prev, fresh, overlap, noise_a)], axis=1)
  return z if chol is None else jnp.einsum('ij,bj...->bi...', chol, z)


def staged_guide(stored: jax.Array, pinned: jax.Array) -> samplers.Guide:
  """DSG as a samplers.Guide: pins the first M frames of z to stored latents.

  At step i, frame j < M of z becomes stored[i, :, j] while i < pinned[j], and
  is left alone afterwards; the model then denoises the whole clip as usual.
  The step index is traced, so one compiled sampler serves every clip (pinned
  all zeros pins nothing).

  Args:
    stored: [K, B, M, H, W, C], the previous clip's latents at steps 0..K-1 of
      the source frames, stored[:, :, j] for overlap frame j; K >= max(pinned).
    pinned: int [M], may be traced; steps to pin per overlap frame.

  Returns:
    A samplers.Guide.
  """
  num_stored, _, overlap = stored.shape[:3]

  def guide(denoise, z, step, rng):
    del rng
    latents = jax.lax.dynamic_index_in_dim(  # [B, M, H, W, C]
        stored, jnp.minimum(step.index, num_stored - 1), 0, keepdims=False)
    pin = (step.index < pinned).reshape((1, overlap) + (1,) * (z.ndim - 2))
    z = z.at[:, :overlap].set(jnp.where(pin, latents, z[:, :overlap]))
    return (z, *denoise(z))

  return guide


def vidrd_video(model_fn: samplers.ModelFn, rng: jax.Array, num_frames: int, *,
                clip_frames: int, clip_shape: tuple[int, int, int, int],
                overlap: int = 4, noise_a: float = 4.0, beta: float = 0.4,
                order: str = 'reversed', num_steps: int = 50, sampler: str = 'ddim',
                noise_fn: Optional[samplers.NoiseFn] = None,
                noise_cov: Optional[samplers.NoiseCovFn] = None, verbose: bool = False,
                sample_ids: Optional[jax.Array] = None,
                **sampler_kwargs) -> np.ndarray:
  """Generates a long video clip by clip with VidRD's FNR, PNS and DSG.

  The defaults are the official code's settings (M = 4, a = 4, beta = 0.4,
  50 DDIM steps). Clip c draws its noise with the key
  ``jax.random.split(jax.random.fold_in(rng, c))[0]`` and samples with the
  second half of that split; clip 0's z_T is ``noise_fn(key, shape)``, clip
  c > 0's is next_initial_noise(z_T of clip c - 1, noise_fn(key, shape)). So
  with overlap = 0, noise_a = 0 and beta = 0 the clips are independent and
  equal to samplers.sample run clip by clip with those keys and z_init.

  One jitted clip sampler is compiled for the first clip and reused for every
  clip (the DSG schedule is a traced argument, zeros for the first clip);
  finished frames go to host memory; the previous clip's recorded latents
  ([K, B, M, H, W, C], see the module docstring) and initial noise stay on the
  device.

  Args:
    model_fn: (z [B, clip_frames, H, W, C], logsnr) -> model output; preferably
      a jax.tree_util.Partial holding the weights, so that they are arguments
      of the compiled sampler rather than constants.
    rng: PRNG key.
    num_frames: frames of the output.
    clip_frames: N, frames per model call.
    clip_shape: (B, H, W, C).
    overlap: M, 0 <= M < N, frames of each clip tied to the previous clip.
    noise_a: PNS's a >= 0 (0: fresh noise for frames >= M).
    beta: DSG's strength in [0, 1] (0: no pinning, plain sampling).
    order: 'reversed' (the paper's; clips kept whole) or 'forward' (overlap
      frames continue the previous clip's last M frames and are dropped from
      the output); see the module docstring.
    num_steps: T, the sampler's steps.
    sampler: one of samplers.SAMPLERS; DDIM is the method's.
    noise_fn: (rng, shape) -> float32 noise of ``shape``, the method's law,
      used for every fresh draw (clip 0's z_T, PNS's innovation, and the
      sampler's own step noise); samplers.standard_normal when None.
    noise_cov: the law's covariance across frames (samplers.NoiseCovFn);
      FNR and PNS then act on whitened noise (next_initial_noise). None:
      i.i.d. frames.
    verbose: print one progress line per clip.
    sample_ids: optional int32 [B] global sample indices: every draw then
      goes through samplers.per_sample_noise, so sample i is the same in any
      batch; the clips' batch is sharded like sample_ids (which fixes the
      noise, and so every latent, to it), and finished frames are gathered
      to every process.
    **sampler_kwargs: passed to samplers.sample (logsnr_fn and
      parameterization are required there).

  Returns:
    numpy [B, num_frames, H, W, C] float32.
  """
  if num_frames < 1:
    raise ValueError(f'num_frames={num_frames} must be >= 1.')
  if len(clip_shape) != 4:
    raise ValueError(f'clip_shape must be (B, H, W, C); got {clip_shape}.')
  if not 0 <= overlap < clip_frames:
    raise ValueError(f'overlap={overlap} must be in [0, clip_frames={clip_frames}).')
  if noise_a < 0:
    raise ValueError(f'noise_a={noise_a} must be >= 0.')
  if not 0.0 <= beta <= 1.0:
    raise ValueError(f'beta={beta} must be in [0, 1].')
  _check_order(order)
  if num_steps < 1:
    raise ValueError(f'num_steps={num_steps} must be >= 1.')
  reserved = sorted(set(sampler_kwargs) & set(_RESERVED))
  if reserved:
    raise ValueError(f'vidrd_video sets {reserved} itself; do not pass them.')
  noise_fn = noise_fn or samplers.standard_normal
  b, h, w, c = clip_shape
  shape = (b, clip_frames, h, w, c)
  sources = overlap_sources(clip_frames, overlap, order)  # [M]
  schedule = pinned_steps(clip_frames, overlap, num_steps, beta, order)  # [M]
  num_stored = int(schedule.max(initial=0))  # K: 0 when nothing is ever pinned.
  pytree_fn = conditional._as_pytree_fn(model_fn)  # pylint: disable=protected-access

  @jax.jit
  def sample_clip(fn, rng, z_init, stored, pinned, ids):
    if not num_stored:
      x = samplers.sample(fn, rng, shape, z_init=z_init, num_steps=num_steps,
                          sampler=sampler, noise_fn=noise_fn, noise_cov=noise_cov,
                          sample_ids=ids, **sampler_kwargs)
      return x, stored
    return samplers.sample(fn, rng, shape, z_init=z_init, num_steps=num_steps,
                           sampler=sampler, noise_fn=noise_fn, noise_cov=noise_cov,
                           guide=staged_guide(stored, pinned),
                           return_trajectory=True, trajectory_steps=num_stored,
                           trajectory_frames=sources, sample_ids=ids, **sampler_kwargs)

  def draw(rng, ids):
    return samplers.noise_law(noise_fn, ids)(rng, shape)

  first_noise = jax.jit(draw)
  frame_cov = None if noise_cov is None else noise_cov(clip_frames)
  next_noise = jax.jit(lambda rng, ids, z_prev: next_initial_noise(
      z_prev, draw(rng, ids), overlap=overlap, noise_a=noise_a, order=order,
      frame_cov=frame_cov))

  skip = overlap if order == 'forward' else 0  # Leading frames of clips > 0 not output.
  num_clips = 1 + math.ceil(max(0, num_frames - clip_frames) / (clip_frames - skip))
  # [K, B, M, H, W, C]; numpy, so that a multi-host jit takes it as replicated.
  stored = np.zeros((num_stored, b, overlap, h, w, c), np.float32)
  if verbose:
    progress_lib.log(f'vidrd_video: {num_clips} clips of {clip_frames} frames, overlap {overlap} '
                     f'({order}), a={noise_a}, beta={beta}: pinned steps {schedule.tolist()}, '
                     f'stored latents {stored.nbytes / 1e6:.3g} MB')
  progress = progress_lib.Progress('vidrd_video', num_frames, 'frames')
  video, z_prev, done = [], None, 0
  for clip in range(num_clips):
    rng_noise, rng_clip = jax.random.split(jax.random.fold_in(rng, clip))
    z_init = (first_noise(rng_noise, sample_ids) if clip == 0 else
              next_noise(rng_noise, sample_ids, z_prev))
    pinned = np.zeros_like(schedule) if clip == 0 else schedule
    out, stored = sample_clip(pytree_fn, rng_clip, z_init, stored, pinned, sample_ids)
    video.append(sharding.to_host(out)[:, skip if clip else 0:])
    z_prev = z_init
    done += video[-1].shape[1]
    if verbose:
      progress(done, f'clip {clip} done')
  return np.concatenate(video, axis=1)[:, :num_frames]


def default_context_frames(clip_frames: int) -> int:
  """Frames each new clip of the 'reconstruction' driver is conditioned on
  unless told otherwise (sample.py --mode=extend, evaluate.py --mode=long):
  half a clip."""
  return max(1, clip_frames // 2)


def clip_starts(sampling_config, num_frames: int, clip_frames: int,
                context_frames: int) -> np.ndarray:
  """The first output frame of every clip after the first: the seams of a long video.

  Frame s - 1 ends one clip and frame s begins the next. 'reconstruction'
  adds clip_frames - context_frames new frames a clip, 'vidrd' clip_frames
  (order 'reversed', which keeps each clip whole) or clip_frames - overlap
  ('forward'), 'independent' clip_frames.

  Returns:
    int [number of seams], increasing, each in (0, num_frames).
  """
  s = sampling_config
  if s.long_method == 'reconstruction':
    step = clip_frames - context_frames
  elif s.long_method == 'vidrd' and s.vidrd_order == 'forward':
    step = clip_frames - int(s.vidrd_overlap)
  else:
    step = clip_frames
  return np.arange(clip_frames, num_frames, step)


# How long videos are joined clip by clip (config.sampling.long_method).
LONG_METHODS = ('reconstruction', 'vidrd', 'independent')


def check_long_method(sampling_config, clip_frames: int) -> None:
  """Raises ValueError naming the config.sampling key that cannot work.

  Args:
    sampling_config: config.sampling (long_method and the vidrd_* keys).
    clip_frames: the model's clip length (config.data.num_frames).
  """
  s = sampling_config
  if s.long_method not in LONG_METHODS:
    raise ValueError(f'long_method={s.long_method!r} is unknown; choose one of {LONG_METHODS}.')
  if s.long_method == 'reconstruction':
    return
  if driver_sampler(s) not in samplers.SAMPLERS:
    raise ValueError(f'vidrd_sampler={s.vidrd_sampler!r} is unknown; choose one of '
                     f'{samplers.SAMPLERS} (or \'\' for sampling.sampler).')
  if s.long_method != 'vidrd':
    return
  _check_order(s.vidrd_order)
  if not 0 <= s.vidrd_overlap < clip_frames:
    raise ValueError(f'vidrd_overlap={s.vidrd_overlap} must be in [0, {clip_frames}) '
                     '(config.data.num_frames, the clip length).')
  if not 0.0 <= s.vidrd_beta <= 1.0 or s.vidrd_noise_a < 0:
    raise ValueError(f'vidrd_beta={s.vidrd_beta} must be in [0, 1] and '
                     f'vidrd_noise_a={s.vidrd_noise_a} >= 0.')


def driver_sampler(sampling_config) -> str:
  """The sampler a long video is drawn with under config.sampling.

  VidRD and the independent-clips baseline run sampling.vidrd_sampler ('ddim'
  unless set: DSG relies on deterministic steps; '' means sampling.sampler);
  reconstruction-guided extension runs sampling.sampler.
  """
  s = sampling_config
  if s.long_method == 'reconstruction' or not s.get('vidrd_sampler', ''):
    return str(s.sampler)
  return str(s.vidrd_sampler)


def generate(model_fn: samplers.ModelFn, rng: jax.Array, num_frames: int, *,
             sampling_config, clip_frames: int, clip_shape: tuple[int, int, int, int],
             context_frames: int, init_frames: Optional[jax.Array] = None,
             conditioning: str = 'reconstruction', verbose: bool = False,
             sample_ids: Optional[jax.Array] = None, mesh=None,
             **sampler_kwargs) -> np.ndarray:
  """A long video by the driver config.sampling.long_method names.

  'reconstruction': vdm.sampling.conditional.extend_video (from init_frames or an
  unconditional first clip); 'vidrd': vidrd_video with the vidrd_* keys;
  'independent': clips sampled independently side by side (vidrd_video with
  no overlap, no noise reuse and no pinning), the baseline.

  Args:
    model_fn: (z [B, clip_frames, H, W, C], logsnr) -> output.
    rng: PRNG key.
    num_frames: frames of the output.
    sampling_config: config.sampling.
    clip_frames: the model's clip length.
    clip_shape: (B, H, W, C).
    context_frames: frames each new clip of 'reconstruction' is conditioned on.
    init_frames: given first frames ('reconstruction' only).
    conditioning: 'reconstruction' or 'replacement' for extend_video.
    verbose: one progress line per clip.
    sample_ids: optional int32 [B] global sample indices, sharded over the
      batch axes of mesh (see vdm.sampling.mesh_sampling): sample i is then the same
      in any batch and on any number of devices.
    mesh: the mesh of sample_ids; the given frames of each clip are split
      over it.
    **sampler_kwargs: run_lib.sampler_options.

  Returns:
    numpy float32 [B, num_frames, H, W, C].
  """
  s = sampling_config
  check_long_method(s, clip_frames)
  if s.long_method == 'reconstruction':
    return conditional.extend_video(
        model_fn, rng, num_frames, clip_frames=clip_frames, context_frames=context_frames,
        init_frames=init_frames, clip_shape=clip_shape, conditioning=conditioning,
        w_r=float(s.w_r), verbose=verbose, sample_ids=sample_ids, mesh=mesh, **sampler_kwargs)
  if init_frames is not None:
    raise ValueError(f'long_method={s.long_method!r} starts from noise and takes no given '
                     'frames; use long_method=reconstruction to continue a video.')
  sampler_kwargs = dict(sampler_kwargs, sampler=driver_sampler(s))
  if s.long_method == 'independent':
    knobs = dict(overlap=0, noise_a=0.0, beta=0.0)
  else:
    knobs = dict(overlap=int(s.vidrd_overlap), noise_a=float(s.vidrd_noise_a),
                 beta=float(s.vidrd_beta), order=str(s.vidrd_order))
  return vidrd_video(model_fn, rng, num_frames, clip_frames=clip_frames, clip_shape=clip_shape,
                     verbose=verbose, sample_ids=sample_ids, **knobs, **sampler_kwargs)

