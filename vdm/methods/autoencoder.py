"""The latent autoencoder as a trainable method (``config.method = 'autoencoder'``).

Not a diffusion model: the first stage of latent video diffusion (docs/latent.md).
It is a method so that it trains through the same ``train.py``,
checkpoints, resume, sharding and TensorBoard as every diffusion run. The
loss is VidRD's

  L = a_rec L_rec(x, D(E(x))) + a_reg L_reg(x; E) + a_disc L_disc(D(E(x)))

with L_rec the mean absolute error per pixel, L_reg the KL of the posterior
to N(0, I) per pixel value (nats), and L_disc a hinge-loss patch
discriminator (optional: a_disc = 0 builds none).

Two stages, two configs (configs/autoencoder_digits.py):
- 'image': encoder and decoder trained on frames (videos and appended
  images alike, every frame alone);
- 'temporal': VidRD's temporal-aware decoder. ``init_from`` names the image
  stage's run; the decoder gains zero-initialised temporal convolution
  blocks, and ``train = 'temporal'`` freezes everything else (learning-rate
  multiplier 0), so only the new layers (and the discriminator) learn, on
  videos.

A diffusion run then names the autoencoder's workdir in
``config.latent.autoencoder`` (vdm/latent.py).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vdm import progress as progress_lib
from vdm.methods import base
from vdm.models import autoencoder

TRAINABLE = ('all', 'temporal')


def default_config() -> ml_collections.ConfigDict:
  """The ``config.autoencoder`` section, every key commented."""
  c = ml_collections.ConfigDict()
  c.latent_channels = 4        # Channels of a latent frame.
  c.base_channels = 32         # Channels of the full-resolution level.
  c.channel_mult = (1, 2, 2)   # Per-level multipliers; latents are 2^(len - 1) x smaller per side.
  c.num_res_blocks = 1         # Residual blocks per level, encoder and decoder.
  c.norm_groups = 8            # Groups of every GroupNorm.
  c.rec_weight = 1.0           # a_rec: weight of the L1 reconstruction error per pixel.
  c.kl_weight = 1e-6           # a_reg: weight of the posterior's KL to N(0, I) per pixel value (Stable Diffusion's ratio).
  c.disc_weight = 0.0          # a_disc: weight of the adversarial term (0 = no discriminator).
  c.disc_channels = 32         # Discriminator: channels of its first layer.
  c.disc_layers = 2            # Discriminator: stride-2 layers (patch of ~2^(layers+1) px).
  c.sample_posterior = True    # Decode a posterior draw in training (False: its mean).
  c.temporal_decoder = False   # VidRD's temporal-aware decoder: temporal conv blocks after each decoder block.
  c.train = 'all'              # 'all', or 'temporal': only the temporal blocks (and discriminator) learn.
  c.init_from = ''             # Workdir of an autoencoder run whose EMA weights this run starts from.
  return c


def autoencoder_config(config: ml_collections.ConfigDict) -> autoencoder.AutoencoderConfig:
  """The AutoencoderConfig of a full config (``data`` and ``autoencoder`` sections)."""
  a = config.autoencoder
  return autoencoder.AutoencoderConfig(
      channels=config.data.channels, image_size=config.data.image_size,
      latent_channels=a.latent_channels, base_channels=a.base_channels,
      channel_mult=tuple(a.channel_mult), num_res_blocks=a.num_res_blocks,
      norm_groups=a.norm_groups, temporal_decoder=a.temporal_decoder,
      disc_channels=a.disc_channels, disc_layers=a.disc_layers)


def psnr(x: jax.Array, y: jax.Array) -> jax.Array:
  """PSNR in dB of [-1, 1] images (peak-to-peak 2), per leading index: [B, T]."""
  mse = jnp.mean(jnp.square(x - y), axis=(-3, -2, -1))
  return 10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-10))


class Method(base.Method):
  """The autoencoder (``config.method = 'autoencoder'``)."""

  def __init__(self, config):
    super().__init__(config)
    self.ae = config.autoencoder
    self.ae_config = autoencoder_config(config)

  def validate(self) -> None:
    a, t = self.ae, self.config.training
    if a.train not in TRAINABLE:
      raise ValueError(f'config.autoencoder.train={a.train!r} is unknown; choose one of '
                       f'{TRAINABLE}.')
    if a.train == 'temporal' and not a.temporal_decoder:
      raise ValueError("config.autoencoder.train='temporal' trains the temporal-aware "
                       'decoder layers: set config.autoencoder.temporal_decoder=True.')
    for key in ('rec_weight', 'kl_weight', 'disc_weight'):
      if a[key] < 0:
        raise ValueError(f'config.autoencoder.{key}={a[key]} must be >= 0.')
    if t.num_samples:
      raise ValueError(f'config.training.num_samples={t.num_samples}: an autoencoder run '
                       'draws no samples; set it to 0 (vdm/latent.py reports its '
                       'reconstructions).')
    if self.config.eval.every_steps:
      raise ValueError('config.eval.every_steps must be 0 for an autoencoder run: FVD is '
                       'for the diffusion run trained on its latents.')

  def build(self, rngs: nnx.Rngs) -> autoencoder.Autoencoder:
    return autoencoder.Autoencoder(self.ae_config, with_discriminator=self.ae.disc_weight > 0,
                                   rngs=rngs)

  def reconstruct(self, networks: autoencoder.Autoencoder, video: jax.Array,
                  rng: jax.Array, is_image=None) -> tuple[jax.Array, jax.Array]:
    """(decoded video, KL per example [B]) of video [B, T, H, W, C]."""
    mean, logvar = networks.encode(video)
    latent = (autoencoder.posterior_sample(rng, mean, logvar) if self.ae.sample_posterior
              else mean)
    # Per pixel value, so that a_reg means the same at every frame size.
    kl = autoencoder.kl_to_standard_normal(mean, logvar) / np.prod(video.shape[1:])
    return networks.decode(latent, is_image), kl

  def loss(self, networks: autoencoder.Autoencoder, batch: Mapping[str, jax.Array],
           rng: jax.Array) -> base.LossOutput:
    a = self.ae
    video = batch['video']  # [B, T + K, H, W, C]
    recon, kl = self.reconstruct(networks, video, rng, batch.get('is_image'))
    rec = jnp.mean(jnp.abs(recon - video), axis=(1, 2, 3, 4))  # [B]
    loss = a.rec_weight * rec + a.kl_weight * kl
    metrics = {'rec_l1': jnp.mean(rec), 'kl_per_dim': jnp.mean(kl),
               'psnr': jnp.mean(psnr(recon, video))}
    if networks.discriminator is not None:
      # One combined objective serves both players in one optimizer step: the
      # autoencoder sees the adversarial term through a stop-gradient copy of
      # the discriminator, the discriminator sees its own hinge loss on a
      # stop-gradient reconstruction.
      graphdef, disc_params = nnx.split(networks.discriminator)
      frozen = nnx.merge(graphdef, jax.lax.stop_gradient(disc_params))
      adv = -jnp.mean(frozen(recon), axis=(1, 2, 3, 4))
      real = networks.discriminator(video)
      fake = networks.discriminator(jax.lax.stop_gradient(recon))
      disc = (jnp.mean(jax.nn.relu(1.0 - real), axis=(1, 2, 3, 4))
              + jnp.mean(jax.nn.relu(1.0 + fake), axis=(1, 2, 3, 4)))
      loss = loss + a.disc_weight * adv + disc
      metrics.update(adversarial=jnp.mean(adv), discriminator=jnp.mean(disc))
    return loss, metrics

  def denoiser(self, networks, conditioning=None):
    raise ValueError('an autoencoder run is not a diffusion model: train a diffusion run on '
                     'its latents (config.latent.autoencoder = this workdir) and sample that.')

  def param_labels(self, params: Any) -> Any:
    def label(path, _):
      keys = [getattr(e, 'key', None) for e in path]
      return 'temporal' if keys[:2] == ['decoder', 'temporal'] else str(keys[0])
    return jax.tree_util.tree_map_with_path(label, params)

  def lr_multipliers(self) -> Mapping[str, float]:
    frozen = 0.0 if self.ae.train == 'temporal' else 1.0
    return {'encoder': frozen, 'decoder': frozen, 'temporal': 1.0, 'discriminator': 1.0}

  def pretrained_runs(self) -> Mapping[str, base.Pretrained]:
    source = self.ae.init_from
    return {'init_from': base.Pretrained('config.autoencoder.init_from', source,
                                         'autoencoder')} if source else {}

  def initial_params(self, params: Any, pretrained: Mapping[str, Any]) -> Any:
    """With config.autoencoder.init_from, starts from that autoencoder run's EMA weights.

    Every parameter present there is copied (it must have the same shape);
    the ones it lacks (the temporal blocks of a temporal-aware decoder, a
    discriminator) keep their initialisation, so the temporal decoder starts
    out decoding exactly as the image stage did.
    """
    if 'init_from' not in pretrained:
      return params
    source, run = self.ae.init_from, pretrained['init_from']
    loaded, params = base.copy_matching_params(params, run.params, f'config.autoencoder.'
                                               f'init_from={source!r}')
    progress_lib.log(f'Autoencoder: {loaded} parameter arrays initialised from step {run.step} of '
                     f'{source}.')
    return params
