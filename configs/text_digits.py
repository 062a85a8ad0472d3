"""Text-to-video on the bundled digits: captions such as "a seven moving up
and to the left, slowly", a text encoder over the captions' words learned
with the U-Net.

  python train.py --config=configs/text_digits.py --workdir=runs/text_digits
  python sample.py --workdir=runs/text_digits --prompt="a three moving right, quickly"
  python evaluate.py --workdir=runs/text_digits --num_samples=256

Hardware: 2 CPU cores, 5,000 steps in about 34 minutes (2.5 steps/s; five
times `make train`'s steps). The data is moving_digits/captions_32: 10-frame
videos of one digit on a straight path that never touches a wall, so the
caption is true of every clip; one direction per digit is held out of
training (docs/text.md). Expected result (BENCHMARKS.md#text-to-video, N =
256): every video moves the captioned way (direction accuracy 100% on seen
and 99.3% on held-out compositions), the digit is the captioned one in seven
frames of ten, FVD 80.7. Continued to 8,000 steps (20 more minutes),

  python train.py --config=configs/text_digits.py --workdir=runs/text_digits \
      --config.training.num_steps=8000

the digit is right in nine frames of ten (90.3% seen, 89.9% held out),
direction 100%, FVD 70.3.
"""

from configs import default


def get_config():
  """The default recipe, conditioned on captions instead of class labels."""
  config = default.get_config()
  config.data.dataset = 'moving_digits/captions_32'
  config.data.caption_key = 'caption'
  config.data.label_key = ''
  config.model.num_classes = 0
  config.model.update(text_encoder='learned', text_max_length=16)
  # Where in the clip each frame is: "moving right" puts the digit at the left
  # of the first frame and the right of the last, which relative temporal
  # positions alone let the words barely reach (BENCHMARKS.md#text-to-video).
  config.model.frame_index_embed = config.data.num_frames
  # The direction of motion is decided at low SNR (lambda below about -3),
  # where the plain cosine schedule puts one example in seven and the words of
  # direction were never learned; -2 puts a third there and keeps enough at
  # high SNR for the digit's shape (-3 lost it). docs/text.md says how this
  # was found.
  config.diffusion.logsnr_shift = -2.0
  config.training.num_steps = 5000
  return config
