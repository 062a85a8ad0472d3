"""Opening a split of a dataset: TFDS builds, bundled datasets, or in-memory arrays.

``read_spec`` takes what the pipeline needs from a config; ``open_split``
returns a ``Dataset`` with random access (array_record builds, bundled data
generated in memory without TFDS) or a TFDS builder for tf.data reading
(other file formats), with errors that say how to prepare a missing dataset.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os
from typing import Any, Callable, Dict, Optional

import numpy as np

from vdm import config_lib
from vdm import progress as progress_lib
from vdm.data import bundled
from vdm.models import tokenizer

PREPARED_BY = 'prepare.py'  # metadata['prepared_by'] of a dataset prepare.py wrote.
PREPARE_STATE_DIR = '.prepare'  # Inside <data_dir>/<name>/<version>/ until prepare.py finishes.


@dataclasses.dataclass(frozen=True)
class Spec:
  """The parts of `config` the pipeline uses, validated."""
  dataset: str
  data_dir: Optional[str]
  train_split: str
  eval_split: str
  num_frames: int
  frameskip: int
  image_size: int
  channels: int
  num_images: int
  random_flip: bool
  video_key: str
  label_key: str
  caption_key: str
  latent_key: str
  text_embedding_key: str  # Stored caption embeddings read instead of running `tokenizer`.
  tokenizer: Any  # vdm.models.tokenizer.from_model_config of captions; None without captions.
  seed: int
  batch_size: int
  loader: str
  num_workers: int
  prefetch: int
  shuffle_buffer: int


def _tokenizer(model) -> Optional[tokenizer.Tokenizer]:
  """What turns captions into the net's text input (tokenizer.from_model_config);
  None before a 'words' vocabulary is filled (vdm.train.train_lib.
  resolve_text_vocabulary) or without a text model."""
  encoder = model.get('text_encoder', '')
  if not encoder:
    return None
  if (encoder == 'learned' and model.get('text_tokenizer', 'bytes') == 'words'
      and not model.get('text_vocabulary', ())):
    return None
  return tokenizer.from_model_config(model)


def read_spec(config) -> Spec:
  """The `config.data` keys and `config.training.batch_size` the pipeline uses.

  Their values are checked by vdm.config_lib.validate_config; a key missing
  here (a partial config, an older run) takes its value from
  configs/default.py, the one place defaults are written.
  """
  defaults = config_lib.default_config().data
  data = config.data

  def get(key):
    return data[key] if key in data else defaults[key]
  model = config.get('model') or {}

  return Spec(
      dataset=str(get('dataset')),
      data_dir=os.path.expanduser(str(get('data_dir') or '')) or None,
      train_split=str(get('train_split')),
      eval_split=str(get('eval_split')),
      num_frames=int(get('num_frames')),
      frameskip=int(get('frameskip')),
      image_size=int(get('image_size')),
      channels=int(get('channels')),
      num_images=int(get('num_images')),
      random_flip=bool(get('random_flip')),
      video_key=str(get('video_key')),
      label_key=str(get('label_key') or ''),
      caption_key=str(get('caption_key') or ''),
      latent_key=str(get('latent_key') or ''),
      text_embedding_key=str(get('text_embedding_key') or ''),
      tokenizer=_tokenizer(model) if get('caption_key') else None,
      seed=int(get('seed')),
      batch_size=int(config.training.batch_size),
      loader=str(get('loader')),
      num_workers=int(get('num_workers')),
      prefetch=int(get('prefetch')),
      shuffle_buffer=int(get('shuffle_buffer')),
  )


@dataclasses.dataclass
class Dataset:
  """An opened split.

  Exactly one of `source` (random access: `len`, `__getitems__`) and
  `builder` (sequential tf.data reading) is used for reading; `builder` is
  also kept for metadata when TFDS is present.
  """
  name: str
  split: str
  num_examples: int
  video_key: str
  label_key: Optional[str]  # None: no labels returned.
  video_shape: tuple
  num_classes: Optional[int]
  source: Any = None
  builder: Any = None
  # Decodes one encoded frame (uint8 [H, W, C]) when videos are read as
  # encoded frames (tfds.features.Video), None when they arrive decoded.
  decode_frame: Optional[Callable[[bytes], np.ndarray]] = None
  decoders: Optional[dict] = None
  caption_key: Optional[str] = None  # None: no captions returned.
  prepared: Optional[dict] = None  # How prepare.py made it (vdm.data.prepare_lib); None otherwise.


class ArraySource:
  """Random access over in-memory arrays, like `tfds.data_source`."""

  def __init__(self, arrays: Dict[str, np.ndarray]):
    self._arrays = arrays
    self._n = len(next(iter(arrays.values())))

  def __len__(self):
    return self._n

  def __getitem__(self, i):
    return {k: v[i] for k, v in self._arrays.items()}

  def __getitems__(self, indices):
    return [self[i] for i in indices]


def _tfds_or_none():
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return tfds


def _prepare_hint(name: str, data_dir: Optional[str]) -> str:
  """How to prepare `name` into `data_dir`, for error messages."""
  d = data_dir or '~/tensorflow_datasets'
  base = name.split('/')[0].split(':')[0]
  hint = (f'Prepare it once on a machine with internet access with\n'
          f'  tfds build {name} --data_dir={d} --file_format=array_record\n'
          f'and copy {d}/{base} here (array_record gives random access and '
          'exact resume; a tfrecord build also works, with best-effort '
          'resume).')
  if base == 'ucf101':
    hint += ('\nucf101 downloads UCF101_videos.zip (6.5 GB) and '
             'UCF101TrainTestSplits-RecognitionTask.zip (from crcv.ucf.edu) '
             'and needs ffmpeg on the building machine. If a download fails '
             '(the UCF server often does), fetch those two files by hand and '
             f'put them in {d}/downloads/manual/ before running tfds build.')
  return hint


def open_split(spec: Spec, split: str) -> Dataset:
  """Opens `split` of `spec.dataset` for reading, with clear errors."""
  name, data_dir = spec.dataset, spec.data_dir
  offline = bundled.module(name)  # Bundled datasets build on first use.
  tfds = _tfds_or_none()
  if tfds is None:
    if offline is None:
      raise ImportError(
          f'Dataset {name!r} needs tensorflow_datasets (pip install '
          'tensorflow-datasets); only the bundled datasets ('
          + ', '.join(bundled.MODULES) + ') work without it.')
    return _open_generated(spec, split, offline)

  if offline is not None:
    # Builds offline on first use; later calls only read pipeline.dataset_info.json.
    builder = offline.prepare(data_dir, offline.parse_name(name))
  else:
    if data_dir and not os.path.isdir(data_dir):
      raise FileNotFoundError(
          f'config.data.data_dir={data_dir!r} does not exist, so dataset '
          f'{name!r} cannot be read from it.\n' + _prepare_hint(name, data_dir))
    unfinished = glob.glob(os.path.join(bundled.resolve_data_dir(data_dir), name.split(':')[0],
                                        '*', PREPARE_STATE_DIR))
    if unfinished:
      raise FileNotFoundError(
          f'Dataset {name!r} is not prepared: prepare.py stopped before finishing it '
          f'({os.path.dirname(unfinished[0])}). Rerun the same prepare.py command to finish it.')
    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
      raise ValueError(
          f'Unknown dataset {name!r}: it is neither a TFDS dataset nor built '
          f'in data_dir={data_dir!r}. Use a TFDS name such as ucf101, '
          'bair_robot_pushing_small or moving_mnist, or a bundled dataset '
          f'(built automatically: {", ".join(bundled.MODULES)}).\n({e})') from None
    if not builder.is_prepared():
      raise FileNotFoundError(
          f'Dataset {name!r} is not prepared in data_dir={data_dir!r} '
          f'(looked in {builder.data_dir}).\n' + _prepare_hint(name, data_dir))

  info = builder.info
  features = info.features
  label_key = _checked_label_key(spec, features)
  caption_key = _checked_caption_key(spec, features)
  for key, flag, stored in ((spec.latent_key, 'latent_key', "--autoencoder=RUN stores them as "
                             "'latents'"),
                            (spec.text_embedding_key, 'text_embedding_key',
                             "--text_embeddings stores them as 'text_embeddings'")):
    if key and key not in features:
      raise KeyError(f'config.data.{flag}={key!r} is not a feature of dataset {name!r}; its '
                     f'features are {sorted(features.keys())}. prepare.py {stored}.')
  if split not in info.splits:
    raise ValueError(f'Dataset {name!r} has no split {split!r}; its splits are '
                     f'{sorted(info.splits.keys())}.')
  vfeat = features[spec.video_key]
  num_classes = None
  if label_key is not None:
    num_classes = getattr(features[label_key], 'num_classes', None)

  # Videos stored as encoded frames (tfds.features.Video, or prepare.py's
  # Sequence of PNG Images) are read still encoded, so that only the frames of
  # the clip (and the K images) get decoded: for long videos such as UCF101
  # that is several times less work.
  decode_frame, decoders = None, None
  if (isinstance(vfeat, tfds.features.Sequence) and
      isinstance(vfeat.feature, tfds.features.Image)):
    decode_frame = vfeat.feature.decode_example_np
    decoders = {spec.video_key: _keep_encoded_decoder(tfds)}

  prepared = dict(info.metadata or {})
  prepared = prepared if prepared.get('prepared_by') == PREPARED_BY else None
  if prepared is not None:
    check_prepared(prepared, spec)
  ds = Dataset(name=name, split=split,
                num_examples=info.splits[split].num_examples,
                video_key=spec.video_key, label_key=label_key,
                video_shape=tuple(vfeat.shape), num_classes=num_classes,
                builder=builder, decode_frame=decode_frame, decoders=decoders,
                caption_key=caption_key, prepared=prepared)
  if info.file_format == tfds.core.FileFormat.ARRAY_RECORD:
    ds.source = builder.as_data_source(split, decoders=decoders)
  return ds


def check_prepared(metadata: dict, spec: Spec) -> None:
  """Refuses a prepared dataset whose windows are shorter than the config's clip,
  whose stored latents are read at another frame size, or whose stored text
  embeddings another encoder (or L, D) made than the config's.

  Raises:
    ValueError: naming what differs and the fix.
  """
  if spec.text_embedding_key:
    stored = metadata.get('text_embeddings') or {}
    # validate_config makes the config's text input an Embedder here.
    want = spec.tokenizer.record() if hasattr(spec.tokenizer, 'record') else {}
    differ = [f'{k} {stored.get(k)!r} (the config: {want.get(k)!r})'
              for k in ('embedder', 'max_length', 'dim') if stored.get(k) != want.get(k)]
    if differ:
      raise ValueError(
          f'{spec.dataset} stores text embeddings that the config\'s text encoder would not '
          f'make: {", ".join(differ)}. Train with the encoder that made them '
          "(config.model.text_encoder='precomputed', text_embedder, text_max_length, "
          'text_embed_dim), prepare the data again with --text_embeddings under this config, '
          "or set config.data.text_embedding_key='' to embed the captions while training.")
  if spec.latent_key and metadata['image_size'] != spec.image_size:
    raise ValueError(
        f'{spec.dataset} stores latents of {metadata["image_size"]}x{metadata["image_size"]} '
        f'frames, but config.data.image_size={spec.image_size}: latents cannot be resized; '
        f'set config.data.image_size={metadata["image_size"]}.')
  span = (spec.num_frames - 1) * spec.frameskip + 1
  window = int(metadata.get('clip_frames') or 0)
  if window and window < span:
    raise ValueError(
        f'{spec.dataset} was prepared in windows of {window} frames, but a training clip of '
        f'config.data.num_frames={spec.num_frames} with frameskip={spec.frameskip} spans '
        f'{span}: prepare it again with --clip_frames >= {span} (prepare.py), or train on '
        'shorter clips.')


def prepared_layout(metadata: dict) -> str:
  """What prepare.py stored, in words: '16x16x3, windows of 8 frames every 5, raw storage'."""
  m = metadata
  windows = (f'windows of {m["clip_frames"]} frames every {m["clip_stride"]}'
             if m['clip_frames'] else 'whole videos')
  latents = m.get('latents')
  latents = (f', latents {"x".join(map(str, latents["shape"]))} of {latents["autoencoder"]} '
             f'(step {latents["step"]})' if latents else '')
  return (f'{m["image_size"]}x{m["image_size"]}x{m["channels"]}, {windows}, {m["storage"]} '
          f'storage{latents}')


def describe_prepared(metadata: dict, spec: Spec) -> str:
  """One line on how prepare.py made a dataset, and what the pipeline still converts."""
  m = metadata
  clips = ', '.join(f'{s} {c["records"]} clips' for s, c in m['splits'].items())
  line = (f'Data: {spec.dataset}, prepared on {m["date"]} from {m["source"]}: '
          f'{prepared_layout(m)}; {clips}.')
  if (m['image_size'], m['channels']) != (spec.image_size, spec.channels):
    line += (f' The config reads it at {spec.image_size}x{spec.image_size}x{spec.channels}, '
             'so every clip is converted again: prepare it at the config\'s size to save that.')
  return line


@functools.lru_cache(maxsize=None)
def _keep_encoded_decoder(tfds):
  """A TFDS decoder that returns a Video's frames still PNG/JPEG encoded."""

  class KeepEncoded(tfds.decode.SkipDecoding):
    """`SkipDecoding` for the numpy backend, which it lacks for sequences."""

    def decode_batch_example_np(self, serialized_example):
      return serialized_example

  return KeepEncoded()


def _checked_label_key(spec: Spec, features) -> Optional[str]:
  """config.data.label_key (None for '') once both keys are checked against ``features``.

  Raises:
    KeyError: video_key or label_key is not a feature, naming the ones there are.
  """
  keys = sorted(features.keys())
  if spec.video_key not in features:
    raise KeyError(f'config.data.video_key={spec.video_key!r} is not a feature '
                   f'of dataset {spec.dataset!r}; its features are {keys}.')
  label_key = spec.label_key or None
  if label_key is not None and label_key not in features:
    raise KeyError(f'config.data.label_key={label_key!r} is not a feature of '
                   f'dataset {spec.dataset!r}; its features are {keys} (set it to '
                   "'' for none).")
  return label_key


def _checked_caption_key(spec: Spec, features) -> Optional[str]:
  """config.data.caption_key (None for ''), checked against ``features``."""
  if not spec.caption_key:
    return None
  if spec.caption_key not in features:
    raise KeyError(f'config.data.caption_key={spec.caption_key!r} is not a feature of dataset '
                   f'{spec.dataset!r}; its features are {sorted(features.keys())}. '
                   'moving_digits/captions_32 and captions_64 have captions.')
  return spec.caption_key


def _open_generated(spec: Spec, split: str, offline) -> Dataset:
  """A bundled dataset without TFDS: its numpy generator, in memory."""
  if split not in offline.SPLITS:
    raise ValueError(f'Dataset {spec.dataset!r} has no split {split!r}; its '
                     f'splits are {sorted(offline.SPLITS)}.')
  progress_lib.log(f'tensorflow_datasets is not installed: generating {spec.dataset} '
                   f'{split} in memory (the same videos as a default TFDS build).')
  arrays = offline.in_memory(offline.parse_name(spec.dataset), split)
  label_key = _checked_label_key(spec, arrays)
  return Dataset(
      name=spec.dataset, split=split, num_examples=len(arrays['video']),
      video_key=spec.video_key, label_key=label_key,
      video_shape=tuple(arrays[spec.video_key].shape[1:]),
      num_classes=offline.CLASS_FEATURES.get(label_key),
      source=ArraySource(arrays), caption_key=_checked_caption_key(spec, arrays))
