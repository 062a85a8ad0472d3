"""Training: the train state, one jitted sharded train step, and the loop.

The same code runs on one CPU and on a multi-host pod: parameters are created
already sharded by their logical axes (vdm/sharding.py), the global batch is
assembled from each process's share, and ``train_step`` is one ``jax.jit`` with
donated state. EMA weights live in the state and are what sampling and
evaluation use.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vdm import latent
from vdm import progress as progress_lib
from vdm import run_lib
from vdm import sharding
from vdm import video_io
from vdm.train import checkpoints
from vdm.train import host_memory
from vdm.train import preemption
from vdm.train import run_dir
from vdm.train import summaries
from vdm.train import train_state


TrainState = train_state.TrainState
make_optimizer = train_state.make_optimizer


class NonFiniteLossError(FloatingPointError):
  """Raised when the loss becomes NaN or infinite."""


class Trainer(train_state.StateLayout):
  """A run's state layout (method, optimizer, mesh) plus its compiled train step.

  Args:
    config: the full config; validated here.
    mesh: device mesh; built from config.sharding.mesh when None.
  """

  def __init__(self, config: ml_collections.ConfigDict, mesh=None):
    mesh = mesh if mesh is not None else sharding.create_mesh(config.sharding.mesh)
    # Checked before the state layout compiles its initialiser: a batch that
    # does not fit the mesh fails at once.
    divisor = sharding.batch_size_divisor(mesh) * config.training.grad_accum_steps
    if config.training.batch_size % divisor:
      raise ValueError(
          f'config.training.batch_size={config.training.batch_size} must be a multiple of '
          f'{divisor} (batch shards of the mesh {dict(mesh.shape)} x '
          'config.training.grad_accum_steps).')
    super().__init__(run_lib.resolve_latent_shape(resolve_text_vocabulary(config)), mesh)
    # Pixels, or the frozen autoencoder whose latents this run diffuses in.
    self.space = latent.space(config, self.mesh)
    # With latents stored by prepare.py the batch already holds them.
    self.encode_in_step = not config.data.get('latent_key', '')
    self.train_step = jax.jit(self._train_step, donate_argnums=0,
                              out_shardings=(self.state_shardings, sharding.replicated(self.mesh)))

  def init_state(self) -> TrainState:
    """A fresh state, with the pretrained runs the method declares restored into it."""
    pretrained = {name: run_lib.restore_pretrained(spec)
                  for name, spec in self.method.pretrained_runs().items()}
    return super().init_state(pretrained)
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

  def loss(self, params, batch: dict, rng: jax.Array) -> tuple[jax.Array, dict]:
    """Mean loss of a (micro-)batch under the method, and its metrics."""
    losses, metrics = self.method.loss(self.networks(params), batch, rng)
    return jnp.mean(losses), dict(metrics)

  def _train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    rng = jax.random.fold_in(state.rng, state.step)
    # Latents are encoded on the mesh inside the step (the identity for a
    # pixel run): the input pipeline stays the pixel one, and the frozen
    # encoder gets no gradient. Stored latents skip it.
    if self.encode_in_step:
      batch = dict(batch, video=self.space.encode(batch['video']))
    accum = self.config.training.grad_accum_steps
    grad_fn = jax.value_and_grad(self.loss, has_aux=True)
    if accum == 1:
      (loss, extra), grads = grad_fn(state.params, batch, rng)
    else:
      # Micro-batch i takes rows i::accum so every micro-batch stays spread
      # over all batch shards.
      per_row = {k: v for k, v in batch.items() if k != 'is_image'}
      micro = jax.tree.map(
          lambda v: jnp.swapaxes(v.reshape((v.shape[0] // accum, accum) + v.shape[1:]), 0, 1),
          per_row)

      def micro_batch(mb):
        return dict(mb, is_image=batch['is_image']) if 'is_image' in batch else mb

      def body(carry, xs):
        i, mb = xs
        (loss_i, extra_i), grads_i = grad_fn(state.params, micro_batch(mb),
                                             jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, carry, (loss_i, extra_i, grads_i)), None
      # The method's metrics are summed like the loss; their structure comes
      # from tracing one micro-batch's loss (no compute).
      (_, extra_shapes), _ = jax.eval_shape(
          grad_fn, state.params, micro_batch(jax.tree.map(lambda v: v[0], micro)), rng)
      zeros = (jnp.zeros(()), jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), extra_shapes),
               jax.tree.map(jnp.zeros_like, state.params))
      (loss, extra, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(accum), micro))
      loss, extra, grads = jax.tree.map(lambda x: x / accum, (loss, extra, grads))
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # Warm the EMA up: with a fixed 0.9999 the average would still be mostly
    # the random initialisation after thousands of steps.
    step = state.step.astype(jnp.float32)
    decay = jnp.minimum(self.config.optimizer.ema_decay, (1.0 + step) / (10.0 + step))
    ema = jax.tree.map(lambda e, p: e + (1.0 - decay) * (p - e), state.ema_params, params)
    # The norm of what trains (the one clipping sees): frozen groups left out.
    grad_norm = optax.tree.norm(train_state.zero_frozen(grads, self.frozen_mask))
    metrics = {**extra, 'loss': loss, 'grad_norm': grad_norm,
               'learning_rate': self.lr_schedule(state.step)}
    return state.replace(step=state.step + 1, params=params, ema_params=ema,
                         opt_state=opt_state), metrics

  def sample(self, params, rng: jax.Array, num_samples: int, *, num_frames: Optional[int] = None,
             labels: Optional[jax.Array] = None, text: Optional[np.ndarray] = None,
             progress: bool = False) -> np.ndarray:
    """Unconditional, class- or text-conditional samples with the sampling config.

    Args:
      params: network parameters (use state.ema_params).
      rng: PRNG key.
      num_samples: videos to draw.
      num_frames: frames per video; config.data.num_frames by default.
      labels: int [num_samples] for a class-conditional model (NULL_LABEL for
        unconditional draws); None draws labels 0, 1, 2, ... in turn.
      text: caption byte tokens int [num_samples, L] for a text model
        (vdm.models.tokenizer); None: the null text.
      progress: print a progress line over sampling steps.

    Returns:
      float32 [N, T, H, W, C] in [-1, 1].
    """
    c = self.config
    size, channels = self.method.frame_shape
    shape = (num_samples, num_frames or c.data.num_frames, size, size, channels)
    num_classes = self.method.num_classes()
    if num_classes and labels is None:
      labels = jnp.arange(num_samples) % num_classes
    fn = run_lib.model_fn(self.method, self.graphdef, params,
                          labels=labels if num_classes else None,
                          guidance_weight=c.sampling.guidance_weight,
                          text=text if self.method.takes_text() else None)
    videos = run_lib.sample(fn, rng, shape, run_lib.sampler_options(c, self.method,
                                                                    progress=progress))
    return latent.decode_videos(self.space, sharding.to_host(videos))


def resolve_text_vocabulary(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Fills config.model.text_vocabulary from the train split's captions, if a
  'words' tokenizer has none yet (in place); the run's config.json then holds
  it, so sampling and resuming tokenize the same way."""
  m = config.model
  if (m.get('text_encoder', '') != 'learned' or m.get('text_tokenizer', 'bytes') != 'words'
      or m.get('text_vocabulary', ())):
    return config
  from vdm.data import pipeline  # pylint: disable=g-import-not-at-top
  m.text_vocabulary = pipeline.caption_vocabulary(config)
  progress_lib.log(f'Text vocabulary: {len(m.text_vocabulary)} words of the captions of '
                   f'{config.data.dataset} {config.data.train_split!r}.')
  return config


def _describe_params(params, frozen_mask) -> str:
  """'N parameters', with how many of them are frozen when some are."""
  total = sum(x.size for x in jax.tree.leaves(params))
  if frozen_mask is None:
    return f'{total:,} parameters'
  frozen = sum(x.size for x, f in zip(jax.tree.leaves(params), jax.tree.leaves(frozen_mask)) if f)
  return f'{total:,} parameters ({frozen:,} of them frozen)'


def _warn_short_warmup(config: ml_collections.ConfigDict) -> None:
  """Says so when training ends before the learning-rate warm-up does."""
  steps, warmup = int(config.training.num_steps), int(config.optimizer.warmup_steps)
  if steps < warmup:
    # make_optimizer cuts the warm-up to the run, so the rate reaches its
    # peak only at the last step.
    progress_lib.log(
        f'warning: training.num_steps={steps} is below optimizer.warmup_steps={warmup}: the '
        f'whole run is warm-up, the learning rate reaching its peak only at the last step. '
        f'Lower it, e.g. --config.optimizer.warmup_steps={max(1, steps // 10)}.')


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
  """Samples with the EMA weights, writes workdir/samples/step_<n>.{gif,npz}.

  A text model's samples take the captions of the first clips of
  config.data.eval_split (saved beside the videos in the npz).
  """
  cfg = trainer.config
  n = cfg.training.num_samples
  text, extra = None, {}
  if trainer.method.takes_text():
    from vdm.data import pipeline  # pylint: disable=g-import-not-at-top
    batches = pipeline.make_eval_iterator(cfg, num_examples=n, batch_size=n, process_index=0,
                                          process_count=1)
    try:
      batch = next(iter(batches))
    finally:
      batches.close()
    text, extra['captions'] = batch['text'], batch['caption'].astype(str)
  videos = trainer.sample(params, jax.random.PRNGKey(cfg.training.seed + 7919), n, text=text)
  videos_u8 = video_io.to_uint8(videos)
  out_dir = os.path.join(workdir, 'samples')
  os.makedirs(out_dir, exist_ok=True)
  np.savez_compressed(os.path.join(out_dir, f'step_{step}.npz'), videos=videos_u8, **extra)
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
  change (vdm/train/run_dir.py). SIGTERM saves a checkpoint at the next step
  boundary (the same step on every process) and raises ``Preempted``.

  Args:
    config: the full config (configs/default.py documents every key).
    workdir: output directory: config.json (and config.<step>.json, every
      config the run has used), checkpoints/, samples/, events.
    hooks: called after every step as hook(step, state, checkpointer), on every
      process: periodic evaluation (vdm.evaluation.periodic.PeriodicEvaluation, passed
      in by train.py), and tests that stop a run at a chosen step.
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
    preemption.Preempted: SIGTERM (or, on one process, Ctrl-C) arrived; a
      checkpoint was saved (a SystemExit with status
      preemption.PREEMPTED_EXIT_CODE, or INTERRUPTED_EXIT_CODE for Ctrl-C).
  """
  from vdm.data import pipeline  # pylint: disable=g-import-not-at-top

  # First, before anything is written or compiled: refuse unsafe config changes
  # over an existing run, or move it aside on start_over.
  run_lib.resolve_latent_shape(config)  # Before the comparison: the saved config has it.
  resolve_text_vocabulary(config)  # Likewise.
  run_dir.prepare(config, workdir, start_over=start_over)
  _warn_short_warmup(config)
  trainer = Trainer(config)
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  info = pipeline.dataset_info(config)
  if info.get('prepared'):
    progress_lib.log(info['prepared'])
  if not trainer.encode_in_step:
    latent.check_stored_latents(trainer.space, info.get('latents'), config.data.dataset)
    progress_lib.log(f'Reading the latents stored in {config.data.dataset} '
                     f'(config.data.latent_key={config.data.latent_key!r}): the train step '
                     'runs no encoder.')
  num_classes = trainer.method.num_classes()
  if num_classes and info.get('num_classes') and info['num_classes'] > num_classes:
    raise ValueError(f'{config.data.dataset} has {info["num_classes"]} classes but '
                     f'config.model.num_classes={num_classes}.')
  ckpt = checkpoints.Checkpointer(os.path.join(workdir, 'checkpoints'),
                                  keep=config.training.keep_checkpoints,
                                  async_save=config.training.async_checkpoints)
  # A checkpoint that does not fit the model refuses; unreadable ones are
  # skipped, and if none is left training stops rather than start over them.
  start_step, state = run_dir.restore(ckpt, trainer.abstract_state, workdir)
  if state is None:
    start_step, state = 0, trainer.init_state()
    progress_lib.log(f'Initialised {_describe_params(state.params, trainer.frozen_mask)} '
                     f'on mesh {dict(trainer.mesh.shape)}.')
  else:
    progress_lib.log(f'Resumed from step {start_step} in {ckpt.directory}.')
  if is_main:
    run_dir.record_config(config, workdir, start_step)  # Only now: the config fits the run.
  t = config.training
  writer = summaries.create_writer(workdir, enabled=is_main)
  batches = pipeline.make_train_iterator(config, start_step=start_step)
  pending, pending_from = [], start_step
  step, tick, tick_step = start_step, time.time(), start_step
  step_fn = None
  rate = progress_lib.Rate()  # The ETA's: no figure until the second log line.
  preempt = preemption.PreemptionWatcher()
  try:
    while step < t.num_steps:
      batch = sharding.global_batch(next(batches), trainer.mesh)
      if step_fn is None:
        step_fn = trainer.compile_train_step(state, batch)
        tick = time.time()  # Steps/s of the first interval leave the compile out.
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
        rate.mark(step)
        eta = rate.eta(t.num_steps - step)
        progress_lib.log(
            f'step {step}/{t.num_steps}  loss {scalars["loss"]:.4f}  '
            f'lr {scalars["learning_rate"]:.2e}  grad_norm {scalars["grad_norm"]:.3f}  '
            f'{steps_per_s:.2f} steps/s  {scalars["examples_per_sec"]:.1f} ex/s'
            + ('' if eta is None else f'  ETA {progress_lib.format_duration(eta)}'))
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
        preemption.stop(step, ckpt, preempt.signal_name)
      if t.num_samples and ((t.sample_every and step % t.sample_every == 0) or is_last):
        path = write_samples(trainer, state.ema_params, step, workdir, writer if is_main else None)
        progress_lib.log(f'Wrote samples to {path}')
  finally:
    preempt.close()
    ckpt.close()
    writer.close()
    getattr(batches, "close", lambda: None)()
  if is_main:
    samples = f'; samples: {os.path.join(workdir, "samples")}' if t.num_samples else ''
    print(f'Done: {step} steps. Checkpoints: {ckpt.directory}{samples}; TensorBoard: '
          f'tensorboard --logdir={workdir}', flush=True)
  return state
