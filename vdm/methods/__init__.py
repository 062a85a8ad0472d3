"""The method registry: what differs between VDM, VideoFusion, TRIP and distillation.

A method is one module of this package defining a subclass of
``vdm.methods.base.Method`` named ``Method``; ``config.method`` names the
module. A method with hyperparameters of its own also defines
``default_config()``, the commented defaults of its config section
``config.<name>``. Adding one is a new module, its config, and one line in
METHODS.
``Trainer``, ``run_lib``, sampling and evaluation only ever talk to the
instance ``get_method(config)`` returns. This registry is a leaf: it imports
method modules by name only when asked, so anything may import it.
"""

from __future__ import annotations

import importlib

# config.method -> module under vdm/methods/ (one line per method).
METHODS = {
    'vdm': 'vdm.methods.vdm',
    'videofusion': 'vdm.methods.videofusion',
    'trip': 'vdm.methods.trip',
    'autoencoder': 'vdm.methods.autoencoder',  # Latent space of latent diffusion; no sampler.
    'distill': 'vdm.methods.distill',  # A few-step student of a trained run.
}


def _module(name: str):
  if name not in METHODS:
    raise ValueError(f'config.method={name!r} is unknown; choose one of {sorted(METHODS)}.')
  return importlib.import_module(METHODS[name])


def default_section(name: str):
  """The defaults of method ``name``'s own config section, or None if it has none.

  Raises:
    ValueError: the name is not registered.
  """
  fn = getattr(_module(name), 'default_config', None)
  return None if fn is None else fn()


def sections(config) -> list[str]:
  """The method sections a config needs: its method's, and that of the method
  whose networks it takes over (``config.<method>.base_method``, e.g. distill)."""
  name = config.get('method', 'vdm')
  names = [name]
  own = config.get(name)
  inner = own.get('base_method') if hasattr(own, 'get') else None
  if inner and inner != name:
    names.append(inner)
  return names


def get_method(config) -> 'base.Method':  # noqa: F821  (vdm.methods.base)
  """The method object of a full config (``config.method``, default 'vdm').

  Args:
    config: a full ConfigDict.

  Returns:
    An instance of the named module's ``Method`` class, built from config.

  Raises:
    ValueError: the name is not registered.
  """
  return _module(config.get('method', 'vdm')).Method(config)
