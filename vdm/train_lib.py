"""Training: the train state, one jitted sharded train step, and the loop.

The same code runs on one CPU and on a multi-host pod: parameters are created
already sharded by their logical axes (vdm/sharding.py), the global batch is
assembled from each process's share, and ``train_step`` is one ``jax.jit`` with
donated state. EMA weights live in the state and are what sampling and
evaluation use.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import sys
import time
from typing import Any, Callable, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from vdm import checkpoints
from vdm import config_lib
from vdm import host_memory
from vdm import preemption
from vdm import run_dir
from vdm import sharding
from vdm import video_io
from vdm.diffusion import gaussian
from vdm.diffusion import guidance
from vdm.diffusion import samplers
from vdm.diffusion import schedules
from vdm.models import unet3d


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs; the data position is a function of step.

  Attributes:
    step: optimizer steps taken, int32 scalar.
    params: nnx.State of the model parameters (float32).
    ema_params: exponential moving average of params.
    opt_state: optax state.
    rng: base PRNG key (uint32[2]); step s uses fold_in(rng, s).
  """
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  rng: jax.Array


class NonFiniteLossError(FloatingPointError):
  """Raised when the loss becomes NaN or infinite."""


def make_optimizer(config: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Adam/AdamW with linear warmup, optional cosine decay and grad clipping.

  Args:
    config: the full config (optimizer and training sections).

  Returns:
    (optimizer, learning-rate schedule).
  """
  opt, total = config.optimizer, config.training.num_steps
  warmup = min(opt.warmup_steps, total)
  if opt.decay == 'cosine':
    lr = optax.warmup_cosine_decay_schedule(0.0, opt.learning_rate, max(warmup, 1),
                                            max(total, warmup + 1), end_value=0.0)
  else:
    lr = optax.join_schedules([optax.linear_schedule(0.0, opt.learning_rate, max(warmup, 1)),
                               optax.constant_schedule(opt.learning_rate)], [warmup])
  if opt.name == 'adamw':
    tx = optax.adamw(lr, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay)
  else:
    tx = optax.adam(lr, b1=opt.b1, b2=opt.b2, eps=opt.eps)
  if opt.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip), tx)
  return tx, lr


class Trainer:
  """The model definition, optimizer, mesh and compiled step of one run.

  Args:
    config: the full config; validated here.
    mesh: device mesh; built from config.sharding.mesh when None.
  """

  def __init__(self, config: ml_collections.ConfigDict, mesh=None, for_training: bool = True):
    self.config = config
    self.model_config = config_lib.validate_config(config)
    self.mesh = mesh if mesh is not None else sharding.create_mesh(config.sharding.mesh)
    divisor = sharding.batch_size_divisor(self.mesh) * config.training.grad_accum_steps
    if for_training and config.training.batch_size % divisor:
      raise ValueError(
          f'config.training.batch_size={config.training.batch_size} must be a multiple of '
          f'{divisor} (batch shards of the mesh {dict(self.mesh.shape)} x '
          'config.training.grad_accum_steps).')
    self.tx, self.lr_schedule = make_optimizer(config)
    self.logsnr_fn = schedules.logsnr_fn_from_config(config.diffusion)
    abstract_model = nnx.eval_shape(lambda: unet3d.UNet3D(self.model_config, rngs=nnx.Rngs(0)))
    self.graphdef, abstract_params = nnx.split(abstract_model)
    self.param_shardings = sharding.param_shardings(abstract_params, self.mesh,
                                                    config.sharding.rules)
    # Compiled once: its output shardings (the optimizer state's are inferred
    # from the params') are also what checkpoints restore into.
    self._init = self._compile_init(self._state_out_shardings())
    self.state_shardings = self._init.output_shardings
    self.abstract_state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        jax.eval_shape(self._init_state), self.state_shardings)
    self.train_step = jax.jit(self._train_step, donate_argnums=0,
                              out_shardings=(self.state_shardings, sharding.replicated(self.mesh)))

  def _state_out_shardings(self):
    rep = sharding.replicated(self.mesh)
    params = self.param_shardings
    # The optimizer state's sharding follows the params it mirrors (inferred).
    return TrainState(step=rep, params=params, ema_params=params, opt_state=None, rng=rep)

  def _compile_init(self, out_shardings):
    return jax.jit(self._init_state, out_shardings=out_shardings).lower().compile()

  def _init_state(self) -> TrainState:
    seed = self.config.training.seed
    model = unet3d.UNet3D(self.model_config, rngs=nnx.Rngs(seed))
    params = nnx.state(model)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      ema_params=jax.tree.map(jnp.copy, params),
                      opt_state=self.tx.init(params),
                      rng=jax.random.PRNGKey(seed + 1))

  def init_state(self) -> TrainState:
    """A freshly initialised, sharded train state.

    The compiled initialiser is used once and then dropped (with the heap it
    held: ~60 MiB of host memory on the tiny benchmark model); a second call
    compiles it again.
    """
    init, self._init = self._init or self._compile_init(self.state_shardings), None
    state = jax.block_until_ready(init())
    del init
    host_memory.release_host_memory()
    return state

  def compile_train_step(self, state: TrainState, batch: dict):
    """``train_step`` compiled ahead of time for this state and batch layout.

    The batch shapes never change during a run, so one compile serves every
    step. The compiler's freed heap is handed back to the OS before the first
    step runs, which keeps the step's buffers from landing on top of it.

    Args:
      state: a TrainState with the shardings of ``state_shardings``.
      batch: a global batch as ``sharding.global_batch`` builds it.

    Returns:
      A callable (state, batch) -> (state, metrics), donating ``state``.
    """
    compiled = self.train_step.lower(state, batch).compile()
    host_memory.release_host_memory()
    return compiled

  def model(self, params) -> unet3d.UNet3D:
    """The network with the given parameters (e.g. state.ema_params)."""
    return nnx.merge(self.graphdef, params)

  def loss(self, params, batch: dict, rng: jax.Array) -> jax.Array:
    """Mean diffusion loss of a (micro-)batch."""
    model = self.model(params)
    rng_loss, rng_dropout = jax.random.split(rng)
    d = self.config.diffusion

    def denoise_fn(z, logsnr, label):
      return model(z, logsnr, label=label, is_image=batch.get('is_image'),
                   dropout_rng=rng_dropout)
    losses = gaussian.diffusion_loss(
        denoise_fn, batch['video'], rng_loss, logsnr_fn=self.logsnr_fn,
        parameterization=d.parameterization, loss_type=d.loss_type,
        label=batch.get('label') if self.model_config.num_classes else None,
        cond_drop_prob=d.cond_drop_prob, low_discrepancy=d.low_discrepancy)
    return jnp.mean(losses)

  def _train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    rng = jax.random.fold_in(state.rng, state.step)
    accum = self.config.training.grad_accum_steps
    grad_fn = jax.value_and_grad(self.loss)
    if accum == 1:
      loss, grads = grad_fn(state.params, batch, rng)
    else:
      # Micro-batch i takes rows i::accum so every micro-batch stays spread
      # over all batch shards.
      per_row = {k: v for k, v in batch.items() if k != 'is_image'}
      micro = jax.tree.map(
          lambda v: jnp.swapaxes(v.reshape((v.shape[0] // accum, accum) + v.shape[1:]), 0, 1),
          per_row)

      def body(carry, xs):
        i, mb = xs
        if 'is_image' in batch:
          mb = dict(mb, is_image=batch['is_image'])
        loss_i, grads_i = grad_fn(state.params, mb, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, carry, (loss_i, grads_i)), None
      zeros = (jnp.zeros(()), jax.tree.map(jnp.zeros_like, state.params))
      (loss, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(accum), micro))
      loss, grads = jax.tree.map(lambda x: x / accum, (loss, grads))
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # Warm the EMA up: with a fixed 0.9999 the average would still be mostly
    # the random initialisation after thousands of steps.
    step = state.step.astype(jnp.float32)
    decay = jnp.minimum(self.config.optimizer.ema_decay, (1.0 + step) / (10.0 + step))
    ema = jax.tree.map(lambda e, p: e + (1.0 - decay) * (p - e), state.ema_params, params)
    metrics = {'loss': loss, 'grad_norm': optax.tree.norm(grads),
               'learning_rate': self.lr_schedule(state.step)}
    return state.replace(step=state.step + 1, params=params, ema_params=ema,
                         opt_state=opt_state), metrics

  def sample(self, params, rng: jax.Array, num_samples: int, *, num_frames: Optional[int] = None,
             labels: Optional[jax.Array] = None, progress: bool = False) -> np.ndarray:
    """Unconditional or class-conditional samples with the sampling config.

    Args:
      params: model parameters (use state.ema_params).
      rng: PRNG key.
      num_samples: videos to draw.
      num_frames: frames per video; config.data.num_frames by default.
      labels: int [num_samples] for a class-conditional model (NULL_LABEL for
        unconditional draws); None draws labels 0, 1, 2, ... in turn.
      progress: print a progress line over sampling steps.

    Returns:
      float32 [N, T, H, W, C] in [-1, 1].
    """
    c, s = self.config, self.config.sampling
    shape = (num_samples, num_frames or c.data.num_frames, c.data.image_size,
             c.data.image_size, c.data.channels)
    if self.model_config.num_classes and labels is None:
      labels = jnp.arange(num_samples) % self.model_config.num_classes
    # w = 0 is the plain conditional model: skip the doubled guidance batch.
    guided = bool(self.model_config.num_classes) and s.guidance_weight != 0
    fn = _sample_fn(self.graphdef, shape, guided, c.diffusion.parameterization, self.logsnr_fn, s.sampler, s.num_steps,
                    s.clip_x, progress)
    return np.asarray(fn(params, rng, labels, s.guidance_weight, s.gamma, s.pc_delta))


@functools.lru_cache(maxsize=16)
def _sample_fn(graphdef, shape, guided, parameterization, logsnr_fn, sampler, num_steps,
               clip_x, progress):
  """A compiled sampler, cached so repeated sampling does not recompile."""

  @jax.jit
  def run(params, rng, labels, guidance_weight, gamma, pc_delta):
    model = nnx.merge(graphdef, params)
    model_fn = guidance.label_model_fn(lambda z, l, y: model(z, l, label=y), labels,
                                       guidance_weight, guided=guided)
    return samplers.sample(model_fn, rng, shape, logsnr_fn=logsnr_fn,
                           parameterization=parameterization, sampler=sampler,
                           num_steps=num_steps, gamma=gamma, pc_delta=pc_delta,
                           clip_x=clip_x, progress=progress)
  return run


def save_config(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes the resolved config as workdir/config.json; returns the path."""
  path = os.path.join(workdir, 'config.json')
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(config.to_json(indent=2))
  os.replace(tmp, path)
  return path


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """Reads the config a training run saved in its workdir."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist: is {workdir!r} the --workdir of a '
                            'train.py run?')
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def _format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m' if h else f'{m}m{s:02d}s'


def _check_finite(losses: list, first_step: int) -> None:
  """Raises naming the first step whose loss is NaN or infinite."""
  if not losses:
    return
  values = np.asarray(jax.device_get(jnp.stack(losses)))
  bad = np.flatnonzero(~np.isfinite(values))
  if bad.size:
    step = first_step + int(bad[0]) + 1
    raise NonFiniteLossError(
        f'The loss became {values[bad[0]]} at step {step}. Training stopped; the last good '
        'checkpoint is kept. Lower config.optimizer.learning_rate, check the data range, or '
        'enable config.optimizer.grad_clip.')


def write_samples(trainer: Trainer, params, step: int, workdir: str, writer=None) -> str:
  """Samples with the EMA weights, writes workdir/samples/step_<n>.{gif,npz}."""
  cfg = trainer.config
  videos = trainer.sample(params, jax.random.PRNGKey(cfg.training.seed + 7919),
                          cfg.training.num_samples)
  videos_u8 = video_io.to_uint8(videos)
  out_dir = os.path.join(workdir, 'samples')
  os.makedirs(out_dir, exist_ok=True)
  np.savez_compressed(os.path.join(out_dir, f'step_{step}.npz'), videos=videos_u8)
  tiled = video_io.grid(videos_u8)
  scale = max(1, 128 // cfg.data.image_size)
  path = video_io.save_gif(os.path.join(out_dir, f'step_{step}.gif'), video_io.upscale(tiled, scale))
  if writer is not None:
    # A strip of every frame side by side, as one TensorBoard image.
    strip = np.concatenate(list(tiled), axis=1)[None]
    writer.write_images(step, {'samples': strip})
  return path


def train(config: ml_collections.ConfigDict, workdir: str,
          hooks: Sequence[Callable[[int, TrainState, checkpoints.Checkpointer], None]] = (),
          start_over: bool = False) -> TrainState:
  """Trains (or resumes) a model; everything goes into ``workdir``.

  Restarting with the same workdir resumes from the newest readable
  checkpoint, with the same step, optimizer state, EMA, RNG and data position,
  provided the config differs from the run's only in keys that are safe to
  change (vdm/run_dir.py). SIGTERM saves a checkpoint at the next step
  boundary (the same step on every process) and raises ``Preempted``.

  Args:
    config: the full config (configs/default.py documents every key).
    workdir: output directory: config.json (and config.<step>.json, every
      config the run has used), checkpoints/, samples/, events.
    hooks: called after every step as hook(step, state, checkpointer); tests use
      this to stop a run at a chosen step.
    start_over: move an existing run in ``workdir`` into
      workdir/superseded/<time>/ (nothing is deleted) and train from scratch.

  Returns:
    The final TrainState.

  Raises:
    run_dir.ConfigMismatchError: the run in ``workdir`` cannot be resumed with
      this config; nothing was written.
    checkpoints.UnreadableCheckpointsError: the run has checkpoints and none
      can be read; training did not start.
    checkpoints.CheckpointWriteError: a checkpoint could not be written; the
      previous one is kept.
    preemption.Preempted: SIGTERM arrived; a checkpoint was saved (a
      SystemExit with status preemption.PREEMPTED_EXIT_CODE).
  """
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  from vdm.data import pipeline  # pylint: disable=g-import-not-at-top

  # First, before anything is written or compiled: refuse unsafe config changes
  # over an existing run, or move it aside on start_over.
  run_dir.prepare(config, workdir, start_over=start_over)
  trainer = Trainer(config)
  if config.eval.every_steps:
    from vdm.evaluation import evaluate_lib  # pylint: disable=g-import-not-at-top
    evaluate_lib.check_config(config)  # Fail now, not at the first evaluation.
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  info = pipeline.dataset_info(config)
  if trainer.model_config.num_classes and info.get('num_classes') and \
      info['num_classes'] > trainer.model_config.num_classes:
    raise ValueError(f'{config.data.dataset} has {info["num_classes"]} classes but '
                     f'config.model.num_classes={trainer.model_config.num_classes}.')
  ckpt = checkpoints.Checkpointer(os.path.join(workdir, 'checkpoints'),
                                  keep=config.training.keep_checkpoints,
                                  async_save=config.training.async_checkpoints)
  # A checkpoint that does not fit the model refuses; unreadable ones are
  # skipped, and if none is left training stops rather than start over them.
  start_step, state = run_dir.restore(ckpt, trainer.abstract_state, workdir)
  if state is None:
    start_step, state = 0, trainer.init_state()
    print(f'Initialised {unet3d.count_params(trainer.model(state.params)):,} parameters '
          f'on mesh {dict(trainer.mesh.shape)}.', flush=True)
  else:
    print(f'Resumed from step {start_step} in {ckpt.directory}.', flush=True)
  if is_main:
    run_dir.record_config(config, workdir, start_step)  # Only now: the config fits the run.
  t = config.training
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_main)
  batches = pipeline.make_train_iterator(config, start_step=start_step)
  pending, pending_from = [], start_step
  step, tick, tick_step = start_step, time.time(), start_step
  step_fn = None
  preempt = preemption.PreemptionWatcher()
  try:
    while step < t.num_steps:
      batch = sharding.global_batch(next(batches), trainer.mesh)
      if step_fn is None:
        step_fn = trainer.compile_train_step(state, batch)
      state, metrics = step_fn(state, batch)
      step += 1
      pending.append(metrics['loss'])
      is_last = step == t.num_steps
      if step % t.log_every == 0 or is_last:
        _check_finite(pending, pending_from)
        pending, pending_from = [], step
        metrics = jax.device_get(metrics)
        now = time.time()
        steps_per_s = (step - tick_step) / max(now - tick, 1e-9)
        tick, tick_step = now, step
        scalars = {k: float(v) for k, v in metrics.items()}
        scalars.update(steps_per_sec=steps_per_s, examples_per_sec=steps_per_s * t.batch_size)
        writer.write_scalars(step, scalars)
        if is_main:
          eta = (t.num_steps - step) / max(steps_per_s, 1e-9)
          print(f'step {step}/{t.num_steps}  loss {scalars["loss"]:.4f}  '
                f'lr {scalars["learning_rate"]:.2e}  grad_norm {scalars["grad_norm"]:.3f}  '
                f'{steps_per_s:.2f} steps/s  {scalars["examples_per_sec"]:.1f} ex/s  '
                f'ETA {_format_duration(eta)}', flush=True)
      if step % t.checkpoint_every == 0 or is_last:
        _check_finite(pending, pending_from)  # Never save a non-finite state.
        pending, pending_from = [], step
        ckpt.save(step, state)
      for hook in hooks:
        hook(step, state, ckpt)
      # Preemption: every process agrees on this step; save it and stop
      # before spending the grace period on samples or evaluation.
      if preempt.reached(step) and not is_last:
        if step % t.checkpoint_every:  # Not saved above.
          _check_finite(pending, pending_from)
          ckpt.save(step, state)
        preemption.stop(step, ckpt)
      if t.num_samples and ((t.sample_every and step % t.sample_every == 0) or is_last):
        path = write_samples(trainer, state.ema_params, step, workdir, writer if is_main else None)
        if is_main:
          print(f'Wrote samples to {path}', flush=True)
      if config.eval.every_steps and (step % config.eval.every_steps == 0 or is_last):
        # Every process samples its share; only process 0 writes.
        evaluate_lib.evaluate_during_training(trainer, state.ema_params, step, workdir,
                                              writer if is_main else None)
  finally:
    preempt.close()
    ckpt.close()
    writer.flush()
    getattr(batches, "close", lambda: None)()
  if is_main:
    print(f'Done: {step} steps. Checkpoints: {ckpt.directory}; samples: '
          f'{os.path.join(workdir, "samples")}; TensorBoard: tensorboard --logdir={workdir}',
          flush=True)
  return state


def restore_trained(workdir: str, step: Optional[int] = None,
                    overrides: Optional[dict] = None) -> tuple[Trainer, Any, int]:
  """Loads a run for sampling or evaluation: its saved config and EMA weights.

  Args:
    workdir: the --workdir of a train.py run.
    step: a checkpoint step; the newest readable one when None.
    overrides: optional {'section.key': value} changes to the saved config that
      do not change the model (e.g. {'sampling.num_steps': 256}).

  Returns:
    (trainer, ema_params, step).

  Raises:
    FileNotFoundError: no config.json or no checkpoint in workdir.
  """
  config = load_config(workdir)
  for dotted, value in (overrides or {}).items():
    section, key = dotted.split('.', 1)
    if key not in config[section]:
      raise ValueError(f'config.{dotted} is not a config key.')
    config[section][key] = value
  # Sampling may run on another machine than training: the saved batch size
  # need not fit this machine's mesh.
  trainer = Trainer(config, for_training=False)
  ckpt = checkpoints.Checkpointer(os.path.join(workdir, 'checkpoints'), async_save=False)
  try:
    restored_step, state = ckpt.restore(trainer.abstract_state, step)
  finally:
    ckpt.close()
  if state is None:
    raise FileNotFoundError(f'no checkpoint in {ckpt.directory}: train first with '
                            f'python train.py --workdir={workdir}.')
  return trainer, state.ema_params, restored_step
