"""Checks a full config early, with errors that name the offending key.

Training and sampling call ``validate_config`` before doing anything costly, so
a typo or an inconsistent setting fails in the first second with a message
that says which key to change, not deep inside a jit trace.
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections

from vdm import methods
from vdm.diffusion import gaussian
from vdm.diffusion import samplers
from vdm.diffusion import schedules

OPTIMIZERS = ('adam', 'adamw')
DECAYS = ('none', 'cosine')


_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               'configs', 'default.py')


def default_config() -> ml_collections.ConfigDict:
  """configs/default.py's config: every key, with its default value.

  The one place defaults are written (and commented) is that file, beside
  vdm/; it is loaded by path, so this works whatever the working directory
  and whether or not the repository root is on sys.path.
  """
  spec = importlib.util.spec_from_file_location('_vdm_default_config', _DEFAULT_CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _check_sections_against_default(config) -> None:
  """Unknown sections or keys (typos) are errors that list the known ones."""
  reference = default_config()
  name = config.get('method', 'vdm')
  section = methods.default_section(name)  # Also: an unknown method fails here.
  if section is not None:
    if name not in config:
      raise ValueError(f'config.method={name!r} needs its section config.{name}; start from '
                       f'vdm.methods.{name}.default_config().')
    reference[name] = section
  for section in config:
    if not hasattr(config[section], 'keys'):
      continue  # Top-level values such as config.method are checked on their own.
    if section not in reference:
      raise ValueError(f'config.{section} is not a known section; known: '
                       f'{sorted(reference.keys())}.')
    if hasattr(config[section], 'keys'):
      unknown = sorted(set(config[section].keys()) - set(reference[section].keys()))
      if unknown:
        raise ValueError(f'config.{section} has unknown keys {unknown}; known: '
                         f'{sorted(reference[section].keys())}.')


def validate_config(config):
  """Validates every section of a training/sampling config.

  Args:
    config: a full ConfigDict (see configs/default.py).

  Returns:
    The method object (vdm/methods) of the config; building it checks the
    config of its networks (e.g. config.model for the U-Net).

  Raises:
    ValueError: naming the first inconsistent key and how to fix it.
  """
  _check_sections_against_default(config)
  method = methods.get_method(config)
  d = config.diffusion
  schedules.logsnr_fn_from_config(d)
  gaussian.check_parameterization(d.parameterization)
  gaussian.check_loss_type(d.loss_type)
  if not 0.0 <= d.cond_drop_prob < 1.0:
    raise ValueError(f'config.diffusion.cond_drop_prob={d.cond_drop_prob} must be in [0, 1).')
  if d.schedule == 'cosine' and not d.logsnr_min < d.logsnr_max:
    raise ValueError('config.diffusion.logsnr_min must be below config.diffusion.logsnr_max.')
  data = config.data
  if data.num_frames < 1 or data.num_images < 0 or data.frameskip < 1:
    raise ValueError('config.data.num_frames and config.data.frameskip must be >= 1 '
                     'and config.data.num_images >= 0.')
  if data.channels not in (1, 3):
    raise ValueError(f'config.data.channels={data.channels} must be 1 (grey) or 3 (RGB).')
  if data.seed < 0 or data.num_workers < 0 or data.prefetch < 0:
    raise ValueError('config.data.seed, num_workers and prefetch must be >= 0.')
  if data.loader not in ('threads', 'grain'):
    raise ValueError(f"config.data.loader={data.loader!r} must be 'threads' or 'grain'.")
  if config.model.num_classes and not data.label_key:
    raise ValueError('config.model.num_classes > 0 needs config.data.label_key '
                     '(or set config.model.num_classes = 0 for an unconditional model).')
  opt = config.optimizer
  if opt.name not in OPTIMIZERS:
    raise ValueError(f'config.optimizer.name={opt.name!r} is unknown; choose one of {OPTIMIZERS}.')
  if opt.decay not in DECAYS:
    raise ValueError(f'config.optimizer.decay={opt.decay!r} is unknown; choose one of {DECAYS}.')
  if opt.learning_rate <= 0 or not 0.0 <= opt.ema_decay < 1.0:
    raise ValueError('config.optimizer.learning_rate must be > 0 and '
                     'config.optimizer.ema_decay in [0, 1).')
  t = config.training
  if t.batch_size < 1 or t.num_steps < 1 or t.grad_accum_steps < 1:
    raise ValueError('config.training.batch_size, num_steps and grad_accum_steps must be >= 1.')
  if t.batch_size % t.grad_accum_steps:
    raise ValueError(f'config.training.batch_size={t.batch_size} is not divisible by '
                     f'config.training.grad_accum_steps={t.grad_accum_steps}.')
  s = config.sampling
  if s.sampler not in samplers.SAMPLERS:
    raise ValueError(f'config.sampling.sampler={s.sampler!r} is unknown; '
                     f'choose one of {samplers.SAMPLERS}.')
  if s.num_steps < 1:
    raise ValueError(f'config.sampling.num_steps={s.num_steps} must be >= 1.')
  if s.time_grid not in samplers.TIME_GRIDS:
    raise ValueError(f'config.sampling.time_grid={s.time_grid!r} is unknown; '
                     f'choose one of {samplers.TIME_GRIDS}.')
  for key in ('guidance_weight', 'w_r'):
    if s[key] < 0:
      raise ValueError(f'config.sampling.{key}={s[key]} must be >= 0.')
  method.validate()
  return method
