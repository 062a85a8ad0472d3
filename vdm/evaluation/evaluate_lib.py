"""FVD / KVD evaluation of a trained model (or of the real data against itself).

One entry point, `evaluate`, used by evaluate.py, and `evaluate_during_training`
for the training loop. Both fix the whole protocol in code and print it with
every figure:

* Real videos: N clips of a TFDS split, made exactly like training clips
  (same frames, frameskip, resolution and channels; frame 0 onwards, never
  flipped) by `vdm.data.pipeline.make_eval_iterator`. The N clips are the
  examples floor(i * S / N), i = 0..N-1, of the split's S examples in stored
  order: distinct (without replacement) and spread over the whole split, so
  that a split stored sorted by class (UCF101) is not represented by its first
  few classes only. Their I3D features (and labels) are cached on disk.
* Generated videos: N samples from the EMA weights with the config's sampler,
  in chunks of config.eval.batch_size split over the devices of the run's
  mesh (`vdm.sampling.mesh_sampling`; several processes share one mesh), as uint8
  exactly like the saved samples (`vdm.video_io.to_uint8`; no video
  compression). Video i depends on the seed and i only, so the figure is the
  same on 1 or 8 devices, in one process or several.
  - 'unconditional': `Trainer.sample`; a class-conditional model gets the
    labels of the N real clips, so the generated label distribution equals
    the real one.
  - 'predict': the first k frames of each of the N real clips are given and
    the rest of the clip is sampled with reconstruction guidance
    (`vdm.sampling.conditional.predict_frames`); FVD is taken over all T frames (the k
    given ones included), as in the BAIR 1 -> 15 frame protocol.
  - 'i2v': for methods conditioned on a first frame (TRIP): each sample is
    generated from the first frame of one of the N real clips (frame 1
    generated too); FVD over all T frames.
  In 'predict' and 'i2v' modes the first-frame fidelity is reported too
  (`vdm.evaluation.fidelity`): PSNR and SSIM of generated frame 1 against
  the given image, the mean PSNR of the later frames to it, and the same
  later-frames figure of the real clips (what the data itself scores).
  On single-digit moving digits (`moving_digits/single_*`), class-conditional
  samples are also scored by a digit classifier (`vdm.evaluation.digits`):
  the fraction of frames showing the sampled label, the fraction of videos
  showing one class throughout, and both figures of real test clips.
* Features: `vdm.evaluation.i3d` (Kinetics-400 I3D, the reference FVD
  protocol; see `i3d.FVD_PROTOCOL`). FVD = Frechet distance, KVD = unbiased
  cubic-polynomial-kernel MMD^2, both on the 400-d logits.
* Real vs real: FVD/KVD between two disjoint sets of real clips (N each when
  the split has >= 2N examples, else N/2 each): the floor a model is compared
  against.

Only numpy, jax and the repo are needed at import time; TFDS (through the input
pipeline) and clu (the writer passed in) are used lazily.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import sys
import time
from typing import Any, Callable, Optional

import jax
import ml_collections
import numpy as np
from flax import nnx

from vdm import config_lib
from vdm import latent
from vdm.sampling import long_video
from vdm.sampling import mesh_sampling
from vdm import progress as progress_lib
from vdm import run_lib
from vdm.sampling import conditional
from vdm import sharding
from vdm import video_io
from vdm.data import moving_digits
from vdm.evaluation import digits
from vdm.evaluation import fidelity
from vdm.evaluation import i3d
from vdm.evaluation import metrics

MODES = ('unconditional', 'predict', 'long', 'i2v')
# Results written as TensorBoard scalars by PeriodicEvaluation (when present).
SCALARS = ('fvd', 'kvd', 'digit_accuracy', 'digit_consistency')
# Versions the choice of real clips; part of the cache key, so a change in how
# clips are selected can never reuse stale features.
REAL_SELECTION = 'evenly-spaced-v1'
CACHE_SUBDIR = 'fvd_cache'


# ---------------------------------------------------------------------------
# Small helpers.


def _log(msg: str) -> None:
  """Progress goes to stderr so that stdout carries only the JSON result."""
  if jax.process_index() == 0:
    print(msg, file=sys.stderr, flush=True)


def check_config(config: ml_collections.ConfigDict, mode: str = 'unconditional',
                 context_frames: int = 1, num_frames: Optional[int] = None) -> None:
  """Fails early (before any checkpoint or data is read) on unusable settings.

  Args:
    config: the run's config.
    mode: one of MODES.
    context_frames: k given frames in 'predict' mode.
    num_frames: 'long' mode: frames of the long videos (> the clip length).

  Raises:
    ValueError: clips shorter than the I3D's minimum, unknown mode or bad k.
  """
  if mode == 'long':
    clip = int(config.data.num_frames)
    if num_frames is None or num_frames <= clip:
      raise ValueError(f'mode=long needs num_frames > config.data.num_frames={clip} (the '
                       f'clip length); got {num_frames}.')
    long_video.check_long_method(config.sampling, clip)
    config = config.copy_and_resolve_references()
    config.data.num_frames = num_frames  # FVD is taken over the long videos.
  t = int(config.data.num_frames)
  if t < i3d.MIN_FRAMES:
    raise ValueError(
        f'FVD needs clips of at least {i3d.MIN_FRAMES} frames (the I3D halves '
        f'the time axis three times and then pools over 2 frames), but '
        f'config.data.num_frames={t}. Train with --config.data.num_frames='
        f'{i3d.MIN_FRAMES} or more to evaluate FVD.')
  if mode not in MODES:
    raise ValueError(f'mode={mode!r} is unknown; choose one of {MODES}.')
  from vdm.sampling import sample_lib  # pylint: disable=g-import-not-at-top
  sample_lib.check_mode(config, mode)
  if mode == 'predict' and not 0 < context_frames < t:
    raise ValueError(f'context_frames={context_frames} must be in (0, '
                     f'config.data.num_frames={t}) for mode=predict.')


def default_cache_dir(config: ml_collections.ConfigDict) -> str:
  """Where real-split features are cached: next to the data they describe.

  Args:
    config: the run's config.

  Returns:
    <config.data.data_dir, or $TFDS_DATA_DIR / ~/tensorflow_datasets>/fvd_cache.
  """
  data_dir = str(config.data.get('data_dir', '') or '') or os.environ.get(
      'TFDS_DATA_DIR', '~/tensorflow_datasets')
  return os.path.join(os.path.abspath(os.path.expanduser(data_dir)), CACHE_SUBDIR)


def split_size(config: ml_collections.ConfigDict, split: str) -> int:
  """Number of examples in `split` of config.data.dataset.

  `pipeline.dataset_info` reports the size of the train split, so it is asked
  about a copy of the config whose train split is `split`.

  Args:
    config: the run's config.
    split: split name.

  Returns:
    S, the number of examples.
  """
  from vdm.data import pipeline  # pylint: disable=g-import-not-at-top
  probe = copy.deepcopy(config)
  probe.data.train_split = split
  return int(pipeline.dataset_info(probe)['num_train_examples'])


def select_indices(num_available: int, num: int) -> np.ndarray:
  """`num` distinct example indices spread evenly over [0, num_available).

  Args:
    num_available: S, the split size.
    num: N <= S.

  Returns:
    int64 [N], strictly increasing: floor(i * S / N).
  """
  if not 0 < num <= num_available:
    raise ValueError(f'cannot take {num} distinct clips from a split of '
                     f'{num_available} (FVD here samples without replacement).')
  return (np.arange(num, dtype=np.int64) * num_available) // num


def real_cache_key(config: ml_collections.ConfigDict, split: str, num: int,
                   num_available: int, what: str = 'i3d_features') -> dict:
  """Everything the cached real features (or labels) depend on.

  Args:
    config: the run's config (its data section).
    split: split name.
    num: N, clips selected.
    num_available: S, the split size (the selection depends on it).
    what: 'i3d_features' or 'labels'.

  Returns:
    A JSON-like key for `metrics.cached_real_features`.
  """
  d = config.data
  key = {
      'what': what,
      'dataset': str(d.dataset),
      'split': split,
      'split_size': int(num_available),
      'resolution': int(d.image_size),
      'channels': int(d.channels),
      'frames': int(d.num_frames),
      'frameskip': int(d.get('frameskip', 1)),
      'video_key': str(d.get('video_key', 'video')),
      'num_samples': int(num),
      'selection': REAL_SELECTION,
      'protocol_version': i3d.FVD_PROTOCOL['version'],
  }
  if what == 'labels':
    key['label_key'] = str(d.get('label_key', ''))
  return key


def _real_pass(config, split: str, indices: np.ndarray, batch_size: int, *,
               num_frames: Optional[int] = None, features: bool = True,
               keep_videos: bool = False, what: str = 'real clips', mesh=None
               ) -> dict[str, Optional[np.ndarray]]:
  """One ordered pass over the split that keeps the clips at `indices`.

  Reading goes through `make_eval_iterator` (the training clip recipe), up to
  the last wanted example. Kept clips are buffered and sent to the I3D in full
  batches of `batch_size`, so the I3D compiles once and never runs on mostly
  padding even when the wanted clips are sparse in the split.

  Args:
    config: the run's config.
    split: split name.
    indices: int64 [N] strictly increasing example indices.
    batch_size: reading and I3D batch size (rounded up to a multiple of the
      batch shards of config.sharding.mesh).
    num_frames: clip length; config.data.num_frames when None.
    features: compute I3D features of the kept clips.
    keep_videos: also return the kept clips.
    what: name in progress lines.
    mesh: the mesh the I3D runs on; config.sharding.mesh when None.

  Returns:
    dict with 'features' (float64 [N, 400] or None), 'labels' (int64 [N] or
    None when the config has no label_key) and 'videos' (uint8 [N, T', H, W,
    C] or None), rows in the order of `indices`.
  """
  from vdm.data import pipeline  # pylint: disable=g-import-not-at-top
  n = len(indices)
  # The I3D runs on the run's mesh (the training one), each batch split over
  # its devices; reading stays on every process.
  if features and mesh is None:
    mesh = sharding.create_mesh(config.sharding.mesh)
  batch_size = mesh_sampling.chunk_size(batch_size, n, mesh)
  wanted = np.zeros(int(indices[-1]) + 1, bool)
  wanted[indices] = True
  it = pipeline.make_eval_iterator(
      config, split, num_examples=len(wanted),
      batch_size=batch_size, num_frames=num_frames,
      # Every process reads all N clips (cheap beside the I3D, which is split
      # over the mesh) and so holds the whole real side of the metric.
      process_index=0, process_count=1)
  feats, labels, videos, buffer = [], [], [], []
  progress = progress_lib.Progress(f'I3D features of {what}' if features else f'reading {what}',
                                  n, 'videos', every=5.0, file=sys.stderr)
  done = 0

  def flush(force: bool):
    nonlocal buffer, done
    while buffer and (force or sum(len(b) for b in buffer) >= batch_size):
      stacked = np.concatenate(buffer)
      chunk, rest = stacked[:batch_size], stacked[batch_size:]
      buffer = [rest] if len(rest) else []
      if features:
        # Padded to a full batch: one compiled I3D shape for every call.
        feats.append(i3d.batch_features(mesh_sampling.pad_rows(chunk, batch_size),
                                        mesh)[:len(chunk)])
      if keep_videos:
        videos.append(chunk)
      done += len(chunk)
      progress(done)

  try:
    for batch in it:
      keep = batch['mask'] & wanted[np.maximum(batch['index'], 0)]
      if not keep.any():
        continue
      buffer.append(batch['video'][keep])
      if 'label' in batch:
        labels.append(batch['label'][keep].astype(np.int64))
      flush(force=False)
    flush(force=True)
  finally:
    getattr(it, 'close', lambda: None)()
  if done != n:
    raise RuntimeError(f'read {done} of the {n} wanted clips of split {split!r}.')
  return {
      'features': np.concatenate(feats) if features else None,
      'labels': np.concatenate(labels) if labels else None,
      'videos': np.concatenate(videos) if keep_videos else None,
  }


def real_features(config, split: str, num: int, *, batch_size: int,
                  cache_dir: Optional[str] = None, with_labels: bool = False, mesh=None
                  ) -> tuple[np.ndarray, Optional[np.ndarray]]:
  """I3D features (and labels) of the N protocol clips of a split, cached.

  Args:
    config: the run's config (config.data describes the clips).
    split: split name.
    num: N, number of clips (<= split size).
    batch_size: reading / I3D batch size.
    cache_dir: cache directory; default_cache_dir(config) when None.
    with_labels: also return the clips' labels (needs config.data.label_key).
    mesh: the mesh the I3D runs on; config.sharding.mesh when None.

  Returns:
    (float64 [N, 400] features, int64 [N] labels or None).
  """
  cache_dir = cache_dir or default_cache_dir(config)
  s = split_size(config, split)
  indices = select_indices(s, num)
  key = real_cache_key(config, split, num, s)
  passes = {}

  def compute():
    passes['out'] = _real_pass(config, split, indices, batch_size,
                               what=f'{num} real clips ({split})', mesh=mesh)
    return passes['out']['features']

  feats = metrics.cached_real_features(cache_dir, key, compute)
  if 'out' not in passes:
    _log(f'Real features: cache hit in {cache_dir} ({num} clips of {split}).')
  labels = None
  if with_labels:
    def compute_labels():
      out = passes.get('out') or _real_pass(config, split, indices, batch_size,
                                            features=False, what='real labels')
      if out['labels'] is None:
        raise ValueError('a class-conditional model needs config.data.label_key.')
      return out['labels'][:, None]  # The cache stores [N, D] arrays.
    labels = metrics.cached_real_features(
        cache_dir, real_cache_key(config, split, num, s, what='labels'),
        compute_labels)[:, 0].astype(np.int64)
  return feats, labels


# ---------------------------------------------------------------------------
# Generated videos.


@functools.partial(jax.jit, static_argnames=('num_frames', 'options'))
def _predict(fn, rng, context, w_r, sample_ids, *, num_frames, options):
  """'First k frames given' sampling, compiled once per shape and options."""
  return conditional.predict_frames(fn, rng, context, num_frames, method='reconstruction',
                                 w_r=w_r, sample_ids=sample_ids, **dict(options))


def generated_features(run, num: int, *, batch_size: int, seed: int,
                       labels: Optional[np.ndarray] = None,
                       contexts: Optional[np.ndarray] = None,
                       num_frames: Optional[int] = None,
                       first_frames: Optional[np.ndarray] = None,
                       on_videos: Optional[Callable[[int, np.ndarray], None]] = None,
                       mesh=None) -> np.ndarray:
  """Samples N videos chunk by chunk on the mesh and returns their I3D features.

  Each chunk of B videos (vdm.sampling.mesh_sampling: batch_size rounded up to the
  mesh's batch shards) is sampled, converted to uint8 like saved samples and
  passed to the I3D where it lies, split over the devices; only the features
  (and, for on_videos, the uint8 videos) come back to the host. Every chunk
  has the same shape (the last one is padded and trimmed), so the sampler
  compiles once. Video i is drawn with per-sample noise of index i under
  PRNGKey(seed), so the figure does not depend on batch_size, the device
  count or the number of processes.

  Args:
    run: a vdm.run_lib.Run (its config's sampling section is used, w_r
      included for 'predict').
    num: N videos.
    batch_size: videos per sampling / I3D call.
    seed: sampling seed.
    labels: int [N] class labels for a class-conditional model, else None.
    contexts: uint8 [N, k, H, W, C] given first frames ('predict' mode), or
      None for unconditional sampling.
    num_frames: long videos of this many frames, clip by clip with the driver
      config.sampling.long_method names ('long' mode); None: one clip.
    first_frames: uint8 [N, H, W, C] images the videos start from ('i2v'
      mode: passed to the denoiser as conditioning['first_frame']), or None.
    on_videos: optional callback(first_index, uint8 videos) per chunk (e.g.
      to keep a few samples).
    mesh: the device mesh run.params lie on; config.sharding.mesh when None.

  Returns:
    float64 [N, 400] I3D features (on every process).
  """
  c = run.config
  t = c.data.num_frames
  size, channels = run.method.frame_shape  # Of latents in a latent run, decoded below.
  mesh = sharding.create_mesh(c.sharding.mesh) if mesh is None else mesh
  space = latent.space(c, mesh)
  options = run_lib.sampler_options(c, run.method)
  rng = jax.random.PRNGKey(seed)
  bs = mesh_sampling.chunk_size(batch_size, num, mesh)
  inputs = {'labels': labels}
  if first_frames is not None:
    inputs['first_frame'] = latent.encode_videos(
        space, video_io.to_model_range(first_frames)[:, None])[:, 0]
  if contexts is not None:
    inputs['context'] = latent.encode_videos(space, video_io.to_model_range(contexts))
  feats = []
  for chunk in mesh_sampling.chunks(num, bs, mesh, inputs,
                                    what='sampling + I3D of generated videos'):
    conditioning = dict(chunk.inputs)
    lab, ctx = conditioning.pop('labels', None), conditioning.pop('context', None)
    fn = run_lib.model_fn(run.method, run.graphdef, run.params, labels=lab,
                          conditioning=conditioning or None,
                          guidance_weight=c.sampling.guidance_weight)
    if num_frames is not None:
      videos = sharding.shard_rows(long_video.generate(
          fn, rng, num_frames, sampling_config=c.sampling, clip_frames=t,
          clip_shape=(bs, size, size, channels), context_frames=max(1, t // 2),
          sample_ids=chunk.sample_ids, mesh=mesh, **options), mesh)
    elif ctx is None:
      videos = run_lib.sample(fn, rng, (bs, t, size, size, channels), options, chunk.sample_ids)
    else:
      videos = _predict(fn, rng, ctx, np.float32(c.sampling.w_r), chunk.sample_ids,
                        num_frames=t, options=tuple(sorted(options.items())))
    videos_u8 = mesh_sampling.uint8_videos(space, videos)  # [B, T, H, W, C] on the mesh
    if on_videos is not None:
      on_videos(chunk.start, sharding.to_host(videos_u8)[:chunk.rows])
    feats.append(i3d.batch_features(videos_u8, mesh)[:chunk.rows])
  return np.concatenate(feats)


# ---------------------------------------------------------------------------
# Results.


def _distances(real: np.ndarray, fake: np.ndarray) -> dict[str, float]:
  kvd, kvd_std = metrics.kernel_distance(real, fake, return_std=True)
  return {'fvd': metrics.fvd_from_features(real, fake), 'kvd': kvd, 'kvd_std': kvd_std}


def protocol_fields(config, split: str, num: int, num_real: Optional[int] = None
                    ) -> dict[str, Any]:
  """The protocol printed with every figure (flat, for grep and JSON).

  Args:
    config: the run's config.
    split: real split.
    num: generated (or first real set) videos.
    num_real: real videos (num when None).

  Returns:
    dict of JSON-able protocol fields.
  """
  d = config.data
  return {
      'num_samples': int(num),
      'num_real': int(num if num_real is None else num_real),
      'dataset': str(d.dataset),
      'split': split,
      'frames': int(d.num_frames),
      'frameskip': int(d.get('frameskip', 1)),
      'resolution': int(d.image_size),
      'channels': int(d.channels),
      'replacement': 'without',
      'sample_format': 'uint8 frames as sampled (video_io.to_uint8), no video compression',
      'real_selection': f'{REAL_SELECTION}: examples floor(i * S / N) of the split',
      'protocol_version': i3d.FVD_PROTOCOL['version'],
      'protocol': i3d.format_protocol(),
  }


def _write_json(path: str, result: dict) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(result, f, indent=2, sort_keys=True)
    f.write('\n')
  os.replace(tmp, path)


def _emit(result: dict, path: Optional[str]) -> None:
  """Prints the result as one JSON line on stdout and writes it to `path`."""
  if jax.process_index() != 0:
    return
  if path:
    result['output'] = path
    _write_json(path, result)
  print(json.dumps(result, sort_keys=True), flush=True)
  if path:
    _log(f'Wrote {path}')


def _model_eval(run, *, num: int, split: str, mode: str, context_frames: int,
                batch_size: int, seed: int, cache_dir: Optional[str],
                num_frames: Optional[int] = None, mesh=None) -> dict:
  """FVD/KVD of a run's samples against N real clips; returns the result."""
  check_config(run.config, mode, context_frames, num_frames)
  config = run.config
  if mode == 'long':
    # The real side: clips of the long videos' length, made like the others.
    config = config.copy_and_resolve_references()
    config.data.num_frames = num_frames
  if num < 2:
    raise ValueError(f'num_samples={num}: FVD needs at least 2 videos.')
  start = time.time()
  conditional = bool(run.method.num_classes())
  real, labels = real_features(config, split, num, batch_size=batch_size,
                               cache_dir=cache_dir, with_labels=conditional, mesh=mesh)
  contexts = first = real_clips = None
  scores, predicted = [], []
  score_digits = conditional and digits.applies(config)
  if mode in ('predict', 'i2v'):
    # The whole clips, read once: their first frames condition the samples and
    # all their frames give the real side of the first-frame fidelity.
    real_clips = _real_pass(config, split, select_indices(split_size(config, split), num),
                            batch_size, features=False, keep_videos=True,
                            what='real clips to condition on')['videos']  # [N, T, H, W, C]
    contexts = real_clips[:, :context_frames if mode == 'predict' else 1]
    first = contexts[:, 0]  # [N, H, W, C]

  def on_videos(lo: int, videos: np.ndarray) -> None:
    if first is not None:
      scores.append(fidelity.first_frame_scores(first[lo:lo + len(videos)], videos))
    if score_digits:
      predicted.append(digit_classifier(config, split).predict(videos))

  fake = generated_features(
      run, num, batch_size=batch_size, seed=seed, labels=labels,
      contexts=contexts if mode == 'predict' else None,
      num_frames=num_frames if mode == 'long' else None,
      first_frames=first if mode == 'i2v' else None, on_videos=on_videos, mesh=mesh)
  sc = config.sampling
  result = {
      **_distances(real, fake),
      'step': int(run.step),
      'mode': mode,
      'method': str(config.get('method', 'vdm')),
      **protocol_fields(config, split, num),
      'sampler': str(sc.sampler),
      'sampling_steps': int(sc.num_steps),
      'time_grid': str(sc.time_grid),
      'clip_x': bool(sc.clip_x),
      'seed': int(seed),
      'batch_size': int(batch_size),
      'sample_labels': 'labels of the real clips' if conditional else 'none',
  }
  if conditional:
    result['guidance_weight'] = float(sc.guidance_weight)
  if mode == 'predict':
    result.update(context_frames=int(context_frames),
                  reconstruction_guidance_weight=float(sc.w_r),
                  fvd_frames='all frames, the given context frames included')
  if mode == 'long':
    result.update(long_method=str(sc.long_method), clip_frames=int(run.config.data.num_frames))
    if sc.long_method == 'vidrd':
      result.update(vidrd_overlap=int(sc.vidrd_overlap), vidrd_noise_a=float(sc.vidrd_noise_a),
                    vidrd_beta=float(sc.vidrd_beta), vidrd_order=str(sc.vidrd_order))
  if mode == 'i2v':
    result['fvd_frames'] = 'all frames, generated frame 1 included'
  if first is not None:
    result.update(_first_frame_fidelity(real_clips, scores))
  if score_digits:
    result.update(_digit_scores(config, split, np.concatenate(predicted), labels))
  result['seconds'] = round(time.time() - start, 1)
  return result


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
      size = split_size(config, split_name)
      out = _real_pass(config, split_name, select_indices(size, min(most, size)),
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


def _digit_scores(config, split: str, predicted: np.ndarray, labels: np.ndarray) -> dict:
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


def _first_frame_fidelity(real: np.ndarray, scores: list) -> dict:
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


def real_vs_real(config, *, num: int, split: str, batch_size: int,
                 cache_dir: Optional[str] = None) -> dict:
  """FVD/KVD between two disjoint sets of real clips of a split.

  With S >= 2N examples the sets have N clips each (the same size as a model
  evaluation with N samples); with N <= S < 2N they have N // 2 each. The
  2M selected clips (evenly spaced, see module docstring) alternate between
  the sets, so both cover the whole split.

  Args:
    config: the run's config (data section).
    num: N.
    split: split name.
    batch_size: reading / I3D batch size.
    cache_dir: feature cache; default_cache_dir(config) when None.

  Returns:
    The result dict (fvd, kvd, protocol fields).
  """
  check_config(config)
  start = time.time()
  s = split_size(config, split)
  if s >= 2 * num:
    total = 2 * num
  elif s >= num:
    total = 2 * (num // 2)
  else:
    raise ValueError(f'split {split!r} of {config.data.dataset} has {s} examples, '
                     f'fewer than num_samples={num}.')
  if total < 4:
    raise ValueError(f'num_samples={num} leaves fewer than 2 clips per set.')
  feats, _ = real_features(config, split, total, batch_size=batch_size,
                           cache_dir=cache_dir)
  a, b = feats[0::2], feats[1::2]
  result = {**_distances(a, b), 'mode': 'real_vs_real',
            **protocol_fields(config, split, len(b), len(a)),
            'real_vs_real': f'{len(a)} vs {len(b)} disjoint real clips '
                            '(alternate clips of the selection)',
            'batch_size': int(batch_size)}
  result['seconds'] = round(time.time() - start, 1)
  return result


# ---------------------------------------------------------------------------
# Entry points.


def _load_run_config(workdir: Optional[str], config) -> ml_collections.ConfigDict:
  if config is not None:
    return copy.deepcopy(config)
  if not workdir:
    raise ValueError('give --workdir (a train.py run) or --config.')
  return run_lib.load_config(workdir)


def evaluate(workdir: Optional[str] = None, *, config=None,
             num_samples: Optional[int] = None, split: Optional[str] = None,
             mode: str = 'unconditional', context_frames: int = 1,
             checkpoint_step: Optional[int] = None, batch_size: Optional[int] = None,
             seed: int = 0, real_vs_real_only: bool = False,
             sampler: Optional[str] = None, steps: Optional[int] = None,
             time_grid: Optional[str] = None,
             guidance_weight: Optional[float] = None, w_r: Optional[float] = None,
             num_frames: Optional[int] = None, long_method: Optional[str] = None,
             cache_dir: Optional[str] = None, mesh=None) -> dict:
  """Evaluates a checkpoint (or the real split against itself); prints JSON.

  Prints progress on stderr, then the result as ONE JSON line on stdout, and
  writes it to workdir/eval/<step>.json ('predict' mode: <step>_predict<k>.json;
  'long': <step>_long<F>_<long_method>.json; 'i2v': <step>_i2v.json; real vs
  real: real_vs_real_<split>_<N>.json, only
  when a workdir is given). Settings other than the run's own (sampler,
  steps, time grid, guidance w, w_r, N, split, batch, seed) add a suffix that
  names them, e.g. <step>_w0_n64.json, so results with different settings
  get different names.

  Args:
    workdir: a train.py --workdir (its config.json and checkpoints).
    config: with real_vs_real_only, a config to use instead of
      workdir/config.json (no training run needed); not allowed otherwise.
    num_samples: N; config.eval.num_samples when None.
    split: real split; config.data.eval_split when None.
    mode: 'unconditional', 'predict', 'long' (videos of num_frames frames,
      clip by clip, FVD against real clips of that length) or 'i2v'.
    context_frames: k given frames in 'predict' mode.
    checkpoint_step: the checkpoint; the newest when None.
    batch_size: sampling / I3D batch; config.eval.batch_size when None.
    seed: sampling seed.
    real_vs_real_only: compute the real-vs-real floor instead (no checkpoint).
    sampler, steps, time_grid, guidance_weight, w_r: override
      config.sampling.sampler, num_steps, time_grid, guidance_weight
      (classifier-free) and w_r (reconstruction guidance, 'predict' mode).
    num_frames: 'long' mode: frames per video.
    long_method: 'long' mode: override config.sampling.long_method
      ('reconstruction', 'vidrd' or 'independent'; the vidrd_* keys of the
      run's config apply).
    cache_dir: real-feature cache; <config.data.data_dir>/fvd_cache when None.
    mesh: the device mesh to sample and run the I3D on; config.sharding.mesh
      over all devices (the training layout) when None.

  Returns:
    The result dict that was printed.
  """
  overrides = {'sampling.sampler': sampler, 'sampling.num_steps': steps,
               'sampling.time_grid': time_grid,
               'sampling.guidance_weight': guidance_weight, 'sampling.w_r': w_r,
               'sampling.long_method': long_method}
  saved_config = _load_run_config(workdir, config)
  run_config = config_lib.apply_overrides(copy.deepcopy(saved_config), overrides)
  # Fail before touching checkpoints or data.
  check_config(run_config, mode, context_frames, num_frames)
  num = int(num_samples or run_config.eval.num_samples)
  split = split or _eval_split(run_config)
  bs = int(batch_size or run_config.eval.batch_size)
  _log(f'FVD protocol {i3d.format_protocol()}')
  if real_vs_real_only:
    result = real_vs_real(run_config, num=num, split=split, batch_size=bs,
                          cache_dir=cache_dir)
    path = (os.path.join(workdir, 'eval', f'real_vs_real_{split}_{num}.json')
            if workdir else None)
    _emit(result, path)
    return result
  if not workdir or config is not None:
    # The model must be rebuilt exactly as trained, so its own saved config is
    # the only one used; --config only describes the data for real vs real.
    raise ValueError('evaluating a model needs --workdir (a train.py run) and no '
                     '--config; --config is only for --real_vs_real.')
  mesh = sharding.create_mesh(run_config.sharding.mesh) if mesh is None else mesh
  run = run_lib.restore_run(workdir, checkpoint_step, {**overrides, 'eval.batch_size': bs},
                            mesh=mesh)
  step = run.step
  _log(f'Evaluating step {step} of {workdir}: {num} samples, mode={mode}, '
       f'sampler={run.config.sampling.sampler} x {run.config.sampling.num_steps} steps, '
       f'on {mesh.size} device(s) of {jax.process_count()} process(es).')
  # Named before the long sampling run, so a naming error cannot discard it.
  name = _result_name(step, mode, context_frames, num_frames, run.config.sampling.long_method,
                      _settings_tag(saved_config, run.config, num=num, split=split,
                                    batch_size=bs, seed=seed))
  result = _model_eval(run, num=num, split=split, mode=mode,
                       context_frames=context_frames, batch_size=bs, seed=seed,
                       cache_dir=cache_dir, num_frames=num_frames, mesh=mesh)
  result['workdir'] = workdir
  _emit(result, os.path.join(workdir, 'eval', name))
  return result


def _eval_split(config: ml_collections.ConfigDict) -> str:
  """The split a run is evaluated on: config.data.eval_split, 'test' where it has none."""
  return str(config.data.get('eval_split', 'test'))


def _settings_tag(saved: ml_collections.ConfigDict, used: ml_collections.ConfigDict, *,
                  num: int, split: str, batch_size: int, seed: int) -> str:
  """File-name suffix naming where an evaluation departs from the run's own settings.

  Args:
    saved: the run's saved config.
    used: the config the samples were drawn with (saved plus overrides).
    num, split, batch_size, seed: the evaluation's N, real split, batch and seed.

  Returns:
    '' for the run's own settings (its config.sampling, config.eval.num_samples
    and batch_size, its eval split, seed 0: what PeriodicEvaluation writes);
    otherwise one '_<part>' per departure, e.g. '_ddim-64_w0_n64_seed1', so
    evaluations with different settings get different names. The names are
    relative to the run's config.json as it is now (the result's JSON
    records the settings themselves).
  """
  s, base = used.sampling, saved.sampling
  parts = []
  if (s.sampler, int(s.num_steps)) != (base.sampler, int(base.num_steps)):
    parts.append(f'{s.sampler}-{int(s.num_steps)}')
  if s.time_grid != base.time_grid:
    parts.append(str(s.time_grid))
  if float(s.guidance_weight) != float(base.guidance_weight):
    parts.append(f'w{float(s.guidance_weight):g}')
  if float(s.w_r) != float(base.w_r):
    parts.append(f'wr{float(s.w_r):g}')
  if num != int(saved.eval.num_samples):
    parts.append(f'n{num}')
  if split != _eval_split(saved):
    parts.append(split)
  if batch_size != int(saved.eval.batch_size):
    parts.append(f'bs{batch_size}')
  if seed:
    parts.append(f'seed{seed}')
  return ''.join('_' + part for part in parts)


def _result_name(step: int, mode: str, context_frames: int = 1,
                 num_frames: Optional[int] = None, long_method: str = '',
                 tag: str = '') -> str:
  """workdir/eval/ file name of a result; tag is _settings_tag's suffix."""
  stem = {'unconditional': f'{step}', 'i2v': f'{step}_i2v',
          'predict': f'{step}_predict{context_frames}',
          'long': f'{step}_long{num_frames}_{long_method}'}[mode]
  return f'{stem}{tag}.json'


class PeriodicEvaluation:
  """A training hook: FVD/KVD of the EMA weights every config.eval.every_steps.

  ``train.py`` passes it to ``train_lib.train(hooks=...)``; training itself
  knows nothing of evaluation. It samples on the training mesh, where the EMA
  weights lie, and uses config.eval.num_samples,
  config.eval.batch_size, the eval split, seed 0 and unconditional mode ('i2v'
  for methods conditioned on a first frame), so
  the figure equals what `python evaluate.py --workdir=...
  --checkpoint_step=<step>` reports for the same checkpoint. Every process
  calls it (sampling is one jitted program); process 0 writes
  workdir/eval/<step>.json, prints the JSON line and logs the scalars 'fvd'
  and 'kvd' to TensorBoard.

  Args:
    config: the run's config (checked now, so a bad setting fails before
      training starts).
    workdir: the run's workdir.
    writer: a clu metric writer for the scalars; process 0 makes one on
      workdir when None.
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, writer=None):
    from vdm import methods  # pylint: disable=g-import-not-at-top
    # A method conditioned on a first frame is evaluated in i2v mode.
    self.mode = 'i2v' if methods.get_method(config).conditions_on_first_frame else 'unconditional'
    check_config(config, self.mode)
    self.config, self.workdir = config, workdir
    self.every, self.last = int(config.eval.every_steps), int(config.training.num_steps)
    self._static = None  # (method, graphdef), built at the first evaluation.
    self._writer = writer

  def __call__(self, step: int, state, checkpointer) -> Optional[dict]:
    del checkpointer
    if not self.every or (step % self.every and step != self.last):
      return None
    if self._static is None:
      from vdm import methods  # pylint: disable=g-import-not-at-top
      method = methods.get_method(self.config)
      self._static = (method, nnx.graphdef(nnx.eval_shape(lambda: method.build(nnx.Rngs(0)))))
    method, graphdef = self._static
    run = run_lib.Run(self.config, method, graphdef, state.ema_params, step)
    split = _eval_split(self.config)
    # The training mesh, where the EMA weights already lie (and the one the
    # trainer's latent space, cached per mesh, was restored on).
    mesh = jax.tree.leaves(state.ema_params)[0].sharding.mesh
    result = _model_eval(run, num=int(self.config.eval.num_samples), split=split,
                         mode=self.mode, context_frames=1,
                         batch_size=int(self.config.eval.batch_size), seed=0, cache_dir=None,
                         mesh=mesh)
    result['workdir'] = self.workdir
    _emit(result, os.path.join(self.workdir, 'eval', _result_name(step, self.mode, 1)))
    if jax.process_index() == 0:
      if self._writer is None:
        from clu import metric_writers  # pylint: disable=g-import-not-at-top
        self._writer = metric_writers.create_default_writer(self.workdir)
      self._writer.write_scalars(step, {k: result[k] for k in SCALARS if k in result})
    return result
