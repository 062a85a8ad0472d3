"""The interface every method implements, with the defaults most share.

The small override surface (in the spirit of google-research/vdm's
``Experiment``): a method says how to build its network(s), how to draw its
noise, what its per-example training loss is, and how trained networks become
the ``(z, logsnr, label) -> output`` denoiser that every sampler, guidance and
long-video driver takes. Everything else (the optimizer, sharding,
checkpoints, the train loop, sampling drivers, evaluation) is shared.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vdm import config_lib
from vdm.diffusion import conditions
from vdm.diffusion import samplers
from vdm.diffusion import schedules

# loss(...) -> (per-example loss [B], {name: scalar}).
LossOutput = tuple[jax.Array, Mapping[str, jax.Array]]


class Pretrained(NamedTuple):
  """A trained run whose weights a method starts from (see ``Method.pretrained_runs``).

  Attributes:
    key: the config key that names it, for messages (e.g. 'config.trip.init_from').
    workdir: that run's --workdir.
    method: the config.method it must have been trained with.
  """
  key: str
  workdir: str
  method: str


class Method:
  """Base class of the methods in vdm/methods/ (see that package's docstring).

  Subclasses must define ``build``, ``loss`` and ``denoiser``; ``noise``,
  ``noise_frame_covariance``, ``param_labels``, ``lr_multipliers``, ``validate``,
  ``pretrained_runs``, ``initial_params`` and ``conditions_on_first_frame``
  have defaults. A method never reads runs or checkpoints itself: it declares
  the runs it starts from and the trainer restores them.
  Instances are hashable by identity, so jitted functions can close over
  them or take them as static arguments.

  Attributes:
    conditions_on_first_frame: the denoiser needs conditioning['first_frame']
      [N, H, W, C] (image-to-video): sampling and evaluation then run in
      their 'i2v' mode only, and a method without it refuses that mode
      before anything compiles.

  Args:
    config: the full run config.
  """

  conditions_on_first_frame: bool = False

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.logsnr_fn = schedules.logsnr_fn_from_config(config.diffusion)
    self.parameterization = config.diffusion.parameterization
    # (size, channels) of the frames the networks see: pixels, or latents.
    self.frame_shape = config_lib.frame_shape(config)

  # --- Required -------------------------------------------------------------

  def build(self, rngs: nnx.Rngs) -> nnx.Module:
    """Creates the network(s) of the method as one nnx.Module.

    Args:
      rngs: parameter initialisation keys.

    Returns:
      An nnx.Module whose nnx.State is the trained parameters.
    """
    raise NotImplementedError

  def loss(self, networks: nnx.Module, batch: Mapping[str, jax.Array],
           rng: jax.Array) -> LossOutput:
    """The training loss of each example of a (micro-)batch.

    Args:
      networks: the module ``build`` made, with the current parameters.
      batch: 'video' [B, T + K, H, W, C] in [-1, 1], 'is_image' [T + K] bool,
        optionally 'label' ([B] or per frame [B, T + K] int32) and 'cond'.
      rng: PRNG key for times, noise, label dropout and network dropout.

    Returns:
      (loss [B] float32, metrics {name: scalar}, averaged over the batch by
      the trainer and logged beside the loss).
    """
    raise NotImplementedError

  def denoiser(self, networks: nnx.Module,
               conditioning: Optional[Mapping[str, jax.Array]] = None
               ) -> Callable[[jax.Array, jax.Array, Optional[jax.Array]], jax.Array]:
    """The trained networks as a denoiser for the samplers.

    Args:
      networks: the module ``build`` made, with (EMA) parameters.
      conditioning: what a sampling request conditions on besides labels
        (e.g. 'cond' channels [B, T, H, W, Cc]); None for nothing.

    Returns:
      fn(z [B, T, H, W, C], logsnr [B], label [B] or [B, T] or None) ->
      output in ``config.diffusion.parameterization``; classifier-free
      guidance wraps it (vdm.run_lib.model_fn).
    """
    raise NotImplementedError

  # --- Defaults ---------------------------------------------------------------

  def noise(self, rng: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """The noise law of the forward process: standard normal by default.

    Args:
      rng: PRNG key.
      shape: [B, T, H, W, C].

    Returns:
      float32 noise of ``shape``.
    """
    return samplers.standard_normal(rng, shape)

  def noise_frame_covariance(self, num_frames: int) -> Optional[np.ndarray]:
    """Covariance C of ``noise`` across the frames of a clip, None if i.i.d.

    Guides weigh errors by it (vdm.diffusion.guidance); it must describe the
    law ``noise`` draws (the same C at every pixel and channel).

    Args:
      num_frames: T, frames of the clip.

    Returns:
      [T, T] numpy covariance, or None for i.i.d. standard normal noise.
    """
    del num_frames
    return None

  def param_labels(self, params: Any) -> Optional[Any]:
    """Optimizer group of every parameter, or None for one group.

    Args:
      params: nnx.State of the parameters.

    Returns:
      A tree like ``params`` of group names (keys of ``lr_multipliers``),
      or None: every parameter trains at the configured learning rate.
    """
    del params
    return None

  def lr_multipliers(self) -> Mapping[str, float]:
    """Learning-rate multiplier of each group of ``param_labels`` (0 freezes)."""
    return {}

  def validate(self) -> None:
    """Raises ValueError naming any config key the method cannot work with."""

  def pretrained_runs(self) -> Mapping[str, Pretrained]:
    """The trained runs a fresh run starts from, by name (default: none).

    The trainer restores each (its EMA weights, newest checkpoint, checked to
    be a run of ``Pretrained.method``) and hands them to ``initial_params``.
    """
    return {}

  def initial_params(self, params: Any, pretrained: Mapping[str, Any]) -> Any:
    """The parameters a fresh run starts from, given their random initialisation.

    Called once by StateLayout.init_state before step 0 (never on resume): a
    method may load pretrained weights into part of its networks here (e.g.
    VideoFusion's base generator from a plain run's checkpoint). The EMA and
    the optimizer state are then initialised from what it returns.

    Args:
      params: nnx.State of the freshly initialised, sharded parameters.
      pretrained: {name: vdm.run_lib.Run} of every run ``pretrained_runs``
        declared, restored by the trainer.

    Returns:
      A tree of the same structure, shapes and dtypes (the default: ``params``
      itself, unchanged).
    """
    del pretrained
    return params

  def cond_channels_input(self, conditioning: Optional[Mapping[str, Any]]) -> Any:
    """The 'cond' input channels of ``conditioning``; required when the model has them.

    Args:
      conditioning: the mapping given to ``denoiser`` (None: nothing given).

    Returns:
      [N, T, H, W, cond_channels] or None for a model without them.

    Raises:
      ValueError: config.model.cond_channels > 0 and 'cond' is missing.
    """
    cond = (conditioning or {}).get('cond')
    channels = int(self.config.model.cond_channels)
    if channels and cond is None:
      raise ValueError(
          f'this model was trained with config.model.cond_channels={channels}: sampling '
          "needs the conditioning channels ('cond' [N, T, H, W, cond_channels]).")
    return cond

  def num_classes(self) -> int:
    """Class labels the denoiser takes (0: unconditional)."""
    return int(self.config.model.num_classes)

  def takes_text(self) -> bool:
    """Whether the denoiser takes captions (config.model.text_encoder)."""
    return bool(self.config.model.get('text_encoder', ''))

  def takes_guidance_weight(self) -> bool:
    """Whether the denoiser takes w itself (config.model.guidance_embed): guidance
    is then one pass of the network, not the mix of two."""
    return bool(self.config.model.get('guidance_embed', False))

  def batch_condition(self, batch: Mapping[str, Any]) -> Any:
    """The condition (vdm.diffusion.conditions) of a training batch: its
    per-frame labels and caption tokens, the ones the model takes."""
    return conditions.make(batch.get('label') if self.num_classes() else None,
                           batch.get('text') if self.takes_text() else None)


def param_path(path) -> str:
  """'conv_in/kernel' from a pytree path into an nnx.State.

  The State's dict keys name modules and parameters; the attribute entry at
  the end is the Variable's ``.value``.
  """
  return '/'.join(str(e.key) for e in path if isinstance(e, jax.tree_util.DictKey))


def copy_matching_params(params: Any, source: Any, what: str) -> tuple[int, Any]:
  """Copies every parameter of ``source`` into the same path of ``params``.

  Paths that only ``params`` has keep their values (new layers); a path that
  only ``source`` has, or a shape that differs, is an error: the two networks
  were meant to agree there.

  Args:
    params: nnx.State of the run being initialised.
    source: nnx.State of a trained run's parameters.
    what: names the source in error messages (e.g. the config key).

  Returns:
    (number of arrays copied, the new params tree).

  Raises:
    ValueError: naming the first parameters that do not fit.
  """
  flat = {param_path(p): v for p, v in jax.tree_util.tree_flatten_with_path(source)[0]}
  ours = {param_path(p): v for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  missing = sorted(set(flat) - set(ours))
  wrong = sorted(k for k in set(flat) & set(ours) if flat[k].shape != ours[k].shape)
  if missing or wrong:
    raise ValueError(f'{what}: its parameters do not fit this network: '
                     + (f'not here: {missing[:5]}; ' if missing else '')
                     + (f'different shapes: {[(k, flat[k].shape, ours[k].shape) for k in wrong[:5]]}; '
                        if wrong else '')
                     + 'its network config must match this run\'s.')

  def load(path, value):
    key = param_path(path)
    return jnp.asarray(jax.device_get(flat[key]), value.dtype) if key in flat else value
  return len(flat), jax.tree_util.tree_map_with_path(load, params)
