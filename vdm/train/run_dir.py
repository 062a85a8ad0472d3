"""A run's directory across reruns: a rerun must never destroy a run.

Rerunning ``train.py`` with the same ``--workdir`` resumes. Before anything
is written, ``prepare`` compares the requested config with the run's
``config.json``: a change to any key that is not on the allow-list
``SAFE_TO_CHANGE`` (the model, the method, the diffusion, the data shapes, the
optimizer, ...: anything that changes what the checkpoints hold or mean, and
any key this list does not know, so that new methods and keys are protected
without touching it) refuses to resume, listing each differing key with its
old and new value and the two ways forward: another ``--workdir``, or
``--start_over``, which moves the old run into
``<workdir>/superseded/<time>/`` (``move_aside``; nothing is ever deleted).

``config.json`` is replaced only after a checkpoint has been restored (or a
fresh state made), by ``record_config``, which also keeps every config a run
has used as ``config.<step>.json``, ``<step>`` being where that config took
over. ``restore`` turns a checkpoint that does not fit the model into the same
refusal, and stops when no checkpoint of the run can be read, instead of
training from scratch over them.

Only process 0 writes or moves files; every process reads and decides alike.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import time
from typing import Any, Mapping, Optional

import jax
import ml_collections

from vdm import config_lib
from vdm import progress as progress_lib
from vdm import run_lib
from vdm.train import checkpoints

# Keys a resumed run may change. Each leaves the checkpoint's content and its
# meaning alone: how long and how often (the state holds no trace of these),
# what evaluation and periodic sampling do with the EMA weights (they never
# write the state), and where and how fast data is read (the batch of step s
# is a function of the data seed and s only). Everything else refuses.
SAFE_TO_CHANGE = frozenset({
    # How long to train: also the length of the learning-rate schedule, which
    # is a function of the step counter that the optimizer state does not store.
    'training.num_steps',
    'optimizer.warmup_steps',
    # Cadences and bookkeeping.
    'training.log_every',
    'training.checkpoint_every',
    'training.keep_checkpoints',
    'training.async_checkpoints',
    'training.sample_every',
    'training.num_samples',
    # Evaluation and sampling settings.
    'eval.every_steps',
    'eval.num_samples',
    'eval.batch_size',
    'sampling.sampler',
    'sampling.num_steps',
    'sampling.gamma',
    'sampling.pc_delta',
    'sampling.clip_x',
    'sampling.guidance_weight',
    'sampling.w_r',
    'sampling.time_grid',
    'sampling.long_method',
    'sampling.vidrd_overlap',
    'sampling.vidrd_noise_a',
    'sampling.vidrd_beta',
    'sampling.vidrd_order',
    'sampling.vidrd_sampler',
    # Where the data lives and what reads it (both loaders give the same batches).
    'data.data_dir',
    'data.loader',
    'data.num_workers',
    'data.prefetch',
    # Placement, not content: global shapes do not depend on the mesh, and
    # orbax reshards on restore. Should a change ever alter a shape, the
    # checkpoint's own layout check in ``restore`` still refuses it.
    'sharding.mesh',
    'sharding.rules',
    # Recomputes activations in the backward pass: the same function.
    'model.remat',
})

SUPERSEDED = 'superseded'
START_OVER_FLAG = '--start_over'

# What a run writes into its workdir; move_aside moves exactly these.
_RUN_OUTPUTS = ('checkpoints', 'samples', 'eval', 'config*.json', 'config*.json.tmp',
                'events.out.tfevents.*')


class _Missing:
  """A key a config does not have (and for which no default exists)."""

  def __repr__(self) -> str:
    return '(not set)'


MISSING = _Missing()


class ConfigMismatchError(ValueError):
  """The requested config cannot resume the run in its workdir.

  Attributes:
    differences: (key, old, new) of the keys that refuse, where known.
  """

  def __init__(self, message: str, differences: Optional[list] = None):
    super().__init__(message)
    self.differences = differences or []


def _plain(config: Any) -> dict:
  """A config as plain JSON values (tuples become lists), as config.json holds it."""
  if isinstance(config, ml_collections.ConfigDict):
    return json.loads(config.to_json())
  return json.loads(json.dumps(config))


def _flatten(tree: Mapping, prefix: str = '') -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    name = f'{prefix}{key}'
    if isinstance(value, Mapping):
      out.update(_flatten(value, name + '.'))
    else:
      out[name] = value
  return out


def _default_config() -> dict:
  return _plain(config_lib.default_config())


def config_differences(old: Any, new: Any, defaults: Any = None) -> list[tuple[str, Any, Any]]:
  """Keys whose values differ between two configs.

  Args:
    old: the config a run was written with (a ConfigDict or parsed JSON).
    new: the requested config.
    defaults: values for keys ``old`` lacks (a run written before the key
      existed); configs/default.py when None. A key in neither counts as
      ``MISSING``.

  Returns:
    Sorted (dotted key, old value, new value), values as plain JSON.
  """
  old_flat, new_flat = _flatten(_plain(old)), _flatten(_plain(new))
  default_flat = _flatten(_plain(defaults) if defaults is not None else _default_config())
  out = []
  for key in sorted(set(old_flat) | set(new_flat)):
    before = old_flat.get(key, default_flat.get(key, MISSING))
    after = new_flat.get(key, MISSING)
    if before != after:
      out.append((key, before, after))
  return out


def is_safe_to_change(key: str) -> bool:
  """Whether a resumed run may change the dotted config ``key``."""
  return key in SAFE_TO_CHANGE


def _format_value(value: Any) -> str:
  return repr(value) if value is MISSING else json.dumps(value)


def format_differences(differences: list[tuple[str, Any, Any]]) -> str:
  """One line per key, e.g. ``  model.base_channels 16 -> 32``."""
  return '\n'.join(f'  {key} {_format_value(old)} -> {_format_value(new)}'
                   for key, old, new in differences)


def _ways_forward(workdir: str) -> str:
  return (f'Nothing was changed in {workdir}. To resume this run, rerun without the changed '
          'overrides. Otherwise, either\n'
          '  - train into a new directory: another --workdir, or\n'
          f'  - start over in this one: add {START_OVER_FLAG} (train(..., start_over=True)), '
          f'which moves its checkpoints/, config*.json, samples/, eval/ and event files into '
          f'{os.path.join(workdir, SUPERSEDED, "<time>")}/ and trains from scratch; nothing '
          'is deleted.')


def read_run_config(workdir: str) -> Optional[ml_collections.ConfigDict]:
  """The run's config.json (with keys added since, at their defaults), or None."""
  if not os.path.exists(os.path.join(workdir, 'config.json')):
    return None
  return run_lib.load_config(workdir)


def _is_main() -> bool:
  return jax.process_index() == 0


def _sync(name: str) -> None:
  """Every process waits here until process 0 has arrived (multi-host only)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def prepare(config: ml_collections.ConfigDict, workdir: str, *, start_over: bool = False) -> None:
  """Checks that training may resume in ``workdir``; writes nothing unless told to.

  Call it before anything is written to ``workdir``.

  Args:
    config: the requested config.
    workdir: the run's directory (need not exist).
    start_over: move the existing run aside (``move_aside``) and let training
      start from scratch.

  Raises:
    ConfigMismatchError: the workdir holds checkpoints and the requested config
      differs from its config.json in a key not in ``SAFE_TO_CHANGE``.
  """
  if start_over:
    if _is_main():
      moved = move_aside(workdir)
      if moved:
        progress_lib.log(f'{START_OVER_FLAG}: moved the previous run into {moved}/; training from '
                         'scratch.')
    _sync('vdm.train.run_dir.start_over')
    return
  steps = checkpoints.list_steps(os.path.join(workdir, 'checkpoints'))
  if not steps:
    return  # Nothing to resume; record_config keeps any earlier config.
  old = read_run_config(workdir)
  if old is None:
    logging.warning('%s has checkpoints but no config.json: only the checkpoints\' own layout '
                    'can be checked against the config.', workdir)
    return
  differences = config_differences(old, config)
  unsafe = [d for d in differences if not is_safe_to_change(d[0])]
  if unsafe:
    raise ConfigMismatchError(
        f'Refusing to resume the run in {workdir}: the requested config differs from '
        f'{os.path.join(workdir, "config.json")} in keys that change what its checkpoints '
        f'(steps {", ".join(map(str, steps))}) hold or mean:\n{format_differences(unsafe)}\n'
        f'{_ways_forward(workdir)}\nKeys that may change on resume: '
        f'{", ".join(sorted(SAFE_TO_CHANGE))}.', unsafe)
  if differences and _is_main():
    progress_lib.log(f'Resuming {workdir} with changed settings (safe to change):\n'
                     f'{format_differences(differences)}')


def restore(ckpt: checkpoints.Checkpointer, abstract_state: Any,
            workdir: str) -> tuple[Optional[int], Any]:
  """The newest readable checkpoint of the run, refusing any that do not fit.

  Args:
    ckpt: the run's Checkpointer.
    abstract_state: the state the config builds (shapes, dtypes, shardings).
    workdir: the run's directory, for the messages.

  Returns:
    (step, state), or (None, None) when the run has no checkpoint. Newer
    checkpoints that could not be read are moved into
    workdir/superseded/<time>-unreadable/ (training will write those steps
    again, and orbax refuses to overwrite a step).

  Raises:
    ConfigMismatchError: the newest readable checkpoint holds another state
      (a config change that config.json did not show).
    checkpoints.UnreadableCheckpointsError: checkpoints exist, none readable.
  """
  try:
    step, state = ckpt.restore(abstract_state)
  except checkpoints.CheckpointMismatchError as e:
    raise ConfigMismatchError(f'{e}\n{_ways_forward(workdir)}') from e
  except checkpoints.UnreadableCheckpointsError as e:
    raise checkpoints.UnreadableCheckpointsError(
        f'{e} Training did not start: starting from scratch would overwrite this run. '
        'Put readable checkpoints back (e.g. from a backup), or add '
        f'{START_OVER_FLAG} to move them into '
        f'{os.path.join(workdir, SUPERSEDED, "<time>")}/ and train from scratch.',
        e.steps) from e
  unreadable = [s for s in ckpt.all_steps() if step is not None and s > step]
  if unreadable:
    if _is_main():
      dest = _new_superseded_dir(workdir, '-unreadable')
      os.makedirs(os.path.join(dest, 'checkpoints'))
      for s in unreadable:
        os.rename(ckpt.path(s), os.path.join(dest, 'checkpoints', str(s)))
      # One line: what was unreadable, what is used, where the bad ones went
      # (out of the way, since training writes those steps again).
      progress_lib.log(f'warning: {checkpoints.describe_skipped(ckpt.skipped)}; resuming '
                       f'from step {step}; moved {unreadable} into {dest}/checkpoints/.')
    _sync('vdm.train.run_dir.unreadable')
    ckpt.all_steps()  # Re-reads the directory: orbax keeps a cached list.
  return step, state


def record_config(config: ml_collections.ConfigDict, workdir: str, step: int) -> str:
  """Makes ``config`` the run's config.json and keeps it as config.<step>.json.

  Call after the state was restored from checkpoint ``step`` (or made fresh,
  step 0). A different config that already took over at the same step (an
  attempt that died before its first checkpoint) is kept too: the new one
  becomes config.<step>.<n>.json.

  Args:
    config: the config training continues with.
    workdir: the run's directory.
    step: the step this config takes over at.

  Returns:
    The path of the history file written (or already holding this config).
  """
  plain = _plain(config)
  name, n = f'config.{step}.json', 0
  while os.path.exists(os.path.join(workdir, name)):
    with open(os.path.join(workdir, name)) as f:
      if json.load(f) == plain:
        break
    n += 1
    name = f'config.{step}.{n}.json'
  else:
    config_lib.save_config(config, workdir, name)
  config_lib.save_config(config, workdir)
  return os.path.join(workdir, name)


def _new_superseded_dir(workdir: str, suffix: str = '') -> str:
  """A fresh workdir/superseded/<time><suffix> path (not created)."""
  stamp = time.strftime('%Y%m%d-%H%M%S') + suffix
  dest, n = os.path.join(workdir, SUPERSEDED, stamp), 0
  while os.path.exists(dest):
    n += 1
    dest = os.path.join(workdir, SUPERSEDED, f'{stamp}-{n}')
  return dest


def move_aside(workdir: str) -> Optional[str]:
  """Moves a run's outputs into workdir/superseded/<time>/; deletes nothing.

  Args:
    workdir: the run's directory.

  Returns:
    The directory the outputs went to, or None when there was nothing to move.
  """
  names = sorted({os.path.basename(p) for pattern in _RUN_OUTPUTS
                  for p in glob.glob(os.path.join(glob.escape(workdir), pattern))})
  if not names:
    return None
  dest = _new_superseded_dir(workdir)
  os.makedirs(dest)
  for name in names:
    # A rename within one file system: the checkpoints are not copied, and a
    # crash leaves every file either here or there.
    os.rename(os.path.join(workdir, name), os.path.join(dest, name))
  return dest
