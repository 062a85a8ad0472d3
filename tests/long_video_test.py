"""Tests of vdm/sampling/long_video.py: VidRD's FNR, PNS and DSG, and long-video statistics.

The data is a stationary AR(1) video (frame correlation rho = 0.9, 2x2x1
frames, see samplers_test.stationary_gaussian) with its exact denoiser, so the
correlations across a clip boundary can be compared with the data's rho^lag.
"""

import math
import os
import sys

import jax
import numpy as np
import pytest

from vdm.diffusion import decomposed
from vdm.diffusion import samplers
from vdm.sampling import conditional
from vdm.sampling import long_video

sys.path.insert(0, os.path.dirname(__file__))
from samplers_test import LOGSNR_FN, exact_model, stationary_gaussian  # pylint: disable=g-import-not-at-top

SAMPLER = dict(logsnr_fn=LOGSNR_FN, parameterization='eps', clip_x=False)
RHO = 0.9
N, M = 8, 4  # Clip frames and overlap.
CLIP = stationary_gaussian(N, rho=RHO)  # [8, 2, 2, 1] per video
MODEL = exact_model(CLIP, 'eps')
FRAME = CLIP.shape[1:]  # (2, 2, 1)


def test_no_reuse_gives_independent_clips():
  # overlap = 0, a = 0, beta = 0: every clip is samplers.sample from fresh
  # noise with the driver's documented keys. A noise_fn other than the default
  # shows that both kinds of draws go through it.
  b, steps, length = 3, 6, 20
  noise_fn = lambda rng, shape: 0.5 * samplers.standard_normal(rng, shape)
  rng = jax.random.PRNGKey(7)
  video = long_video.vidrd_video(MODEL, rng, length, clip_frames=N, clip_shape=(b, *FRAME),
                                 overlap=0, noise_a=0.0, beta=0.0, num_steps=steps,
                                 noise_fn=noise_fn, **SAMPLER)
  one_clip = jax.jit(lambda rng_noise, rng: samplers.sample(
      MODEL, rng, (b, N, *FRAME), z_init=noise_fn(rng_noise, (b, N, *FRAME)),
      sampler='ddim', num_steps=steps, **SAMPLER))
  clips = [one_clip(*jax.random.split(jax.random.fold_in(rng, c))) for c in range(3)]
  assert video.shape == (b, length, *FRAME)
  np.testing.assert_allclose(video, np.concatenate(clips, axis=1)[:, :length], rtol=0, atol=1e-6)


def test_official_schedule():
  # M = 4, T = 50, beta = 0.4: frames 0..3 pinned for 20, 15, 10, 5 steps.
  np.testing.assert_array_equal(long_video.pinned_steps(16, 4, 50, 0.4), [20, 15, 10, 5])
  np.testing.assert_array_equal(long_video.pinned_steps(16, 4, 50, 0.4, 'forward'),
                                [5, 10, 15, 20])
  np.testing.assert_array_equal(long_video.overlap_sources(16, 4), [15, 14, 13, 12])
  np.testing.assert_array_equal(long_video.overlap_sources(16, 4, 'forward'), [12, 13, 14, 15])
  # A threshold that is not an integer pins every step below it: 13.33 -> 14, 6.67 -> 7.
  np.testing.assert_array_equal(long_video.pinned_steps(16, 3, 50, 0.4), [20, 14, 7])
  np.testing.assert_array_equal(long_video.pinned_steps(16, 4, 50, 0.0), [0, 0, 0, 0])


@pytest.mark.parametrize('order,num_steps,beta,expected', [
    ('reversed', 50, 0.4, [20, 15, 10, 5]),  # The official setting.
    ('forward', 50, 0.4, [5, 10, 15, 20]),
    ('reversed', 8, 1.0, [8, 6, 4, 2]),
])
def test_staged_guidance_pins_overlap_frames(order, num_steps, beta, expected):
  # What the model sees is recorded, so the pinned steps are measured through
  # the public driver: overlap frame j of clip 1 must equal frame s(j) of
  # clip 0 at exactly its first (M - r_j) (T / M) beta steps and then differ.
  seen, traces = [], []

  def spy(z, logsnr):
    traces.append(z.shape)
    jax.debug.callback(lambda z: seen.append(np.asarray(z)), z, ordered=True)
    return MODEL(z, logsnr)

  b = 2
  length = 2 * N - (M if order == 'forward' else 0)
  long_video.vidrd_video(spy, jax.random.PRNGKey(0), length, clip_frames=N,
                         clip_shape=(b, *FRAME), overlap=M, noise_a=4.0, beta=beta,
                         order=order, num_steps=num_steps, **SAMPLER)
  jax.effects_barrier()
  assert len(traces) == 1  # One compiled clip sampler served both clips.
  z = np.stack(seen).reshape(2, num_steps, b, N, *FRAME)  # [clip, step, B, N, H, W, C]
  source = long_video.overlap_sources(N, M, order)
  pinned = np.all(z[1][:, :, :M] == z[0][:, :, source], axis=(1, 3, 4, 5))  # [T, M]
  np.testing.assert_array_equal(pinned.sum(0), expected)
  np.testing.assert_array_equal(pinned, np.arange(num_steps)[:, None] < np.array(expected))


@pytest.mark.parametrize('order', long_video.ORDERS)
def test_initial_noise_unit_variance(order):
  # Per element (each of the N - M frames x 4 pixels), over n draws: variance
  # 1, correlation a / sqrt(1 + a^2) = 0.970 with its source in the previous
  # clip, and no correlation between the frames of the new clip (the sources
  # are a permutation). Tolerance 5 standard errors: sqrt(2 / n) for a
  # variance, (1 - r^2) / sqrt(n) for a correlation r, 1 / sqrt(n) near 0.
  n, a = 65536, 4.0
  rng_prev, rng_fresh = jax.random.split(jax.random.PRNGKey(0))
  z_prev = samplers.standard_normal(rng_prev, (n, N, *FRAME))
  fresh = samplers.standard_normal(rng_fresh, (n, N, *FRAME))
  z = np.asarray(long_video.next_initial_noise(z_prev, fresh, overlap=M, noise_a=a,
                                               order=order), np.float64)
  z_prev = np.asarray(z_prev, np.float64)
  np.testing.assert_array_equal(z[:, :M], z_prev[:, long_video.overlap_sources(N, M, order)])
  pns, source = z[:, M:].reshape(n, -1), z_prev[:, N - 1 - np.arange(M, N)].reshape(n, -1)
  var = pns.var(0)
  r = a / math.sqrt(1 + a**2)
  corr = np.mean(pns * source, 0) / np.sqrt(var * source.var(0))
  print(f'\nPNS a={a}: variance {var.min():.4f}..{var.max():.4f}, correlation with source '
        f'{corr.min():.4f}..{corr.max():.4f} (exact {r:.4f})')
  assert np.abs(var - 1).max() < 5 * math.sqrt(2 / n)
  assert np.abs(corr - r).max() < 5 * (1 - r**2) / math.sqrt(n)
  frames = np.moveaxis(z, 1, 0).reshape(N, -1)  # [N, n * 4]
  off_diagonal = np.corrcoef(frames)[~np.eye(N, dtype=bool)]
  assert np.abs(off_diagonal).max() < 5 / math.sqrt(frames.shape[1])
  # The check can fail: standard deviation 1 / (1 + a^2) instead of
  # 1 / sqrt(1 + a^2) (a variance passed as a standard deviation) gives
  # variance 0.945.
  wrong = r * source + np.asarray(fresh, np.float64)[:, M:].reshape(n, -1) / (1 + a**2)
  assert np.abs(wrong.var(0) - 1).min() > 5 * math.sqrt(2 / n)


@pytest.mark.parametrize('num_frames', [4, 5])
@pytest.mark.parametrize('order', long_video.ORDERS)
@pytest.mark.parametrize('a', [0.0, 4.0])
def test_initial_noise_keeps_a_correlated_law(num_frames, order, a):
  # Under VideoFusion's law (a shared base noise, key frame floor(N / 2)) the
  # next clip's noise must follow the same law: frame covariance C within 5
  # standard errors, sqrt((C_ii C_jj + C_ij^2) / n), for even and odd N.
  n, overlap = 32768, 2
  weights = decomposed.frame_weights(num_frames, 0.5)
  cov = decomposed.frame_covariance(weights)
  rng_prev, rng_fresh = jax.random.split(jax.random.PRNGKey(1))
  shape = (n, num_frames, 1, 1, 1)
  z_prev = decomposed.noise(rng_prev, shape, weights)
  fresh = decomposed.noise(rng_fresh, shape, weights)
  tolerance = 5 * np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)

  def error(frame_cov):
    z = long_video.next_initial_noise(z_prev, fresh, overlap=overlap, noise_a=a, order=order,
                                      frame_cov=frame_cov)
    return np.abs(np.cov(np.asarray(z, np.float64).reshape(n, num_frames).T) - cov)

  assert np.all(error(cov) < tolerance), error(cov).max()
  if num_frames % 2 == 0 and (order == 'reversed' or a):
    # Moving correlated noise between frames breaks the law: the check can fail.
    assert np.any(error(None) > tolerance)


def test_impossible_settings():
  kw = dict(clip_frames=N, clip_shape=(1, *FRAME), num_steps=2, **SAMPLER)
  for bad, match in [(dict(overlap=N), 'overlap'), (dict(overlap=-1), 'overlap'),
                     (dict(beta=1.5), 'beta'), (dict(beta=-0.1), 'beta'),
                     (dict(noise_a=-1.0), 'noise_a'), (dict(order='backward'), 'order'),
                     (dict(clip_shape=(1, 2, 2)), 'clip_shape'),
                     (dict(z_init=None), 'itself')]:
    with pytest.raises(ValueError, match=match):
      long_video.vidrd_video(MODEL, jax.random.PRNGKey(0), 16, **{**kw, **bad})
  with pytest.raises(ValueError, match='num_frames'):
    long_video.vidrd_video(MODEL, jax.random.PRNGKey(0), 0, **kw)


def correlation(video, f, g):
  """Correlation of frames f and g over the batch, averaged over pixels."""
  x, y = (np.asarray(video[:, i], np.float64).reshape(len(video), -1) for i in (f, g))
  x, y = x - x.mean(0), y - y.mean(0)
  return float(np.mean(np.sum(x * y, 0) / np.sqrt(np.sum(x * x, 0) * np.sum(y * y, 0))))


def boundary_stats(video, start):
  """Lag-1 and lag-2 correlations across the boundary before frame ``start``.

  Returns:
    (lag 1: frames start-1, start; lag 2: mean over (start-2, start) and
    (start-1, start+1); the largest |corr - rho^|f-g|| over the 8-frame window
    start-4 .. start+3).
  """
  lag1 = correlation(video, start - 1, start)
  lag2 = 0.5 * (correlation(video, start - 2, start) + correlation(video, start - 1, start + 1))
  window = range(start - 4, start + 4)
  worst = max(abs(correlation(video, f, g) - RHO**(g - f)) for f in window for g in window if g > f)
  return lag1, lag2, worst


@pytest.mark.slow
def test_ar1_statistics_across_clip_boundaries():
  # Two clips of each driver from the exact denoiser, DDIM 50 steps, the
  # official VidRD setting (M = 4, a = 4, beta = 0.4). The boundary is before
  # output frame N in every case: the first frame not from clip 0.
  n, steps = 2000, 50
  rng = jax.random.PRNGKey(1)
  ddim = dict(sampler='ddim', num_steps=steps, **SAMPLER)
  vidrd = lambda length, **kw: long_video.vidrd_video(
      MODEL, rng, length, clip_frames=N, clip_shape=(n, *FRAME), **kw, **ddim)
  videos = {
      'vidrd reversed': vidrd(2 * N, overlap=M, noise_a=4.0, beta=0.4, order='reversed'),
      'vidrd forward': vidrd(2 * N - M, overlap=M, noise_a=4.0, beta=0.4, order='forward'),
      'extension (w_r=3)': conditional.extend_video(
          MODEL, rng, 2 * N - M, clip_frames=N, context_frames=M, clip_shape=(n, *FRAME),
          conditioning='reconstruction', w_r=3.0, **ddim),
      'independent': vidrd(2 * N, overlap=0, noise_a=0.0, beta=0.0),
      # DSG pins the overlap to the previous clip's latents, but a stochastic
      # sampler's fresh noise at every later step undoes most of the tie: why
      # the drivers default to DDIM (config.sampling.vidrd_sampler).
      'vidrd reversed, ancestral': long_video.vidrd_video(
          MODEL, rng, 2 * N, clip_frames=N, clip_shape=(n, *FRAME), overlap=M, noise_a=4.0,
          beta=0.4, **dict(ddim, sampler='ancestral')),
  }
  stats = {name: boundary_stats(video, N) for name, video in videos.items()}
  within = correlation(videos['independent'], 3, 4)
  print(f'\nAR(1) rho={RHO}, clips of {N}, overlap {M}, {steps} DDIM steps, n={n}; data: '
        f'lag 1 {RHO:.3f}, lag 2 {RHO**2:.3f}; within a clip lag 1 {within:.3f}')
  print(f'{"driver":20s} {"lag 1":>7s} {"lag 2":>7s} {"window max err":>15s}')
  for name, (lag1, lag2, worst) in stats.items():
    print(f'{name:20s} {lag1:7.3f} {lag2:7.3f} {worst:15.3f}')
  error = {name: abs(s[0] - RHO) + abs(s[1] - RHO**2) for name, s in stats.items()}
  window = {name: s[2] for name, s in stats.items()}
  # Independent clips are uncorrelated across the boundary (5 standard errors
  # of a correlation near 0): the statistics tell joined clips from unjoined.
  assert abs(stats['independent'][0]) < 5 / math.sqrt(n)
  assert abs(stats['independent'][1]) < 5 / math.sqrt(n)
  assert abs(within - RHO) < 0.02  # The sampler itself reproduces rho.
  # Measured (n = 2000; standard error of a correlation 0.004 near rho, 0.02
  # near 0):
  # boundary error |lag1 - rho| + |lag2 - rho^2| 0.07 extension, 0.19
  # reversed, 0.25 forward, 1.75 independent; window error 0.15, 0.51, 0.17,
  # 0.92. Asserted with margins of several standard errors:
  for name in ('vidrd reversed', 'vidrd forward', 'extension (w_r=3)'):
    assert error[name] < 0.25 * error['independent'], name
    assert window[name] < 0.6 * window['independent'], name
  assert error['extension (w_r=3)'] < 0.6 * min(error['vidrd reversed'], error['vidrd forward'])
  # The reversed order nearly duplicates the seam frame and mirrors the
  # previous clip; the forward order continues it like extension does.
  assert stats['vidrd reversed'][0] > RHO + 0.05
  assert window['vidrd reversed'] > 2 * window['vidrd forward']
  assert window['vidrd forward'] < 1.5 * window['extension (w_r=3)']
  # Measured: boundary error 0.94 ancestral against 0.19 DDIM (lag 1: 0.39, 1.00).
  assert error['vidrd reversed, ancestral'] > 3 * error['vidrd reversed']


def test_vidrd_samples_with_ddim_unless_a_sampler_is_named(monkeypatch):
  from configs import default  # pylint: disable=g-import-not-at-top
  from vdm import cli  # pylint: disable=g-import-not-at-top
  from vdm import config_lib  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  assert config.sampling.sampler == 'ancestral'  # The default model's sampler.
  used = {}
  monkeypatch.setattr(long_video, 'vidrd_video', lambda *args, **kwargs: used.update(kwargs))

  def generate(sampling):
    long_video.generate(MODEL, jax.random.PRNGKey(0), 2 * N, sampling_config=sampling,
                        clip_frames=N, clip_shape=(1, *FRAME), context_frames=M,
                        **dict(SAMPLER, sampler=sampling.sampler))
    return used['sampler']

  for method in ('vidrd', 'independent'):
    config.sampling.long_method = method
    assert long_video.driver_sampler(config.sampling) == generate(config.sampling) == 'ddim'
  config.sampling.long_method = 'reconstruction'
  assert long_video.driver_sampler(config.sampling) == 'ancestral'
  # --sampler names the sampler of every driver.
  named = config_lib.apply_overrides(config, cli.sampling_overrides({'sampler': 'pc'}))
  named.sampling.long_method = 'vidrd'
  assert generate(named.sampling) == 'pc'
  named.sampling.vidrd_sampler = ''  # '': the config's own sampler.
  assert long_video.driver_sampler(named.sampling) == 'pc'


def test_clip_starts_are_where_each_driver_begins_a_clip():
  import ml_collections  # pylint: disable=g-import-not-at-top
  def starts(method, frames, order='reversed'):
    c = ml_collections.ConfigDict(dict(long_method=method, vidrd_order=order, vidrd_overlap=4))
    return long_video.clip_starts(c, frames, 10, 5).tolist()
  assert starts('reconstruction', 20) == [10, 15]  # 5 new frames a clip after the first.
  assert starts('independent', 30) == [10, 20]
  assert starts('vidrd', 30) == [10, 20]  # 'reversed' keeps every clip whole...
  assert starts('vidrd', 30, 'forward') == [10, 16, 22, 28]  # ...'forward' drops the overlap.


def test_seam_scores_see_a_restart_and_not_continuous_real_motion():
  from vdm.data import moving_digits  # pylint: disable=g-import-not-at-top
  from vdm.evaluation import seams  # pylint: disable=g-import-not-at-top
  real = moving_digits.generate('test', 16, 20, 32, max_digits=1)['video']  # [16, 20, 32, 32, 1]
  continuous = seams.SeamStats([10], 20, track=True)
  continuous.add(real, classes=np.zeros((16, 20), int))
  restarted = seams.SeamStats([10], 20, track=True)
  # Clips of other videos after the seam: the digit jumps and may change class.
  joined = np.concatenate([real[:, :10], np.roll(real, 1, axis=0)[:, 10:]], axis=1)
  classes = np.repeat(np.arange(16)[:, None], 20, 1)
  classes[:, 10:] = np.roll(classes, 1, axis=0)[:, 10:]
  restarted.add(joined, classes)
  a, b = continuous.scores(), restarted.scores()
  assert 0.5 < a['seam_track_ratio'] < 1.5 and 0.5 < a['seam_pixel_ratio'] < 1.5
  assert b['seam_track_ratio'] > 3 and b['seam_pixel_ratio'] > 2
  assert a['seam_class_consistency'] == 1.0 and b['seam_class_consistency'] == 0.0
  # Real motion never jumps; the restart jumps at the seam in most videos (a
  # neighbour's digit may by chance lie close by).
  assert a['seam_jumps_seam'] == a['seam_jumps_inside'] == 0.0
  assert a['seam_videos_without_jump'] == 1.0
  assert b['seam_jumps_seam'] > 0.5 and b['seam_jumps_inside'] == 0.0
  assert b['seam_videos_without_jump'] == 1.0 - b['seam_jumps_seam']
  # A restart two frames after the seam: the seam is smooth, the video is not.
  late = seams.SeamStats([10], 20, track=True)
  late.add(np.concatenate([real[:, :12], np.roll(real, 1, axis=0)[:, 12:]], axis=1))
  c = late.scores()
  assert c['seam_jumps_seam'] == 0.0 and c['seam_jumps_inside'] > 0
  assert c['seam_videos_without_jump'] < 0.5
  with pytest.raises(ValueError, match='must lie in'):
    seams.SeamStats([20], 20, track=False)
