"""A run as sampling and evaluation see it: its config, its EMA weights, and
the one glue from a config to a guided ``model_fn`` for the samplers.

Below both the train loop (vdm/train/train_lib.py), which saves the config and
draws periodic samples through ``model_fn`` / ``sample``, and the sampling and
evaluation entry points (vdm/sampling/sample_lib.py, vdm/evaluation/evaluate_lib.py),
which restore runs through ``restore_run``. Nothing here names a method: the
method object (vdm/methods) builds the networks and the denoiser.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vdm import config_lib
from vdm import progress as progress_lib
from vdm.diffusion import conditions
from vdm.diffusion import guidance
from vdm.diffusion import samplers
from vdm.methods import autoencoder
from vdm.methods import base
from vdm.train import checkpoints
from vdm.train import train_state


def read_autoencoder_config(workdir: str) -> ml_collections.ConfigDict:
  """The saved config of the autoencoder run that config.latent.autoencoder names.

  Raises:
    ValueError: it is a run of another method.
    FileNotFoundError: no run there.
  """
  config = config_lib.read_config(workdir)
  if config.get('method', 'vdm') != 'autoencoder':
    raise ValueError(f'config.latent.autoencoder={workdir!r} is a '
                     f'{config.get("method", "vdm")!r} run; it must name the workdir of '
                     "an autoencoder run (config.method = 'autoencoder').")
  return config


def resolve_latent_shape(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Fills config.latent.size and .channels from the autoencoder run, if unset (in place).

  The one place a diffusion run's config reads another run's: the trainer
  calls it before anything is built, and ``load_config`` for runs saved
  before those keys existed. Pixel runs and filled configs pass unchanged.

  Raises:
    ValueError: config.latent.autoencoder is not an autoencoder run, or it
      encodes frames of another size or channel count than config.data's.
    FileNotFoundError: no run at config.latent.autoencoder.
  """
  workdir = config_lib.autoencoder_workdir(config)
  if not workdir or (config.latent.get('size', 0) and config.latent.get('channels', 0)):
    return config
  ae = autoencoder.autoencoder_config(read_autoencoder_config(workdir))
  ours = (int(config.data.image_size), int(config.data.channels))
  if (ae.image_size, ae.channels) != ours:
    raise ValueError(f'config.latent.autoencoder={workdir!r} encodes {ae.image_size}x'
                     f'{ae.image_size} frames of {ae.channels} channel(s); this '
                     f'run has config.data.image_size={ours[0]}, channels={ours[1]}. Set them '
                     "to the autoencoder's.")
  config.latent.size, config.latent.channels = int(ae.latent_size), int(ae.latent_channels)
  return config


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """A run's saved config, ready to build its method (new keys, latent shape filled)."""
  return resolve_latent_shape(config_lib.read_config(workdir))


class Run(NamedTuple):
  """Trained networks as sampling and evaluation use them.

  Attributes:
    config: the run's config, with any overrides applied.
    method: its method object.
    graphdef: its networks' nnx GraphDef.
    params: EMA parameters (of a restored checkpoint, or of the live state).
    step: the step they come from.
  """
  config: ml_collections.ConfigDict
  method: base.Method
  graphdef: Any
  params: Any
  step: int


def restore_run(workdir: str, step: Optional[int] = None,
                overrides: Optional[Mapping[str, Any]] = None, mesh=None) -> Run:
  """Loads a run for sampling or evaluation: its saved config and EMA weights.

  Args:
    workdir: the --workdir of a train.py run.
    step: a checkpoint step; the newest readable one when None.
    overrides: optional {'section.key': value} changes to the saved config that
      do not change the networks (e.g. {'sampling.num_steps': 256}).
    mesh: device mesh; built from the saved config when None.

  Returns:
    The Run.

  Raises:
    FileNotFoundError: no config.json or no checkpoint in workdir.
  """
  config = config_lib.apply_overrides(load_config(workdir), overrides)
  layout = train_state.StateLayout(config, mesh)
  ckpt = checkpoints.Checkpointer(os.path.join(workdir, 'checkpoints'), async_save=False)
  try:
    restored_step, state = ckpt.restore(layout.abstract_state, step)
  finally:
    ckpt.close()
  if state is None:
    raise FileNotFoundError(f'no checkpoint in {ckpt.directory}: train first with '
                            f'python train.py --workdir={workdir}.')
  if ckpt.skipped:
    progress_lib.log(f'warning: {checkpoints.describe_skipped(ckpt.skipped)}; using step '
                     f'{restored_step} (the unreadable one is left in {ckpt.directory}).')
  return Run(config, layout.method, layout.graphdef, state.ema_params, restored_step)


def restore_pretrained(pretrained: base.Pretrained) -> Run:
  """The EMA weights of a run a method declares (``Method.pretrained_runs``).

  Returns:
    Its Run (newest checkpoint).

  Raises:
    ValueError: it is a run of another method than ``pretrained.method``.
    FileNotFoundError: no run or no checkpoint there.
  """
  run = restore_run(pretrained.workdir)
  theirs = run.config.get('method', 'vdm')
  if theirs != pretrained.method:
    raise ValueError(f'{pretrained.key}={pretrained.workdir!r} is a run of method {theirs!r}; '
                     f'it must be a run of method {pretrained.method!r}.')
  return run


@dataclasses.dataclass(frozen=True)
class _GuidedDenoiser:
  """The static half of ``model_fn``: which method, networks and guidance.

  Attributes:
    method: the run's method object.
    graphdef: its networks' nnx GraphDef.
    guided: mix in the unconditional branch (classifier-free w != 0).
  """
  method: base.Method
  graphdef: Any
  guided: bool

  def __call__(self, params, condition, conditioning, guidance_weight, z, logsnr):
    networks = nnx.merge(self.graphdef, params)
    fn = self.method.denoiser(networks, conditioning)
    return guidance.label_model_fn(fn, condition, guidance_weight, guided=self.guided)(z, logsnr)


def model_fn(method: base.Method, graphdef: Any, params: Any, *,
             labels: Optional[Any] = None, conditioning: Optional[Mapping[str, Any]] = None,
             guidance_weight: float = 0.0, text: Optional[Any] = None) -> jax.tree_util.Partial:
  """The one way a trained run becomes a sampler's ``model_fn(z, logsnr)``.

  Training's periodic samples, sample.py and evaluate.py all come through
  here, so they cannot drift: the method's denoiser, labels (per video [N] or
  per frame [N, T]), captions, other conditioning, and classifier-free guidance with
  w = guidance_weight in the paper's convention. At w = 0 the unconditional
  half of the doubled batch is skipped (the same output for half the work);
  a guidance-distilled network takes w as an input and runs once.

  The result is a ``jax.tree_util.Partial`` whose leaves are the weights,
  labels, conditioning and w, so a jitted sampler takes them as arguments
  rather than baking them into the program as constants.

  Args:
    method: the run's method object.
    graphdef: the networks' GraphDef.
    params: their (EMA) parameters.
    labels: int labels for a class-conditional model; None otherwise.
    conditioning: the method's other conditioning (see Method.denoiser).
    guidance_weight: classifier-free w >= 0 (on labels and text together).
    text: caption byte tokens [N, L] (vdm.models.tokenizer) for a text model;
      None otherwise.

  Returns:
    model_fn(z [N, T, H, W, C], logsnr [N]) -> float32 output.
  """
  condition = conditions.as_int(conditions.make(labels, text))
  guided = condition is not None and guidance_weight != 0
  if condition is not None and method.takes_guidance_weight():
    # A guidance-distilled network: w is one more input, one pass per step.
    batch = conditions.frames_shape(condition)[:1]
    condition = conditions.with_guidance_weight(condition, jnp.full(batch, guidance_weight))
    guided = False
  conditioning = None if conditioning is None else {
      k: jnp.asarray(v, jnp.float32) for k, v in conditioning.items()}
  return jax.tree_util.Partial(_GuidedDenoiser(method, graphdef, guided), params, condition,
                               conditioning, jnp.float32(guidance_weight))


def sampler_options(config: ml_collections.ConfigDict, method: base.Method, *,
                    progress=False) -> dict:
  """The keyword arguments of ``samplers.sample`` (and of every driver) that a
  run's config and method fix: schedule, parameterization, noise law (its draws
  and its covariance across frames), sampler.

  Args:
    config: the run's config (sampling and diffusion sections).
    method: the run's method object (its schedule and noise law).
    progress: passed on to samplers.sample.

  Returns:
    A dict of keyword arguments.
  """
  s = config.sampling
  return dict(logsnr_fn=method.logsnr_fn, parameterization=config.diffusion.parameterization,
              sampler=s.sampler, num_steps=s.num_steps, gamma=s.gamma, pc_delta=s.pc_delta,
              clip_x=s.clip_x, time_grid=s.time_grid, noise_fn=method.noise,
              noise_cov=method.noise_frame_covariance, progress=progress)


@functools.lru_cache(maxsize=32)
def _jitted_sampler(shape: tuple[int, ...], static_options: tuple):
  options = dict(static_options)
  return jax.jit(lambda fn, rng, gamma, pc_delta, sample_ids: samplers.sample(
      fn, rng, shape, gamma=gamma, pc_delta=pc_delta, sample_ids=sample_ids, **options))


def jitted_sampler(shape: tuple[int, ...], options: Mapping[str, Any]):
  """The compiled sampler behind ``sample``, one per shape and static options.

  Args:
    shape: [N, T, H, W, C].
    options: ``sampler_options``; gamma and pc_delta are arguments, the rest
      are compiled in.

  Returns:
    A jitted (fn, rng, gamma, pc_delta, sample_ids) -> float32 [N, T, H, W,
    C]; sample_ids int32 [N] or None (see samplers.sample).
  """
  static = tuple(sorted((k, v) for k, v in options.items() if k not in ('gamma', 'pc_delta')))
  return _jitted_sampler(tuple(shape), static)


def sample(fn: jax.tree_util.Partial, rng: jax.Array, shape: tuple[int, ...],
           options: Mapping[str, Any], sample_ids: Optional[jax.Array] = None) -> jax.Array:
  """Unconditional (or label-conditional) videos with a run's sampler.

  Args:
    fn: a ``model_fn`` result.
    rng: PRNG key.
    shape: [N, T, H, W, C].
    options: ``sampler_options``.
    sample_ids: optional int32 [N] global sample indices (sharded over the
      mesh by vdm.sampling.mesh_sampling), making each sample independent of its batch.

  Returns:
    float32 [N, T, H, W, C], a jax.Array laid out like the batch.
  """
  run = jitted_sampler(shape, options)
  return run(fn, rng, np.float32(options['gamma']), np.float32(options['pc_delta']), sample_ids)
