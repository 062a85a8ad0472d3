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

import dataclasses
import os
from typing import Any, Mapping, NamedTuple, Optional

import jax
import numpy as np

from vdm import config_lib
from vdm import latent
from vdm import progress as progress_lib
from vdm import run_lib
from vdm import sharding
from vdm import video_io
from vdm.diffusion import samplers
from vdm.sampling import conditional
from vdm.sampling import inputs
from vdm.sampling import long_video
from vdm.sampling import mesh_sampling
from vdm.sampling import options
from vdm.train import checkpoints

MODES = ('unconditional', 'extend', 'interpolate', 'predict', 'superres', 'i2v')
# How extend joins clips (config.sampling.long_method).
LONG_METHODS = long_video.LONG_METHODS


class SampleResult(NamedTuple):
  """What ``sample`` produced.

  Attributes:
    videos: uint8 [N, T, H, W, C], the samples.
    conditioning: uint8 [N, n, h, w, C] frames the samples were conditioned on
      (known frames, or the low-resolution video for superres); None when none.
    labels: int32 [N] class labels used, None for an unconditional model.
    captions: the N captions of a text model's samples ('' = null text), None
      for a model without text.
    step: the checkpoint step the weights came from.
    paths: {'npz', 'mp4', 'gif'} -> written file (process 0; empty on the others).
  """
  videos: np.ndarray
  conditioning: Optional[np.ndarray]
  labels: Optional[np.ndarray]
  captions: Optional[list]
  step: int
  paths: dict


@dataclasses.dataclass(frozen=True)
class SampleRequest:
  """What to sample, beside the run's config (its sampling section takes the overrides).

  Attributes:
    mode: one of MODES.
    num_samples: N, videos drawn.
    num_frames: frames per output video. Default: the training clip length T
      (config.data.num_frames); extend: 2 T. interpolate uses the largest
      (K - 1) * stride + 1 <= num_frames.
    context_frames: k. predict: given first frames (default 1); extend: frames
      each new clip is conditioned on (default T // 2), and the frames taken
      from the dataset.
    stride: interpolate: distance between keyframes (>= 2); default 2.
    lowres_factor: superres: the high/low resolution ratio; default 2.
    conditioning: how known frames enter (extend, predict, interpolate):
      'reconstruction' (guidance, on top of replacement, the default) or
      'replacement'.
    label: class of every sample for a class-conditional model; None uses
      the run's dataset clips' labels when conditioning on them, the null
      label when conditioning on frames of unknown class (a file, another
      dataset), else 0, 1, 2, ... in turn.
    prompts: captions of a text model's samples, sample i getting prompt
      i mod len(prompts) ('' = the null text); None uses the dataset clips'
      captions when conditioning on them, else the null text.
    input_path: conditioning video file (mp4/GIF [T, H, W, C], npz with
      'videos' [N', T, H, W, C] or [T, H, W, C]; rows are reused in turn to
      make N), 'dataset' for the first N clips of config.data.eval_split
      ('dataset:NAME' for another dataset's), or None: the dataset for
      predict/interpolate/superres/i2v, an unconditional first clip for
      extend. A file for interpolate holds the keyframes; for superres the
      low-resolution frames; for i2v the images (PNG/JPEG, or npz, see
      inputs.read_image_input).
    input_start, input_stride: frames taken from an input file: input_start,
      input_start + input_stride, ... (default 0 and 1).
    strict_input: refuse an input file whose frames are not already the
      model's size and channels, instead of converting it (centre crop,
      resize, grey/RGB) as the training pipeline does (default False).
    cond_path: npz with 'cond' [N', T, H, W, cond_channels], the extra input
      channels of a model trained with config.model.cond_channels > 0 (rows
      reused in turn to make N); None for other models.
    checkpoint_step: checkpoint to load; the newest when None.
    seed: PRNG seed (default 0); the same seed gives the same videos, and video i is
      the same whatever batch_size and the number of devices (up to float
      rounding; see vdm.sampling.mesh_sampling).
    batch_size: videos per sampler call, split over the devices of the mesh
      (config.sharding.mesh) and rounded up to a multiple of its batch
      shards; all N in one call when None.
    fps: frame rate of the mp4 and GIF.

  An option left at None takes its default; one given a value where it has no
  effect (stride outside interpolate, ...) is an error (``options.check_options_apply``).
  """
  mode: str = 'unconditional'
  num_samples: int = 4
  num_frames: Optional[int] = None
  context_frames: Optional[int] = None
  stride: Optional[int] = None
  lowres_factor: Optional[int] = None
  conditioning: Optional[str] = None
  label: Optional[int] = None
  prompts: Optional[tuple] = None
  input_path: Optional[str] = None
  input_start: Optional[int] = None
  input_stride: Optional[int] = None
  strict_input: Optional[bool] = None
  cond_path: Optional[str] = None
  checkpoint_step: Optional[int] = None
  seed: Optional[int] = None
  batch_size: Optional[int] = None
  fps: int = 8

  def with_defaults(self) -> 'SampleRequest':
    """The request with every option left at None set to its default."""
    defaults = dict(stride=2, lowres_factor=2, conditioning='reconstruction', input_start=0,
                    input_stride=1, strict_input=False, seed=0)
    return dataclasses.replace(
        self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})


def sample(workdir: str, output_dir: Optional[str] = None,
           request: SampleRequest = SampleRequest(),
           overrides: Optional[Mapping[str, Any]] = None, *, mesh=None,
           progress: bool = True) -> SampleResult:
  """Samples videos from a trained run and writes them to ``output_dir``.

  Args:
    workdir: the --workdir of a train.py run.
    output_dir: where samples.{npz,mp4,gif} go (created); None:
      <workdir>/sample_out/<mode>.
    request: the mode, N and the inputs (see SampleRequest).
    overrides: {'sampling.<key>': value} changes to the run's saved
      config.sampling (None values are skipped), e.g. from sample.py's flags
      (vdm.cli.sampling_overrides).
    mesh: the device mesh to sample on; config.sharding.mesh over all
      devices (the training layout) when None.
    progress: print progress over sampling steps (and clips when extending).

  Returns:
    A SampleResult.

  Raises:
    ValueError: a flag or the conditioning video does not fit the model; the
      message says what was expected. Raised before the model is built.
    FileNotFoundError: no run, checkpoint or input file where given.
  """
  r = request
  mode, num_samples, batch_size = r.mode, r.num_samples, r.batch_size
  if mode not in MODES:
    raise ValueError(f'mode={mode!r} is unknown; choose one of {MODES}.')
  if num_samples < 1:
    raise ValueError(f'num_samples={num_samples} must be >= 1.')
  if batch_size is not None and batch_size < 1:
    raise ValueError(f'batch_size={batch_size} must be >= 1.')
  overrides = dict(overrides or {})
  config = config_lib.apply_overrides(run_lib.load_config(workdir), overrides)
  config_lib.validate_config(config)
  options.check_mode(config, mode)
  options.check_options_apply(config, r, overrides)
  r = r.with_defaults()
  conditioning = r.conditioning
  options.check_options(config, overrides.get('sampling.guidance_weight'), r.label,
                        conditioning, mode, r.prompts)
  plan = _plan(config, mode, r.num_frames, r.context_frames, r.stride, r.lowres_factor)
  if mode == 'extend' and config.sampling.long_method != 'reconstruction' and r.input_path:
    raise ValueError(f'long_method={config.sampling.long_method!r} starts from noise and '
                     'takes no input video; use long_method=reconstruction to continue one.')
  known, from_dataset = inputs.conditioning_frames(
      config, mode, plan, r.input_path, num_samples,
      inputs.InputFrames(r.input_start, r.input_stride, r.strict_input))
  from_dataset = from_dataset or {}
  labels, label_note = options.labels(config, r.label, num_samples, known is not None,
                                      from_dataset.get('label'))
  text, captions, text_note = options.texts(config, r.prompts, num_samples,
                                            from_dataset.get('caption'))
  label_note = ', '.join(n for n in (label_note, text_note) if n)
  extra = inputs.extra_conditioning(config, r.cond_path, num_samples, plan.clip_frames)
  _check_checkpoint(workdir, r.checkpoint_step)
  if mesh is None:
    mesh = sharding.create_mesh(config.sharding.mesh)  # The training layout.
  space = latent.space(config, mesh)  # Pixels, or the autoencoder (restored here).
  per_sample = dict(extra or {}, labels=labels, text=text)  # Host rows [N, ...], split per chunk.
  if mode == 'i2v':
    first = video_io.to_model_range(known[:, :1])  # [N, 1, H, W, C]
    per_sample['first_frame'] = latent.encode_videos(space, first)[:, 0]
  elif known is not None:
    # Known frames condition the sampler in the space it samples in.
    per_sample['known'] = latent.encode_videos(space, video_io.to_model_range(known))

  run = run_lib.restore_run(workdir, r.checkpoint_step, overrides, mesh=mesh)
  bs = mesh_sampling.chunk_size(batch_size or num_samples, num_samples, mesh)
  progress_lib.log(f'Loaded the EMA weights of step {run.step} from {workdir}; sampling '
                   f'{num_samples} x {plan.out_frames} frames '
                   f'({_describe(config, mode, label_note)}) in batches of {bs} on '
                   f'{mesh.size} device(s).')
  sampler_kwargs = run_lib.sampler_options(config, run.method, progress=progress)
  rng = jax.random.PRNGKey(r.seed)  # The same for every chunk: samples differ by index.
  w_r = np.float32(config.sampling.w_r)
  size, channels = run.method.frame_shape
  sampler = None if mode == 'extend' else _single_clip_sampler(
      run.method.frame_shape, mode, plan, conditioning, sampler_kwargs, bs)
  videos = []
  for chunk in mesh_sampling.chunks(num_samples, bs, mesh, per_sample, what=f'sampling ({mode})'):
    chunk_inputs = dict(chunk.inputs)
    cond, chunk_labels = chunk_inputs.pop('known', None), chunk_inputs.pop('labels', None)
    chunk_text = chunk_inputs.pop('text', None)
    model_fn = run_lib.model_fn(run.method, run.graphdef, run.params, labels=chunk_labels,
                                conditioning=chunk_inputs or None,
                                guidance_weight=config.sampling.guidance_weight,
                                text=chunk_text)
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
    output_dir = output_dir or os.path.join(workdir, 'sample_out', mode)
    paths = _write(output_dir, videos, known, labels, config.data.image_size, r.fps,
                   captions)
    print('Wrote ' + ', '.join(paths.values()), flush=True)
  return SampleResult(videos, known, labels, captions, run.step, paths)


def _describe(config, mode: str, label_note: str) -> str:
  """The settings of a sampling run in a few words, for its summary line.

  E.g. 'extend, vidrd, ddim, 32 steps, labels 0..9 in turn, guidance w=1'.
  """
  s = config.sampling
  parts = [mode]
  sampler = str(s.sampler)
  if mode == 'extend':
    parts.append(str(s.long_method))
    sampler = long_video.driver_sampler(s)
  parts += [sampler, f'{s.num_steps} steps']
  if label_note:
    parts += [label_note, f'guidance w={float(s.guidance_weight):g}']
  return ', '.join(parts)


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


def _plan(config, mode: str, num_frames: Optional[int], context_frames: Optional[int],
          stride: int, lowres_factor: int) -> inputs.Plan:
  """Frame counts and sizes of one run.

  Args:
    config: the run's config (data.num_frames T and data.image_size S).
    mode: one of MODES.
    num_frames: the requested output length, None for the mode's default.
    context_frames: k of predict/extend, None for the default.
    stride: keyframe spacing of interpolate.
    lowres_factor: S / low resolution of superres.

  Returns:
    The inputs.Plan.

  Raises:
    ValueError: the frame counts cannot work (e.g. k >= T).
  """
  clip, size = config.data.num_frames, config.data.image_size
  out = num_frames if num_frames is not None else (2 * clip if mode == 'extend' else clip)
  if out < 1:
    raise ValueError(f'num_frames={out} must be >= 1.')
  if mode == 'unconditional':
    return inputs.Plan(out_frames=out, clip_frames=out)
  if mode == 'i2v':
    return inputs.Plan(out_frames=out, clip_frames=out, known=1, cond_size=size, dataset_frames=1)
  if mode == 'predict':
    k = 1 if context_frames is None else context_frames
    if not 0 < k < out:
      raise ValueError(f'predict: {k} known frames (context_frames) leave nothing to predict '
                       f'in a clip of num_frames={out}; expected 1 <= context_frames < {out}.')
    return inputs.Plan(out_frames=out, clip_frames=out, known=k, cond_size=size, dataset_frames=k)
  if mode == 'extend':
    k = long_video.default_context_frames(clip) if context_frames is None else context_frames
    if not 0 < k < clip:
      raise ValueError(f'extend: context_frames={k} must be in [1, {clip}): each new clip '
                       f'of the model holds {clip} frames (config.data.num_frames).')
    if out <= k:
      raise ValueError(f'extend: num_frames={out} leaves nothing to add to {k} context '
                       'frames; ask for more frames.')
    return inputs.Plan(out_frames=out, clip_frames=clip, known=None, cond_size=size,
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
    return inputs.Plan(out_frames=span, clip_frames=span, known=keyframes, cond_size=size,
                 dataset_frames=span, stride=stride)
  # superres
  if lowres_factor < 2 or size % lowres_factor:
    raise ValueError(f'superres: lowres_factor={lowres_factor} must be >= 2 and divide the '
                     f'model resolution {size} (config.data.image_size).')
  return inputs.Plan(out_frames=out, clip_frames=out, known=out, cond_size=size // lowres_factor,
               dataset_frames=out)


def _single_clip_sampler(frame_shape: tuple[int, int], mode: str, plan: inputs.Plan,
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
    frames_kwargs = dict(conditioning=conditioning, w_r=w_r, **kwargs)
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
           labels: Optional[np.ndarray], image_size: int, fps: int,
           captions: Optional[list] = None) -> dict:
  """Writes samples.npz and a grid of all videos as samples.mp4 and .gif.

  Args:
    output_dir: created if missing.
    videos: uint8 [N, T, H, W, C].
    conditioning: uint8 [N, n, h, w, C] or None.
    labels: int32 [N] or None.
    captions: N str or None.
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
  if captions is not None:
    arrays['captions'] = np.asarray(captions, dtype=str)
  # Small frames are enlarged (nearest neighbour) so that players show them.
  tiled = video_io.upscale(video_io.grid(videos), max(1, 128 // image_size))
  writers = dict(npz=lambda path: np.savez_compressed(path, **arrays),
                 mp4=lambda path: video_io.save_mp4(path, tiled, fps),
                 gif=lambda path: video_io.save_gif(path, tiled, fps))
  paths = {}
  for kind, write in writers.items():
    # Written aside and renamed: an interrupt never leaves a half-written file.
    path = os.path.join(output_dir, f'samples.{kind}')
    tmp = os.path.join(output_dir, f'.samples.tmp.{kind}')
    write(tmp)
    os.replace(tmp, path)
    paths[kind] = path
  return paths
