"""A training process for the tests: resume after SIGKILL or SIGTERM, multi-host.

Not a test itself; train_test.py launches it as a subprocess:
  python tests/train_worker.py WORKDIR DATA_DIR NUM_STEPS [--kill_at N]
      [--sigterm_at N [--sigterm_process I]]
      [--coordinator HOST:PORT --num_processes P --process_id I] [--dump FILE]
A SIGTERM'd run ends with status vdm.train.preemption.PREEMPTED_EXIT_CODE.
"""

import argparse
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_train_config(data_dir, num_steps):
  """The tiny config on the bundled dataset, with no periodic samples."""
  from configs import tiny
  config = tiny.get_config()
  config.data.data_dir = data_dir
  config.data.num_workers = 0
  config.training.num_steps = num_steps
  config.training.checkpoint_every = 2
  config.training.num_samples = 0
  config.training.async_checkpoints = False
  config.sharding.mesh = (('data', -1), ('fsdp', 1))
  return config


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('workdir')
  parser.add_argument('data_dir')
  parser.add_argument('num_steps', type=int)
  parser.add_argument('--kill_at', type=int, default=0)
  parser.add_argument('--sigterm_at', type=int, default=0)
  parser.add_argument('--sigterm_process', type=int, default=0)
  parser.add_argument('--coordinator', default='')
  parser.add_argument('--num_processes', type=int, default=1)
  parser.add_argument('--process_id', type=int, default=0)
  parser.add_argument('--dump', default='')
  args = parser.parse_args()

  import jax
  if args.coordinator:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  from vdm import sharding
  from vdm.train import train_lib
  sharding.initialize_distributed(args.coordinator, args.num_processes, args.process_id)

  def kill_after_checkpoint(step, state, ckpt):
    del state
    if step == args.kill_at:
      ckpt.wait()  # The step-N checkpoint is on disk; now die without cleanup.
      os.kill(os.getpid(), signal.SIGKILL)

  def sigterm(step, state, ckpt):
    del state, ckpt
    if step == args.sigterm_at and jax.process_index() == args.sigterm_process:
      os.kill(os.getpid(), signal.SIGTERM)  # What a scheduler sends before it kills.
      if jax.process_count() > 1:
        # JAX's preemption notifier polls for the signal about once a second:
        # hold this process (and, through the step's collectives, the others)
        # until every process knows, so that the agreed step is the next one.
        time.sleep(5)

  hooks = ([kill_after_checkpoint] if args.kill_at else []) + ([sigterm] if args.sigterm_at else [])
  state = train_lib.train(tiny_train_config(args.data_dir, args.num_steps), args.workdir,
                          hooks=hooks)
  if args.dump:
    import numpy as np
    from jax.experimental import multihost_utils
    leaves = jax.tree.leaves((state.params, state.ema_params, state.opt_state))
    leaves = [multihost_utils.process_allgather(x, tiled=True) for x in leaves]
    if jax.process_index() == 0:
      np.savez(args.dump, *[np.asarray(x) for x in leaves])


if __name__ == '__main__':
  main()
