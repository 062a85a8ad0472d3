"""Distillation of a trained run into a few-step student; docs/distillation.md.

Two stages, both this method (``config.method = 'distill'``), each one
train.py run whose teacher is a finished run:

  * guidance distillation (Meng et al., 2023), ``num_steps = 0`` with
    ``config.model.guidance_embed``: the student takes the guidance weight w
    as an input and learns, at every t, the guided teacher's output
    (1 + w) out(z, c) - w out(z) for w ~ U[guidance_min, guidance_max]: one
    pass per sampling step instead of two;
  * progressive distillation (Salimans & Ho, 2022), ``num_steps = N``: the
    student learns to do in one DDIM step on the grid of N what the teacher
    does in two on the grid of 2N (vdm.diffusion.distillation). Its teacher
    is the run being distilled or the previous round's student, so rounds
    32 -> 16 -> 8 -> 4 are a chain of runs, each resumable on its own.

The student is the teacher's networks (the base method's, ``base_method``),
initialised from the teacher's EMA weights; the teacher is a frozen copy
inside the same train state, so a checkpoint is complete without the teacher
run and a resumed round continues exactly. Labels, text, 'cond' channels and
the latent space are the base method's (the plain method's: VideoFusion and
TRIP predict noise, see BASE_METHODS). Sampling a student
is sampling its base method's denoiser with the student's weights: every mode
of sample.py and evaluate.py, with DDIM on N steps (configs/distill.py sets
it) where the student was trained for it.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from vdm import methods
from vdm.diffusion import conditions
from vdm.diffusion import distillation
from vdm.diffusion import gaussian
from vdm.diffusion import guidance
from vdm.methods import base

STUDENT, TEACHER = 'student', 'teacher'  # The two networks, and their optimizer groups.
# Methods whose networks a student can take over. VideoFusion's and TRIP's
# predict noise (eps), and an eps-prediction gives the student's first step,
# from t = 1, its x only divided by alpha_1 ~ 5e-5 (see ``validate``).
BASE_METHODS = ('vdm',)


def default_config() -> ml_collections.ConfigDict:
  """The ``config.distill`` section, every key commented."""
  d = ml_collections.ConfigDict()
  d.teacher_workdir = ''           # Run to distil: a base_method run, or a previous 'distill' round.
  d.teacher_method = 'vdm'         # That run's config.method (configs/distill.py reads it).
  d.base_method = 'vdm'            # Whose networks and noise law: 'vdm' (BASE_METHODS; a 'distill' teacher's own).
  d.num_steps = 16                 # N: student's DDIM steps, the teacher doing 2N; 0 = match the teacher's output at every t (guidance distillation).
  d.round = 1                      # Rounds since the undistilled run (0: guidance distillation); names the run, changes nothing.
  d.teacher_guidance_embed = False  # The teacher takes w as an input (it was guidance-distilled).
  d.guidance_min = 0.0             # With config.model.guidance_embed: w ~ U[guidance_min, guidance_max] per example.
  d.guidance_max = 4.0
  return d


class Networks(nnx.Module):
  """The student being trained and its frozen teacher, same architecture."""

  def __init__(self, student: nnx.Module, teacher: nnx.Module):
    self.student = student
    self.teacher = teacher


def _with_method(config: ml_collections.ConfigDict, name: str,
                 guidance_embed: bool) -> ml_collections.ConfigDict:
  """``config`` as a run of method ``name`` (its networks with or without a w input)."""
  other = copy.deepcopy(config)
  other.method = name
  other.model.guidance_embed = guidance_embed
  return other


class Method(base.Method):
  """Distillation (``config.method = 'distill'``), see the module docstring."""

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    self.d = config.distill
    if self.d.base_method not in BASE_METHODS:
      raise ValueError(
          f'config.distill.base_method={self.d.base_method!r}: a student can take over the '
          f"networks of {BASE_METHODS} only; {self.d.base_method}'s predict noise (eps), "
          'which cannot give the x of its first step from t = 1 (docs/distillation.md).')
    self.student = methods.get_method(
        _with_method(config, self.d.base_method, bool(config.model.guidance_embed)))
    self.teacher = methods.get_method(
        _with_method(config, self.d.base_method, bool(self.d.teacher_guidance_embed)))

  def validate(self) -> None:
    d = self.d

    def fail(msg):
      raise ValueError(msg)
    self.student.validate()
    if not d.teacher_workdir:
      fail('config.distill.teacher_workdir is empty: name the run to distil, e.g. '
           '--config=configs/distill.py:runs/default.')
    if d.num_steps < 0:
      fail(f'config.distill.num_steps={d.num_steps} must be >= 1 (progressive '
           'distillation) or 0 (guidance distillation).')
    guided = bool(self.config.model.guidance_embed)
    if d.num_steps == 0 and not guided:
      fail('config.distill.num_steps=0 (guidance distillation) needs '
           'config.model.guidance_embed=True: the student takes w as an input.')
    if d.teacher_guidance_embed and not guided:
      fail('the teacher takes a guidance weight (config.distill.teacher_guidance_embed) '
           'but the student does not: set config.model.guidance_embed=True.')
    if guided and not (self.num_classes() or self.takes_text()):
      fail('config.model.guidance_embed needs a conditional model (labels or text) to guide.')
    if guided and not 0 <= d.guidance_min <= d.guidance_max:
      fail(f'config.distill.guidance_min={d.guidance_min} and guidance_max={d.guidance_max} '
           'must satisfy 0 <= min <= max.')
    if self.parameterization == 'eps':
      fail("distillation needs config.diffusion.parameterization 'v' or 'x': the student's "
           'first step, from t = 1, must predict x, which an eps-prediction gives only '
           'divided by alpha_1 ~ 5e-5. Distil a v- or x-parameterized run.')
    if self.config.diffusion.loss_type != 'v_mse':
      fail("distillation needs config.diffusion.loss_type='v_mse': it weights x-errors by "
           'SNR + 1, where eps_mse weights them by SNR, which vanishes at t = 1, the '
           "student's first and largest step.")
    if self.config.data.num_images:
      fail(f'config.data.num_images={self.config.data.num_images}: the student learns the '
           "teacher's video sampler, and appended images have none; set it to 0.")

  def build(self, rngs: nnx.Rngs) -> Networks:
    return Networks(self.student.build(rngs), self.teacher.build(rngs))

  def noise(self, rng, shape):
    return self.student.noise(rng, shape)

  def noise_frame_covariance(self, num_frames):
    return self.student.noise_frame_covariance(num_frames)

  def param_labels(self, params: Any) -> Any:
    return jax.tree_util.tree_map_with_path(lambda path, _: path[0].key, params)

  def lr_multipliers(self) -> Mapping[str, float]:
    return {STUDENT: 1.0, TEACHER: 0.0}

  def pretrained_runs(self) -> Mapping[str, base.Pretrained]:
    return {TEACHER: base.Pretrained('config.distill.teacher_workdir', self.d.teacher_workdir,
                                     self.d.teacher_method)}

  def initial_params(self, params: Any, pretrained: Mapping[str, Any]) -> Any:
    """Teacher and student both start as the teacher run's EMA weights.

    A 'distill' teacher contributes its student. The student's guidance
    input, when the teacher has none, keeps its initialisation, whose zero
    last layer leaves the student equal to the teacher at every w.

    Raises:
      ValueError: the teacher's networks do not fit this run's.
    """
    run = pretrained[TEACHER]
    weights = run.params[STUDENT] if self.d.teacher_method == 'distill' else run.params
    what = f'config.distill.teacher_workdir={self.d.teacher_workdir!r}'
    copied, teacher = base.copy_matching_params(params[TEACHER], weights, what)
    teacher_leaves = len(jax.tree.leaves(params[TEACHER]))
    if copied != teacher_leaves:
      raise ValueError(f'{what}: it holds {copied} of the {teacher_leaves} parameter arrays '
                       "of this run's teacher; its network config must match this run's.")
    _, student = base.copy_matching_params(params[STUDENT], weights, what)
    params = copy.copy(params)
    params[TEACHER], params[STUDENT] = teacher, student
    return params

  def denoiser(self, networks: Networks,
               conditioning: Optional[Mapping[str, jax.Array]] = None):
    return self.student.denoiser(networks.student, conditioning)

  def _teacher_x(self, networks: Networks, conditioning, condition) -> distillation.XFn:
    """The teacher's x-prediction under ``condition`` (guided at its w, if any)."""
    fn = self.teacher.denoiser(networks.teacher, conditioning)
    if self.d.teacher_guidance_embed:
      model_fn = lambda z, logsnr: fn(z, logsnr, condition)
    else:
      label, w = conditions.split_guidance_weight(condition)
      if w is not None:
        w = w.reshape(w.shape + (1, 1, 1, 1))  # [B, 1, 1, 1, 1] against [B, T, H, W, C]
      model_fn = guidance.label_model_fn(fn, label, w, guided=w is not None)
    return distillation.x_fn(model_fn, self.parameterization)

  def loss(self, networks: Networks, batch: Mapping[str, jax.Array],
           rng: jax.Array) -> base.LossOutput:
    d, diffusion = self.d, self.config.diffusion
    rng_t, rng_w, rng_loss = jax.random.split(rng, 3)
    video = batch['video']  # [B, T, H, W, C]
    conditioning = None if batch.get('cond') is None else {'cond': batch['cond']}
    condition = self.batch_condition(batch)
    metrics = {}
    if self.config.model.guidance_embed:
      w = jax.random.uniform(rng_w, video.shape[:1], jnp.float32, d.guidance_min,
                             d.guidance_max)  # [B]
      condition = conditions.with_guidance_weight(condition, w)
      metrics['guidance_weight'] = jnp.mean(w)

    def target(z, logsnr, t, condition):
      teacher_x = self._teacher_x(networks, conditioning, condition)
      if d.num_steps == 0:
        return teacher_x(z, logsnr)
      return distillation.target_x(teacher_x, z, t, d.num_steps, self.logsnr_fn)

    t = distillation.student_times(rng_t, video.shape[0], d.num_steps) if d.num_steps else None
    losses = gaussian.diffusion_loss(
        self.denoiser(networks, conditioning), video, rng_loss, logsnr_fn=self.logsnr_fn,
        parameterization=self.parameterization, loss_type=diffusion.loss_type, label=condition,
        cond_drop_prob=diffusion.cond_drop_prob, low_discrepancy=diffusion.low_discrepancy,
        t=t, noise_fn=self.noise, target_x_fn=target)
    return losses, metrics
