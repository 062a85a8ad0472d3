"""Prepares your own videos (or any TFDS video dataset) once for fast training.

  python prepare.py --config=configs/default.py --source=/path/to/videos --name=my_videos
  python prepare.py --config=configs/ucf101_64.py --source=tfds:ucf101 --label_key=label \
      --tfds_data_dir=~/tensorflow_datasets --name=ucf101_64 --out=data/tfds

Writes the TFDS dataset <out>/<name> (array_record), its frames already at
the config's image_size and channels and cut into short windows, so that a
training clip reads one small record. Train on it with the flags it prints:

  python train.py --config=... --config.data.dataset=my_videos --config.data.data_dir=data/tfds

A folder source holds video files (mp4, webm, avi, mov, mkv, gif) and frame
folders (PNG/JPEG frames of one video), found recursively; top-level
train/ and test/ folders give the splits (otherwise --test_fraction of the
videos, drawn with --split_seed, go to 'test'). Videos that cannot be used
are skipped and listed at the end. --autoencoder stores a latent run's
latents of every frame beside it, --text_embeddings a frozen text encoder's
embeddings of every caption. Rerunning the same command after a crash
or Ctrl-C continues where it stopped. See docs/data.md ("Your own videos").
"""

import os

from absl import flags
from ml_collections import config_flags

from vdm import cli
from vdm import latent
from vdm.data import prepare_lib

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'configs/default.py', 'The training config: its data.image_size, channels, '
    'num_frames and frameskip set what is stored.', lock_config=True)
_SOURCE = flags.DEFINE_string('source', None, 'A folder of videos, or tfds:NAME.', required=True)
_NAME = flags.DEFINE_string('name', None, 'Name of the dataset to write (config.data.dataset).',
                            required=True)
_OUT = flags.DEFINE_string('out', '', 'TFDS data_dir to write into; default: config.data.data_dir.')
_LABELS = flags.DEFINE_bool('labels_from_folders', False,
                            'Folder source: label each video by the folder it is in.')
_CAPTIONS = flags.DEFINE_string('captions', '', 'Folder source: a CSV (path,caption) or JSONL '
                                '({"path", "caption"}) file; paths relative to the folder.')
_TEST_FRACTION = flags.DEFINE_float('test_fraction', 0.1, "Folder source without train/ and "
                                    "test/ folders: share of the videos for 'test'.")
_SPLIT_SEED = flags.DEFINE_integer('split_seed', 0, 'Seed of the --test_fraction draw.')
_TFDS_DATA_DIR = flags.DEFINE_string('tfds_data_dir', '', 'TFDS source: its data_dir.')
_VIDEO_KEY = flags.DEFINE_string('video_key', 'video', 'TFDS source: the video feature '
                                 '(bair_robot_pushing_small: image_main; moving_mnist: '
                                 'image_sequence).')
_LABEL_KEY = flags.DEFINE_string('label_key', '', 'TFDS source: its ClassLabel feature, if any.')
_CAPTION_KEY = flags.DEFINE_string('caption_key', '', 'TFDS source: its caption feature, if any.')
_SPLITS = flags.DEFINE_list('splits', [], 'TFDS source: splits to prepare (default: all).')
_CLIP_FRAMES = flags.DEFINE_integer(
    'clip_frames', None, 'Frames per stored window (0: keep whole videos). Default: twice the '
    "config's clip span (num_frames x frameskip).")
_CLIP_STRIDE = flags.DEFINE_integer(
    'clip_stride', None, 'Frames between window starts. Default: clip_frames - span + 1, '
    'so that every clip start of the video is in some window.')
_STORAGE = flags.DEFINE_enum('storage', 'raw', prepare_lib.STORAGES,
                             'raw uint8 (zstd-compressed by array_record), PNG per frame '
                             '(decoded only where a clip uses it), or zlib-compressed uint8 '
                             '(BENCHMARKS.md, "Input pipeline", compares them).')
_VIDEOS_PER_SHARD = flags.DEFINE_integer('videos_per_shard', 32,
                                         'Source videos per shard (the unit of resume).')
_WORKERS = flags.DEFINE_integer('workers', os.cpu_count() or 1, 'Processes in parallel.')
_AUTOENCODER = flags.DEFINE_string(
    'autoencoder', '', 'Workdir of an autoencoder run: its latents of every frame are stored '
    'too, so that a latent run on them (--config.data.latent_key=latents) never runs the '
    'encoder (docs/data.md).')
_TEXT_EMBEDDINGS = flags.DEFINE_bool(
    'text_embeddings', False, "Store every caption's embeddings by the config's frozen text "
    "encoder (--config.model.text_encoder=precomputed, its text_embedder, text_max_length and "
    'text_embed_dim), so that a text run on them (--config.data.text_embedding_key='
    'text_embeddings) never runs the encoder (docs/text.md).')


def main(argv):
  del argv
  report = prepare_lib.run(
      _CONFIG.value, _SOURCE.value, _NAME.value, _OUT.value,
      source_options=dict(
          labels_from_folders=_LABELS.value, captions=_CAPTIONS.value,
          test_fraction=_TEST_FRACTION.value, split_seed=_SPLIT_SEED.value,
          tfds_data_dir=_TFDS_DATA_DIR.value, video_key=_VIDEO_KEY.value,
          label_key=_LABEL_KEY.value, caption_key=_CAPTION_KEY.value, splits=_SPLITS.value),
      clip_frames=_CLIP_FRAMES.value, clip_stride=_CLIP_STRIDE.value, storage=_STORAGE.value,
      videos_per_shard=_VIDEOS_PER_SHARD.value, workers=_WORKERS.value,
      encoder=latent.FrameEncoder(_AUTOENCODER.value) if _AUTOENCODER.value else None,
      text_embeddings=_TEXT_EMBEDDINGS.value)
  print(report.summary(), flush=True)


if __name__ == '__main__':
  cli.run(main, interrupted='the finished shards are kept; rerun the same command to continue')
