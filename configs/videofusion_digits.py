"""VideoFusion on the bundled moving digits, CPU-sized like configs/default.py.

  python train.py --config=configs/videofusion_digits.py --workdir=runs/vf_digits
  # base initialised from a plain run of configs/default.py (`make train`):
  python train.py --config=configs/videofusion_digits.py --workdir=runs/vf_digits_init \
      --config.videofusion.base_init_workdir=runs/default --config.videofusion.base_lr_mult=0.1
  python evaluate.py --workdir=runs/vf_digits --num_samples=64 --steps=16

Networks: the base generator is configs/default.py's U-Net (the model `make
train` trains, so its checkpoint initialises the base); the residual
generator is the same U-Net at half the width (16 channels) with an absolute
frame-index embedding. Together they have as many parameters as the plain
U-Net at 36 channels (within 0.3%), the plain model VideoFusion is compared
with; the counts: BENCHMARKS.md#videofusion-speed.

Hardware: 2 CPU cores. Expected result: a training step about twice as fast
as the 36-channel plain model's, with less XLA working memory
(BENCHMARKS.md#videofusion-speed, measured at 32x32); at equal training time
a much lower FVD than the plain models', lowest with the base initialised
from a plain run (BENCHMARKS.md#videofusion-quality).
"""

from configs import default
from vdm.methods import videofusion


def get_config():
  config = default.get_config()
  config.method = 'videofusion'
  # Both generators predict noise (VideoFusion is eps-parameterized).
  config.diffusion.parameterization = 'eps'
  config.diffusion.loss_type = 'eps_mse'
  config.optimizer.learning_rate = 1e-3  # The expected results above were measured at 1e-3.
  config.videofusion = vf = videofusion.default_config()
  vf.l = 0.5                                # The paper's best share of the base noise.
  vf.residual_base_channels = 16            # Half the base's 32 channels.
  vf.residual_channel_mult = (1, 2, 2)      # The base's levels.
  vf.residual_num_res_blocks = 1
  vf.residual_attention_resolutions = (8,)
  return config
