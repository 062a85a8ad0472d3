"""VideoFusion's decomposed noise law (docs/videofusion.md), parameter-free.

Every frame i of an N-frame clip carries the noise
  eps^i = sqrt(l^i) b + sqrt(1 - l^i) r^i,
with b one base noise shared by all frames and r^i independent residual
noises, all standard normal. The key frame k = floor(N / 2) has l^k = 1, so
its noise is exactly b. Over frames the noise then has the covariance
  C_ii = 1,  C_ij = sqrt(l^i l^j)  (i != j),
independently at every pixel and channel: the forward process is
q(z_t | x) = N(alpha_t x, sigma_t^2 C), and so are its posteriors' variances,
(1 - r) sigma_s^2 C. Nothing here has parameters; vdm/methods/videofusion.py
builds the networks on top, and vdm/diffusion/analytic.py the exact denoiser
of Gaussian data under this law.

Frames past the weights (the appended images of joint training) get i.i.d.
noise: each is its own one-frame clip, whose key frame is itself.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vdm.diffusion import samplers


def key_frame(num_frames: int) -> int:
  """The key frame floor(N / 2) of an N-frame clip, whose noise is b."""
  if num_frames < 1:
    raise ValueError(f'a clip needs at least one frame; got num_frames={num_frames}.')
  return num_frames // 2


def frame_weights(num_frames: int, l: float, l_per_frame: Sequence[float] = ()) -> np.ndarray:
  """The shares l^i of the base noise in each frame's noise.

  Args:
    num_frames: N, frames of the clip.
    l: l^i of every frame but the key frame (config.videofusion.l), in [0, 1).
    l_per_frame: optional per-frame values (config.videofusion.l_per_frame),
      N of them with 1 at the key frame; empty to use the constant ``l``.

  Returns:
    float64 [N], 1 at key_frame(N).

  Raises:
    ValueError: a per-frame list of another length than N, a key-frame entry
      other than 1, or a share outside [0, 1) (l^i = 1 off the key frame would
      make C singular: that frame's noise would be b itself).
  """
  key = key_frame(num_frames)
  if len(l_per_frame):
    weights = np.asarray(l_per_frame, np.float64)
    if weights.shape != (num_frames,):
      raise ValueError(
          f'config.videofusion.l_per_frame has {weights.size} values but the clip has '
          f'{num_frames} frames: per-frame shares fix the clip length. Sample clips of '
          f'{weights.size} frames (extend mode reuses the training length) or use a '
          'constant config.videofusion.l.')
    if weights[key] != 1.0:
      raise ValueError(f'config.videofusion.l_per_frame[{key}] = {weights[key]} must be 1: '
                       f'frame {key} = floor(N / 2) is the key frame, whose noise is b.')
    source = 'config.videofusion.l_per_frame'
  else:
    weights = np.full(num_frames, float(l))
    weights[key] = 1.0
    source = 'config.videofusion.l'
  others = np.delete(weights, key)
  if np.any((others < 0) | (others >= 1)):
    raise ValueError(f'{source}: the shares of the base noise off the key frame must be in '
                     f'[0, 1); got {others.tolist()}.')
  return weights


def frame_covariance(weights: np.ndarray) -> np.ndarray:
  """C, the covariance of the noise across frames: C_ij = sqrt(l^i l^j), C_ii = 1.

  Args:
    weights: [N] shares l^i (frame_weights).

  Returns:
    float64 [N, N].
  """
  root = np.sqrt(np.asarray(weights, np.float64))
  cov = np.outer(root, root)
  np.fill_diagonal(cov, 1.0)
  return cov


def noise_parts(rng: jax.Array, shape: tuple[int, ...],
                weights: np.ndarray) -> tuple[jax.Array, jax.Array, jax.Array]:
  """A draw of the decomposed law with its base and residual noises.

  One standard normal draw r of the whole ``shape`` is made, exactly the plain
  method's noise for the same key, and the key frame's own draw serves as b
  (it is independent of every other frame's r^i, and its own residual has
  weight sqrt(1 - l^k) = 0). So with l^i = 0 off the key frame eps is r: the
  plain model's noise, bit for bit.

  Args:
    rng: PRNG key.
    shape: [B, F, ...] with F >= N = len(weights); frames N.. (appended
      images) get i.i.d. noise.
    weights: [N] shares l^i (frame_weights); static.

  Returns:
    (eps [B, F, ...], b [B, 1, ...], r [B, F, ...]), float32.
  """
  n = len(weights)
  if len(shape) < 2 or shape[1] < n:
    raise ValueError(f'noise of shape {tuple(shape)} has fewer than the {n} frames of the '
                     'decomposed law on axis 1.')
  key = key_frame(n)
  r = samplers.standard_normal(rng, tuple(shape))  # [B, F, ...]
  b = r[:, key:key + 1]  # [B, 1, ...]
  if not np.any(np.delete(weights, key)):
    # Nothing shared: eps is r. Returned as is, so that a sampler compiled
    # with this law is the plain one, op for op.
    return r, b, r
  tail = (1,) * (len(shape) - 2)
  pad = shape[1] - n
  base_share = np.concatenate([np.sqrt(weights), np.zeros(pad)]).reshape((1, -1) + tail)
  residual_share = np.concatenate([np.sqrt(1.0 - weights), np.ones(pad)]).reshape((1, -1) + tail)
  eps = (jnp.asarray(base_share, jnp.float32) * b +
         jnp.asarray(residual_share, jnp.float32) * r)
  # Exactly b on the key frame, whatever rounding 1 * b + 0 * r might do.
  is_key = np.arange(shape[1]) == key
  eps = jnp.where(is_key.reshape((1, -1) + tail), b, eps)
  return eps, b, r


def noise(rng: jax.Array, shape: tuple[int, ...], weights: np.ndarray) -> jax.Array:
  """Noise of the decomposed law (the first output of noise_parts)."""
  return noise_parts(rng, shape, weights)[0]


def expand_frame_covariance(cov: np.ndarray, frame_shape: Sequence[int]) -> np.ndarray:
  """C acting on frames as a [D, D] matrix over flattened [N, *frame_shape] videos.

  Args:
    cov: [N, N] frame covariance.
    frame_shape: (H, W, C) of one frame.

  Returns:
    float64 [N * H * W * C, N * H * W * C] = C (x) I (frames are the leading axis).
  """
  return np.kron(np.asarray(cov, np.float64), np.eye(math.prod(frame_shape)))
