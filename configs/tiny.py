"""A tiny configuration for tests: runs a train step in seconds on one CPU core.

  python train.py --config=configs/tiny.py --workdir=/tmp/tiny

Hardware: any CPU. Expected result: finite losses; samples are noise-like.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.num_frames = 4
  config.data.num_images = 2
  config.data.image_size = 8
  config.model.base_channels = 16
  config.model.channel_mult = (1, 2)
  config.model.num_res_blocks = 1
  config.model.attention_resolutions = (4,)
  config.model.head_dim = 8
  config.model.norm_groups = 4
  config.model.dropout = 0.0
  config.optimizer.warmup_steps = 2
  config.training.batch_size = 4
  config.training.num_steps = 4
  config.training.log_every = 2
  config.training.checkpoint_every = 2
  config.training.sample_every = 0
  config.training.num_samples = 2
  config.sampling.num_steps = 4
  config.eval.num_samples = 4
  config.eval.batch_size = 2
  return config
