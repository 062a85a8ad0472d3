"""FVD / KVD evaluation of a trained model (or of the real data against itself).

`evaluate` is what evaluate.py runs; `model_eval` is shared with the training
hook (`vdm.evaluation.periodic`). The real side lives in `real`, the generated
side in `generated`, the other scores in `scores`, what is written in `records`. The whole protocol is fixed
in code and printed with every figure:

* Real videos: N clips of a TFDS split, made exactly like training clips
  (same frames, frameskip, resolution and channels; frame 0 onwards, never
  flipped) by `vdm.data.pipeline.make_eval_iterator` (`vdm.evaluation.real`). The N clips are the
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
pipeline) is used lazily.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from typing import Any, Mapping, Optional

import jax
import ml_collections
import numpy as np

from vdm import config_lib
from vdm import progress as progress_lib
from vdm import run_lib
from vdm import sharding
from vdm.data import digit_captions
from vdm.evaluation import digits
from vdm.evaluation import fidelity
from vdm.evaluation import generated
from vdm.evaluation import i3d
from vdm.evaluation import real as real_lib
from vdm.evaluation import records
from vdm.evaluation import scores as scores_lib
from vdm.evaluation import seams
from vdm.evaluation import text_alignment
from vdm.models import tokenizer
from vdm.sampling import conditional
from vdm.sampling import long_video
from vdm.sampling import options


MODES = ('unconditional', 'predict', 'long', 'i2v')
# Results written as TensorBoard scalars by periodic.PeriodicEvaluation (when present).
SCALARS = ('fvd', 'kvd', 'digit_accuracy', 'digit_consistency', 'digit_accuracy_seen',
           'direction_accuracy_seen', 'digit_accuracy_held_out', 'direction_accuracy_held_out')


def check_config(config: ml_collections.ConfigDict, mode: str = 'unconditional',
                 context_frames: Optional[int] = 1, num_frames: Optional[int] = None,
                 conditioning: Optional[str] = None) -> None:
  """Fails early (before any checkpoint or data is read) on unusable settings.

  Args:
    config: the run's config.
    mode: one of MODES.
    context_frames: k given frames in 'predict' mode; in 'long' mode the
      frames each new clip is conditioned on (None: half a clip).
    num_frames: 'long' mode: frames of the long videos (> the clip length).
    conditioning: None or one of conditional.CONDITIONINGS.

  Raises:
    ValueError: clips shorter than the I3D's minimum, unknown mode or bad k.
  """
  if conditioning is not None and conditioning not in conditional.CONDITIONINGS:
    raise ValueError(f'conditioning={conditioning!r} is unknown; choose one of '
                     f'{conditional.CONDITIONINGS}.')
  if mode == 'long':
    clip = int(config.data.num_frames)
    if num_frames is None or num_frames <= clip:
      raise ValueError(f'mode=long needs num_frames > config.data.num_frames={clip} (the '
                       f'clip length); got {num_frames}.')
    long_video.check_long_method(config.sampling, clip)
    if context_frames is not None and not 0 < context_frames < clip:
      raise ValueError(f'context_frames={context_frames} must be in (0, '
                       f'config.data.num_frames={clip}) for mode=long: each new clip holds '
                       'its given frames and at least one new one.')
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
  options.check_mode(config, mode)
  if mode == 'predict' and not 0 < context_frames < t:
    raise ValueError(f'context_frames={context_frames} must be in (0, '
                     f'config.data.num_frames={t}) for mode=predict.')


def _given_frames(mode: str, long_method: str) -> bool:
  """Whether the mode samples around given frames, so that context_frames,
  conditioning and (with guidance) w_r apply: 'predict', and 'long' with the
  'reconstruction' driver."""
  return mode == 'predict' or (mode == 'long' and long_method == 'reconstruction')


def model_eval(run, *, num: int, split: str, mode: str, context_frames: Optional[int],
               batch_size: int, seed: int, cache_dir: Optional[str],
               num_frames: Optional[int] = None, conditioning: str = 'reconstruction',
               mesh=None) -> dict:
  """FVD/KVD of a run's samples against N real clips; returns the result.

  context_frames: 'predict': given frames; 'long': frames each new clip is
  conditioned on (None: long_video.default_context_frames).
  """
  check_config(run.config, mode, context_frames, num_frames, conditioning)
  config = run.config
  if mode == 'long':
    if context_frames is None:
      context_frames = long_video.default_context_frames(int(config.data.num_frames))
    # The real side: clips of the long videos' length, made like the others.
    config = config.copy_and_resolve_references()
    config.data.num_frames = num_frames
  if num < 2:
    raise ValueError(f'num_samples={num}: FVD needs at least 2 videos.')
  start = time.time()
  conditional = bool(run.method.num_classes())
  real, labels = real_lib.real_features(config, split, num, batch_size=batch_size,
                               cache_dir=cache_dir, with_labels=conditional, mesh=mesh)
  captions = text = None
  if run.method.takes_text():
    # Each sample takes the caption of the real clip at its row.
    captions = real_lib.real_captions(config, split, num, batch_size=batch_size)
    text = tokenizer.from_config(config)(captions)
  contexts = first = real_clips = None
  scores, predicted, directions = [], [], []
  score_digits = conditional and digits.applies(config)
  score_text = text is not None and text_alignment.applies(config)
  if mode in ('predict', 'i2v'):
    # The whole clips, read once: their first frames condition the samples and
    # all their frames give the real side of the first-frame fidelity.
    indices = real_lib.select_indices(real_lib.split_size(config, split), num)
    real_clips = real_lib.read_clips(config, split, indices, batch_size, features=False,
                                     keep_videos=True,
                                     what='real clips to condition on')['videos']  # [N, T, H, W, C]
    contexts = real_clips[:, :context_frames if mode == 'predict' else 1]
    first = contexts[:, 0]  # [N, H, W, C]

  classify = None
  if score_digits or score_text:
    classify = scores_lib.digit_classifier(scores_lib.labelled(config), split).predict
  seam_stats = (seams.for_long_videos(run.config, num_frames, context_frames)
                if mode == 'long' else None)

  def on_videos(lo: int, videos: np.ndarray) -> None:
    if first is not None:
      scores.append(fidelity.first_frame_scores(first[lo:lo + len(videos)], videos))
    if classify is not None:
      predicted.append(classify(videos))  # [n, F]
    if score_text:
      directions.append(digit_captions.measured_direction(videos))
    if seam_stats is not None:
      seam_stats.add(videos, predicted[-1] if classify is not None else None)

  fake = generated.generated_features(
      run, num, batch_size=batch_size, seed=seed, labels=labels, text=text,
      contexts=contexts if mode == 'predict' else None,
      num_frames=num_frames if mode == 'long' else None,
      context_frames=context_frames, conditioning=conditioning,
      first_frames=first if mode == 'i2v' else None, on_videos=on_videos, mesh=mesh)
  sc = config.sampling
  result = {
      **scores_lib.distances(real, fake),
      'step': int(run.step),
      'mode': mode,
      'method': str(config.get('method', 'vdm')),
      **records.protocol_fields(config, split, num),
      'sampler': long_video.driver_sampler(sc) if mode == 'long' else str(sc.sampler),
      'sampling_steps': int(sc.num_steps),
      'time_grid': str(sc.time_grid),
      'clip_x': bool(sc.clip_x),
      'seed': int(seed),
      'batch_size': int(batch_size),
      'sample_labels': 'labels of the real clips' if conditional else 'none',
  }
  if text is not None:
    result['sample_captions'] = 'captions of the real clips'
  if conditional or text is not None:
    result['guidance_weight'] = float(sc.guidance_weight)
  if _given_frames(mode, sc.long_method):
    result.update(context_frames=int(context_frames), conditioning=conditioning)
    if conditioning == 'reconstruction':
      result['reconstruction_guidance_weight'] = float(sc.w_r)
  if mode == 'predict':
    result['fvd_frames'] = 'all frames, the given context frames included'
  if mode == 'long':
    result.update(long_method=str(sc.long_method), clip_frames=int(run.config.data.num_frames))
    if sc.long_method == 'vidrd':
      result.update(vidrd_overlap=int(sc.vidrd_overlap), vidrd_noise_a=float(sc.vidrd_noise_a),
                    vidrd_beta=float(sc.vidrd_beta), vidrd_order=str(sc.vidrd_order))
  if mode == 'i2v':
    result['fvd_frames'] = 'all frames, generated frame 1 included'
  if seam_stats is not None:
    result.update(seam_stats.scores(), **seams.real_scores(config, split, num, batch_size,
                                                           seam_stats, classify),
                  seams=seam_stats.seams.tolist(), seam_protocol=seams.PROTOCOL)
  if first is not None:
    result.update(scores_lib.first_frame_fidelity(real_clips, scores))
  if score_digits:
    result.update(scores_lib.digit_scores(config, split, np.concatenate(predicted), labels))
  if score_text:
    result.update(scores_lib.text_scores(config, split, np.concatenate(predicted),
                                         np.concatenate(directions), captions))
  result['seconds'] = round(time.time() - start, 1)
  return result


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
    cache_dir: feature cache; real_lib.default_cache_dir(config) when None.

  Returns:
    The result dict (fvd, kvd, protocol fields).
  """
  check_config(config)
  start = time.time()
  s = real_lib.split_size(config, split)
  if s >= 2 * num:
    total = 2 * num
  elif s >= num:
    total = 2 * (num // 2)
  else:
    raise ValueError(f'split {split!r} of {config.data.dataset} has {s} examples, '
                     f'fewer than num_samples={num}.')
  if total < 4:
    raise ValueError(f'num_samples={num} leaves fewer than 2 clips per set.')
  feats, _ = real_lib.real_features(config, split, total, batch_size=batch_size,
                           cache_dir=cache_dir)
  a, b = feats[0::2], feats[1::2]
  result = {**scores_lib.distances(a, b), 'mode': 'real_vs_real',
            **records.protocol_fields(config, split, len(b), len(a)),
            'real_vs_real': f'{len(a)} vs {len(b)} disjoint real clips '
                            '(alternate clips of the selection)',
            'batch_size': int(batch_size)}
  result['seconds'] = round(time.time() - start, 1)
  return result


def _load_run_config(workdir: Optional[str], config) -> ml_collections.ConfigDict:
  if config is not None:
    return copy.deepcopy(config)
  if not workdir:
    raise ValueError('give --workdir (a train.py run) or --config.')
  return run_lib.load_config(workdir)


@dataclasses.dataclass(frozen=True)
class EvalRequest:
  """What to evaluate, beside the run's config (its sampling section takes the overrides).

  Attributes:
    mode: 'unconditional' (the default), 'predict', 'long' (videos of
      num_frames frames, clip by clip, FVD against real clips of that length)
      or 'i2v'.
    num_samples: N; config.eval.num_samples when None.
    split: real split; config.data.eval_split when None.
    context_frames: k given frames in 'predict' mode (default 1); in 'long'
      mode with long_method='reconstruction', the frames each new clip is
      conditioned on (default half a clip, long_video.default_context_frames).
    num_frames: 'long' mode: frames per video.
    conditioning: how the known frames enter in 'predict' and in 'long' with
      long_method='reconstruction': 'reconstruction' (guidance, the default)
      or 'replacement' (the baseline that only overwrites them).
    checkpoint_step: the checkpoint; the newest when None.
    batch_size: sampling / I3D batch; config.eval.batch_size when None.
    seed: sampling seed (default 0).

  An option left at None takes its default; one given where it has no effect
  (num_frames outside mode='long', any sampling setting with real_vs_real)
  is an error (``check_options_apply``).
    real_vs_real: compute the real-vs-real floor instead (no checkpoint).
    cache_dir: real-feature cache; <config.data.data_dir>/fvd_cache when None.
    data_dir: where the real clips are read; the run's config.data.data_dir
      when None (data moved since training, or a build of the same bundled
      dataset with longer videos for 'long' mode).
  """
  mode: Optional[str] = None
  num_samples: Optional[int] = None
  split: Optional[str] = None
  context_frames: Optional[int] = None
  num_frames: Optional[int] = None
  conditioning: Optional[str] = None
  checkpoint_step: Optional[int] = None
  batch_size: Optional[int] = None
  seed: Optional[int] = None
  real_vs_real: bool = False
  cache_dir: Optional[str] = None
  data_dir: Optional[str] = None

  def check_options_apply(self, config, overrides: Mapping[str, Any]) -> None:
    """Refuses options given a value where they have no effect (see
    options.refuse_unused): --num_frames outside --mode=long, ...

    Args:
      config: the run's config with the overrides applied.
      overrides: the {'sampling.<key>': value} overrides given.
    """
    given = options.given_options(overrides)
    model = not self.real_vs_real
    mode = self.mode or 'unconditional'
    long_method = config.sampling.long_method
    not_real = 'a model evaluation (not real_vs_real)'
    options.refuse_unused([
        ('mode', self.mode, model, not_real),
        ('checkpoint_step', self.checkpoint_step, model, not_real),
        ('seed', self.seed, model, not_real),
        *[(key, value, model, not_real) for key, value in given.items()],
    ])
    known_frames = _given_frames(mode, long_method)
    known_where = 'mode=predict and mode=long with long_method=reconstruction'
    guided = known_frames and self.conditioning != 'replacement'
    options.refuse_unused([
        ('context_frames', self.context_frames, known_frames, known_where),
        ('conditioning', self.conditioning, known_frames, known_where),
        ('num_frames', self.num_frames, mode == 'long', 'mode=long'),
        ('w_r', given.get('w_r'), guided, known_where + ' and conditioning=reconstruction'),
        ('long_method', given.get('long_method'), mode == 'long', 'mode=long'),
        *[(key, given.get(key), mode == 'long' and long_method == 'vidrd',
           'mode=long with long_method=vidrd')
          for key in ('vidrd_overlap', 'vidrd_noise_a', 'vidrd_beta', 'vidrd_order')],
    ])
    options.check_guidance_weight(config, given.get('guidance_weight'))


def evaluate(workdir: Optional[str] = None, request: EvalRequest = EvalRequest(),
             overrides: Optional[Mapping[str, Any]] = None, *, config=None,
             mesh=None) -> dict:
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
    request: the mode, N, split and the rest (see EvalRequest).
    overrides: {'sampling.<key>': value} changes to the run's saved
      config.sampling (None values are skipped), e.g. from evaluate.py's flags
      (vdm.cli.sampling_overrides): sampler, num_steps, time_grid,
      guidance_weight, w_r, long_method and the vidrd_* keys.
    config: with request.real_vs_real, a config to use instead of
      workdir/config.json (no training run needed); not allowed otherwise.
    mesh: the device mesh to sample and run the I3D on; config.sharding.mesh
      over all devices (the training layout) when None.

  Returns:
    The result dict that was printed.
  """
  r = request
  overrides = dict(overrides or {})
  saved_config = _load_run_config(workdir, config)
  data = {'data.data_dir': r.data_dir} if r.data_dir else {}
  run_config = config_lib.apply_overrides(copy.deepcopy(saved_config), {**overrides, **data})
  r.check_options_apply(run_config, overrides)
  mode, num_frames = r.mode or 'unconditional', r.num_frames
  # 'long' keeps None: default_context_frames of the clip length, named only when given.
  context_frames = 1 if r.context_frames is None and mode != 'long' else r.context_frames
  conditioning = r.conditioning or 'reconstruction'
  seed = r.seed or 0
  # Fail before touching checkpoints or data.
  check_config(run_config, mode, context_frames, num_frames, conditioning)
  num = int(r.num_samples or run_config.eval.num_samples)
  split = r.split or records.eval_split(run_config)
  bs = int(r.batch_size or run_config.eval.batch_size)
  progress_lib.log(f'FVD protocol {i3d.format_protocol()}')
  if r.real_vs_real:
    result = real_vs_real(run_config, num=num, split=split, batch_size=bs,
                          cache_dir=r.cache_dir)
    path = (os.path.join(workdir, 'eval', f'real_vs_real_{split}_{num}.json')
            if workdir else None)
    records.emit(result, path)
    return result
  if not workdir or config is not None:
    # The model must be rebuilt exactly as trained, so its own saved config is
    # the only one used; --config only describes the data for real vs real.
    raise ValueError('evaluating a model needs --workdir (a train.py run) and no '
                     '--config; --config is only for --real_vs_real.')
  mesh = sharding.create_mesh(run_config.sharding.mesh) if mesh is None else mesh
  run = run_lib.restore_run(workdir, r.checkpoint_step,
                            {**overrides, **data, 'eval.batch_size': bs}, mesh=mesh)
  step = run.step
  progress_lib.log(f'Evaluating step {step} of {workdir}: {num} samples, mode={mode}, '
       f'sampler={run.config.sampling.sampler} x {run.config.sampling.num_steps} steps, '
       f'on {mesh.size} device(s) of {jax.process_count()} process(es).')
  # Named before the long sampling run, so a naming error cannot discard it.
  name = records.result_name(
      step, mode, context_frames, num_frames, run.config.sampling.long_method,
      records.settings_tag(saved_config, run.config, num=num, split=split, batch_size=bs,
                           seed=seed), conditioning=conditioning)
  result = model_eval(run, num=num, split=split, mode=mode,
                       context_frames=context_frames, batch_size=bs, seed=seed,
                       cache_dir=r.cache_dir, num_frames=num_frames, conditioning=conditioning,
                       mesh=mesh)
  result['workdir'] = workdir
  records.emit(result, os.path.join(workdir, 'eval', name))
  return result
