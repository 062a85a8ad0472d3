"""Is the digit right? A classifier of moving-digits frames, and what it says of samples.

FVD is a weak signal at small N; on the bundled single-digit data there is an
exact one. A support-vector classifier (scikit-learn) is fitted on real frames
of the train split and applied to every frame of class-conditional samples:

- conditional accuracy: the fraction of generated frames classified as the
  label the video was sampled with (chance: 10%);
- temporal consistency: the fraction of generated videos whose frames all get
  the same class.

The same two figures of real test clips (their own labels) are the ceiling,
reported beside them. Only `moving_digits/single_*` datasets qualify: there a
video's label is the class of every frame's only digit
(`moving_digits.single_digit`).

The classifier is fitted on real clips read like training clips (any
config.data.image_size). It sees a window of one digit's size centred on the frame's
intensity centroid, scaled to a peak of 1, so it reads the digit wherever it
moves and whatever its contrast; a frame of fog or static gets an arbitrary
class, as it should. numpy and scikit-learn only, on uint8 frames.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from vdm.data import moving_digits

# Fitted on this many real train clips (at most; the split may hold fewer),
# FRAMES_PER_TRAIN_VIDEO frames of each; the ceiling on up to CEILING_VIDEOS
# real test clips, every frame.
TRAIN_VIDEOS = moving_digits.DEFAULT_NUM_TRAIN
FRAMES_PER_TRAIN_VIDEO = 2
CEILING_VIDEOS = moving_digits.DEFAULT_NUM_TEST


def centred_crops(frames: np.ndarray, size: int) -> np.ndarray:
  """The window around each frame's digit, as classifier features.

  Args:
    frames: uint8 [M, H, W, 1] (or [M, H, W]) frames.
    size: side of the window (the digit's size, moving_digits.digit_size).

  Returns:
    float32 [M, size * size]: the window centred on the intensity centroid
    (zeros outside the frame), divided by its maximum.
  """
  x = np.asarray(frames, np.float32).reshape(frames.shape[:3]) / 255.0  # [M, H, W]
  m, h, w = x.shape
  # A digit covers a fifth of the frame at most: the median is the background
  # (0 in real frames; faint static in samples), which would pull the
  # centroid towards the middle and fill the window.
  x = np.maximum(x - np.median(x.reshape(m, -1), axis=1)[:, None, None], 0.0)
  mass = x.sum((1, 2)) + 1e-6
  cy = (x.sum(2) * np.arange(h)).sum(1) / mass  # [M]
  cx = (x.sum(1) * np.arange(w)).sum(1) / mass
  padded = np.pad(x, ((0, 0), (size, size), (size, size)))
  y0 = np.rint(cy - (size - 1) / 2).astype(np.int64) + size
  x0 = np.rint(cx - (size - 1) / 2).astype(np.int64) + size
  rows = y0[:, None] + np.arange(size)  # [M, size]
  cols = x0[:, None] + np.arange(size)
  crops = padded[np.arange(m)[:, None, None], rows[:, :, None], cols[:, None, :]]
  crops = crops.reshape(m, size * size)
  return crops / (crops.max(1, keepdims=True) + 1e-6)


class DigitClassifier(NamedTuple):
  """A fitted frame classifier and its figures on real test clips."""
  model: object                  # sklearn estimator on centred_crops features.
  crop_size: int                 # Window side for this resolution.
  ceiling_accuracy: float        # Accuracy on every frame of the real test clips.
  ceiling_consistency: float     # Real test videos whose frames all get one class.

  def predict(self, videos: np.ndarray) -> np.ndarray:
    """Class of every frame.

    Args:
      videos: uint8 [N, T, H, W, 1].

    Returns:
      int [N, T] predicted classes.
    """
    n, t = videos.shape[:2]
    flat = videos.reshape((n * t,) + videos.shape[2:])
    return self.model.predict(centred_crops(flat, self.crop_size)).reshape(n, t)


def scores(predicted: np.ndarray, labels: np.ndarray) -> dict:
  """Conditional accuracy and temporal consistency of classified videos.

  Args:
    predicted: int [N, T] class of every frame.
    labels: int [N] class each video should show.

  Returns:
    {'digit_accuracy': fraction of frames equal to their video's label,
     'digit_consistency': fraction of videos whose frames share one class}.
  """
  predicted, labels = np.asarray(predicted), np.asarray(labels)
  return {
      'digit_accuracy': float(np.mean(predicted == labels[:, None])),
      'digit_consistency': float(np.mean(np.all(predicted == predicted[:, :1], axis=1))),
  }


def fit(train_videos: np.ndarray, train_labels: np.ndarray, test_videos: np.ndarray,
        test_labels: np.ndarray, crop_size: int) -> DigitClassifier:
  """Fits the classifier on real train frames and measures its ceiling on real test clips.

  Args:
    train_videos: uint8 [V, F, H, W, 1] real train clips (a few frames each).
    train_labels: int [V] their digits.
    test_videos: uint8 [N, T, H, W, 1] real test clips, scored on every frame.
    test_labels: int [N].
    crop_size: window side (moving_digits.digit_size of the frame size).

  Returns:
    A DigitClassifier. A few seconds on one core for 8,000 frames.
  """
  from sklearn import svm  # pylint: disable=g-import-not-at-top
  v, f = train_videos.shape[:2]
  x = centred_crops(train_videos.reshape((v * f,) + train_videos.shape[2:]), crop_size)
  model = svm.SVC(C=10.0, gamma='scale')
  model.fit(x, np.repeat(np.asarray(train_labels), f))
  fitted = DigitClassifier(model, crop_size, 0.0, 0.0)
  real = scores(fitted.predict(test_videos), test_labels)
  return fitted._replace(ceiling_accuracy=real['digit_accuracy'],
                         ceiling_consistency=real['digit_consistency'])


def applies(config) -> bool:
  """Whether a run's samples can be scored: class-conditional on single digits."""
  return (moving_digits.single_digit(str(config.data.dataset))
          and int(config.model.num_classes) == 10 and int(config.data.channels) == 1
          and str(config.data.label_key) == 'label')
