"""Video Diffusion Models (Ho et al., 2022): one space-time U-Net, i.i.d. noise.

The plain method (docs/vdm.md): the factorized U-Net predicts eps, v or
x from z_t = alpha_t x + sigma_t eps with eps ~ N(0, I), trained jointly on
videos and appended images, with per-frame labels dropped for classifier-free
guidance.
"""

from __future__ import annotations

from typing import Mapping, Optional

import jax
from flax import nnx

from vdm.diffusion import conditions
from vdm.diffusion import gaussian
from vdm.methods import base
from vdm.models import unet3d


class Method(base.Method):
  """The VDM method (``config.method = 'vdm'``)."""

  def __init__(self, config):
    super().__init__(config)
    self.model_config = unet3d.UNetConfig.from_config(config, self.frame_shape)

  def build(self, rngs: nnx.Rngs) -> unet3d.UNet3D:
    return unet3d.UNet3D(self.model_config, rngs=rngs)

  def loss(self, networks: unet3d.UNet3D, batch: Mapping[str, jax.Array],
           rng: jax.Array) -> base.LossOutput:
    d = self.config.diffusion
    rng_loss, rng_dropout = jax.random.split(rng)
    is_image, cond = batch.get('is_image'), batch.get('cond')
    if self.model_config.cond_channels and cond is None:
      raise ValueError(
          f'config.model.cond_channels={self.model_config.cond_channels} needs the batch '
          "to carry 'cond' [B, T, H, W, cond_channels]; this input pipeline provides none.")

    def denoise_fn(z, logsnr, condition):
      return networks(z, logsnr, cond=cond, is_image=is_image, dropout_rng=rng_dropout,
                      **conditions.network_kwargs(condition))
    losses = gaussian.diffusion_loss(
        denoise_fn, batch['video'], rng_loss, logsnr_fn=self.logsnr_fn,
        parameterization=d.parameterization, loss_type=d.loss_type,
        label=self.batch_condition(batch),
        cond_drop_prob=d.cond_drop_prob, low_discrepancy=d.low_discrepancy,
        noise_fn=self.noise, is_image=is_image)
    return losses, {}

  def denoiser(self, networks: unet3d.UNet3D,
               conditioning: Optional[Mapping[str, jax.Array]] = None):
    cond = self.cond_channels_input(conditioning)

    def fn(z, logsnr, condition):
      return networks(z, logsnr, cond=cond, **conditions.network_kwargs(condition))
    return fn
