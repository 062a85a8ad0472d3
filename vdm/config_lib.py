"""Configs: their defaults, their validation, and how a run's config is read and written.

Below everything that reads a config (it imports only the method registry and
the parameter-free diffusion core). Training and sampling call
``validate_config`` before doing anything costly, so a typo or an
inconsistent setting fails in the first second with a message that says which
key to change, not deep inside a jit trace.
"""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Any, Mapping, Optional

import ml_collections

from vdm import atomic
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


def autoencoder_workdir(config: ml_collections.ConfigDict) -> str:
  """config.latent.autoencoder, or '' for a pixel-space run (or an old config)."""
  return str(config.get('latent', {}).get('autoencoder', '') or '')


def frame_shape(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(size, channels) of the frames the networks see: pixels, or latents.

  A latent run's shape is config.latent.size and .channels, which the trainer
  (and ``vdm.run_lib.load_config`` for runs written before those keys existed)
  fills from the autoencoder run's config; methods are built from the config
  alone and never read another run.

  Raises:
    ValueError: a latent run whose latent shape was never filled in.
  """
  if not autoencoder_workdir(config):
    return int(config.data.image_size), int(config.data.channels)
  size, channels = int(config.latent.get('size', 0)), int(config.latent.get('channels', 0))
  if size < 1 or channels < 1:
    raise ValueError('config.latent.autoencoder is set but config.latent.size and '
                     'config.latent.channels are not: fill them from the autoencoder run with '
                     'vdm.run_lib.resolve_latent_shape(config) (training does this itself).')
  return size, channels


def _reference_config(config) -> ml_collections.ConfigDict:
  """configs/default.py's config with the default sections of the methods
  ``config`` needs (methods.sections); an unknown method fails here."""
  reference = default_config()
  for name in methods.sections(config):
    section = methods.default_section(name)
    if section is not None:
      reference[name] = section
  return reference


def _check_sections_against_default(config) -> None:
  """Unknown sections or keys (typos) are errors that list the known ones."""
  reference = _reference_config(config)
  for name in methods.sections(config):
    if name in reference and name not in config:
      method = config.get('method', 'vdm')
      whose = 'its section' if name == method else 'the section of its base method,'
      raise ValueError(f'config.method={method!r} needs {whose} config.{name}; start from '
                       f'vdm.methods.{name}.default_config().')
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
  if d.schedule != 'cosine' and d.get('logsnr_shift', 0.0):
    raise ValueError(f'config.diffusion.logsnr_shift={d.logsnr_shift} shifts the cosine schedule '
                     f'only; with schedule={d.schedule!r} set it to 0.')
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
  rows = config.model.get('frame_index_embed', 0)
  if rows and data.num_frames > rows:
    raise ValueError(f'config.data.num_frames={data.num_frames} exceeds the {rows} rows of '
                     f'the absolute frame-index embedding: set config.model.frame_index_embed='
                     f'{data.num_frames}.')
  if config.model.num_classes and not data.label_key:
    raise ValueError('config.model.num_classes > 0 needs config.data.label_key '
                     '(or set config.model.num_classes = 0 for an unconditional model).')
  if bool(config.model.text_encoder) != bool(data.caption_key):
    raise ValueError(
        f'config.model.text_encoder={config.model.text_encoder!r} and config.data.caption_key='
        f'{data.caption_key!r}: a text model needs captions and captions need a text model; '
        "set both (e.g. 'learned' and 'caption') or neither.")
  if data.caption_key and data.random_flip:
    raise ValueError('config.data.random_flip would mirror left and right motion while the '
                     'caption keeps its words; set random_flip = False for captioned data.')
  if data.get('text_embedding_key', '') and config.model.text_encoder != 'precomputed':
    raise ValueError(f'config.data.text_embedding_key={data.text_embedding_key!r} reads a frozen '
                     "text encoder's stored embeddings: set config.model.text_encoder="
                     "'precomputed' (with its text_embedder and text_embed_dim), or "
                     "config.data.text_embedding_key=''.")
  if data.get('latent_key', ''):
    if not autoencoder_workdir(config):
      raise ValueError(f'config.data.latent_key={data.latent_key!r} reads stored latents, which '
                       'need the autoencoder that made them in config.latent.autoencoder; set '
                       "it, or config.data.latent_key='' to train on the frames.")
    if data.random_flip:
      raise ValueError('config.data.random_flip cannot flip stored latents (the encoder is not '
                       "mirror-symmetric): set random_flip = False or config.data.latent_key=''.")
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


def save_config(config: ml_collections.ConfigDict, workdir: str,
                name: str = 'config.json') -> str:
  """Writes the resolved config as workdir/<name> atomically; returns the path."""
  return atomic.write_text(os.path.join(workdir, name), config.to_json(indent=2))


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a training run saved in its workdir, with keys added since (``with_new_defaults``).

  Raises:
    FileNotFoundError: no config.json in workdir.
  """
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist: is {workdir!r} the --workdir of a '
                            'train.py run?')
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  return with_new_defaults(config)


def with_new_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Adds keys that configs/default.py gained after a run was written (in place).

  A new key's default keeps the behaviour the code had before the key
  existed, so an older run's config.json still loads.
  """
  reference = _reference_config(config)
  for section in reference:
    if section not in config:
      config[section] = reference[section]
    elif hasattr(reference[section], 'keys'):
      for key in reference[section]:
        if key not in config[section]:
          config[section][key] = reference[section][key]
  return config


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Optional[Mapping[str, Any]]) -> ml_collections.ConfigDict:
  """Sets {'section.key': value} entries (None values are skipped) in place.

  Raises:
    ValueError: a key that is not in the config.
  """
  for dotted, value in (overrides or {}).items():
    if value is None:
      continue
    section, key = dotted.split('.', 1)
    if section not in config or key not in config[section]:
      raise ValueError(f'config.{dotted} is not a config key.')
    config[section][key] = value
  return config
