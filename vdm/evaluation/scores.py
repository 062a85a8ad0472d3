"""Scores of generated videos: FVD/KVD of features, the digit classifier, text
alignment, first-frame fidelity."""

from __future__ import annotations

import numpy as np

from vdm.data import digit_captions
from vdm.data import moving_digits
from vdm.evaluation import digits
from vdm.evaluation import fidelity
from vdm.evaluation import metrics
from vdm.evaluation import real
from vdm.evaluation import text_alignment


def distances(real: np.ndarray, fake: np.ndarray) -> dict[str, float]:
  kvd, kvd_std = metrics.kernel_distance(real, fake, return_std=True)
  return {'fvd': metrics.fvd_from_features(real, fake), 'kvd': kvd, 'kvd_std': kvd_std}


_DIGIT_CLASSIFIERS = {}


def digit_classifier(config, split: str) -> digits.DigitClassifier:
  """The digit classifier for a run's data, fitted once per process.

  Fitted on real clips of config.data.train_split (up to digits.TRAIN_VIDEOS,
  spread over the split; digits.FRAMES_PER_TRAIN_VIDEO random frames of each)
  and scored on up to digits.CEILING_VIDEOS clips of ``split``, all read like
  training clips, so it sees frames exactly as the model was trained on them.

  Args:
    config: a run config for which digits.applies is true.
    split: the evaluation split (the ceiling's clips).

  Returns:
    A digits.DigitClassifier.
  """
  d = config.data
  key = (str(d.dataset), str(d.data_dir), int(d.image_size), int(d.num_frames),
         int(d.frameskip), str(d.train_split), split)
  if key not in _DIGIT_CLASSIFIERS:
    def read(split_name, most):
      size = real.split_size(config, split_name)
      out = real.read_clips(config, split_name, real.select_indices(size, min(most, size)),
                       batch_size=64, features=False, keep_videos=True,
                       what=f'{split_name} clips for the digit classifier')
      return out['videos'], out['labels']

    train_videos, train_labels = read(str(d.train_split), digits.TRAIN_VIDEOS)
    pick = np.random.default_rng(0).integers(
        0, train_videos.shape[1], (len(train_videos), digits.FRAMES_PER_TRAIN_VIDEO))
    train_videos = train_videos[np.arange(len(train_videos))[:, None], pick]  # [V, F, H, W, 1]
    test_videos, test_labels = read(split, digits.CEILING_VIDEOS)
    _DIGIT_CLASSIFIERS[key] = digits.fit(train_videos, train_labels, test_videos, test_labels,
                                         moving_digits.digit_size(int(d.image_size)))
  return _DIGIT_CLASSIFIERS[key]


def labelled(config):
  """``config`` reading moving digits' 'label' feature (a text run's config has
  label_key ''), for the digit classifier."""
  config = config.copy_and_resolve_references()
  config.data.label_key = 'label'
  return config


_REAL_TEXT_SCORES = {}


def text_scores(config, split: str, predicted: np.ndarray, directions: np.ndarray,
                captions) -> dict:
  """Text alignment of the samples (text_alignment.scores), with the real
  clips' own figures beside them (up to digits.CEILING_VIDEOS clips of ``split``)."""
  config = labelled(config)
  clf = digit_classifier(config, split)
  key = (str(config.data.dataset), str(config.data.data_dir), int(config.data.image_size),
         int(config.data.num_frames), split)
  if key not in _REAL_TEXT_SCORES:
    size = real.split_size(config, split)
    out = real.read_clips(config, split,
                          real.select_indices(size, min(digits.CEILING_VIDEOS, size)),
                          batch_size=64, features=False, keep_videos=True,
                          what=f'{split} clips for the text alignment ceiling')
    _REAL_TEXT_SCORES[key] = text_alignment.scores(
        clf.predict(out['videos']), digit_captions.measured_direction(out['videos']),
        out['captions'])
  result = text_alignment.scores(predicted, directions, captions)
  result.update({f'real_{k}': v for k, v in _REAL_TEXT_SCORES[key].items()
                 if not k.startswith('count')})
  result['text_protocol'] = (
      'digit accuracy: generated frames that the digit classifier (SVC on centred digit '
      "windows, fitted on real train frames) reads as the caption's digit (chance 0.1); "
      "direction accuracy: videos whose brightness centroid moves in the caption's "
      'direction, nearest of eight (chance 0.125); held_out: digit-direction pairs absent '
      f'from the train split; real_*: real {split} clips')
  return result


def digit_scores(config, split: str, predicted: np.ndarray, labels: np.ndarray) -> dict:
  """The digit classifier's figures of the samples, with the real clips' ceiling."""
  clf = digit_classifier(config, split)
  return {**digits.scores(predicted, labels),
          'digit_accuracy_ceiling': clf.ceiling_accuracy,
          'digit_consistency_ceiling': clf.ceiling_consistency,
          'digit_protocol': (
              'SVC on centred digit windows, fitted on real train frames; accuracy: '
              'generated frames classified as the sampled label (chance 0.1); '
              'consistency: videos whose frames all get one class; ceilings: real '
              f'{split} clips (up to {digits.CEILING_VIDEOS}, every frame)')}


def first_frame_fidelity(real: np.ndarray, scores: list) -> dict:
  """Means of the per-video fidelity scores, and the real clips' own figure.

  Args:
    real: uint8 [N, T, H, W, C], the real clips whose first frames were given.
    scores: fidelity.first_frame_scores of every generated batch.

  Returns:
    {'first_frame_psnr', 'first_frame_ssim', 'later_frames_psnr',
     'real_later_frames_psnr', 'fidelity_protocol'}.
  """
  means = {k: float(np.mean(np.concatenate([s[k] for s in scores]))) for k in scores[0]}
  real_scores = fidelity.first_frame_scores(real[:, 0], real)
  if 'later_frames_psnr' in real_scores:
    means['real_later_frames_psnr'] = float(np.mean(real_scores['later_frames_psnr']))
  means['fidelity_protocol'] = (
      f'uint8 frames against the given image (frame 1 of the real clip); PSNR capped at '
      f'{fidelity.PSNR_CAP:g} dB (identical); SSIM with an 11x11 Gaussian window of std '
      f'{fidelity.SSIM_SIGMA} (smaller on frames under 11 px); later frames: mean PSNR of '
      'frames 2..T')
  return means
