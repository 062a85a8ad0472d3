"""What an evaluation writes: its protocol fields, its one-line summary, its file name.

Every figure is printed and stored with the protocol it was measured under
(``protocol_fields``), as one JSON line on stdout and a short line for a
person on stderr (``emit``), and written to workdir/eval/ under a name that
tells apart results of different settings (``result_name``, ``settings_tag``).
"""

from __future__ import annotations

import json
from typing import Any, Optional

import jax
import ml_collections

from vdm import atomic
from vdm import progress as progress_lib
from vdm.evaluation import i3d
from vdm.evaluation import real as real_lib


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
      'real_selection': f'{real_lib.REAL_SELECTION}: examples floor(i * S / N) of the split',
      'protocol_version': i3d.FVD_PROTOCOL['version'],
      'protocol': i3d.format_protocol(),
  }


# (result key, label, format) of the figures summary_line shows, where present.
_SUMMARY_FIGURES = (
    ('fvd', 'FVD', '.1f'), ('kvd', 'KVD', '.4g'),
    ('digit_accuracy', 'digit accuracy', '.3f'),
    ('digit_consistency', 'digit consistency', '.3f'),
    ('digit_accuracy_seen', 'text digit/direction accuracy: seen', '.3f'),
    ('direction_accuracy_seen', '/', '.3f'),
    ('digit_accuracy_held_out', 'held out', '.3f'),
    ('direction_accuracy_held_out', '/', '.3f'),
    ('first_frame_psnr', 'first-frame PSNR', '.2f'),
    ('first_frame_ssim', 'first-frame SSIM', '.3f'),
    ('later_frames_psnr', 'later-frames PSNR', '.2f'),
    ('seam_track_ratio', 'seam track ratio', '.2f'),
    ('real_seam_track_ratio', 'real', '.2f'),
    ('seam_pixel_ratio', 'seam pixel ratio', '.2f'),
    ('real_seam_pixel_ratio', 'real', '.2f'),
    ('seam_class_consistency', 'seam class consistency', '.3f'),
    ('seam_videos_without_jump', 'videos without a jump', '.3f'),
    ('real_seam_videos_without_jump', 'real', '.3f'),
)


def summary_line(result: dict) -> str:
  """The result for a person: its figures, then what they were measured on.

  E.g. 'FVD 412.3  KVD 0.1021  digit accuracy 0.812  (step 500, unconditional,
  64 samples vs 64 real clips of test, 10 frames)'.
  """
  figures = '  '.join(f'{label} {result[key]:{fmt}}' for key, label, fmt in _SUMMARY_FIGURES
                      if isinstance(result.get(key), (int, float)))
  what = [f'step {result["step"]}'] if 'step' in result else []
  what += [str(result.get('mode', '')),
           f'{result.get("num_samples")} samples vs {result.get("num_real")} real clips of '
           f'{result.get("split")}', f'{result.get("frames")} frames']
  return f'{figures}  ({", ".join(w for w in what if w)})'


def emit(result: dict, path: Optional[str]) -> None:
  """Writes the result to `path` and prints it twice: as one JSON line on
  stdout (for scripts) and as a short line of figures on stderr (for a person).
  """
  if jax.process_index() != 0:
    return
  if path:
    result['output'] = path
    atomic.write_json(path, result)
  print(json.dumps(result, sort_keys=True), flush=True)
  progress_lib.log(summary_line(result) + (f'; written to {path}' if path else ''))


def eval_split(config: ml_collections.ConfigDict) -> str:
  """The split a run is evaluated on: config.data.eval_split, 'test' where it has none."""
  return str(config.data.get('eval_split', 'test'))


def settings_tag(saved: ml_collections.ConfigDict, used: ml_collections.ConfigDict, *,
                  num: int, split: str, batch_size: int, seed: int) -> str:
  """File-name suffix naming where an evaluation departs from the run's own settings.

  Args:
    saved: the run's saved config.
    used: the config the samples were drawn with (saved plus overrides).
    num, split, batch_size, seed: the evaluation's N, real split, batch and seed.

  Returns:
    '' for the run's own settings (its config.sampling, config.eval.num_samples
    and batch_size, its eval split, seed 0: what periodic.PeriodicEvaluation writes);
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
  for key, name in (('vidrd_overlap', 'M'), ('vidrd_noise_a', 'a'), ('vidrd_beta', 'beta'),
                    ('vidrd_order', '')):
    if str(s.get(key)) != str(base.get(key)):
      parts.append(f'{name}{s.get(key)}')
  if num != int(saved.eval.num_samples):
    parts.append(f'n{num}')
  if split != eval_split(saved):
    parts.append(split)
  if batch_size != int(saved.eval.batch_size):
    parts.append(f'bs{batch_size}')
  if seed:
    parts.append(f'seed{seed}')
  return ''.join('_' + part for part in parts)


def result_name(step: int, mode: str, context_frames: Optional[int] = 1,
                num_frames: Optional[int] = None, long_method: str = '',
                tag: str = '', conditioning: str = 'reconstruction') -> str:
  """workdir/eval/ file name of a result; tag is settings_tag's suffix.

  Replacement conditioning names itself ('_replacement' in 'predict', in
  place of the driver's name in 'long'); a long video's context_frames is
  named when given (None: the default, half a clip).
  """
  replaced = conditioning == 'replacement'
  if mode == 'long':
    known = long_method == 'reconstruction'
    stem = f'{step}_long{num_frames}_{"replacement" if known and replaced else long_method}'
    if known and context_frames is not None:
      stem += f'_k{context_frames}'
  else:
    stem = {'unconditional': f'{step}', 'i2v': f'{step}_i2v',
            'predict': f'{step}_predict{context_frames}' + ('_replacement' if replaced else '')
            }[mode]
  return f'{stem}{tag}.json'
