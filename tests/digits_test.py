"""Tests of the digit classifier (vdm.evaluation.digits) on real moving digits."""

import numpy as np
import pytest

from vdm.data import moving_digits
from vdm.evaluation import digits

SIZE = 32


@pytest.fixture(scope='module')
def classifier():
  """Fitted on 600 real single-digit train clips (2 frames each), scored on 128 test clips."""
  train = moving_digits.generate('train', 600, 10, SIZE, max_digits=1)
  pick = np.random.default_rng(0).integers(0, 10, (600, 2))
  test = moving_digits.generate('test', 128, 10, SIZE, max_digits=1)
  clf = digits.fit(train['video'][np.arange(600)[:, None], pick], train['label'],
                   test['video'], test['label'], moving_digits.digit_size(SIZE))
  return clf, test


def test_scores_count_frames_and_videos():
  predicted = np.array([[3, 3, 3], [1, 2, 1], [5, 5, 5]])
  labels = np.array([3, 1, 4])
  out = digits.scores(predicted, labels)
  assert out['digit_accuracy'] == pytest.approx(5 / 9)  # 3 + 2 + 0 frames right.
  assert out['digit_consistency'] == pytest.approx(2 / 3)  # A wrong but constant video counts.


def test_crops_follow_the_digit_on_any_background():
  """The same digit at two places, on black or on faint static, gives the same window."""
  video = moving_digits.generate('train', 1, 10, SIZE, max_digits=1)['video'][0]  # [T, H, W, 1]
  ys, xs = np.nonzero(video[0, ..., 0])
  patch = video[0, ys.min():ys.max() + 1, xs.min():xs.max() + 1]  # The digit's bounding box.
  h, w = patch.shape[:2]
  frame, moved = np.zeros((2, SIZE, SIZE, 1), np.uint8)
  frame[1:1 + h, 2:2 + w] = patch
  moved[SIZE - 1 - h:SIZE - 1, SIZE - 2 - w:SIZE - 2] = patch
  a, b = digits.centred_crops(np.stack([frame, moved]), 14)
  np.testing.assert_allclose(a, b)
  assert a.max() == pytest.approx(1.0, abs=1e-5)  # Contrast normalised.
  # A uniform background level (the median) is removed before the centroid.
  grey = np.minimum(moved.astype(np.int32) + 30, 255).astype(np.uint8)
  np.testing.assert_allclose(digits.centred_crops(grey[None], 14)[0], b, atol=0.03)


def test_classifier_reads_real_digits_and_only_them(classifier):
  clf, test = classifier
  # The ceiling: real unseen handwriting, every frame.
  assert clf.ceiling_accuracy > 0.85
  assert clf.ceiling_consistency > 0.8
  predicted = clf.predict(test['video'])  # [N, T]
  assert predicted.shape == (128, 10)
  right = digits.scores(predicted, test['label'])['digit_accuracy']
  assert right == pytest.approx(clf.ceiling_accuracy)
  # Wrong labels, static and mirror images are not taken for the digit.
  assert digits.scores(predicted, (test['label'] + 1) % 10)['digit_accuracy'] < 0.1
  noise = np.random.default_rng(1).integers(0, 256, test['video'].shape).astype(np.uint8)
  assert digits.scores(clf.predict(noise), test['label'])['digit_accuracy'] < 0.25
  mirrored = clf.predict(test['video'][:, :, :, ::-1])
  assert digits.scores(mirrored, test['label'])['digit_accuracy'] < right - 0.3


def test_applies_only_to_single_digit_class_conditional_runs():
  from configs import default  # pylint: disable=g-import-not-at-top
  c = default.get_config()
  assert digits.applies(c)  # The default: one digit per video.
  c.data.dataset = 'moving_digits/32'
  assert not digits.applies(c)  # The label is only the first of 1-3 digits.
  c.data.dataset = 'moving_digits/single_32'
  assert digits.applies(c)
  c.model.num_classes = 0
  assert not digits.applies(c)
  assert not moving_digits.single_digit('ucf101')
