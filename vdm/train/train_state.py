"""The train state of a run and how it is laid out on a mesh.

``StateLayout`` is what both training and restoring a trained run need: the
method and its networks' GraphDef, the optimizer, the parameter shardings and
the abstract (shape, dtype, sharding) train state that checkpoints restore
into. The train loop (vdm/train/train_lib.py) adds the train step on top; sampling
and evaluation (vdm/run_lib.py) only restore.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from vdm import config_lib
from vdm import methods
from vdm import sharding
from vdm.train import host_memory


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs; the data position is a function of step.

  Attributes:
    step: optimizer steps taken, int32 scalar.
    params: nnx.State of the method's network parameters (float32).
    ema_params: exponential moving average of params.
    opt_state: optax state.
    rng: base PRNG key (uint32[2]); step s uses fold_in(rng, s).
  """
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  rng: jax.Array


def frozen_mask(param_labels: Optional[Any], lr_multipliers: Optional[dict]) -> Optional[Any]:
  """A tree like the params, True where the group's learning-rate multiplier is 0.

  Returns:
    The tree, or None when no parameter is frozen.
  """
  if param_labels is None:
    return None
  frozen = {g for g, m in (lr_multipliers or {}).items() if m == 0}
  if not frozen & set(jax.tree.leaves(param_labels)):
    return None
  return jax.tree.map(lambda group: group in frozen, param_labels)


def zero_frozen(tree: Any, mask: Optional[Any]) -> Any:
  """``tree`` (gradients) with the leaves of frozen groups set to zero (``frozen_mask``)."""
  if mask is None:
    return tree
  return jax.tree.map(lambda x, frozen: jnp.zeros_like(x) if frozen else x, tree, mask)


def make_optimizer(config: ml_collections.ConfigDict, param_labels: Optional[Any] = None,
                   lr_multipliers: Optional[dict] = None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Adam/AdamW with linear warmup, optional cosine decay and grad clipping.

  Gradient clipping sees only the groups that train: frozen groups' gradients
  are zeroed first, so a frozen encoder or base generator cannot shrink the
  trained layers' steps. The zeroing holds no state, so the optimizer state
  has the structure it always had (older checkpoints restore).

  Args:
    config: the full config (optimizer and training sections).
    param_labels: optional tree like the params of group names; each group
      trains at the learning rate times its multiplier (optax multi_transform).
      None: one group.
    lr_multipliers: {group: multiplier} for param_labels; 0 freezes a group.

  Returns:
    (optimizer, learning-rate schedule of the multiplier-1 group).
  """
  opt, total = config.optimizer, config.training.num_steps
  warmup = min(opt.warmup_steps, total)

  def schedule(peak):
    if opt.decay == 'cosine':
      return optax.warmup_cosine_decay_schedule(0.0, peak, max(warmup, 1),
                                                max(total, warmup + 1), end_value=0.0)
    return optax.join_schedules([optax.linear_schedule(0.0, peak, max(warmup, 1)),
                                 optax.constant_schedule(peak)], [warmup])

  def adam(peak):
    if peak == 0:
      return optax.set_to_zero()
    if opt.name == 'adamw':
      return optax.adamw(schedule(peak), b1=opt.b1, b2=opt.b2, eps=opt.eps,
                         weight_decay=opt.weight_decay)
    return optax.adam(schedule(peak), b1=opt.b1, b2=opt.b2, eps=opt.eps)

  if param_labels is None:
    tx = adam(opt.learning_rate)
  else:
    multipliers = dict(lr_multipliers or {})
    used = set(jax.tree.leaves(param_labels))
    missing = sorted(used - set(multipliers))
    if missing:
      raise ValueError(f'parameter groups {missing} have no learning-rate multiplier.')
    tx = optax.multi_transform({g: adam(opt.learning_rate * multipliers[g]) for g in used},
                               param_labels)
  if opt.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip), tx)
  mask = frozen_mask(param_labels, lr_multipliers)
  if mask is not None:
    inner = tx
    tx = optax.GradientTransformation(
        inner.init,
        lambda updates, state, params=None: inner.update(zero_frozen(updates, mask), state,
                                                         params))
  return tx, schedule(opt.learning_rate)


class StateLayout:
  """The method, optimizer and sharded abstract train state of a config.

  Args:
    config: the full config; validated here.
    mesh: device mesh; built from config.sharding.mesh when None.

  Attributes:
    config, mesh, method, graphdef (the networks' nnx GraphDef), tx,
    lr_schedule, frozen_mask (``frozen_mask`` of the method's groups),
    param_shardings, state_shardings, abstract_state.
  """

  def __init__(self, config: ml_collections.ConfigDict, mesh=None):
    config_lib.validate_config(config)
    self.config = config
    self.mesh = mesh if mesh is not None else sharding.create_mesh(config.sharding.mesh)
    self.method = methods.get_method(config)
    abstract = nnx.eval_shape(lambda: self.method.build(nnx.Rngs(0)))
    self.graphdef, abstract_params = nnx.split(abstract)
    labels, multipliers = self.method.param_labels(abstract_params), self.method.lr_multipliers()
    self.tx, self.lr_schedule = make_optimizer(config, labels, multipliers)
    # Frozen groups' gradients are left out of the logged norm, as they are of the clipping.
    self.frozen_mask = frozen_mask(labels, multipliers)
    self.param_shardings = sharding.param_shardings(abstract_params, self.mesh,
                                                    config.sharding.rules)
    # Every leaf's placement is given, so no compile is needed to know them:
    # a run restored to sample or evaluate never compiles the initialiser.
    shapes = jax.eval_shape(self._init_state)
    self.state_shardings = jax.tree.map(lambda s, _: s, self._state_out_shardings(abstract_params),
                                        shapes)
    self.abstract_state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        shapes, self.state_shardings)

  def _state_out_shardings(self, abstract_params):
    rep = sharding.replicated(self.mesh)
    params = self.param_shardings
    # Each copy of the parameter tree inside the optimizer state (Adam's two
    # moments) is placed like the parameters; its scalars (step counts) are
    # replicated. Left to XLA's inference, the moments come out replicated:
    # under FSDP they would hold most of each device's state bytes.
    # Frozen groups' moments are MaskedNodes (no arrays): kept as they are.
    masked = lambda x: isinstance(x, optax.MaskedNode)
    opt_state = optax.tree_map_params(
        self.tx, lambda p, s: p if masked(p) else s,
        jax.eval_shape(self.tx.init, abstract_params), params,
        transform_non_params=lambda _: rep, is_leaf=masked)
    return TrainState(step=rep, params=params, ema_params=params, opt_state=opt_state,
                      rng=rep)

  def _init_state(self) -> TrainState:
    seed = self.config.training.seed
    params = nnx.state(self.method.build(nnx.Rngs(seed)))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      ema_params=jax.tree.map(jnp.copy, params),
                      opt_state=self.tx.init(params),
                      rng=jax.random.PRNGKey(seed + 1))

  def init_state(self, pretrained: Optional[Mapping[str, Any]] = None) -> TrainState:
    """A freshly initialised, sharded train state.

    The method's ``initial_params`` hook may replace the random parameters
    (pretrained weights); the EMA and optimizer state then follow them.
    The initialiser is compiled here, used once and dropped (with the heap it
    held: ~60 MiB of host memory on the tiny benchmark model).

    Args:
      pretrained: {name: vdm.run_lib.Run} of every run the method's
        ``pretrained_runs`` declares (vdm.train.train_lib.Trainer restores them).

    Raises:
      ValueError: a declared pretrained run was not given.
    """
    pretrained = dict(pretrained or {})
    missing = sorted(set(self.method.pretrained_runs()) - set(pretrained))
    if missing:
      raise ValueError(f'init_state needs the pretrained runs {missing} that the method '
                       'declares; vdm.train.train_lib.Trainer.init_state restores them.')
    init = jax.jit(self._init_state, out_shardings=self.state_shardings).lower().compile()
    state = jax.block_until_ready(init())
    del init
    params = self.method.initial_params(state.params, pretrained)
    if params is not state.params:
      # Placed like the parameters they replace; the EMA and the optimizer
      # state start from them, as they would from a random initialisation.
      params = jax.device_put(params, self.state_shardings.params)
      state = state.replace(
          params=params, ema_params=jax.tree.map(jnp.copy, params),
          opt_state=jax.jit(self.tx.init, out_shardings=self.state_shardings.opt_state)(params))
    host_memory.release_host_memory()
    return state

  def networks(self, params) -> nnx.Module:
    """The method's network(s) with the given parameters (e.g. state.ema_params)."""
    return nnx.merge(self.graphdef, params)
