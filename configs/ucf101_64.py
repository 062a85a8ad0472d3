"""UCF101 16x64x64, the paper's setting (Ho et al. 2022, Table 1 and appendix).

  python train.py --config=configs/ucf101_64.py --workdir=runs/ucf101_64 \
      --config.data.data_dir=/path/to/tfds

Data: TFDS 'ucf101' (manual download: docs/data.md#other-tfds-datasets). For
GPU runs, prepare it once at 64x64 (read as it is stored, a clip costs a GPU
dozens of host cores; prepared, about one: BENCHMARKS.md#input-pipeline):

  python prepare.py --config=configs/ucf101_64.py --source=tfds:ucf101 --label_key=label \
      --tfds_data_dir=/path/to/tfds --name=ucf101_64 --out=/path/to/tfds
  python train.py ... --config.data.dataset=ucf101_64

Hardware: the paper trained on TPU-v4 with batch 128; on 8 H100/H200 GPUs use
bfloat16. The train state (1.17B parameters, EMA, Adam) takes 17.4 GiB a
device on the default mesh (('data', -1), ('fsdp', 1)), 2.2 GiB with
--config.sharding.mesh="(('data', 1), ('fsdp', -1))" on 8 devices
(BENCHMARKS.md#memory-plan). The step's activations, estimated by compiling
it for the CPU, are 34 GiB a video, which would fit only 2 videos a device on
80 GB and 3 on 141 GB, not the 16 of batch 128 over 8; that estimate
materialises every attention matrix and ignores remat, so a GPU needs less:
run benchmarks/device_check.py (its batch stages) before a long run, and
lower config.training.batch_size or turn on config.model.remat to fit.
Expected result:
the paper reports FVD 295 for the unconditional 16x64x64 model with joint
training (K = 8 appended images), after roughly 450k steps.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.dataset = 'ucf101'
  config.data.random_flip = True  # Left-right flips: UCF101 actions are mirror-symmetric.
  config.data.num_frames = 16
  config.data.frameskip = 1
  config.data.image_size = 64
  config.data.channels = 3
  config.data.num_images = 8
  config.data.label_key = 'label'
  config.model.base_channels = 256
  config.model.channel_mult = (1, 2, 4, 8)
  config.model.num_res_blocks = 2
  config.model.attention_resolutions = (8, 16, 32)
  config.model.head_dim = 64
  config.model.emb_dim = 1024
  config.model.dropout = 0.1
  config.model.num_classes = 101
  config.model.norm_groups = 32
  config.model.dtype = 'bfloat16'
  config.diffusion.parameterization = 'eps'
  config.diffusion.loss_type = 'eps_mse'
  config.optimizer.learning_rate = 3e-4
  config.optimizer.warmup_steps = 1000
  config.optimizer.decay = 'none'
  config.optimizer.b2 = 0.99
  config.optimizer.ema_decay = 0.9999
  config.training.batch_size = 128
  config.training.num_steps = 450_000
  config.training.log_every = 100
  config.training.checkpoint_every = 5000
  config.training.sample_every = 10_000
  config.sampling.sampler = 'ancestral'
  config.sampling.num_steps = 256
  config.sampling.gamma = 0.1
  config.sampling.guidance_weight = 0.0  # The class-conditional model alone; raise it for guided samples.
  config.eval.num_samples = 2048
  config.eval.every_steps = 50_000
  return config
