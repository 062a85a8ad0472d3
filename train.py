"""Trains a video diffusion model.

  python train.py --config=configs/default.py --workdir=runs/default \
      [--config.training.batch_size=32 ...]

Rerunning with the same --workdir resumes; a config change that would not fit
the run's checkpoints is refused unless --start_over moves the old run into
<workdir>/superseded/<time>/. SIGTERM (preemption) saves a checkpoint and exits
with status 75 (vdm.train.preemption.PREEMPTED_EXIT_CODE): rerun to resume.

Multi-host: launch one process per host; JAX's runtime is started from the
cluster environment (SLURM, TPU pods) or from --coordinator_address,
--num_processes and --process_id (vdm/cli.py; sample.py and evaluate.py take
the same flags).
"""

from absl import flags
from ml_collections import config_flags

from vdm import cli
from vdm.train import train_lib

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'configs/default.py', 'Path to a config file (get_config()).', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory; rerun to resume.', required=True)
_START_OVER = flags.DEFINE_bool(
    'start_over', False,
    'Train from scratch in an existing --workdir: first move its checkpoints/, config*.json, '
    'samples/, eval/ and event files into <workdir>/superseded/<time>/ (nothing is deleted). '
    'Needed to change a config key that changes what the checkpoints hold.')


def main(argv):
  del argv
  config, workdir = _CONFIG.value, _WORKDIR.value
  hooks = []
  if config.eval.every_steps:
    from vdm.evaluation import periodic  # pylint: disable=g-import-not-at-top
    hooks.append(periodic.PeriodicEvaluation(config, workdir))
  # A preemption raises preemption.Preempted, a SystemExit: the process ends
  # with PREEMPTED_EXIT_CODE after the checkpoint is written.
  train_lib.train(config, workdir, hooks=hooks, start_over=_START_OVER.value)


if __name__ == '__main__':
  # Ctrl-C in the loop saves a checkpoint first (vdm.train.preemption); before
  # the loop, or at a second Ctrl-C, the process stops at once.
  cli.run(main, interrupted='stopped; the checkpoints on disk are complete, and a rerun '
                            'resumes from the newest')
