"""What a sampling request may ask of a run, checked before anything is loaded.

The modes a run can sample in (``check_mode``), the options each mode takes,
so that one given in vain is refused rather than ignored
(``check_options_apply``, ``refuse_unused``), the classifier-free guidance
weight, and the class labels of the samples (``labels``). Shared by
sample.py and evaluate.py (vdm.sampling.sample_lib, vdm.evaluation.evaluate_lib);
nothing here reads a checkpoint or compiles.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

from vdm import config_lib
from vdm import methods
from vdm.models import tokenizer
from vdm.sampling import conditional
from vdm.sampling import inputs
from vdm.sampling import long_video

# The sampling options of sample.py and evaluate.py, as their flags spell them,
# and the config.sampling key each overrides.
SAMPLING_FLAGS = {
    'sampler': 'sampling.sampler',
    'steps': 'sampling.num_steps',
    'time_grid': 'sampling.time_grid',
    'guidance_weight': 'sampling.guidance_weight',
    'w_r': 'sampling.w_r',
    'long_method': 'sampling.long_method',
    'vidrd_overlap': 'sampling.vidrd_overlap',
    'vidrd_noise_a': 'sampling.vidrd_noise_a',
    'vidrd_beta': 'sampling.vidrd_beta',
    'vidrd_order': 'sampling.vidrd_order',
}


def check_mode(config, mode: str) -> None:
  """Whether the run can sample in ``mode`` at all.

  i2v needs a method whose denoiser takes a first frame, the other modes one
  that does not; superres needs a pixel-space run.

  Args:
    config: the run's config.
    mode: one of sample_lib.MODES.

  Raises:
    ValueError: naming the mode to use instead.
  """
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


def given_options(overrides: Mapping[str, Any]) -> dict[str, Any]:
  """{name as the flags spell it (SAMPLING_FLAGS): value} of the overrides given.

  sampling.vidrd_sampler is left out: --sampler sets it along with
  sampling.sampler (vdm.cli.sampling_overrides).
  """
  names = {key: name for name, key in SAMPLING_FLAGS.items()}
  return {names.get(key, key): value for key, value in overrides.items()
          if key != 'sampling.vidrd_sampler'}


def refuse_unused(options: list[tuple[str, Any, bool, str]]) -> None:
  """Raises when an option was given a value where it has no effect.

  A flag that is accepted and then ignored lets a user believe a result holds
  a setting it does not; the entry points check every option this way before
  anything is loaded.

  Args:
    options: (name, value, applies, where it applies) per option; value None
      means not given.

  Raises:
    ValueError: naming every option given in vain and where each applies.
  """
  unused = [f'{name}={value!r} applies to {where} only' for name, value, applies, where
            in options if value is not None and not applies]
  if unused:
    raise ValueError('; '.join(unused) + ': leave it out or change the mode.')


def check_options_apply(config, request, overrides: Mapping[str, Any]) -> None:
  """Refuses request fields and sampling overrides that the mode would ignore.

  Args:
    config: the run's config with the overrides applied.
    request: the request as given (None: not given).
    overrides: the {'sampling.<key>': value} overrides given.

  Raises:
    ValueError: see ``refuse_unused``.
  """
  r, mode = request, request.mode
  long_method = config.sampling.long_method
  from_file = r.input_path is not None and r.input_path.partition(':')[0] != inputs.DATASET_INPUT
  extends = mode == 'extend' and long_method == 'reconstruction'
  known_frames = mode in ('predict', 'interpolate', 'superres') or extends
  guided = mode == 'superres' or (known_frames and r.conditioning != 'replacement')
  extend_only = 'mode=extend'
  vidrd = 'mode=extend with long_method=vidrd'
  given = given_options(overrides)
  refuse_unused([
      ('context_frames', r.context_frames, mode == 'predict' or extends,
       'mode=predict and mode=extend with long_method=reconstruction'),
      ('stride', r.stride, mode == 'interpolate', 'mode=interpolate'),
      ('lowres_factor', r.lowres_factor, mode == 'superres', 'mode=superres'),
      ('conditioning', r.conditioning, known_frames,
       'the modes with given frames (predict, interpolate, superres, extend with '
       'long_method=reconstruction)'),
      ('input_start', r.input_start, from_file, 'an input file'),
      ('input_stride', r.input_stride, from_file, 'an input file'),
      ('strict_input', r.strict_input, from_file, 'an input file'),
      ('w_r', given.get('w_r'), guided, 'reconstruction guidance (conditioning=reconstruction '
       'with given frames, or superres)'),
      ('long_method', given.get('long_method'), mode == 'extend', extend_only),
      *[(key, given.get(key), mode == 'extend' and long_method == 'vidrd', vidrd)
        for key in ('vidrd_overlap', 'vidrd_noise_a', 'vidrd_beta', 'vidrd_order')],
  ])


def check_options(config, guidance_weight: Optional[float], label: Optional[int],
                   conditioning: str, mode: str, prompts: Optional[tuple] = None) -> None:
  """Checks the label, prompt, guidance and conditioning flags against the run's model.

  Args:
    config: the run's config with the sampling flags applied.
    guidance_weight: the --guidance_weight flag (None: not given).
    label: the --label flag.
    conditioning: 'reconstruction' or 'replacement'.
    mode: one of sample_lib.MODES.
    prompts: the --prompt flags (None: not given).

  Raises:
    ValueError: saying which flag does not fit and why.
  """
  if prompts is not None:
    if not config.model.get('text_encoder', ''):
      raise ValueError('a prompt was given but this model has no text conditioning '
                       "(config.model.text_encoder = ''); leave --prompt out, or train with "
                       'captions (e.g. configs/text_digits.py).')
    if not prompts:
      raise ValueError('--prompts_file holds no prompt; write one prompt a line.')
    tokenizer.from_config(config)(prompts)  # Too long: a clear error; unknown words: said.
  num_classes = config.model.num_classes
  if label is not None:
    if not num_classes:
      raise ValueError(f'label={label} was given but this model is unconditional '
                       '(config.model.num_classes = 0); leave it out.')
    if not 0 <= label < num_classes:
      raise ValueError(f'label={label} is out of range: this model has '
                       f'{num_classes} classes, labels 0 to {num_classes - 1}.')
  check_guidance_weight(config, guidance_weight)
  if conditioning not in conditional.CONDITIONINGS:
    raise ValueError(f'conditioning={conditioning!r} is unknown; choose one of '
                     f'{conditional.CONDITIONINGS}.')
  if mode == 'superres' and conditioning != 'reconstruction':
    raise ValueError('superres guides the whole video towards the low-resolution one; '
                     f'conditioning={conditioning!r} has no frames to replace. Use '
                     'reconstruction.')
  if mode == 'extend':
    long_video.check_long_method(config.sampling, config.data.num_frames)
  if config.model.cond_channels and mode == 'extend':
    raise ValueError('extend samples clip after clip; a model with config.model.cond_channels '
                     '> 0 needs its conditioning channels per clip: use one-clip modes.')


def check_guidance_weight(config, guidance_weight: Optional[float]) -> None:
  """Refuses a classifier-free guidance weight the run's model cannot use.

  Args:
    config: the run's config.
    guidance_weight: the --guidance_weight flag (None: not given).

  Raises:
    ValueError: w < 0, or w > 0 on an unconditional model or on one whose
      unconditional branch was never trained.
  """
  if guidance_weight is None:
    return
  if guidance_weight < 0:
    raise ValueError(f'guidance_weight={guidance_weight} must be >= 0.')
  if guidance_weight and not (config.model.num_classes or config.model.get('text_encoder')):
    raise ValueError(f'guidance_weight={guidance_weight} needs a class- or text-conditional '
                     'model; this one is unconditional (config.model.num_classes = 0 and no '
                     'config.model.text_encoder).')
  if guidance_weight and config.diffusion.cond_drop_prob == 0:
    raise ValueError(
        f'guidance_weight={guidance_weight} needs a model trained with condition dropout, '
        'but this run had config.diffusion.cond_drop_prob = 0, so its unconditional '
        'branch was never trained. Use guidance_weight=0.')


# The label of the model's unconditional branch (the learned null embedding
# that condition dropout trains; see unet3d.UNet3D).
NULL_LABEL = -1


def labels(config, label: Optional[int], num_samples: int, conditioned: bool,
            dataset_labels: Optional[np.ndarray]) -> tuple[Optional[np.ndarray], str]:
  """The class label of every sample, and a few words saying where they came from.

  In order: the --label flag; the labels of the run's own dataset clips when
  conditioning on them; the null label when conditioning on frames whose
  class is unknown (a file, another dataset), so that no label contradicts
  what the given frames show; else 0, 1, 2, ... in turn.

  Args:
    config: the run's config.
    label: the --label flag.
    num_samples: N.
    conditioned: whether the samples are conditioned on given frames.
    dataset_labels: int [N] labels of the conditioning clips, or None.

  Returns:
    (int32 [N] for a class-conditional model, None for an unconditional one;
    the description for the summary line).

  Raises:
    ValueError: frames of unknown class on a model whose unconditional branch
      was never trained (config.diffusion.cond_drop_prob = 0) and no --label.
  """
  num_classes = config.model.num_classes
  if not num_classes:
    return None, ''
  if label is not None:
    return np.full(num_samples, label, np.int32), f'label {label}'
  if dataset_labels is not None:
    return np.asarray(dataset_labels, np.int32), "the dataset clips' labels"
  if conditioned:
    if not config.diffusion.cond_drop_prob:
      raise ValueError(
          'the given frames have no class label, and this class-conditional model has no '
          'trained unconditional branch (config.diffusion.cond_drop_prob = 0): give the class '
          f'they show with label=0..{num_classes - 1}.')
    return (np.full(num_samples, NULL_LABEL, np.int32),
            'null label: the input has no class (give one with --label)')
  cycled = np.arange(num_samples, dtype=np.int32) % num_classes
  return cycled, f'labels 0..{num_classes - 1} in turn'


def texts(config, prompts: Optional[tuple], num_samples: int,
          dataset_captions: Optional[np.ndarray]) -> tuple[Optional[np.ndarray], Optional[list],
                                                            str]:
  """The caption of every sample of a text model, and where they came from.

  In order: the prompts (sample i gets prompt i mod their number; an empty
  prompt is the null text, the unconditional branch); the captions of the
  run's own dataset clips when conditioning on them; else the null text.

  Args:
    config: the run's config.
    prompts: the --prompt flags, or None.
    num_samples: N.
    dataset_captions: str [N] captions of the conditioning clips, or None.

  Returns:
    (byte tokens int32 [N, L] for a text model, None otherwise; the N
    captions as str, or None; the description for the summary line).
  """
  if not config.model.get('text_encoder', ''):
    return None, None, ''
  if prompts:
    captions = [prompts[i % len(prompts)] for i in range(num_samples)]
    note = (f'prompt {prompts[0]!r}' if len(set(prompts)) == 1
            else f'{len(prompts)} prompts in turn')
  elif dataset_captions is not None:
    captions, note = [str(c) for c in dataset_captions], "the dataset clips' captions"
  else:
    captions, note = [''] * num_samples, 'null text (give a --prompt)'
  return tokenizer.from_config(config)(captions), captions, note
