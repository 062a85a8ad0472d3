"""The interface every method implements, with the defaults most share.

The small override surface (in the spirit of google-research/vdm's
``Experiment``): a method says how to build its network(s), how to draw its
noise, what its per-example training loss is, and how trained networks become
the ``(z, logsnr, label) -> output`` denoiser that every sampler, guidance and
long-video driver takes. Everything else (the optimizer, sharding,
checkpoints, the train loop, sampling drivers, evaluation) is shared.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import jax
import ml_collections
from flax import nnx

from vdm.diffusion import samplers
from vdm.diffusion import schedules

# loss(...) -> (per-example loss [B], {name: scalar}).
LossOutput = tuple[jax.Array, Mapping[str, jax.Array]]


class Method:
  """Base class of the methods in vdm/methods/ (see that package's docstring).

  Subclasses must define ``build``, ``loss`` and ``denoiser``; ``noise``,
  ``param_labels``, ``lr_multipliers``, ``init_params`` and ``validate``
  have defaults.
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

  def init_params(self, params: Any) -> Any:
    """Changes a new run's freshly initialised parameters before its first step.

    Called once by ``StateLayout.init_state`` (never on resume), outside jit;
    e.g. to load part of the networks from another run's checkpoint. The EMA
    starts from the result; Adam's moments are zeros whatever the values.

    Args:
      params: nnx.State of the initialised parameters.

    Returns:
      An nnx.State of the same structure, shapes and dtypes (``params`` itself
      when nothing changes, the default).
    """
    return params

  def validate(self) -> None:
    """Raises ValueError naming any config key the method cannot work with."""

  def num_classes(self) -> int:
    """Class labels the denoiser takes (0: unconditional)."""
    return int(self.config.model.num_classes)
