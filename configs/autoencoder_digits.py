"""The latent autoencoder of latent diffusion on the bundled moving digits.

Two stages (docs/latent.md): the image autoencoder on frames, then
VidRD's temporal-aware decoder (the encoder frozen, only the new temporal
layers trained, on videos):

  python train.py --config=configs/autoencoder_digits.py --workdir=runs/ae_image
  python train.py --config=configs/autoencoder_digits.py:temporal --workdir=runs/ae_temporal \\
      --config.autoencoder.init_from=runs/ae_image

A diffusion run then trains on its latents (any config at the autoencoder's
frame size; benchmarks/latent_vs_pixel.py compares it with the pixel model):

  python train.py --config=configs/default.py --workdir=runs/latent \\
      --config.data.image_size=32 --config.latent.autoencoder=runs/ae_temporal

Hardware: 2 CPU cores; 32x32 grey frames -> 8x8x4 latents. The image stage
(400 steps) takes a few minutes, the temporal stage (200 steps) about half
as long. Expected result (benchmarks/autoencoder_quality.py, 128 test clips):
reconstructions that keep each digit's shape and motion with slightly softer
strokes; the temporal stage improves PSNR and frame-difference RMSE only
marginally, since on these clips the per-frame decoder hardly flickers.
Time, scores and the latent scale factor: BENCHMARKS.md#latent-autoencoder.
"""

from configs import default
from vdm.methods import autoencoder


def get_config(stage: str = 'image'):
  """The config of ``stage``: 'image' (first) or 'temporal' (VidRD's decoder)."""
  if stage not in ('image', 'temporal'):
    raise ValueError(f'configs/autoencoder_digits.py:{stage}: choose image or temporal.')
  config = default.get_config()
  config.method = 'autoencoder'
  config.autoencoder = autoencoder.default_config()
  config.data.image_size = 32
  config.data.label_key = ''
  config.model.num_classes = 0
  config.training.num_samples = 0
  config.autoencoder.base_channels = 16  # 32x32x1 -> 8x8x4 at 16/32/32 channels: CPU-sized.
  config.training.num_steps = 400
  config.training.checkpoint_every = 100
  config.optimizer.learning_rate = 1e-3
  config.optimizer.warmup_steps = 50
  if stage == 'temporal':
    # Videos only: the temporal layers learn how neighbouring frames agree.
    config.data.num_images = 0
    config.autoencoder.temporal_decoder = True
    config.autoencoder.train = 'temporal'
    config.training.num_steps = 200
  return config
