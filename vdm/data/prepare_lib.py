"""Preparing videos once into a training-ready TFDS dataset (what prepare.py does).

A source (vdm.data.video_sources: a folder of videos, or a TFDS dataset) is
converted once to the training resolution and written as a TFDS dataset in
the array_record format, which the pipeline reads with random access, exact
resume and per-host sharding like any other:

  <out>/<name>/1.0.0/<name>-<split>.array_record-<i>-of-<n>  + dataset_info.json

Each video is centre-cropped, resized and converted to the config's channels
by the pipeline's own conversion (vdm.data.frames.conform_frames), then cut
into windows of `clip_frames` frames every `clip_stride` frames (or kept
whole with clip_frames 0). A training clip then reads one small record rather
than a whole long video: that is what makes the prepared dataset cheap to
read (BENCHMARKS.md, "Input pipeline").

Work is split into shards of `videos_per_shard` source videos, written by
worker processes. A shard is written aside, renamed into `.prepare/` and
recorded in a small JSON file when complete, so a rerun after a crash or
Ctrl-C redoes only unfinished shards and gives the same dataset as an
uninterrupted run. dataset_info.json is written last: until then the
directory does not read as a dataset. A video that cannot be used (it does
not decode, is too short or too small) is skipped and reported, never fatal.

How the dataset was made (source, resolution, windows, storage, counts,
skipped videos) is stored in its metadata (`builder.info.metadata`), which
prepare.py prints at the end and train.py at the start.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import json
import math
import multiprocessing
import os
import shutil
import time
from typing import Any, Dict, List, Optional

import numpy as np

from vdm import atomic
from vdm import progress as progress_lib
from vdm.data import bundled
from vdm.data import frames as frames_lib
from vdm.data import sources
from vdm.data import video_sources
from vdm.models import tokenizer

VERSION = '1.0.0'
STORAGES = ('raw', 'zlib', 'png')
STATE_DIR = sources.PREPARE_STATE_DIR
_SKIPPED_IN_METADATA = 50


@dataclasses.dataclass(frozen=True)
class Settings:
  """What a prepared dataset holds.

  image_size: frame side S of the stored frames.
  channels: 1 or 3.
  clip_frames: frames per stored window; 0 keeps every video whole.
  clip_stride: frames between the starts of consecutive windows.
  min_frames: the shortest video kept (the training clip's span).
  storage: 'raw' (uint8 bytes; array_record compresses every record with
    zstd on disk), 'png' (one PNG per frame, decoded only for the frames a
    clip uses) or 'zlib' (uint8, zlib-compressed). Raw is the default: it
    was the cheapest to read per training clip, on real and on synthetic
    frames, at 1.1-1.3x PNG's disk size (BENCHMARKS.md, "Input pipeline").
  videos_per_shard: source videos per output shard (the unit of work and of
    resume).
  """
  image_size: int
  channels: int
  clip_frames: int
  clip_stride: int
  min_frames: int
  storage: str = 'raw'
  videos_per_shard: int = 32

  def __post_init__(self):
    if self.storage not in STORAGES:
      raise ValueError(f'--storage={self.storage!r}: use one of {", ".join(STORAGES)}.')
    if self.channels not in (1, 3):
      raise ValueError(f'channels must be 1 or 3, got {self.channels}.')
    if self.clip_frames and self.clip_frames < self.min_frames:
      raise ValueError(f'--clip_frames={self.clip_frames} is shorter than a training clip '
                       f'({self.min_frames} frames: num_frames x frameskip); use at least '
                       f'{self.min_frames}, or 0 to keep whole videos.')
    if self.clip_frames and self.clip_stride < 1:
      raise ValueError(f'--clip_stride must be >= 1, got {self.clip_stride}.')
    if self.videos_per_shard < 1:
      raise ValueError(f'--videos_per_shard must be >= 1, got {self.videos_per_shard}.')


def settings_from_config(config, *, clip_frames: Optional[int] = None,
                         clip_stride: Optional[int] = None, storage: str = 'raw',
                         videos_per_shard: int = 32) -> Settings:
  """Settings for training with `config`: its image_size, channels and clip span.

  Windows default to twice the clip's span, a new one every span frames, so
  that a training clip starts anywhere in a video (up to the last span) and
  each frame is stored twice.
  """
  span = (int(config.data.num_frames) - 1) * int(config.data.frameskip) + 1
  frames = 2 * span if clip_frames is None else int(clip_frames)
  return Settings(image_size=int(config.data.image_size), channels=int(config.data.channels),
                  clip_frames=frames,
                  clip_stride=int(clip_stride or max(1, frames - span + 1 if frames else 1)),
                  min_frames=span, storage=storage, videos_per_shard=videos_per_shard)


def features(settings: Settings, label_names: Optional[List[str]], captions: bool,
             latents: Optional[Dict[str, Any]] = None,
             text_embeddings: Optional[Dict[str, Any]] = None):
  """The TFDS features of a prepared dataset.

  video: uint8 [L, S, S, C] (L = clip_frames, or any length for whole videos);
  origin: the source video (relative path, or 'split[index]'); start: the
  window's first frame in it; label (ClassLabel) and caption (Text) when the
  source has them; latents [L, h, w, c] (float16) of every frame when an
  autoencoder is given (`latents` is its vdm.latent.stored_latents_record);
  text_embeddings [L_text, D] (float16) of the caption when a frozen text
  encoder is given (`text_embeddings` is its vdm.models.tokenizer.Embedder.record).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  s = settings
  shape = (s.clip_frames or None, s.image_size, s.image_size, s.channels)
  if s.storage == 'png':
    # A Sequence of PNG Images, which the pipeline reads like a Video (decoding
    # only the frames a clip uses); tfds.features.Video itself would import
    # TensorFlow (seconds) in every process that opens the dataset.
    video = tfds.features.Sequence(
        tfds.features.Image(shape=shape[1:], dtype=np.uint8, encoding_format='png'),
        length=shape[0])
  else:
    # 'bytes', not TFDS's default encoding, which writes each uint8 as a
    # varint of an int64 list: four times slower to parse than PNG decodes.
    video = tfds.features.Tensor(shape=shape, dtype=np.uint8,
                                 encoding='zlib' if s.storage == 'zlib' else 'bytes')
  out = dict(video=video, origin=tfds.features.Text(),
             start=tfds.features.Tensor(shape=(), dtype=np.int32))
  if label_names is not None:
    out['label'] = tfds.features.ClassLabel(names=label_names)
  if captions:
    out['caption'] = tfds.features.Text()
  if latents:
    out['latents'] = tfds.features.Tensor(shape=(shape[0], *latents['shape']),
                                          dtype=np.dtype(latents['dtype']), encoding='bytes')
  if text_embeddings:
    out['text_embeddings'] = tfds.features.Tensor(
        shape=(text_embeddings['max_length'], text_embeddings['dim']),
        dtype=np.dtype(text_embeddings['dtype']), encoding='bytes')
  return tfds.features.FeaturesDict(out)


def windows(video: video_sources.SourceVideo, settings: Settings):
  """The stored windows of one source video, or the reason it is skipped.

  Returns:
    A list of (start, uint8 [L, S, S, C]), or a video_sources.Skipped.
  """
  s = settings
  t0, h0, w0 = video.frames.shape[:3]
  if min(h0, w0) < s.image_size:
    return video_sources.Skipped(
        video.origin, f'frames are {w0}x{h0}, smaller than image_size {s.image_size} '
        '(upscaling would blur them): prepare at a lower --config.data.image_size')
  need = s.clip_frames or s.min_frames
  if t0 < need:
    return video_sources.Skipped(
        video.origin, f'{t0} frames, fewer than the {need} a '
        + ('window needs (--clip_frames)' if s.clip_frames else 'training clip needs'))
  frames = frames_lib.conform_frames(video.frames, s.image_size, s.channels, video.origin)
  if not s.clip_frames:
    return [(0, frames)]
  return [(i, frames[i:i + s.clip_frames])
          for i in range(0, t0 - s.clip_frames + 1, s.clip_stride)]


def png_frames(clip: np.ndarray) -> List[bytes]:
  """uint8 [L, S, S, C] -> one PNG per frame, encoded by PIL (TFDS's own encoder
  goes through TensorFlow ops, several times slower on small frames)."""
  import io  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  out = []
  for frame in clip:
    buf = io.BytesIO()
    Image.fromarray(frame[..., 0] if frame.shape[-1] == 1 else frame).save(buf, format='PNG')
    out.append(buf.getvalue())
  return out


@dataclasses.dataclass(frozen=True)
class Shard:
  """One unit of work: source videos [start, stop) of a split."""
  split: str
  index: int
  start: int
  stop: int

  @property
  def stem(self) -> str:
    return f'{self.split}-{self.index:05d}'


def plan(splits: Dict[str, int], videos_per_shard: int) -> List[Shard]:
  """Shards of every split, in order."""
  return [Shard(split, k, k * videos_per_shard, min(n, (k + 1) * videos_per_shard))
          for split, n in splits.items() for k in range(math.ceil(n / videos_per_shard))]


def write_shard(source, settings: Settings, shard: Shard, state_dir: str,
                encoder=None, text_embedder=None) -> Dict[str, Any]:
  """Reads, converts and writes one shard; records it as done.

  `encoder` (a vdm.latent.FrameEncoder, or None) adds each window's latents,
  `text_embedder` (a vdm.models.tokenizer.Embedder, or None) its caption's
  embeddings (computed once per video).
  Returns (and writes to <state_dir>/<stem>.json) what the shard holds:
  videos, records, bytes and the skipped videos with their reasons.
  """
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  feats = features(settings, source.label_names, bool(source.captions),
                   encoder.record() if encoder else None,
                   text_embedder.record() if text_embedder else None)
  path = os.path.join(state_dir, shard.stem + '.array_record')
  writer = array_record_module.ArrayRecordWriter(path + '.tmp', 'group_size:1')
  done = dict(split=shard.split, index=shard.index, videos=0, records=0, bytes=0, skipped=[])
  try:
    for item in source.read(shard.split, shard.start, shard.stop):
      done['videos'] += 1
      got = item if isinstance(item, video_sources.Skipped) else windows(item, settings)
      if isinstance(got, video_sources.Skipped):
        done['skipped'].append([got.origin, got.reason])
        continue
      embeddings = None
      if text_embedder is not None:
        embeddings = text_embedder([item.caption])[0].astype(np.float16)  # [L, D]
      for start, clip in got:
        record = dict(origin=item.origin, start=start)
        if embeddings is not None:
          record['text_embeddings'] = embeddings
        if encoder is not None:
          record['latents'] = encoder(clip)
        record['video'] = png_frames(clip) if settings.storage == 'png' else clip
        if item.label is not None:
          record['label'] = item.label
        if item.caption is not None:
          record['caption'] = item.caption
        data = feats.serialize_example(record)
        writer.write(data)
        done['records'] += 1
        done['bytes'] += len(data)
  finally:
    writer.close()
  os.replace(path + '.tmp', path)
  atomic.write_json(os.path.join(state_dir, shard.stem + '.json'), done)
  return done


@dataclasses.dataclass
class Report:
  """What a preparation made."""
  name: str
  directory: str  # The dataset's version directory.
  metadata: Dict[str, Any]

  def summary(self) -> str:
    """Lines for a person: counts per split, skipped videos, how to train on it."""
    m = self.metadata
    lines = [f'Prepared {self.name} from {m["source"]} into {self.directory}: '
             f'{sources.prepared_layout(m)}.']
    for split, c in m['splits'].items():
      lines.append(f'  {split}: {c["records"]} clips from {c["videos"] - c["skipped"]} videos '
                   f'({c["skipped"]} skipped), {c["bytes"] / 2**20:.1f} MiB')
    skipped = m['skipped']
    if skipped:
      total = sum(c['skipped'] for c in m['splits'].values())
      lines.append(f'  skipped {total} video{"s" if total > 1 else ""}:')
      lines += [f'    {origin}: {reason}' for origin, reason in skipped[:5]]
      if total > 5:
        lines.append(f'    ... ({total - 5} more in the metadata, up to {_SKIPPED_IN_METADATA})')
    data_dir = os.path.dirname(os.path.dirname(self.directory))
    keys = [f'--config.data.dataset={self.name}', f'--config.data.data_dir={data_dir}',
            "--config.data.label_key=" + ('label' if m['label_names'] else "''")]
    if m['label_names']:
      keys.append(f'--config.model.num_classes={len(m["label_names"])}')
    lines.append('Train on it with: ' + ' '.join(keys))
    if m.get('latents'):
      a = m['latents']
      lines.append(f'It stores the latents of {a["autoencoder"]} (step {a["step"]}): a latent run '
                   f'trains on them without encoding with --config.latent.autoencoder='
                   f'{a["autoencoder"]} --config.data.latent_key=latents.')
    if m.get('text_embeddings'):
      e = m['text_embeddings']
      lines.append(f'It stores the embeddings of every caption by {e["embedder"]} (L {e["max_length"]}, '
                   f'D {e["dim"]}): a text run reads them with --config.data.caption_key=caption '
                   "--config.model.text_encoder=precomputed --config.data.text_embedding_key="
                   'text_embeddings (docs/text.md).')
    elif m['captions']:
      lines.append('Its captions condition a text model with --config.data.caption_key=caption '
                   '--config.model.text_encoder=learned (docs/text.md).')
    return '\n'.join(lines)


def _state_request(source, settings: Settings, splits: Dict[str, int],
                   encoder=None, text_embedder=None) -> Dict[str, Any]:
  return dict(source=source.describe(), settings=dataclasses.asdict(settings), splits=splits,
              label_names=source.label_names, captions=bool(source.captions),
              latents=encoder.record() if encoder else None,
              text_embeddings=text_embedder.record() if text_embedder else None)


def _finalize(name: str, version_dir: str, state_dir: str, shards: List[Shard],
              request: Dict[str, Any], source, settings: Settings) -> Dict[str, Any]:
  """Moves the shards to their TFDS names and writes the metadata (last)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core import naming  # pylint: disable=g-import-not-at-top
  done = {s.stem: json.load(open(os.path.join(state_dir, s.stem + '.json'))) for s in shards}
  split_infos, counts, skipped = [], {}, []
  for split in request['splits']:
    mine = [s for s in shards if s.split == split]
    full = [s for s in mine if done[s.stem]['records']]
    counts[split] = {k: sum(done[s.stem][k] for s in mine) for k in ('videos', 'records', 'bytes')}
    counts[split]['skipped'] = sum(len(done[s.stem]['skipped']) for s in mine)
    skipped += [x for s in mine for x in done[s.stem]['skipped']]
    if not full:
      progress_lib.log(f'warning: split {split!r} has no usable video; it is left out.')
      continue
    for i, s in enumerate(full):
      os.replace(os.path.join(state_dir, s.stem + '.array_record'),
                 os.path.join(version_dir, f'{name}-{split}.array_record-{i:05d}-of-{len(full):05d}'))
    split_infos.append(tfds.core.SplitInfo(
        name=split, shard_lengths=[done[s.stem]['records'] for s in full],
        num_bytes=counts[split]['bytes'],
        filename_template=naming.ShardedFileTemplate(
            data_dir=version_dir, dataset_name=name, split=split,
            filetype_suffix='array_record')))
  if not split_infos:
    raise ValueError(f'no video of {source.describe()} could be used; the first reasons: '
                     + '; '.join(f'{o}: {r}' for o, r in skipped[:3]))
  metadata = dict(prepared_by=sources.PREPARED_BY, source=request['source'],
                  **request['settings'], splits=counts, skipped=skipped[:_SKIPPED_IN_METADATA],
                  label_names=request['label_names'], captions=request['captions'],
                  latents=request['latents'], text_embeddings=request['text_embeddings'],
                  date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'))
  tfds.folder_dataset.write_metadata(
      data_dir=version_dir,
      features=features(settings, source.label_names, bool(source.captions),
                        request['latents'], request['text_embeddings']),
      split_infos=split_infos, version=VERSION, check_data=False,
      description=f'Videos of {request["source"]}, prepared for training by prepare.py.',
      metadata=tfds.core.MetadataDict(metadata))
  shutil.rmtree(state_dir)
  return metadata


def prepare(source, out: str, name: str, settings: Settings, *, encoder=None,
            text_embedder=None, workers: int = 1, progress: bool = True) -> Report:
  """Prepares `source` into the TFDS dataset <out>/<name>; continues an unfinished run.

  Args:
    source: a vdm.data.video_sources.FolderSource or TfdsSource.
    out: the TFDS data_dir to write into (config.data.data_dir for training).
    name: the dataset name (config.data.dataset for training).
    settings: what to store (`settings_from_config`).
    encoder: a vdm.latent.FrameEncoder whose latents are stored beside the
      frames, or None.
    text_embedder: a vdm.models.tokenizer.Embedder whose embeddings of each
      caption are stored, or None.
    workers: processes converting shards in parallel (1: this process).
    progress: print a progress line (videos/s, ETA) as shards finish.

  Returns:
    A Report (its metadata is also the dataset's `builder.info.metadata`).

  Raises:
    ValueError: the directory holds a dataset, or an unfinished preparation,
      made with other settings; or no video could be used.
  """
  if not name or os.sep in name or ':' in name:
    raise ValueError(f'--name={name!r}: give a plain dataset name such as my_videos.')
  if bundled.base_name(name) in bundled.MODULES:
    raise ValueError(f'--name={name!r} is a bundled dataset\'s name, which training would '
                     'build instead of reading yours; choose another.')
  version_dir = os.path.join(os.path.abspath(os.path.expanduser(out)), name, VERSION)
  state_dir = os.path.join(version_dir, STATE_DIR)
  splits = source.splits()
  request = _state_request(source, settings, splits, encoder, text_embedder)
  info_file = os.path.join(version_dir, 'dataset_info.json')
  if os.path.exists(info_file):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    metadata = dict(tfds.builder_from_directory(version_dir).info.metadata or {})
    same = (metadata.get('source') == request['source'] and
            metadata.get('latents') == request['latents'] and
            metadata.get('text_embeddings') == request['text_embeddings'] and
            all(metadata.get(k) == v for k, v in request['settings'].items()))
    if not same:
      raise ValueError(f'{version_dir} already holds a dataset prepared from '
                       f'{metadata.get("source")!r} with other settings; choose another '
                       '--name, or delete that directory to prepare it again.')
    progress_lib.log(f'{name} is already prepared in {version_dir}; nothing to do.')
    return Report(name, version_dir, metadata)

  os.makedirs(state_dir, exist_ok=True)
  request_file = os.path.join(state_dir, 'request.json')
  if os.path.exists(request_file):
    with open(request_file) as f:
      before = json.load(f)
    before.setdefault('latents', None)  # Begun before latents could be stored.
    before.setdefault('text_embeddings', None)  # Or text embeddings.
    if before != json.loads(json.dumps(request)):
      changed = sorted(k for k in request if before.get(k) != json.loads(json.dumps(request[k])))
      raise ValueError(
          f'{version_dir} holds an unfinished preparation made with other settings '
          f'(they differ in: {", ".join(changed)}): rerun the same command to continue it, '
          f'or delete {version_dir} to start again.')
  else:
    atomic.write_json(request_file, request)

  shards = plan(splits, settings.videos_per_shard)
  todo = [s for s in shards if not os.path.exists(os.path.join(state_dir, s.stem + '.json'))]
  total = sum(splits.values())
  done_videos = total - sum(s.stop - s.start for s in todo)
  if done_videos and todo:
    progress_lib.log(f'Continuing: {len(shards) - len(todo)} of {len(shards)} shards are '
                     'already written.')
  bar = progress_lib.Progress(f'prepare {name}', total, 'videos', every=2.0) if progress else None
  start, first = time.perf_counter(), done_videos
  skipped = 0

  def report(result):
    nonlocal done_videos, skipped
    done_videos += result['videos']
    skipped += len(result['skipped'])
    if bar is not None:
      rate = (done_videos - first) / max(time.perf_counter() - start, 1e-9)
      bar(done_videos, f'{rate:.1f} videos/s, {skipped} skipped')

  if workers <= 1 or len(todo) <= 1:
    for shard in todo:
      report(write_shard(source, settings, shard, state_dir, encoder, text_embedder))
  else:
    context = multiprocessing.get_context('spawn')  # TF and threads do not survive fork.
    with concurrent.futures.ProcessPoolExecutor(min(workers, len(todo)),
                                                mp_context=context) as pool:
      futures = [pool.submit(write_shard, source, settings, s, state_dir, encoder, text_embedder)
                 for s in todo]
      for future in concurrent.futures.as_completed(futures):
        report(future.result())
  metadata = _finalize(name, version_dir, state_dir, shards, request, source, settings)
  return Report(name, version_dir, metadata)


def run(config, source: str, name: str, out: str = '', *, source_options=None,
        clip_frames: Optional[int] = None, clip_stride: Optional[int] = None,
        storage: str = 'raw', videos_per_shard: int = 32, encoder=None,
        text_embeddings: bool = False, workers: int = 1, progress: bool = True) -> Report:
  """What prepare.py does: open the source, prepare it for `config`, warn of
  caption rows without a video.

  Args:
    config: the training config (its data.image_size, channels, num_frames,
      frameskip; data.data_dir is the default `out`).
    source: a folder path, or 'tfds:NAME'.
    name: the dataset name to write.
    out: TFDS data_dir to write into; config.data.data_dir when ''.
    source_options: keyword arguments of video_sources.open_source.
    clip_frames, clip_stride, storage, videos_per_shard: see Settings
      (None: settings_from_config's defaults).
    encoder: a vdm.latent.FrameEncoder to store latents too (None: frames
      only); its autoencoder must encode frames of the config's size.
    text_embeddings: store the embeddings of every caption by the config's
      frozen text encoder (config.model.text_embedder, L = text_max_length,
      D = text_embed_dim).
    workers: processes in parallel.
    progress: print progress lines.

  Returns:
    The Report.
  """
  source_options = dict(source_options or {})
  opened = video_sources.open_source(source, **source_options)
  unknown = getattr(opened, 'uncaptioned_rows', [])
  if unknown:
    progress_lib.log(f'warning: {len(unknown)} rows of {source_options["captions"]} name no '
                     f'video in the folder, e.g. {unknown[:3]}; they are ignored.')
  settings = settings_from_config(config, clip_frames=clip_frames, clip_stride=clip_stride,
                                  storage=storage, videos_per_shard=videos_per_shard)
  if encoder is not None and (encoder.image_size, encoder.channels) != (settings.image_size,
                                                                         settings.channels):
    raise ValueError(
        f'--autoencoder={encoder.workdir} encodes {encoder.image_size}x{encoder.image_size}x'
        f'{encoder.channels} frames, but the config stores {settings.image_size}x'
        f'{settings.image_size}x{settings.channels}: set --config.data.image_size and '
        '--config.data.channels to the autoencoder\'s.')
  text_embedder = None
  if text_embeddings:
    if config.model.get('text_encoder', '') != 'precomputed':
      raise ValueError('--text_embeddings stores the embeddings of the config\'s frozen text '
                       "encoder: set --config.model.text_encoder=precomputed, "
                       '--config.model.text_embedder=package.module:function and '
                       '--config.model.text_embed_dim (docs/text.md).')
    if not opened.captions:
      raise ValueError('--text_embeddings needs captions: give --captions (a folder source) '
                       'or --caption_key (a TFDS source).')
    text_embedder = tokenizer.from_model_config(config.model)
    text_embedder(['a caption'])  # A wrong encoder name or shape fails here, not in a worker.
  return prepare(opened, out or str(config.data.data_dir), name, settings, encoder=encoder,
                 text_embedder=text_embedder, workers=workers, progress=progress)
