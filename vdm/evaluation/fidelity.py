"""Frame fidelity of image-to-video samples: PSNR and SSIM against a given image.

For a video generated from an image, how close is its frame 1 to the image
(PSNR and SSIM), and how close do its later frames stay to it (mean PSNR, a
rough consistency figure: a video that never moves scores highest, so compare
it with the real clips' own value). numpy and scipy only, on uint8 frames.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# PSNR of identical images (MSE 0) is reported as this many dB.
PSNR_CAP = 100.0
# SSIM of Wang et al. (2004): an 11x11 Gaussian window of std 1.5 and these constants.
SSIM_SIGMA = 1.5
SSIM_RADIUS = 5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def psnr(a: np.ndarray, b: np.ndarray, max_value: float = 255.0) -> np.ndarray:
  """Peak signal-to-noise ratio of each image pair, in dB.

  Args:
    a, b: [..., H, W, C] images in [0, max_value] (e.g. uint8).
    max_value: the largest pixel value.

  Returns:
    [...] float64, PSNR_CAP where the images are identical.
  """
  diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
  mse = np.mean(np.square(diff), axis=(-3, -2, -1))
  with np.errstate(divide='ignore'):
    value = 10.0 * np.log10(max_value**2 / mse)
  return np.minimum(value, PSNR_CAP)


def ssim(a: np.ndarray, b: np.ndarray, max_value: float = 255.0) -> np.ndarray:
  """Structural similarity of each image pair (Wang et al., 2004).

  Local means, variances and covariance under an 11x11 Gaussian window
  (std 1.5) per channel, averaged over the pixels whose window lies inside the
  image and over channels. Frames smaller than 11 pixels get the largest odd
  window that fits (truncating the same Gaussian).

  Args:
    a, b: [..., H, W, C] images in [0, max_value], H and W >= 3.
    max_value: the largest pixel value.

  Returns:
    [...] float64 in [-1, 1]; 1 for identical images.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape or min(a.shape[-3:-1]) < 3:
    raise ValueError(f'ssim needs two images of the same shape, at least 3x3; got {a.shape} '
                     f'and {b.shape}.')
  r = min(SSIM_RADIUS, (min(a.shape[-3:-1]) - 1) // 2)
  sigma = [0.0] * (a.ndim - 3) + [SSIM_SIGMA, SSIM_SIGMA, 0.0]

  def blur(x):
    return ndimage.gaussian_filter(x, sigma, truncate=r / SSIM_SIGMA, mode='reflect')

  mu_a, mu_b = blur(a), blur(b)
  var_a = blur(a * a) - mu_a**2
  var_b = blur(b * b) - mu_b**2
  cov = blur(a * b) - mu_a * mu_b
  c1, c2 = (SSIM_K1 * max_value)**2, (SSIM_K2 * max_value)**2
  index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2) /
           ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)))  # [..., H, W, C]
  return np.mean(index[..., r:-r, r:-r, :], axis=(-3, -2, -1))


def first_frame_scores(images: np.ndarray, videos: np.ndarray) -> dict[str, np.ndarray]:
  """Fidelity of videos to the images they were generated from, per video.

  Args:
    images: uint8 [N, H, W, C], the given images.
    videos: uint8 [N, T, H, W, C], the generated videos.

  Returns:
    {'first_frame_psnr', 'first_frame_ssim': frame 1 against the image;
     'later_frames_psnr': the mean PSNR of frames 2..T against the image
     (absent when T = 1)}, each float64 [N].
  """
  images, videos = np.asarray(images), np.asarray(videos)
  if images.shape != videos[:, 0].shape:
    raise ValueError(f'images {images.shape} do not match the frames of videos {videos.shape}.')
  scores = {'first_frame_psnr': psnr(videos[:, 0], images),
            'first_frame_ssim': ssim(videos[:, 0], images)}
  if videos.shape[1] > 1:
    scores['later_frames_psnr'] = np.mean(psnr(videos[:, 1:], images[:, None]), axis=1)
  return scores
