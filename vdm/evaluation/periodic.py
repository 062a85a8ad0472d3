"""The training hook that evaluates FVD/KVD of the EMA weights every config.eval.every_steps."""

from __future__ import annotations

import os
from typing import Optional

import jax
import ml_collections
from flax import nnx

from vdm import methods
from vdm import run_lib
from vdm.evaluation import evaluate_lib
from vdm.evaluation import records
from vdm.train import summaries


class PeriodicEvaluation:
  """A training hook: FVD/KVD of the EMA weights every config.eval.every_steps.

  ``train.py`` passes it to ``train_lib.train(hooks=...)``; training itself
  knows nothing of evaluation. It samples on the training mesh, where the EMA
  weights lie, and uses config.eval.num_samples,
  config.eval.batch_size, the eval split, seed 0 and unconditional mode ('i2v'
  for methods conditioned on a first frame), so
  the figure equals what `python evaluate.py --workdir=...
  --checkpoint_step=<step>` reports for the same checkpoint. Every process
  calls it (sampling is one jitted program); process 0 writes
  workdir/eval/<step>.json, prints the JSON line and logs the scalars 'fvd'
  and 'kvd' to TensorBoard.

  Args:
    config: the run's config (checked now, so a bad setting fails before
      training starts).
    workdir: the run's workdir.
    writer: a metric writer for the scalars (write_scalars); process 0
      makes one on workdir (vdm.train.summaries) when None.
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, writer=None):
    # A method conditioned on a first frame is evaluated in i2v mode.
    self.mode = 'i2v' if methods.get_method(config).conditions_on_first_frame else 'unconditional'
    evaluate_lib.check_config(config, self.mode)
    self.config, self.workdir = config, workdir
    self.every, self.last = int(config.eval.every_steps), int(config.training.num_steps)
    self._static = None  # (method, graphdef), built at the first evaluation.
    self._writer = writer

  def __call__(self, step: int, state, checkpointer) -> Optional[dict]:
    del checkpointer
    if not self.every or (step % self.every and step != self.last):
      return None
    if self._static is None:
      method = methods.get_method(self.config)
      self._static = (method, nnx.graphdef(nnx.eval_shape(lambda: method.build(nnx.Rngs(0)))))
    method, graphdef = self._static
    run = run_lib.Run(self.config, method, graphdef, state.ema_params, step)
    split = records.eval_split(self.config)
    # The training mesh, where the EMA weights already lie (and the one the
    # trainer's latent space, cached per mesh, was restored on).
    mesh = jax.tree.leaves(state.ema_params)[0].sharding.mesh
    result = evaluate_lib.model_eval(run, num=int(self.config.eval.num_samples), split=split,
                         mode=self.mode, context_frames=1,
                         batch_size=int(self.config.eval.batch_size), seed=0, cache_dir=None,
                         mesh=mesh)
    result['workdir'] = self.workdir
    records.emit(result, os.path.join(self.workdir, 'eval',
                                           records.result_name(step, self.mode, 1)))
    if jax.process_index() == 0:
      if self._writer is None:
        self._writer = summaries.create_writer(self.workdir)
      self._writer.write_scalars(
          step, {k: result[k] for k in evaluate_lib.SCALARS if k in result})
    return result
