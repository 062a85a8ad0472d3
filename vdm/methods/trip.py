"""TRIP image-to-video (Zhang et al., CVPR 2024; docs/trip.md).

Given the clean first frame x^1 of a clip and its noisy frames z_t^1..z_t^N
(frame 1 is noised and generated too), the noise of frame i is predicted from
two paths:
  * the image noise prior (shortcut), computed, not learned:
      eps^{i->1} = (z_t^i - alpha_t x^1) / sigma_t,
    the noise frame i would carry if it equalled x^1 (exact for frame 1);
  * the residual noise d_eps^i of the space-time U-Net, which sees x^1 either
    prepended along time, [x^1, z_t^1, ..., z_t^N] (the paper's; the
    prepended frame's output is dropped), or concatenated to every noisy frame
    as extra input channels (TRIP_C, the paper's ablation).
They are fused into eps~^i by a linear weight l^i decaying linearly in i, or by
the Temporal Noise Fusion module (vdm/models/tnf.py), or not at all (the U-Net
alone, the paper's TRIP^-). The loss is ||eps^i - eps~^i||^2 averaged over
every pixel of the N noisy frames.

Training uses each clip's own first frame as the condition and video frames
only: appended images of joint training (config.data.num_images > 0) have no
first frame of their own, so they are refused. The U-Net and the TNF are two
optimizer groups with their own learning-rate multipliers, and the U-Net can
start from a plain ('vdm') run's EMA weights (config.trip.init_from).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vdm import progress as progress_lib
from vdm.diffusion import conditions
from vdm.diffusion import gaussian
from vdm.methods import base
from vdm.models import tnf
from vdm.models import unet3d

CONDITIONS = ('prepend', 'channels')
FUSIONS = ('tnf', 'linear', 'none')


def default_config() -> ml_collections.ConfigDict:
  """The config.trip section, every key commented."""
  c = ml_collections.ConfigDict()
  # How the U-Net sees x^1: 'prepend' (along time, the paper's) or 'channels' (TRIP_C).
  c.condition = 'prepend'
  # 'tnf' (Temporal Noise Fusion), 'linear' (l^i decaying in i) or 'none' (TRIP^-).
  c.fusion = 'tnf'
  c.linear_first = 1.0         # Linear fusion: l^1 on frame 1 (1 = the prior, exact there).
  c.linear_last = 0.0          # Linear fusion: l^N on the last frame; linear in between.
  c.tnf_features = 32          # TNF: width of its intermediate features.
  c.tnf_heads = 2              # TNF: attention heads (self- and cross-attention).
  c.tnf_head_dim = 16          # TNF: features per head (>= config.data.channels).
  c.tnf_emb_dim = 128          # TNF: width of its time (log-SNR) embedding.
  c.tnf_norm_groups = 8        # TNF: GroupNorm groups of its temporal self-attention.
  # Learning rate of each group / optimizer.learning_rate (0 freezes). The
  # paper fine-tunes at 2e-6 (U-Net) and 2e-4 (TNF): learning_rate = 2e-4 and
  # unet_lr_multiplier = 0.01.
  c.unet_lr_multiplier = 1.0
  c.tnf_lr_multiplier = 1.0
  c.init_from = ''             # Workdir of a 'vdm' run whose EMA U-Net starts ours ('' = none).
  return c


def image_noise_prior(z: jax.Array, first_frame: jax.Array, logsnr: jax.Array) -> jax.Array:
  """eps^{i->1} = (z_t^i - alpha_t x^1) / sigma_t for every frame i.

  Args:
    z: z_t [B, N, H, W, C].
    first_frame: x^1 [B, H, W, C].
    logsnr: lambda_t [B].

  Returns:
    [B, N, H, W, C] float32.
  """
  return gaussian.eps_from_z_x(z.astype(jnp.float32),
                               first_frame.astype(jnp.float32)[:, None], logsnr)


def linear_weights(num_frames: int, first: float, last: float) -> jax.Array:
  """l^i for i = 1..N, linear from ``first`` (frame 1) to ``last`` (frame N): [N]."""
  if num_frames == 1:
    return jnp.full((1,), first, jnp.float32)
  return jnp.linspace(first, last, num_frames, dtype=jnp.float32)


def linear_fusion(prior: jax.Array, residual: jax.Array, weights: jax.Array) -> jax.Array:
  """eps~^i = l^i eps^{i->1} + (1 - l^i) d_eps^i.

  Args:
    prior: [B, N, H, W, C].
    residual: [B, N, H, W, C].
    weights: l [N].

  Returns:
    [B, N, H, W, C].
  """
  w = weights.reshape(1, -1, 1, 1, 1)
  return w * prior + (1.0 - w) * residual


class Networks(nnx.Module):
  """TRIP's trained networks: the U-Net and, for fusion='tnf', the TNF.

  Args:
    unet_config: the U-Net's config (cond_channels include x^1 for TRIP_C).
    tnf_config: the TNF's config, or None for linear or no fusion.
    rngs: parameter initialisation keys.
  """

  def __init__(self, unet_config: unet3d.UNetConfig, tnf_config: Optional[tnf.TNFConfig], *,
               rngs: nnx.Rngs):
    self.unet = unet3d.UNet3D(unet_config, rngs=rngs)
    self.tnf = None if tnf_config is None else tnf.TemporalNoiseFusion(tnf_config, rngs=rngs)


class Method(base.Method):
  """The TRIP method (``config.method = 'trip'``, section ``config.trip``)."""

  conditions_on_first_frame = True

  def __init__(self, config):
    super().__init__(config)
    self.trip = config.trip
    unet_config = unet3d.UNetConfig.from_config(config, self.frame_shape)
    if self.trip.condition == 'channels':
      unet_config = dataclasses.replace(
          unet_config, cond_channels=unet_config.cond_channels + unet_config.channels)
    self.unet_config = unet_config
    m = config.model
    self.tnf_config = tnf.TNFConfig(
        channels=unet_config.channels, features=self.trip.tnf_features,
        num_heads=self.trip.tnf_heads, head_dim=self.trip.tnf_head_dim,
        emb_dim=self.trip.tnf_emb_dim, norm_groups=self.trip.tnf_norm_groups,
        rel_pos_buckets=m.rel_pos_buckets, rel_pos_max_distance=m.rel_pos_max_distance)

  def validate(self) -> None:
    t, c = self.trip, self.config
    if t.condition not in CONDITIONS:
      raise ValueError(f'config.trip.condition={t.condition!r} is unknown; choose one of '
                       f'{CONDITIONS}.')
    if t.fusion not in FUSIONS:
      raise ValueError(f'config.trip.fusion={t.fusion!r} is unknown; choose one of {FUSIONS}.')
    if c.data.num_images:
      raise ValueError(
          f'config.data.num_images={c.data.num_images}: TRIP trains on video clips only '
          '(every clip is conditioned on its own first frame; appended images have none). '
          'Set config.data.num_images = 0.')
    if c.model.cond_channels:
      raise ValueError(f'config.model.cond_channels={c.model.cond_channels}: TRIP conditions '
                       'its U-Net on the first frame itself; set config.model.cond_channels = 0 '
                       "(config.trip.condition = 'channels' is the channel-concatenated variant).")
    if c.diffusion.parameterization != 'eps' or c.diffusion.loss_type != 'eps_mse':
      raise ValueError(
          f'config.diffusion.parameterization={c.diffusion.parameterization!r}, '
          f'loss_type={c.diffusion.loss_type!r}: TRIP fuses and regresses noises (eps), '
          "set parameterization = 'eps' and loss_type = 'eps_mse'.")
    if c.training.num_samples:
      raise ValueError(
          f'config.training.num_samples={c.training.num_samples}: periodic samples during '
          'training are unconditional, and TRIP needs a first frame. Set '
          'config.training.num_samples = 0 and sample with sample.py --mode=i2v.')
    if min(t.unet_lr_multiplier, t.tnf_lr_multiplier) < 0:
      raise ValueError('config.trip.unet_lr_multiplier and config.trip.tnf_lr_multiplier '
                       'must be >= 0.')
    if t.fusion == 'tnf':
      self.tnf_config.validate()

  def build(self, rngs: nnx.Rngs) -> Networks:
    return Networks(self.unet_config, self.tnf_config if self.trip.fusion == 'tnf' else None,
                    rngs=rngs)

  # --- The two paths and their fusion -----------------------------------------

  def residual_noise(self, unet: Any, first_frame: jax.Array, z: jax.Array,
                     logsnr: jax.Array, label: Optional[jax.Array] = None,
                     dropout_rng: Optional[jax.Array] = None) -> jax.Array:
    """d_eps^i of the U-Net for the N noisy frames.

    Args:
      unet: the U-Net (a callable with UNet3D's signature).
      first_frame: x^1 [B, H, W, C].
      z: z_t [B, N, H, W, C].
      logsnr: lambda_t [B].
      label: None, [B] or per frame [B, N].
      dropout_rng: enables dropout (training).

    Returns:
      [B, N, H, W, C] float32.
    """
    x1 = first_frame.astype(z.dtype)[:, None]  # [B, 1, H, W, C]
    if self.trip.condition == 'channels':
      cond = jnp.broadcast_to(x1, z.shape)  # [B, N, H, W, C]
      return unet(z, logsnr, cond=cond, dropout_rng=dropout_rng,
                  **conditions.network_kwargs(label)).astype(jnp.float32)
    # x^1 keeps frame 1's label and caption.
    label = conditions.map_frames(lambda a: jnp.concatenate([a[:, :1], a], axis=1), label)
    out = unet(jnp.concatenate([x1, z], axis=1), logsnr, dropout_rng=dropout_rng,
               **conditions.network_kwargs(label))  # [B, N + 1, H, W, C]
    return out[:, 1:].astype(jnp.float32)  # The prepended frame's output is dropped.

  def fuse(self, networks: Any, prior: jax.Array, residual: jax.Array,
           logsnr: jax.Array) -> jax.Array:
    """eps~ from the prior and the residual with the configured fusion."""
    fusion = self.trip.fusion
    if fusion == 'none':
      return residual
    if fusion == 'linear':
      weights = linear_weights(prior.shape[1], self.trip.linear_first, self.trip.linear_last)
      return linear_fusion(prior, residual, weights)
    return networks.tnf(prior, residual, logsnr)

  def noise_prediction(self, networks: Any, first_frame: jax.Array, z: jax.Array,
                       logsnr: jax.Array, label: Optional[jax.Array] = None,
                       dropout_rng: Optional[jax.Array] = None) -> jax.Array:
    """TRIP's predicted noise eps~ of every noisy frame.

    Args:
      networks: ``build``'s module (or any object with ``unet`` and ``tnf``).
      first_frame: x^1 [B, H, W, C] in [-1, 1].
      z: z_t [B, N, H, W, C].
      logsnr: lambda_t [B].
      label: None, [B] or per frame [B, N].
      dropout_rng: enables dropout in the U-Net (training).

    Returns:
      eps~ [B, N, H, W, C] float32.
    """
    prior = image_noise_prior(z, first_frame, logsnr)
    residual = self.residual_noise(networks.unet, first_frame, z, logsnr, label, dropout_rng)
    return self.fuse(networks, prior, residual, logsnr)

  # --- The method interface ---------------------------------------------------

  def loss(self, networks: Networks, batch: Mapping[str, jax.Array],
           rng: jax.Array) -> base.LossOutput:
    d = self.config.diffusion
    x = batch['video']  # [B, N, H, W, C]
    rng_t, rng_eps, rng_drop, rng_dropout = jax.random.split(rng, 4)
    t = gaussian.sample_times(rng_t, x.shape[0], d.low_discrepancy)
    logsnr = self.logsnr_fn(t)  # [B]
    eps = self.noise(rng_eps, x.shape).astype(jnp.float32)
    z = gaussian.q_sample(x, logsnr, eps)
    label = self.batch_condition(batch)
    if label is not None and d.cond_drop_prob > 0:
      label = gaussian.drop_condition(rng_drop, label, d.cond_drop_prob)
    eps_fused = self.noise_prediction(networks, x[:, 0], z, logsnr, label, rng_dropout)
    err = jnp.square(eps - eps_fused)  # [B, N, H, W, C]
    losses = jnp.mean(err, axis=(1, 2, 3, 4))
    # Frame 1 is where the prior is exact; the later frames are the real task.
    metrics = {'loss_frame1': jnp.mean(err[:, 0])}
    return losses, metrics

  def denoiser(self, networks: Networks,
               conditioning: Optional[Mapping[str, jax.Array]] = None):
    x1 = (conditioning or {}).get('first_frame')
    if x1 is None:
      raise ValueError("TRIP generates a video from its first frame: pass conditioning="
                       "{'first_frame': [N, H, W, C]} (sample.py --mode=i2v --input=IMAGE).")

    def fn(z, logsnr, label):
      b, n = z.shape[0], x1.shape[0]
      if x1.shape[1:] != z.shape[2:] or b % n:
        raise ValueError(f"conditioning['first_frame'] has shape {x1.shape}; expected "
                         f'[{b}, {", ".join(map(str, z.shape[2:]))}] for videos {z.shape}.')
      # Classifier-free label guidance doubles the batch: the image repeats.
      first = jnp.tile(x1, (b // n, 1, 1, 1))
      return self.noise_prediction(networks, first, z, logsnr, label)
    return fn

  def param_labels(self, params: Any) -> Any:
    return jax.tree_util.tree_map_with_path(lambda path, _: str(path[0].key), params)

  def lr_multipliers(self) -> Mapping[str, float]:
    return {'unet': float(self.trip.unet_lr_multiplier),
            'tnf': float(self.trip.tnf_lr_multiplier)}

  def pretrained_runs(self) -> Mapping[str, base.Pretrained]:
    source = self.trip.init_from
    return {'init_from': base.Pretrained('config.trip.init_from', source, 'vdm')} if source else {}

  def initial_params(self, params: Any, pretrained: Mapping[str, Any]) -> Any:
    """With config.trip.init_from, the U-Net starts from a plain run's EMA weights.

    Parameters of the same shape are copied. A parameter that is larger here
    (TRIP_C's input convolution, which also takes the image's channels) gets
    the plain weights in its leading slice and zeros elsewhere, so the
    network starts as the plain one, ignoring the image. The TNF keeps its
    own initialisation.
    """
    if 'init_from' not in pretrained:
      return params
    source, plain = self.trip.init_from, pretrained['init_from']
    flat = {base.param_path(p): v for p, v in jax.tree_util.tree_flatten_with_path(plain.params)[0]}
    used = set()

    def load(path, value):
      if path[0].key != 'unet':
        return value
      key = base.param_path(path[1:])
      if key not in flat:
        raise ValueError(f'config.trip.init_from={source!r} has no U-Net parameter {key}: '
                         'its config.model must match this run\'s.')
      used.add(key)
      src = np.asarray(jax.device_get(flat[key]))
      if src.shape == value.shape:
        return jnp.asarray(src, value.dtype)
      if src.ndim != value.ndim or any(s > v for s, v in zip(src.shape, value.shape)):
        raise ValueError(f'config.trip.init_from={source!r}: U-Net parameter {key} has shape '
                         f'{src.shape} there and {value.shape} here; config.model must match.')
      out = np.zeros(value.shape, src.dtype)
      out[tuple(slice(0, s) for s in src.shape)] = src
      return jnp.asarray(out, value.dtype)

    params = jax.tree_util.tree_map_with_path(load, params)
    unused = sorted(set(flat) - used)
    progress_lib.log(f'Initialised the U-Net from the EMA weights of step {plain.step} of {source}'
                     + (f'; not used there: {unused}.' if unused else '.'))
    return params

