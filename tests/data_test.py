"""Tests of the moving digits dataset and the TFDS input pipeline.

A small moving digits build (64 train / 16 test videos) in a temporary
data_dir is shared by the module; everything runs offline in well under a
minute on 2 CPU cores.
"""

import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from vdm.data import frames as frames_lib
from vdm.data import grain_loader
from vdm.data import moving_digits
from vdm.data import pipeline
from vdm.data import sources

NUM_TRAIN, NUM_TEST, FRAMES = 64, 16, 20
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp('tfds'))
  moving_digits.prepare(d, 32, num_train=NUM_TRAIN, num_test=NUM_TEST,
                        verbose=False)
  return d


@pytest.fixture(scope='module')
def gen_train():
  return moving_digits.generate('train', NUM_TRAIN, FRAMES, 32, seed=0)


@pytest.fixture(scope='module')
def gen_test():
  return moving_digits.generate('test', NUM_TEST, FRAMES, 32, seed=0)


def make_config(data_dir, **data):
  c = ml_collections.ConfigDict()
  c.data = dict(dataset='moving_digits/32', data_dir=data_dir,
                train_split='train', eval_split='test', num_frames=8,
                frameskip=1, image_size=32, channels=1, num_images=0,
                random_flip=False, video_key='video', label_key='label',
                seed=0, num_workers=0)
  c.data.update(data)
  c.training = dict(batch_size=8)
  return c


def take(it, n):
  out = [next(it) for _ in range(n)]
  if hasattr(it, 'close'):
    it.close()
  return out


def find_clip(clip, videos, frameskip=1):
  """(video index, start) of a uint8 [T, H, W, 1] clip inside videos, or None."""
  t = len(clip)
  for i, v in enumerate(videos):
    for s in range(len(v) - (t - 1) * frameskip):
      if np.array_equal(v[s:s + (t - 1) * frameskip + 1:frameskip], clip):
        return i, s
  return None


def to_uint8(x):
  return np.round((x + 1.0) * 127.5).astype(np.uint8)


# ---------------------------------------------------------------- generator


def test_generator_shapes_and_values(gen_train):
  v = gen_train['video']
  assert v.shape == (NUM_TRAIN, FRAMES, 32, 32, 1) and v.dtype == np.uint8
  assert v.max() > 200  # Bright digit strokes...
  assert (v == 0).mean() > 0.5  # ...on a mostly black background.
  assert gen_train['label'].dtype == np.int32
  assert gen_train['digits'].shape == (NUM_TRAIN, 3)
  np.testing.assert_array_equal(gen_train['label'], gen_train['digits'][:, 0])
  d = gen_train['digits']
  assert ((d >= -1) & (d <= 9)).all() and (d[:, 0] >= 0).all()
  # Padding only at the end, and 1 to 3 digits per video occur.
  n = (d >= 0).sum(1)
  assert ((d >= 0) == (np.arange(3) < n[:, None])).all()
  assert set(n.tolist()) == {1, 2, 3}
  # Digits move: consecutive frames differ.
  assert (np.abs(np.diff(v.astype(int), axis=1)).sum((2, 3, 4)) > 0).mean() > 0.9


def test_generator_64_and_deterministic(gen_train):
  a = moving_digits.generate('train', 8, FRAMES, 32, seed=0)
  np.testing.assert_array_equal(a['video'], gen_train['video'][:8])
  b = moving_digits.generate('train', 8, FRAMES, 32, seed=1)
  assert not np.array_equal(a['video'], b['video'])
  # Video i does not depend on how many are generated at once.
  c = moving_digits.generate('train', 4, FRAMES, 32, seed=0, start=4)
  np.testing.assert_array_equal(c['video'], gen_train['video'][4:8])
  big = moving_digits.generate('train', 2, 10, 64, seed=0)
  assert big['video'].shape == (2, 10, 64, 64, 1)


def test_train_and_test_use_disjoint_scans(gen_train, gen_test):
  tr, te = moving_digits.source_indices('train'), moving_digits.source_indices('test')
  assert not set(tr) & set(te) and len(tr) + len(te) == 1797
  used_tr = set(gen_train['sources'][gen_train['sources'] >= 0].tolist())
  used_te = set(gen_test['sources'][gen_test['sources'] >= 0].tolist())
  assert used_tr <= set(tr.tolist()) and used_te <= set(te.tolist())
  # Same seed, different split: different videos.
  assert not np.array_equal(gen_train['video'][:NUM_TEST], gen_test['video'])


def test_import_needs_no_tensorflow():
  code = ('import sys; import vdm.data.moving_digits, vdm.data.pipeline; '
          'bad = [m for m in ("tensorflow", "tensorflow_datasets") '
          'if m in sys.modules]; assert not bad, bad')
  subprocess.run([sys.executable, '-c', code], check=True, cwd=REPO)


# ------------------------------------------------------------------ builder


def test_builder_reads_back_generator_output(data_dir, gen_train, gen_test):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  for split, gen in (('train', gen_train), ('test', gen_test)):
    src = tfds.data_source('moving_digits/32', data_dir=data_dir, split=split)
    assert len(src) == len(gen['video'])
    exs = src.__getitems__(list(range(len(src))))
    np.testing.assert_array_equal(np.stack([e['video'] for e in exs]),
                                  gen['video'])
    np.testing.assert_array_equal([e['label'] for e in exs], gen['label'])
    np.testing.assert_array_equal(np.stack([e['digits'] for e in exs]),
                                  gen['digits'])


def test_prepare_is_cached(data_dir, capsys):
  files = os.path.join(data_dir, 'moving_digits', '32', '1.0.0')
  before = {f: os.path.getmtime(os.path.join(files, f)) for f in os.listdir(files)}
  b = moving_digits.prepare(data_dir, 32)  # No sizes: accept what is there.
  assert b.info.splits['train'].num_examples == NUM_TRAIN
  assert capsys.readouterr() == ('', '')  # Nothing built, nothing said.
  after = {f: os.path.getmtime(os.path.join(files, f)) for f in os.listdir(files)}
  assert before == after
  with pytest.raises(ValueError, match='other sizes'):
    moving_digits.prepare(data_dir, 32, num_train=NUM_TRAIN + 1)


def test_prepare_64(tmp_path):
  b = moving_digits.prepare(str(tmp_path), 64, num_train=4, num_test=2,
                            num_frames=6, verbose=False)
  ex = b.as_data_source('train')[3]
  np.testing.assert_array_equal(
      ex['video'], moving_digits.generate('train', 4, 6, 64)['video'][3])


# ----------------------------------------------------------------- pipeline


def test_resize_crops_the_centre_and_converts_channels():
  # [1, 20, 40, 3]: bright side bands around a dark centre square.
  x = np.full((1, 20, 40, 3), 255, np.uint8)
  x[:, :, 10:30] = 0
  y = frames_lib.resize_square(x, 8)
  assert y.shape == (1, 8, 8, 3) and (y == 0).all()
  flat = np.full((2, 30, 30, 3), 77, np.uint8)
  np.testing.assert_array_equal(frames_lib.resize_square(flat, 12), 77)
  rgb = np.zeros((1, 2, 2, 3), np.uint8)
  rgb[..., 1] = 255  # Pure green: BT.601 luma 0.587 * 255 = 149.7.
  np.testing.assert_array_equal(frames_lib.to_channels(rgb, 1, 'v'), 150)


@pytest.mark.parametrize('k', [0, 3])
def test_train_batch_shapes_and_mask(data_dir, k):
  c = make_config(data_dir, num_images=k, random_flip=True)
  (b,) = take(pipeline.make_train_iterator(c, process_index=0, process_count=1), 1)
  assert b['video'].shape == (8, 8 + k, 32, 32, 1)
  assert b['video'].dtype == np.float32
  assert b['video'].min() >= -1.0 and b['video'].max() <= 1.0
  assert b['video'].min() == -1.0 and b['video'].max() > 0.5
  np.testing.assert_array_equal(b['is_image'], np.arange(8 + k) >= 8)
  # Per frame: the video's label on clip frames, each image's own after them.
  assert b['label'].shape == (8, 8 + k) and b['label'].dtype == np.int32


def test_train_clips_are_real_and_labelled(data_dir, gen_train):
  """Every row is a clip (frameskip 2) of a dataset video with its label,
  and one epoch visits every video exactly once."""
  c = make_config(data_dir, num_frames=6, frameskip=2)
  steps = NUM_TRAIN // 8
  seen = []
  for b in take(pipeline.make_train_iterator(c, process_index=0,
                                             process_count=1), steps):
    for clip, label in zip(to_uint8(b['video']), b['label']):
      hit = find_clip(clip, gen_train['video'], frameskip=2)
      assert hit is not None
      np.testing.assert_array_equal(label, gen_train['label'][hit[0]])
      seen.append(hit[0])
  assert sorted(seen) == list(range(NUM_TRAIN))


def test_images_are_frames_of_dataset_videos(data_dir, gen_train):
  c = make_config(data_dir, num_images=2, num_frames=4)
  (b,) = take(pipeline.make_train_iterator(c, process_index=0, process_count=1), 1)
  frames = gen_train['video'].reshape(-1, 32, 32, 1)
  frame_labels = np.repeat(gen_train['label'], gen_train['video'].shape[1])
  images = to_uint8(b['video'][:, 4:]).reshape(-1, 32, 32, 1)
  for img, label in zip(images, b['label'][:, 4:].reshape(-1)):
    hits = (frames == img).all(axis=(1, 2, 3))
    assert hits.any()
    # Each image carries the label of the video it was taken from.
    assert label in frame_labels[hits]
  # With 10 classes, some image is from a video of another class than its row.
  assert (b['label'][:, 4:] != b['label'][:, :1]).any()


def test_train_iterator_deterministic_and_resumable(data_dir):
  c = make_config(data_dir, num_images=2, random_flip=True, num_workers=2)
  fresh = take(pipeline.make_train_iterator(c, process_index=0,
                                            process_count=1), 10)
  again = take(pipeline.make_train_iterator(c, process_index=0,
                                            process_count=1), 10)
  for a, b in zip(fresh, again):
    np.testing.assert_array_equal(a['video'], b['video'])
  # Steps 7..9 cross the epoch boundary (64 videos / batch 8 = 8 steps).
  it = pipeline.make_train_iterator(c, start_step=7, process_index=0,
                                    process_count=1)
  assert it.step == 7
  for s, b in zip(range(7, 10), take(it, 3)):
    np.testing.assert_array_equal(b['video'], fresh[s]['video'])
    np.testing.assert_array_equal(b['label'], fresh[s]['label'])
  c.data.seed = 1
  other = take(pipeline.make_train_iterator(c, process_index=0,
                                            process_count=1), 1)
  assert not np.array_equal(other[0]['video'], fresh[0]['video'])


def test_processes_split_the_global_batch(data_dir):
  c = make_config(data_dir, num_images=1, random_flip=True)
  full = take(pipeline.make_train_iterator(c, start_step=5, process_index=0,
                                           process_count=1), 2)
  parts = [take(pipeline.make_train_iterator(c, start_step=5, process_index=p,
                                             process_count=2), 2)
           for p in range(2)]
  for s in range(2):
    assert parts[0][s]['video'].shape[0] == 4
    for key in ('video', 'label'):
      np.testing.assert_array_equal(
          np.concatenate([parts[0][s][key], parts[1][s][key]]), full[s][key])


def test_resize_and_channels(data_dir):
  c = make_config(data_dir, image_size=16, channels=3, num_images=1)
  (b,) = take(pipeline.make_train_iterator(c, process_index=0, process_count=1), 1)
  assert b['video'].shape == (8, 9, 16, 16, 3)
  # Grayscale copied to all three channels.
  np.testing.assert_array_equal(b['video'][..., 0], b['video'][..., 2])


def test_numpy_fallback_gives_identical_batches(data_dir, gen_train,
                                                monkeypatch):
  c = make_config(data_dir, num_images=2, random_flip=True)
  with_tfds = take(pipeline.make_train_iterator(c, process_index=0,
                                                process_count=1), 3)
  # Pretend TFDS is missing and the default in-memory build is our small one.
  monkeypatch.setattr(sources, '_tfds_or_none', lambda: None)
  monkeypatch.setattr(moving_digits, 'in_memory', lambda config, split: {
      k: gen_train[k] for k in ('video', 'label', 'digits')})
  without = take(pipeline.make_train_iterator(c, process_index=0,
                                              process_count=1), 3)
  for a, b in zip(with_tfds, without):
    np.testing.assert_array_equal(a['video'], b['video'])
    np.testing.assert_array_equal(a['label'], b['label'])


def test_dataset_info(data_dir):
  info = pipeline.dataset_info(make_config(data_dir))
  assert info == dict(num_classes=10, num_train_examples=NUM_TRAIN,
                      video_shape=(FRAMES, 32, 32, 1), prepared=None, latents=None)
  info = pipeline.dataset_info(make_config(data_dir, label_key=''))
  assert info['num_classes'] is None


def test_eval_iterator(data_dir, gen_test):
  c = make_config(data_dir, num_frames=5, frameskip=3, random_flip=True,
                  num_images=4)
  batches = list(pipeline.make_eval_iterator(
      c, num_examples=13, batch_size=6, process_index=0, process_count=1))
  assert len(batches) == 3
  video = np.concatenate([b['video'] for b in batches])  # [18, 5, 32, 32, 1]
  mask = np.concatenate([b['mask'] for b in batches])
  assert video.dtype == np.uint8 and video.shape == (18, 5, 32, 32, 1)
  np.testing.assert_array_equal(mask, np.arange(18) < 13)
  # Offset 0, no flip, no images: exactly the stored frames 0, 3, ..., 12.
  np.testing.assert_array_equal(video[:13], gen_test['video'][:13, 0:13:3])
  np.testing.assert_array_equal(
      np.concatenate([b['label'] for b in batches])[:13], gen_test['label'][:13])
  # Two processes: rows concatenate to the global batch.
  halves = [list(pipeline.make_eval_iterator(
      c, num_examples=13, batch_size=6, process_index=p, process_count=2))
            for p in range(2)]
  for b, h0, h1 in zip(batches, *halves):
    np.testing.assert_array_equal(np.concatenate([h0['video'], h1['video']]),
                                  b['video'])
  longer = next(iter(pipeline.make_eval_iterator(
      c, batch_size=4, num_frames=7, process_index=0, process_count=1)))
  assert longer['video'].shape == (4, 7, 32, 32, 1)


# ------------------------------------------------------------------- errors


def test_error_indivisible_batch(data_dir):
  c = make_config(data_dir)
  c.training.batch_size = 7
  with pytest.raises(ValueError, match='config.training.batch_size=7'):
    pipeline.make_train_iterator(c, process_index=0, process_count=2)


def test_error_missing_data_dir(tmp_path):
  missing = str(tmp_path / 'nowhere')
  c = make_config(missing, dataset='moving_mnist', video_key='image_sequence')
  with pytest.raises(FileNotFoundError) as e:
    pipeline.make_train_iterator(c, process_index=0, process_count=1)
  msg = str(e.value)
  assert 'moving_mnist' in msg and missing in msg and 'tfds build' in msg


def test_error_not_prepared(tmp_path):
  c = make_config(str(tmp_path), dataset='ucf101')
  with pytest.raises(FileNotFoundError) as e:
    pipeline.make_train_iterator(c, process_index=0, process_count=1)
  msg = str(e.value)
  assert 'ucf101' in msg and str(tmp_path) in msg and 'tfds build' in msg
  assert 'UCF101_videos.zip' in msg


def test_error_unknown_dataset(tmp_path):
  c = make_config(str(tmp_path), dataset='no_such_video_dataset')
  with pytest.raises(ValueError, match="Unknown dataset 'no_such_video_dataset'"):
    pipeline.make_train_iterator(c, process_index=0, process_count=1)


def test_error_unknown_keys_and_short_videos(data_dir):
  with pytest.raises(KeyError, match=r"video_key='frames'.*\['digits', 'label', 'video'\]"):
    pipeline.make_train_iterator(make_config(data_dir, video_key='frames'),
                                 process_index=0, process_count=1)
  with pytest.raises(KeyError, match="label_key='class'"):
    pipeline.make_train_iterator(make_config(data_dir, label_key='class'),
                                 process_index=0, process_count=1)
  c = make_config(data_dir, num_frames=8, frameskip=3)  # Needs 22 > 20 frames.
  it = pipeline.make_train_iterator(c, process_index=0, process_count=1)
  with pytest.raises(ValueError, match="'video'.*has 20 frames.*needs 22"):
    next(it)


# ---------------------------------------------------------------- Grain loader
# config.data.loader='grain' must give the very batches of the threads loader
# (StepIterator), so that either can resume the other's run. Grain is a
# requirement: without it these tests fail on GrainStepIterator's ImportError.


def grain_batches(c, n, start_step=0, process_index=0, process_count=1):
  c = ml_collections.ConfigDict(c.to_dict())
  c.data.loader = 'grain'
  it = pipeline.make_train_iterator(c, start_step=start_step,
                                    process_index=process_index,
                                    process_count=process_count)
  assert isinstance(it, grain_loader.GrainStepIterator)
  assert it.step == start_step
  out = take(it, n)
  assert it.step == start_step + n
  return out


def assert_same_batches(xs, ys):
  assert len(xs) == len(ys)
  for x, y in zip(xs, ys):
    assert sorted(x) == sorted(y)
    for key in x:
      assert x[key].dtype == y[key].dtype, key
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


@pytest.mark.slow
def test_grain_loader_equals_threads_loader(data_dir):
  # Ten steps of batch 8 over 64 videos cross the epoch boundary at step 8.
  c = make_config(data_dir, num_images=2, random_flip=True, num_workers=2)
  threads = take(pipeline.make_train_iterator(c, process_index=0,
                                              process_count=1), 10)
  assert_same_batches(grain_batches(c, 10), threads)  # 2 worker processes.
  c.data.num_workers = 0  # In-process.
  assert_same_batches(grain_batches(c, 3), threads[:3])


def test_grain_loader_resumes_exactly(data_dir):
  c = make_config(data_dir, num_images=2, random_flip=True, num_workers=0)
  fresh = grain_batches(c, 10)
  c.data.num_workers = 1
  assert_same_batches(grain_batches(c, 3, start_step=7), fresh[7:])


def test_grain_processes_split_the_global_batch(data_dir):
  c = make_config(data_dir, num_images=1, random_flip=True, num_workers=0)
  full = grain_batches(c, 2, start_step=5)
  p0 = grain_batches(c, 2, start_step=5, process_index=0, process_count=2)
  c.data.num_workers = 1
  p1 = grain_batches(c, 2, start_step=5, process_index=1, process_count=2)
  for s in range(2):
    assert p0[s]['video'].shape[0] == 4
    for key in ('video', 'label'):
      np.testing.assert_array_equal(
          np.concatenate([p0[s][key], p1[s][key]]), full[s][key])


@pytest.mark.slow
def test_grain_close_leaves_no_child_processes(data_dir):
  import multiprocessing  # pylint: disable=g-import-not-at-top
  before = {p.pid for p in multiprocessing.active_children()}
  c = make_config(data_dir, num_workers=2, loader='grain')
  it = pipeline.make_train_iterator(c, process_index=0, process_count=1)
  next(it)
  workers = {p.pid for p in multiprocessing.active_children()} - before
  assert len(workers) == 2
  it.close()
  for pid in workers:
    with pytest.raises(ProcessLookupError):  # Exited and reaped.
      os.kill(pid, 0)
  with pytest.raises(ValueError, match='closed'):
    next(it)


def test_unknown_loader_is_an_error():
  from configs import default  # pylint: disable=g-import-not-at-top
  from vdm import config_lib  # pylint: disable=g-import-not-at-top
  c = default.get_config()
  c.data.loader = 'tf'
  with pytest.raises(ValueError, match="loader='tf'"):
    config_lib.validate_config(c)
