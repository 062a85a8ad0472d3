"""Captions of moving digits: a digit moving in a straight line, said in words.

A captioned moving-digits video has one digit that moves at constant velocity
and never touches a wall, so its caption ("a seven moving up and to the left,
slowly") is true of every clip cut from it. Motion is one of eight compass
directions and one of two speeds.

Held-out compositions: for each digit d, the direction ``DIRECTIONS[d % 8]``
never occurs with d in the train split, while d occurs with the seven other
directions and that direction with the other digits. The test split draws a
held-out direction for half of its videos, so that a model's generalisation to
unseen compositions can be measured on enough videos.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np

DIGIT_WORDS = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight',
               'nine')
# Compass directions in order of angle (counter-clockwise from "right", with
# y pointing up on screen); unit vectors are (dy, dx) in image rows/columns.
DIRECTIONS = ('right', 'up and to the right', 'up', 'up and to the left', 'left',
              'down and to the left', 'down', 'down and to the right')
SPEEDS = ('slowly', 'quickly')
# Distance travelled over the whole video, as a share of the free span (frame
# side minus digit side): "quickly" crosses it along an axis, "slowly" half of
# it. A diagonal path moves 1/sqrt(2) of that on each axis, so it fits too.
SPEED_SHARE = (0.5, 1.0)
HELD_OUT_FRACTION_TEST = 0.5


class Motion(NamedTuple):
  """What a caption says: the digit's class, direction and speed indices."""
  digit: int
  direction: int
  speed: int


def unit_vector(direction: int) -> np.ndarray:
  """float64 [2] (dy, dx) in image coordinates (rows grow downwards)."""
  angle = direction * np.pi / 4
  return np.array([-np.sin(angle), np.cos(angle)])


def held_out(digit: int, direction: int) -> bool:
  """Whether (digit, direction) is a composition the train split never shows."""
  return direction == digit % len(DIRECTIONS)


def caption(motion: Motion) -> str:
  """The caption of a motion, e.g. 'an eight moving left, quickly'."""
  word = DIGIT_WORDS[motion.digit]
  article = 'an' if word[0] in 'aeiou' else 'a'
  return f'{article} {word} moving {DIRECTIONS[motion.direction]}, {SPEEDS[motion.speed]}'


_CAPTION = re.compile(r'^an? (\w+) moving ([\w ]+), (\w+)$')


def parse(text) -> Motion:
  """The motion a caption (str or UTF-8 bytes; or a prompt in the same words) says.

  Raises:
    ValueError: the text is not of the form 'a <digit> moving <direction>, <speed>'.
  """
  if isinstance(text, bytes):  # As TFDS returns a Text feature.
    text = text.decode('utf-8')
  m = _CAPTION.match(text.strip().lower())
  if (not m or m.group(1) not in DIGIT_WORDS or m.group(2) not in DIRECTIONS
      or m.group(3) not in SPEEDS):
    raise ValueError(
        f'{text!r} is not a moving-digits caption: write "a <digit> moving <direction>, '
        f'<speed>" with a digit in {DIGIT_WORDS}, a direction in {DIRECTIONS} and a '
        f'speed in {SPEEDS}.')
  return Motion(DIGIT_WORDS.index(m.group(1)), DIRECTIONS.index(m.group(2)),
                SPEEDS.index(m.group(3)))


def draw_motion(rng: np.random.Generator, digit: int, split: str) -> tuple[int, int]:
  """(direction, speed) of a video of ``digit`` in ``split``.

  Train: one of the digit's seven seen directions, uniformly. Test: its
  held-out direction with probability HELD_OUT_FRACTION_TEST, else a seen one.
  """
  seen = [d for d in range(len(DIRECTIONS)) if not held_out(digit, d)]
  if split == 'test' and rng.uniform() < HELD_OUT_FRACTION_TEST:
    direction = digit % len(DIRECTIONS)
  else:
    direction = int(rng.choice(seen))
  return direction, int(rng.integers(len(SPEEDS)))


def straight_path(rng: np.random.Generator, direction: int, speed: int, num_frames: int,
                  limit: float, image_size: int) -> np.ndarray:
  """Top-left corners of a digit moving in a straight line inside the frame.

  The start is uniform over the positions from which the whole path stays in
  [0, limit] on both axes.

  Returns:
    int64 [T, 2] (y, x) positions.
  """
  del image_size  # The speed is a share of the free span, whatever the frame size.
  vel = unit_vector(direction) * SPEED_SHARE[speed] * limit / max(num_frames - 1, 1)  # [2]
  travel = vel * (num_frames - 1)
  lo = np.maximum(0.0, -travel)
  hi = limit - np.maximum(0.0, travel)
  start = lo + rng.uniform(size=2) * (hi - lo)
  t = np.arange(num_frames, dtype=np.float64)[:, None]
  return np.round(start + vel * t).astype(np.int64)


def centroids(video: np.ndarray) -> np.ndarray:
  """The brightness centroid (y, x) of every frame, in pixels.

  Args:
    video: [N, T, H, W] or [N, T, H, W, 1], any real dtype, bright digit on dark.

  Returns:
    float64 [N, T, 2].
  """
  v = np.asarray(video, np.float64)
  if v.ndim == 5:
    v = v[..., 0]
  v = np.clip(v - v.min(axis=(2, 3), keepdims=True), 0, None)  # Dark background to 0.
  mass = v.sum(axis=(2, 3)) + 1e-9  # [N, T]
  ys = (v.sum(axis=3) * np.arange(v.shape[2])).sum(axis=2) / mass  # [N, T]
  xs = (v.sum(axis=2) * np.arange(v.shape[3])).sum(axis=2) / mass  # [N, T]
  return np.stack([ys, xs], axis=-1)


def measured_direction(video: np.ndarray) -> np.ndarray:
  """The compass direction of the brightness centroid's motion over each clip.

  Args:
    video: [N, T, H, W] or [N, T, H, W, 1], any real dtype, bright digit on dark.

  Returns:
    int [N], an index of DIRECTIONS: the nearest to the least-squares velocity
    of the centroid.
  """
  c = centroids(video)
  ys, xs = c[..., 0], c[..., 1]  # [N, T]
  t = np.arange(c.shape[1]) - (c.shape[1] - 1) / 2
  vy, vx = (ys * t).sum(axis=1), (xs * t).sum(axis=1)  # Slopes, up to a positive factor.
  angle = np.arctan2(-vy, vx)  # Counter-clockwise from right, y up.
  return np.round(angle / (np.pi / 4)).astype(int) % len(DIRECTIONS)
