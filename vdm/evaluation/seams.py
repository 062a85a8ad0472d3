"""Does a long video continue at a clip boundary, or restart? Seam scores.

A long video is made clip by clip (vdm.sampling.long_video); a seam is where
one clip's frames end and the next one's begin. FVD over the whole video
hardly sees a seam, so these scores compare the change across each seam
with the change between neighbouring frames inside the clips:

* pixel: the mean absolute change of the pixels from one frame to the next
  (any data);
* track (single moving digits): the distance the digit's brightness
  centroid moves from one frame to the next, in pixels;
* class (digits, with a classifier's class of every frame): the share of
  seams where the frame before and the frame after get the same class;
* jumps (single moving digits): steps where the digit's centroid moves more
  than JUMP_SHARE of the frame side in one frame, which no real clip of the
  bundled digits does (they move at most 2.5/32 of it). A driver can keep
  the seam itself smooth and still restart the video a frame or two later;
  the jump shares at the seams and inside the clips, and the share of videos
  with no jump at all, say whether it continues throughout.

A ratio (seam change / inside change) near 1 means the seam is invisible;
independently sampled clips, which restart the motion and the content,
score high. The same figures of real long clips, with the seams at the same
frames, are the ceiling: real motion is continuous everywhere, so their
ratios are about 1.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from vdm.data import digit_captions
from vdm.data import moving_digits
from vdm.evaluation import real
from vdm.sampling import long_video


# A centroid step longer than this share of the frame side is a jump (a restart).
JUMP_SHARE = 0.125


def _changes(videos: np.ndarray, track: bool) -> np.ndarray:
  """Frame-to-frame change [N, F - 1]: step t is the change from frame t to t + 1."""
  if track:
    c = digit_captions.centroids(videos)  # [N, F, 2]
    return np.linalg.norm(np.diff(c, axis=1), axis=-1)
  v = np.asarray(videos, np.float32)
  return np.abs(np.diff(v, axis=1)).mean(axis=tuple(range(2, v.ndim)))


class SeamStats:
  """Seam and inside-clip changes of videos given batch by batch.

  Args:
    seams: int [S], frames that begin a new clip (long_video.clip_starts).
    num_frames: F, frames per video.
    track: also follow the digit's centroid (single moving digits).
  """

  def __init__(self, seams, num_frames: int, track: bool):
    self.seams = np.asarray(seams, int)
    if not len(self.seams) or self.seams.min() < 1 or self.seams.max() >= num_frames:
      raise ValueError(f'seams {self.seams.tolist()} must lie in [1, {num_frames - 1}].')
    self.inside = np.setdiff1d(np.arange(1, num_frames), self.seams) - 1  # Steps in a clip.
    self.track = track
    self._sums = {}  # name -> [seam sum, seam count, inside sum, inside count]
    self._same, self._pairs = 0, 0
    self._jump_videos, self._videos = 0, 0

  def _add(self, name: str, steps: np.ndarray) -> None:
    s = self._sums.setdefault(name, np.zeros(4))
    s += [steps[:, self.seams - 1].sum(), steps[:, self.seams - 1].size,
          steps[:, self.inside].sum(), steps[:, self.inside].size]

  def add(self, videos: np.ndarray, classes: Optional[np.ndarray] = None) -> None:
    """Adds videos [n, F, H, W, C] and, optionally, their frames' classes int [n, F]."""
    self._add('pixel', _changes(videos, track=False))
    if self.track:
      steps = _changes(videos, track=True)  # [n, F - 1]
      self._add('track', steps)
      jumps = (steps > JUMP_SHARE * videos.shape[2]).astype(np.float64)
      self._add('jumps', jumps)
      self._jump_videos += int(jumps.any(axis=1).sum())
      self._videos += len(jumps)
    if classes is not None:
      self._same += int((classes[:, self.seams - 1] == classes[:, self.seams]).sum())
      self._pairs += classes[:, self.seams].size

  def scores(self, prefix: str = '') -> dict:
    """{prefix}seam_{pixel,track}_{seam,inside,ratio} and {prefix}seam_class_consistency."""
    out = {}
    for name, (seam, n_seam, inside, n_inside) in self._sums.items():
      seam, inside = seam / max(n_seam, 1), inside / max(n_inside, 1)
      out.update({f'{prefix}seam_{name}_seam': float(seam),
                  f'{prefix}seam_{name}_inside': float(inside)})
      if name != 'jumps':  # Jump shares are compared as they are; a ratio of ~0 / 0 says nothing.
        out[f'{prefix}seam_{name}_ratio'] = float(seam / max(inside, 1e-12))
    if self._videos:
      out[f'{prefix}seam_videos_without_jump'] = 1.0 - self._jump_videos / self._videos
    if self._pairs:
      out[f'{prefix}seam_class_consistency'] = self._same / self._pairs
    return out


PROTOCOL = ('seams: frames where a new clip begins; *_seam: mean change from the frame before '
            'a seam to the frame after, *_inside: between neighbouring frames of one clip, '
            '*_ratio: their quotient (1: an invisible seam); pixel: mean absolute pixel change '
            '(uint8 units); track: distance the brightness centroid moves, in pixels; '
            f'jumps: share of steps where it moves more than {JUMP_SHARE} of the frame side; '
            'videos_without_jump: share of videos with no such step; '
            'class_consistency: seams where the digit classifier gives the frames on both sides '
            'one class; real_*: real clips of the same length with seams at the same frames')


def for_long_videos(config, num_frames: int, context_frames: int) -> SeamStats:
  """Empty SeamStats for a run's long videos (evaluate.py --mode=long).

  Args:
    config: the run's config (its clip length and config.sampling's driver).
    num_frames: frames of the long videos.
    context_frames: frames each new clip of the 'reconstruction' driver is
      conditioned on.
  """
  t = int(config.data.num_frames)
  seams = long_video.clip_starts(config.sampling, num_frames, t, context_frames)
  track = (moving_digits.single_digit(str(config.data.dataset))
           and int(config.data.channels) == 1)
  return SeamStats(seams, num_frames, track)


def real_scores(config, split: str, num: int, batch_size: int, stats: SeamStats,
                classify=None) -> dict:
  """The same scores of `num` real clips of the long videos' length: the ceiling.

  Args:
    config: a config whose data.num_frames is the long videos' length.
    split: the split the real side of FVD reads.
    num: clips (the first ones FVD's real side uses).
    batch_size: reading batch size.
    stats: the generated videos' SeamStats (its seams are reused).
    classify: optional uint8 videos [n, F, H, W, 1] -> classes int [n, F].

  Returns:
    The scores, prefixed 'real_'.
  """
  indices = real.select_indices(real.split_size(config, split), num)
  videos = real.read_clips(config, split, indices, batch_size, features=False, keep_videos=True,
                           what='real clips for the seam ceiling')['videos']
  ceiling = SeamStats(stats.seams, videos.shape[1], stats.track)
  ceiling.add(videos, None if classify is None else classify(videos))
  return ceiling.scores('real_')
