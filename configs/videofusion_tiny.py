"""VideoFusion on configs/tiny.py: 8x8 frames, for tests.

  python train.py --config=configs/videofusion_tiny.py --workdir=/tmp/vf_tiny

Hardware: any CPU (about a minute on 2 busy cores). Expected result: finite
losses (base_loss, residual_loss and image_loss logged beside the loss);
samples are noise-like.
"""

from configs import tiny
from vdm.methods import videofusion


def get_config():
  config = tiny.get_config()
  config.method = 'videofusion'
  config.videofusion = vf = videofusion.default_config()
  # The base is tiny.py's model (16 channels, 2 levels); a residual half as wide.
  vf.residual_base_channels = 8
  vf.residual_channel_mult = (1, 2)
  vf.residual_attention_resolutions = (4,)
  return config
