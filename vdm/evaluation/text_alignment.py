"""Does the video do what its caption says? Text alignment on captioned digits, exactly.

On moving_digits/captions_* every caption names a digit and a direction
(vdm.data.digit_captions), and both can be read off a video without a
learned judge: the digit by the digit classifier (vdm.evaluation.digits) on
every frame, the direction by the motion of the brightness centroid over the
clip. The figures are reported separately on the compositions the training
split shows and on the held-out ones (a digit with a direction it never
moved in during training): the second is generalisation. Chance: 10% for
the digit, 12.5% for the direction (eight directions).
"""

from __future__ import annotations

import numpy as np

from vdm.data import digit_captions
from vdm.data import moving_digits

CHANCE = {'digit_accuracy': 0.1, 'direction_accuracy': 1.0 / len(digit_captions.DIRECTIONS)}


def applies(config) -> bool:
  """Whether a run's samples can be scored: a text model on captioned moving digits."""
  try:
    name = moving_digits.parse_name(str(config.data.dataset))
  except ValueError:
    return False
  return (name in moving_digits.CAPTIONED and bool(config.model.get('text_encoder', ''))
          and int(config.data.channels) == 1)


def scores(predicted: np.ndarray, directions: np.ndarray, captions) -> dict:
  """Digit and direction accuracy of videos against their captions.

  Args:
    predicted: int [N, T], the digit classifier's class of every frame.
    directions: int [N], digit_captions.measured_direction of every video.
    captions: the N captions the videos were sampled with.

  Returns:
    {'<figure>_<subset>': value} for figure in digit_accuracy (frames showing
    the caption's digit), direction_accuracy (videos moving the caption's
    way) and count, subset in seen, held_out and all.
  """
  motions = [digit_captions.parse(c) for c in captions]
  digit = np.array([m.digit for m in motions])
  direction = np.array([m.direction for m in motions])
  held = np.array([digit_captions.held_out(m.digit, m.direction) for m in motions])
  digit_ok = np.asarray(predicted) == digit[:, None]  # [N, T]
  direction_ok = np.asarray(directions) == direction  # [N]
  out = {}
  for subset, rows in (('seen', ~held), ('held_out', held), ('all', np.ones_like(held))):
    out[f'count_{subset}'] = int(rows.sum())
    if rows.any():
      out[f'digit_accuracy_{subset}'] = float(digit_ok[rows].mean())
      out[f'direction_accuracy_{subset}'] = float(direction_ok[rows].mean())
  return out
