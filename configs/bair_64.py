"""BAIR robot pushing 16x64x64, the paper's setting (v-prediction, 1 -> 15 frames).

  python train.py --config=configs/bair_64.py --workdir=runs/bair_64 \
      --config.data.data_dir=/path/to/tfds

Data: TFDS 'bair_robot_pushing_small' (`tfds build bair_robot_pushing_small`);
for GPU runs prepare it once (`python prepare.py --config=configs/bair_64.py
--source=tfds:bair_robot_pushing_small --video_key=image_main ...`, docs/data.md).
Hardware: 8 H100/H200 GPUs or a TPU-v4 slice, bfloat16. The train state
(148M parameters, EMA, Adam) takes 2.2 GiB a device replicated, 0.3 GiB
under FSDP over 8 (BENCHMARKS.md#memory-plan); its activations, estimated by
compiling the step for the CPU, are 14 GiB a video (5 a device on 80 GB, 9 on
141 GB; an estimate that materialises every attention matrix and ignores
remat, so a GPU needs less: benchmarks/device_check.py measures the largest
batch). Expected result: the
paper reports FVD 66.92 for 1-frame-conditioned prediction of 15 frames with
256 ancestral steps plus 256 Langevin corrections (sample.py --mode=predict
--sampler=pc --steps=256).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.dataset = 'bair_robot_pushing_small'
  config.data.random_flip = True  # Left-right flips of clips: more scenes from the same data.
  config.data.video_key = 'image_main'
  config.data.label_key = ''
  config.data.num_frames = 16
  config.data.image_size = 64
  config.data.channels = 3
  config.data.num_images = 0
  config.model.base_channels = 128
  config.model.channel_mult = (1, 2, 3, 4)
  config.model.num_res_blocks = 3
  config.model.attention_resolutions = (8, 16, 32)
  config.model.head_dim = 64
  config.model.emb_dim = 1024
  config.model.num_classes = 0
  config.model.norm_groups = 32
  config.model.dtype = 'bfloat16'
  config.diffusion.parameterization = 'v'
  config.diffusion.loss_type = 'eps_mse'
  config.diffusion.cond_drop_prob = 0.0
  config.optimizer.learning_rate = 3e-4
  config.optimizer.warmup_steps = 1000
  config.optimizer.decay = 'none'
  config.optimizer.ema_decay = 0.999
  config.training.batch_size = 128
  config.training.num_steps = 500_000
  config.training.log_every = 100
  config.training.checkpoint_every = 5000
  config.training.sample_every = 10_000
  config.sampling.sampler = 'pc'
  config.sampling.num_steps = 256
  config.sampling.gamma = 0.0
  config.sampling.guidance_weight = 0.0  # Unconditional: no labels to guide by.
  config.sampling.w_r = 50.0
  config.eval.num_samples = 256
  return config
