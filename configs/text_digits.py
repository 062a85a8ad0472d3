"""Text-to-video on the bundled digits: captions such as "a seven moving up
and to the left, slowly", a text encoder over the captions' words learned
with the U-Net.

  python train.py --config=configs/text_digits.py --workdir=runs/text_digits
  python sample.py --workdir=runs/text_digits --prompt="a three moving right, quickly"
  python evaluate.py --workdir=runs/text_digits --num_samples=256

Hardware: 2 CPU cores, about the time of `make train`. The data is
moving_digits/captions_32: 10-frame videos of one digit on a straight path
that never touches a wall, so the caption is true of every clip; one
direction per digit is held out of training (docs/text.md). Expected result
(digit and direction accuracy on seen and held-out compositions, FVD):
BENCHMARKS.md#text-to-video. The digit follows the caption after about
2,000 steps (--config.training.num_steps=2000); the direction of motion is
not learned: at chance after one 8,000-step schedule (digit 100%, FVD 74).
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
  return config
