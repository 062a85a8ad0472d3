"""VideoFusion (Luo et al., CVPR 2023): decomposed diffusion; docs/videofusion.md.

The noise of frame i of an N-frame clip is eps^i = sqrt(l^i) b + sqrt(1 - l^i) r^i,
one base noise b shared by all frames, independent residuals r^i, and the key
frame k = floor(N / 2) with l^k = 1 (vdm/diffusion/decomposed.py). Two
networks predict it:

  * the base generator, an image denoiser (our U-Net on one frame, built from
    ``config.model``, so a plain run's checkpoint fits it), predicts b from
    the key frame alone: b_hat = base(z_t^k, lambda_t), the key frame's noise
    being exactly b;
  * the residual generator, a (typically smaller) space-time U-Net
    (``config.model`` with the ``config.videofusion.residual_*`` sizes and an
    absolute frame-index embedding), predicts r^i from
    z'^i = z_t^i - sqrt(l^i) sigma_t b_hat.

The composed prediction eps_hat^i = sqrt(l^i) b_hat + sqrt(1 - l^i) r_hat^i is
one eps-denoiser, so every sampler, guidance and long-video driver takes it
unchanged; ``noise`` gives them the decomposed law for every fresh draw.

Training loss: the eps-MSE of the composed prediction over every pixel of
every frame, where the base's prediction enters the non-key frames (and the
residual's input z') through a stop-gradient. At the key frame the composed
prediction is b_hat itself, so the loss is
  ||b - b_hat||^2 + sum_{i != k} ||eps^i - (sqrt(l^i) sg[b_hat] + sqrt(1 - l^i) r_hat^i)||^2,
the paper's (whose extra key-frame term ||b - sg[b_hat]||^2 carries no
gradient), averaged like the plain loss. The base trains at
``config.videofusion.base_lr_mult`` times the learning rate (0 freezes it).

Joint image-video training: the K appended images of a batch are
independent examples. Each is its own one-frame clip, whose key frame is
itself: its noise is its own base noise (i.i.d. with the video's), and the
base generator, an image model, predicts it; the residual sees only the T
video frames. So the images train the base, as the paper's image-pretrained
base, and the loss stays the eps-MSE of the one law over all T + K frames.

Clip length: the key frame and l^i follow the rule above for any N with a
constant ``l``; a per-frame ``l_per_frame`` fixes N to its length, and the
residual's frame-index embedding (``residual_frame_index``) to at most the
training length ``config.data.num_frames``. Other lengths fail naming the key.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vdm import config_lib
from vdm import progress as progress_lib
from vdm.diffusion import conditions
from vdm.diffusion import decomposed
from vdm.diffusion import gaussian
from vdm.diffusion import schedules
from vdm.methods import base
from vdm.models import unet3d

BASE, RESIDUAL = 'base', 'residual'  # The two networks, and their optimizer groups.
# UNetConfig fields that do not change the parameters a checkpoint holds.
_NOT_IN_PARAMS = ('dropout', 'dtype', 'attn_dtype', 'remat')


def default_config() -> ml_collections.ConfigDict:
  """The ``config.videofusion`` section, every key commented."""
  vf = ml_collections.ConfigDict()
  vf.l = 0.5                          # l^i off the key frame: share of the base noise b, in [0, 1) (paper's best 0.5).
  vf.l_per_frame = ()                 # Per-frame l^i instead (N values, 1.0 at frame N // 2); () = the constant l.
  vf.residual_base_channels = 16      # Residual U-Net: channels of its first level (the base is config.model).
  vf.residual_channel_mult = (1, 2, 2)  # Residual U-Net: per-level multipliers (same number of levels or not).
  vf.residual_num_res_blocks = 1      # Residual U-Net: residual blocks per level.
  vf.residual_attention_resolutions = (8,)  # Residual U-Net: frame sizes with spatial+temporal attention.
  vf.residual_frame_index = True      # Residual U-Net gets an absolute frame-index embedding (paper's), data.num_frames rows.
  vf.base_lr_mult = 1.0               # Base learning rate / residual's; 0 freezes the base (e.g. 0.1 when initialised).
  vf.base_init_workdir = ''           # Workdir of a plain ('vdm') run whose EMA weights initialise the base; '' = scratch.
  return vf


class Networks(nnx.Module):
  """The base generator (an image U-Net) and the residual generator (a video U-Net).

  Args:
    base_config: UNetConfig of the base generator.
    residual_config: UNetConfig of the residual generator.
    rngs: parameter initialisation keys.
  """

  def __init__(self, base_config: unet3d.UNetConfig, residual_config: unet3d.UNetConfig, *,
               rngs: nnx.Rngs):
    self.base = unet3d.UNet3D(base_config, rngs=rngs)
    self.residual = unet3d.UNet3D(residual_config, rngs=rngs)


def residual_unet_config(config: ml_collections.ConfigDict,
                         frame_shape: tuple[int, int]) -> unet3d.UNetConfig:
  """The residual generator's U-Net: config.model with the residual_* sizes.

  ``frame_shape`` is (size, channels) of the frames it sees (the method's:
  pixels or latents).

  Raises:
    ValueError: naming the key when the sizes do not make a valid U-Net.
  """
  vf = config.videofusion
  model = dict(config.model)
  model.update(base_channels=vf.residual_base_channels,
               channel_mult=tuple(vf.residual_channel_mult),
               num_res_blocks=vf.residual_num_res_blocks,
               attention_resolutions=tuple(vf.residual_attention_resolutions),
               frame_index_embed=config.data.num_frames if vf.residual_frame_index else 0)
  try:
    size, channels = frame_shape
    return unet3d.UNetConfig(channels=channels, image_size=size, **model)
  except ValueError as e:
    raise ValueError(
        'VideoFusion residual generator (config.model with config.videofusion.'
        'residual_base_channels, residual_channel_mult, residual_num_res_blocks and '
        f'residual_attention_resolutions in place of the model.* keys of those names): {e}'
    ) from None


class Method(base.Method):
  """The VideoFusion method (``config.method = 'videofusion'``)."""

  def __init__(self, config):
    super().__init__(config)
    self.vf = config.videofusion
    self.base_config = unet3d.UNetConfig.from_config(config, self.frame_shape)
    self.residual_config = residual_unet_config(config, self.frame_shape)

  # --- The noise law ----------------------------------------------------------

  def frame_weights(self, num_frames: int) -> np.ndarray:
    """l^i of an N-frame clip, [N] float64 (1 at the key frame N // 2)."""
    return decomposed.frame_weights(num_frames, self.vf.l, tuple(self.vf.l_per_frame))

  def check_num_frames(self, num_frames: int) -> None:
    """Raises ValueError naming the key when clips of num_frames cannot be sampled."""
    train = self.config.data.num_frames
    if self.vf.residual_frame_index and num_frames > train:
      raise ValueError(
          f'VideoFusion cannot take clips of {num_frames} frames: its residual generator has '
          f'an absolute frame-index embedding for the {train} frames it was trained on '
          '(config.videofusion.residual_frame_index=True, config.data.num_frames='
          f'{train}). Sample at most {train} frames per clip (extend mode generates longer '
          'videos clip by clip) or train with config.videofusion.residual_frame_index=False.')
    self.frame_weights(num_frames)  # A per-frame list fixes the length.

  def noise(self, rng: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """The decomposed law over the shape[1] frames of a sampled clip."""
    self.check_num_frames(shape[1])
    return decomposed.noise(rng, shape, self.frame_weights(shape[1]))

  def noise_frame_covariance(self, num_frames: int) -> Optional[np.ndarray]:
    """C of the decomposed law: C_ii = 1, C_ij = sqrt(l^i l^j); None when it is I.

    With l^i = 0 off the key frame the law is i.i.d. and guides then take
    the plain model's path, so that l = 0 reproduces it exactly.
    """
    self.check_num_frames(num_frames)
    cov = decomposed.frame_covariance(self.frame_weights(num_frames))
    return None if np.array_equal(cov, np.eye(num_frames)) else cov

  # --- Networks ---------------------------------------------------------------

  def build(self, rngs: nnx.Rngs) -> Networks:
    return Networks(self.base_config, self.residual_config, rngs=rngs)

  def compose(self, networks: Networks, z: jax.Array, logsnr: jax.Array,
              label: Optional[jax.Array], *, num_video: int, cond: Optional[jax.Array] = None,
              dropout_rng: Optional[jax.Array] = None, training: bool = False) -> jax.Array:
    """The composed eps prediction of every frame.

    Args:
      networks: the Networks.
      z: z_t [B, F, H, W, C]: num_video clip frames, then F - num_video
        appended images (training only).
      logsnr: lambda_t [B].
      label: the condition (vdm.diffusion.conditions): None, labels [B] or
        per frame [B, F], or a dict with text. Both networks take it: the
        caption says what the shared base frame shows (the digit, the
        scene) and how the residual moves it.
      num_video: N, the clip frames of z (static).
      cond: optional extra input channels [B, F, H, W, Cc].
      dropout_rng: enables dropout (training); None disables it.
      training: stop the gradient of b_hat into the non-key frames and into
        the residual's input (the paper's sg). Off for sampling, where
        reconstruction guidance differentiates through both networks.

    Returns:
      eps_hat [B, F, H, W, C] float32: sqrt(l^i) b_hat + sqrt(1 - l^i) r_hat^i
      on clip frames (b_hat on the key frame), the base's own prediction on
      appended images.
    """
    n, frames = num_video, z.shape[1]
    weights = self.frame_weights(n)
    key = decomposed.key_frame(n)
    # The base sees the key frame and every appended image, each on its own.
    base_frames = np.concatenate([[key], np.arange(n, frames)]).astype(np.int32)  # [1 + K]
    take = lambda a: None if a is None else jnp.take(a, base_frames, axis=1)
    # is_image all True: every frame attends only to itself, as a one-frame clip.
    alone = jnp.ones(len(base_frames), bool) if len(base_frames) > 1 else None
    rng = lambda i: None if dropout_rng is None else jax.random.fold_in(dropout_rng, i)
    base_out = networks.base(take(z), logsnr, cond=take(cond), is_image=alone,
                             dropout_rng=rng(0),
                             **conditions.network_kwargs(conditions.map_frames(take, label)))
    b_hat = base_out[:, :1]  # [B, 1, H, W, C]
    b_used = jax.lax.stop_gradient(b_hat) if training else b_hat
    sigma = schedules.alpha_sigma(gaussian.expand_to(logsnr, z))[1]  # [B, 1, 1, 1, 1]
    base_share = jnp.asarray(np.sqrt(weights).reshape(1, n, 1, 1, 1), jnp.float32)
    residual_share = jnp.asarray(np.sqrt(1.0 - weights).reshape(1, n, 1, 1, 1), jnp.float32)
    z_residual = z[:, :n] - base_share * sigma * b_used  # z' [B, N, H, W, C]
    r_hat = networks.residual(
        z_residual, logsnr, cond=None if cond is None else cond[:, :n], dropout_rng=rng(1),
        **conditions.network_kwargs(conditions.map_frames(lambda a: a[:, :n], label)))
    eps = base_share * b_used + residual_share * r_hat  # [B, N, H, W, C]
    # The key frame's noise is b: its prediction is b_hat, with its gradient.
    eps = jnp.where((np.arange(n) == key).reshape(1, n, 1, 1, 1), b_hat, eps)
    return jnp.concatenate([eps, base_out[:, 1:]], axis=1)

  def loss(self, networks: Networks, batch: Mapping[str, jax.Array],
           rng: jax.Array) -> base.LossOutput:
    data, d = self.config.data, self.config.diffusion
    n, k = data.num_frames, data.num_images
    x, cond = batch['video'], batch.get('cond')  # [B, T + K, H, W, C]
    if x.shape[1] != n + k:
      raise ValueError(f'the batch has {x.shape[1]} frames; VideoFusion expects '
                       f'config.data.num_frames={n} clip frames followed by '
                       f'config.data.num_images={k} appended images.')
    if self.base_config.cond_channels and cond is None:
      raise ValueError(
          f'config.model.cond_channels={self.base_config.cond_channels} needs the batch '
          "to carry 'cond' [B, T, H, W, cond_channels]; this input pipeline provides none.")
    rng_loss, rng_dropout = jax.random.split(rng)
    weights = self.frame_weights(n)

    def denoise_fn(z, logsnr, label):
      return self.compose(networks, z, logsnr, label, num_video=n, cond=cond,
                          dropout_rng=rng_dropout, training=True)

    losses, frame_losses = gaussian.diffusion_loss(
        denoise_fn, x, rng_loss, logsnr_fn=self.logsnr_fn, parameterization='eps',
        loss_type='eps_mse', label=self.batch_condition(batch),
        cond_drop_prob=d.cond_drop_prob, low_discrepancy=d.low_discrepancy,
        noise_fn=lambda rng, shape: decomposed.noise(rng, shape, weights),
        is_image=batch.get('is_image'), frame_losses=True)  # [B], [B, T + K]
    key = decomposed.key_frame(n)
    metrics = {'base_loss': jnp.mean(frame_losses[:, key])}
    if n > 1:
      metrics['residual_loss'] = jnp.mean(jnp.delete(frame_losses[:, :n], key, axis=1))
    if k:
      metrics['image_loss'] = jnp.mean(frame_losses[:, n:])
    return losses, metrics

  def denoiser(self, networks: Networks,
               conditioning: Optional[Mapping[str, jax.Array]] = None):
    cond = self.cond_channels_input(conditioning)

    def fn(z, logsnr, label):
      self.check_num_frames(z.shape[1])
      return self.compose(networks, z, logsnr, label, num_video=z.shape[1], cond=cond)
    return fn

  # --- Optimizer groups, initialisation, validation ----------------------------

  def param_labels(self, params: Any) -> Any:
    return jax.tree_util.tree_map_with_path(
        lambda path, _: BASE if path[0].key == BASE else RESIDUAL, params)

  def lr_multipliers(self) -> Mapping[str, float]:
    return {BASE: float(self.vf.base_lr_mult), RESIDUAL: 1.0}

  def pretrained_runs(self) -> Mapping[str, base.Pretrained]:
    workdir = self.vf.base_init_workdir
    return {'base': base.Pretrained('config.videofusion.base_init_workdir', workdir,
                                    'vdm')} if workdir else {}

  def initial_params(self, params: Any, pretrained: Mapping[str, Any]) -> Any:
    """Loads the base from config.videofusion.base_init_workdir, if set.

    The base is our U-Net built from config.model, exactly the network of a
    plain ('vdm') run with the same config.model: its EMA weights (of its
    newest checkpoint) replace the base's random ones; the residual keeps its
    initialisation.

    Raises:
      ValueError: the run is not a plain run, or its network differs.
      FileNotFoundError: no run or checkpoint there.
    """
    if 'base' not in pretrained:
      return params
    workdir, plain = self.vf.base_init_workdir, pretrained['base']
    ours = dataclasses.asdict(self.base_config)
    theirs = dataclasses.asdict(unet3d.UNetConfig.from_config(
        plain.config, config_lib.frame_shape(plain.config)))
    differ = sorted(f for f in ours if f not in _NOT_IN_PARAMS and ours[f] != theirs[f])
    if differ:
      raise ValueError(
          f'config.videofusion.base_init_workdir={workdir!r}: its network differs from the '
          f'base (config.model and config.data) in {differ}: '
          + ', '.join(f'{f} {theirs[f]!r} there, {ours[f]!r} here' for f in differ)
          + '. Set those keys as in that run.')
    source = dict(jax.tree_util.tree_flatten_with_path(plain.params)[0])
    target = {path[1:]: leaf for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
              if path[0].key == BASE}
    mismatched = [jax.tree_util.keystr(p) for p in set(source) | set(target)
                  if p not in source or p not in target
                  or (source[p].shape, source[p].dtype) != (target[p].shape, target[p].dtype)]
    if mismatched:  # Only when the code of the U-Net changed between the runs.
      raise ValueError(f'config.videofusion.base_init_workdir={workdir!r}: its parameters do not '
                       f'fit the base at {sorted(mismatched)[:5]}.')

    def load(path, leaf):
      return source[path[1:]] if path[0].key == BASE else leaf
    progress_lib.log(f'VideoFusion: base generator initialised from the EMA weights of step '
                     f'{plain.step} of {workdir}.')
    return jax.tree_util.tree_map_with_path(load, params)

  def validate(self) -> None:
    d = self.config.diffusion
    if d.parameterization != 'eps' or d.loss_type != 'eps_mse':
      raise ValueError(
          f'VideoFusion predicts noise: config.diffusion.parameterization={d.parameterization!r}'
          f' and config.diffusion.loss_type={d.loss_type!r} must be \'eps\' and \'eps_mse\'.')
    if self.base_config.frame_index_embed:
      raise ValueError('config.model.frame_index_embed must be 0 for VideoFusion: the base '
                       'generator is an image model; the residual generator\'s frame index '
                       'is config.videofusion.residual_frame_index.')
    if self.vf.base_lr_mult < 0:
      raise ValueError(f'config.videofusion.base_lr_mult={self.vf.base_lr_mult} must be >= 0 '
                       '(0 freezes the base).')
    self.frame_weights(self.config.data.num_frames)
