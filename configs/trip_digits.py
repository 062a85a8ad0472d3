"""TRIP image-to-video on the bundled moving digits, CPU-sized like default.py.

Each clip's first frame conditions the generation of the whole clip (frame 1
included); config.trip.fusion picks the variant (docs/trip.md):

  python train.py --config=configs/trip_digits.py --workdir=runs/trip_tnf
  python train.py --config=configs/trip_digits.py --workdir=runs/trip_linear \\
      --config.trip.fusion=linear
  python train.py --config=configs/trip_digits.py --workdir=runs/trip_minus \\
      --config.trip.fusion=none                                   # TRIP^-
  python train.py --config=configs/trip_digits.py --workdir=runs/trip_c \\
      --config.trip.fusion=none --config.trip.condition=channels  # TRIP_C
  python train.py --config=configs/trip_digits.py:vdm --workdir=runs/trip_vdm
      # the same data, U-Net and schedule as a plain unconditional model, for
      # reconstruction guidance on frame 1 (sample.py/evaluate.py --mode=predict)

then

  python sample.py --workdir=runs/trip_tnf --mode=i2v --input=IMAGE.png --output_dir=out/i2v
  python evaluate.py --workdir=runs/trip_tnf --mode=i2v --num_samples=64 --steps=16

Hardware: 2 CPU cores, 220 steps (about 5 minutes of training on an idle
machine). Expected result (benchmarks/trip_i2v.py, the variants at equal
training time): TNF has the best FVD, with generated frame 1 close to the
given image; linear fusion makes frame 1 exact but copies it into the next
frames; TRIP^- and TRIP_C draw a frame 1 barely related to the image and
score worst; the reconstruction-guided plain model scores between linear
fusion and TRIP^-. Scores: BENCHMARKS.md#trip-image-to-video; samples of
this config: docs/trip.md#a-short-run-looked-at. Fine-tuning from a trained
plain run, the paper's way:
--config.trip.init_from=runs/trip_vdm --config.optimizer.learning_rate=2e-4
--config.trip.unet_lr_multiplier=0.01.
"""

from configs import default
from vdm.methods import trip


def get_config(method: str = 'trip'):
  """The config; ``method`` is 'trip' (default) or 'vdm' (the plain baseline)."""
  if method not in ('trip', 'vdm'):
    raise ValueError(f'configs/trip_digits.py:{method}: choose trip or vdm.')
  config = default.get_config()
  config.method = method
  if method == 'trip':
    config.trip = trip.default_config()
  # Video frames only (TRIP conditions every clip on its own first frame), and
  # no class labels: the image is the condition.
  config.data.num_images = 0
  config.data.label_key = ''
  config.model.num_classes = 0
  config.diffusion.cond_drop_prob = 0.0
  # TRIP fuses noise predictions: eps-parameterized.
  config.diffusion.parameterization = 'eps'
  config.diffusion.loss_type = 'eps_mse'
  config.sampling.guidance_weight = 0.0
  config.optimizer.learning_rate = 1e-3  # The expected results above were measured at 1e-3.
  # The prior (z^i - alpha x^1) / sigma grows like 1 / sigma on pixels that
  # move; the paper's DDPM betas start at 1e-4, i.e. log-SNR at most
  # log((1 - 1e-4) / 1e-4) = 9.2 (sigma >= 0.01). The cosine schedule is
  # clipped there instead of at 20 (sigma 4.5e-5).
  config.diffusion.logsnr_max = 9.2
  config.optimizer.warmup_steps = 20  # A few hundred steps on a CPU: reach the peak rate early.
  config.training.num_steps = 220
  config.training.num_samples = 0  # Periodic samples are unconditional; use sample.py --mode=i2v.
  config.training.checkpoint_every = 100
  config.sampling.num_steps = 32
  return config
