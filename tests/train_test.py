"""Training: sharded steps equal the single-device step, exact resume after
SIGKILL and SIGTERM (preemption), two CPU processes as two hosts, non-finite
losses, bad checkpoints, failed checkpoint writes, and reruns with a changed
config that must never destroy a run."""

import asyncio
import errno
import gc
import json
import logging
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from vdm import run_lib
from vdm import sharding
from vdm.train import checkpoints
from vdm.train import preemption
from vdm.train import run_dir
from vdm.train import train_lib
from vdm.train import train_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, 'tests', 'train_worker.py')
sys.path.insert(0, os.path.join(REPO, 'tests'))
import cli  # noqa: E402  pylint: disable=g-import-not-at-top
import train_worker  # noqa: E402  pylint: disable=g-import-not-at-top


def synthetic_batch(config, seed=0):
  """A local batch of uniform noise videos and random labels in ``config``'s shapes."""
  rng = np.random.default_rng(seed)
  b, t, k = config.training.batch_size, config.data.num_frames, config.data.num_images
  s, c = config.data.image_size, config.data.channels
  return {'video': rng.uniform(-1, 1, (b, t + k, s, s, c)).astype(np.float32),
          'label': rng.integers(0, 10, (b,)).astype(np.int32),
          'is_image': np.array([False] * t + [True] * k)}


def _run_steps(config, mesh, num_steps=2):
  trainer = train_lib.Trainer(config, mesh=mesh)
  state = trainer.init_state()
  losses, step_fn = [], None
  for step in range(num_steps):
    batch = sharding.global_batch(synthetic_batch(config, step), mesh)
    # The ahead-of-time compiled step, as train() runs it.
    step_fn = step_fn or trainer.compile_train_step(state, batch)
    state, metrics = step_fn(state, batch)
    losses.append(float(metrics['loss']))
  return losses, jax.device_get(state.params), state


@pytest.mark.slow
def test_sharded_steps_match_single_device():
  config = tiny.get_config()
  config.training.batch_size = 8
  config.model.dropout = 0.1  # Dropout masks must not depend on the sharding either.
  ref_losses, ref_params, _ = _run_steps(config, sharding.create_mesh((('data', 1), ('fsdp', 1))))
  # Both axes split at once: the batch 2-way, parameters and optimizer state 4-way.
  losses, params, state = _run_steps(config, sharding.create_mesh((('data', 2), ('fsdp', 4))))
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # FSDP really shards: some kernel is split over the 'fsdp' axis.
  specs = [x.sharding.spec for x in jax.tree.leaves(state.params)]
  assert any('fsdp' in spec for spec in specs)


def test_frozen_gradients_neither_clip_nor_move_the_trained_group():
  # Two Adam steps of a trained group 'a' (gradient norm under the clip) beside
  # a frozen group 'b' whose gradient is huge in the first step only: the
  # trained group must move exactly as it does alone. Were 'b' in the clipping
  # norm, 'a''s first gradient would shrink 1e6-fold and Adam's moments, which
  # mix the two steps, would give other updates.
  config = tiny.get_config()
  config.optimizer.grad_clip = 1.0
  config.optimizer.warmup_steps = 0
  config.optimizer.decay = 'none'  # The full learning rate from the first step.
  params = {'a': jnp.array([0.3, -0.2]), 'b': jnp.array([1.0, 2.0, 3.0])}
  labels = {'a': 'trained', 'b': 'frozen'}
  tx, _ = train_state.make_optimizer(config, labels, {'trained': 1.0, 'frozen': 0.0})
  alone, _ = train_state.make_optimizer(config)
  grads = [{'a': jnp.array([0.1, 0.2]), 'b': jnp.full(3, 1e6)},
           {'a': jnp.array([-0.3, 0.05]), 'b': jnp.zeros(3)}]
  state, alone_state = tx.init(params), alone.init({'a': params['a']})
  for g in grads:
    updates, state = tx.update(g, state, params)
    alone_updates, alone_state = alone.update({'a': g['a']}, alone_state, {'a': params['a']})
    assert float(jnp.abs(alone_updates['a']).min()) > 1e-5
    np.testing.assert_allclose(updates['a'], alone_updates['a'], rtol=1e-6)
    np.testing.assert_array_equal(updates['b'], 0.0)
  mask = train_state.frozen_mask(labels, {'trained': 1.0, 'frozen': 0.0})
  assert float(jnp.linalg.norm(train_state.zero_frozen(grads[0], mask)['a'])) == pytest.approx(
      float(jnp.linalg.norm(grads[0]['a'])))
  assert train_state.frozen_mask(labels, {'trained': 1.0, 'frozen': 0.5}) is None


@pytest.mark.slow
def test_init_state_twice_gives_the_same_state():
  # The compiled initialiser is dropped after its first use; a second call
  # compiles it again and must give the same (seeded) state.
  trainer = train_lib.Trainer(tiny.get_config(), mesh=sharding.create_mesh((('data', 2), ('fsdp', 1))))
  first = jax.device_get(trainer.init_state())
  second = trainer.init_state()
  for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second)):
    np.testing.assert_array_equal(a, b)
  assert dict(jax.tree.leaves(second.params)[0].sharding.mesh.shape) == {'data': 2, 'fsdp': 1}


def test_batch_size_must_fit_mesh():
  config = tiny.get_config()
  config.training.batch_size = 6
  with pytest.raises(ValueError, match=r'config\.training\.batch_size=6'):
    train_lib.Trainer(config, mesh=sharding.create_mesh((('data', 4), ('fsdp', 1))))


@pytest.mark.slow
def test_grad_accumulation_runs():
  config = tiny.get_config()
  config.training.batch_size = 4
  config.training.grad_accum_steps = 2
  losses, _, _ = _run_steps(config, sharding.create_mesh((('data', 2), ('fsdp', 1))), 1)
  assert np.isfinite(losses).all() and 0.2 < losses[0] < 5.0


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('tfds'))
  from vdm.data import moving_digits
  moving_digits.prepare(path, 32, num_train=32, num_test=8, verbose=False)
  return path


def _load(path):
  with np.load(path) as f:
    return [f[k] for k in sorted(f.files, key=lambda k: int(k.split('_')[1]))]


def _assert_same_state(path_a, path_b):
  a, b = _load(path_a), _load(path_b)
  assert len(a) == len(b)
  # Two hosts sum gradients in another order than one process, and Adam's
  # division by sqrt(v) turns that rounding into up to ~1.3e-6 on near-zero
  # weights; one missed or repeated step moves weights by about the learning
  # rate (1e-3 after the tiny config's 2-step warm-up), hundreds of times atol.
  for x, y in zip(a, b):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=3e-6)


@pytest.fixture(scope='module')
def uninterrupted_run(tmp_path_factory, data_dir):
  """Params, EMA and optimizer state after 4 uninterrupted steps, one process."""
  workdir = str(tmp_path_factory.mktemp('full'))
  subprocess.run([sys.executable, WORKER, workdir, data_dir, '4', '--dump', workdir + '.npz'],
                 env=cli.env(), check=True, timeout=600)
  return workdir + '.npz'


@pytest.mark.slow
@pytest.mark.multiprocess
def test_resume_after_sigkill_and_sigterm_equals_uninterrupted(tmp_path, data_dir,
                                                               uninterrupted_run):
  env = cli.env()
  resumed = str(tmp_path / 'resumed')
  killed = subprocess.run([sys.executable, WORKER, resumed, data_dir, '4', '--kill_at', '2'],
                          env=env, timeout=600)
  assert killed.returncode == -9  # Died by SIGKILL, right after checkpoint 2.
  assert checkpoints.Checkpointer(os.path.join(resumed, 'checkpoints')).all_steps() == [2]
  # Preempted after step 3: a checkpoint off the every-2-steps cadence, and the
  # distinct exit status.
  preempted = subprocess.run([sys.executable, WORKER, resumed, data_dir, '4', '--sigterm_at', '3'],
                             env=env, timeout=600, capture_output=True, text=True)
  assert preempted.returncode == preemption.PREEMPTED_EXIT_CODE, preempted.stderr[-3000:]
  assert 'Resumed from step 2' in preempted.stderr
  assert 'Preempted (SIGTERM): saved checkpoint 3' in preempted.stdout
  assert checkpoints.Checkpointer(os.path.join(resumed, 'checkpoints')).all_steps() == [2, 3]
  out = subprocess.run([sys.executable, WORKER, resumed, data_dir, '4', '--dump', resumed + '.npz'],
                       env=env, check=True, timeout=600, capture_output=True, text=True)
  assert 'Resumed from step 3' in out.stderr
  _assert_same_state(resumed + '.npz', uninterrupted_run)


def _two_hosts(workdir, data_dir, *extra):
  """Runs the worker as two CPU processes; returns (return codes, outputs)."""
  port = cli.free_port()
  env = cli.env()
  procs = [subprocess.Popen(
      [sys.executable, WORKER, workdir, data_dir, '4', *extra,
       '--coordinator', f'127.0.0.1:{port}', '--num_processes', '2', '--process_id', str(i)],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  return [p.returncode for p in procs], outputs


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_hosts_preempted_then_resumed_train_like_one_process(tmp_path, data_dir,
                                                                 uninterrupted_run):
  """Two CPU processes as two hosts, one of them SIGTERM'd, reach the
  one-process parameters after a rerun.

  Each host reads only its half of every global batch; the global batch, and
  so the training, must not depend on how many processes share it. Only
  process 1 receives SIGTERM (after step 1); both must stop at the same step
  (JAX's preemption sync), write that checkpoint together and exit with the
  preemption status.
  """
  two = str(tmp_path / 'two')
  codes, outputs = _two_hosts(two, data_dir, '--sigterm_at', '1',
                              '--sigterm_process', '1')
  for code, out in zip(codes, outputs):
    assert code == preemption.PREEMPTED_EXIT_CODE, out[-3000:]
  # JAX notices the signal by polling (about once a second), so which step the
  # hosts agree on depends on timing (1, 2 or 3 of 4 here, 2 on an idle
  # machine); what must hold is that both agree, save it, and resume exactly.
  steps = [re.search(r'Preempted \(SIGTERM\): saved checkpoint (\d+)', out) for out in outputs]
  assert all(steps), outputs
  agreed = int(steps[0].group(1))
  assert agreed in (1, 2, 3) and int(steps[1].group(1)) == agreed
  assert 'Process 1: Preempted' in outputs[1]
  saved = checkpoints.Checkpointer(os.path.join(two, 'checkpoints')).all_steps()
  assert saved[-1] == agreed and set(saved) <= {1, 2, 3}
  codes, outputs = _two_hosts(two, data_dir, '--dump', two + '.npz')
  for code, out in zip(codes, outputs):
    assert code == 0, out[-3000:]
  # Only process 0 reports progress.
  assert f'Resumed from step {agreed}' in outputs[0]
  assert 'Done: 4 steps' in outputs[0] and 'Done: 4 steps' not in outputs[1]
  _assert_same_state(two + '.npz', uninterrupted_run)


@pytest.mark.slow
def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, data_dir, monkeypatch):
  config = tiny.get_config()
  config.data.data_dir = data_dir
  config.data.num_workers = 0
  config.training.num_steps = 6
  config.training.log_every = 1
  config.training.checkpoint_every = 2
  config.training.num_samples = 0
  config.sharding.mesh = (('data', 1), ('fsdp', 1))
  original_loss, original_step = train_lib.Trainer.loss, train_lib.Trainer._train_step

  def tracking_step(self, state, batch):
    self._current_step = state.step  # Traced: the poisoned loss reads it below.
    return original_step(self, state, batch)

  def nan_after_two(self, params, batch, rng):
    """The true loss for steps 1-2, NaN from step 3 on."""
    loss, metrics = original_loss(self, params, batch, rng)
    return loss + jnp.where(self._current_step >= 2, jnp.nan, 0.0), metrics
  monkeypatch.setattr(train_lib.Trainer, 'loss', nan_after_two)
  monkeypatch.setattr(train_lib.Trainer, '_train_step', tracking_step)
  workdir = str(tmp_path / 'nan')
  with pytest.raises(train_lib.NonFiniteLossError, match='at step 3'):
    train_lib.train(config, workdir)
  assert checkpoints.Checkpointer(os.path.join(workdir, 'checkpoints')).all_steps() == [2]


def test_corrupted_latest_checkpoint_falls_back(tmp_path, caplog):
  state = {'w': jnp.arange(6.0).reshape(2, 3), 'step': jnp.int32(0)}
  ckpt = checkpoints.Checkpointer(str(tmp_path), keep=3, async_save=False)
  ckpt.save(1, state)
  ckpt.save(2, {'w': state['w'] + 1, 'step': jnp.int32(2)})
  ckpt.wait()
  # Garble every file of checkpoint 2's array data.
  for root, _, files in os.walk(tmp_path / '2'):
    for name in files:
      if 'METADATA' not in name and 'commit' not in name:
        with open(os.path.join(root, name), 'wb') as f:
          f.write(b'garbage')
  step, restored = checkpoints.Checkpointer(str(tmp_path)).restore(checkpoints.abstract_like(state))
  assert step == 1
  np.testing.assert_array_equal(restored['w'], state['w'])
  with pytest.raises(FileNotFoundError, match='no checkpoint for step 7'):
    checkpoints.Checkpointer(str(tmp_path)).restore(checkpoints.abstract_like(state), step=7)


def test_incomplete_checkpoint_is_ignored(tmp_path):
  state = {'w': jnp.ones(3)}
  ckpt = checkpoints.Checkpointer(str(tmp_path), async_save=False)
  ckpt.save(1, state)
  ckpt.wait()
  # What a crash mid-write leaves behind: orbax's temporary directory.
  shutil.copytree(tmp_path / '1', tmp_path / '2.orbax-checkpoint-tmp-123')
  assert checkpoints.Checkpointer(str(tmp_path)).all_steps() == [1]


def test_mismatched_checkpoint_is_not_skipped_as_corrupted(tmp_path):
  ckpt = checkpoints.Checkpointer(str(tmp_path), async_save=False)
  ckpt.save(1, {'w': jnp.ones((2, 3))})
  ckpt.save(2, {'w': jnp.ones((2, 3))})
  ckpt.close()
  other_model = checkpoints.abstract_like({'w': jnp.ones((2, 4)), 'b': jnp.ones(4)})
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match=r'(?s)Checkpoint 2 .*w: stored float32\[2, 3\], expected float32\[2, 4\]'
                           r'.*not corruption') as e:
    checkpoints.Checkpointer(str(tmp_path)).restore(other_model)
  assert e.value.step == 2 and ('b', 'absent', 'float32[4]') in e.value.differences


@pytest.mark.parametrize('async_save', [False, True])
def test_failed_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch, async_save):
  # keep=1: a write that were taken for finished would garbage-collect step 1.
  ckpt = checkpoints.Checkpointer(str(tmp_path), keep=1, async_save=async_save)
  good = {'w': jnp.arange(6.0).reshape(2, 3)}
  ckpt.save(1, good)
  ckpt.wait()
  # The fault strikes inside orbax's array writer, after the checkpoint's
  # temporary directory exists: a half-written checkpoint is left on disk.
  from orbax.checkpoint._src.serialization import jax_array_handlers

  async def disk_full(*args, **kwargs):
    del args, kwargs
    raise OSError(errno.ENOSPC, 'No space left on device')
  monkeypatch.setattr(jax_array_handlers.serialization, 'async_serialize_from_host', disk_full)
  with pytest.raises(checkpoints.CheckpointWriteError,
                     match=rf'(?s)checkpoint 2 to {tmp_path}/2 failed .*No space left.*'
                           rf'last good checkpoint is step 1 \({tmp_path}/1\)'):
    ckpt.save(2, {'w': good['w'] + 1})
    ckpt.wait()  # An asynchronous write fails here (or at the next save).
  ckpt.close()  # Reported once; closing does not raise it again.
  monkeypatch.undo()
  assert any(name.startswith('2.') for name in os.listdir(tmp_path))  # The half-written one.
  reopened = checkpoints.Checkpointer(str(tmp_path))
  assert reopened.all_steps() == [1]
  step, restored = reopened.restore(checkpoints.abstract_like(good))
  assert step == 1
  np.testing.assert_array_equal(restored['w'], good['w'])


def _tree_snapshot(root):
  """(path, size, mtime) of everything under root: equal snapshots, nothing written."""
  out = []
  for dirpath, dirnames, filenames in os.walk(root):
    for name in sorted(dirnames + filenames):
      st = os.stat(os.path.join(dirpath, name))
      out.append((os.path.relpath(os.path.join(dirpath, name), root), st.st_size, st.st_mtime_ns))
  return sorted(out)


def _rerun_config(data_dir, **changes):
  """The worker's config, as a rerun in this process (one device) asks for it."""
  config = train_worker.tiny_train_config(data_dir, 4)
  config.sharding.mesh = (('data', 1), ('fsdp', 1))  # Safe to change: placement only.
  for dotted, value in changes.items():
    section, key = dotted.split('.')
    config[section][key] = value
  return config


@pytest.fixture
def finished_run(tmp_path, uninterrupted_run):
  """A copy of the uninterrupted 4-step run's workdir (checkpoints 2 and 4)."""
  workdir = str(tmp_path / 'run')
  shutil.copytree(uninterrupted_run[:-len('.npz')], workdir)
  return workdir


@pytest.mark.slow
def test_rerun_with_changed_model_is_refused_and_num_steps_may_change(finished_run, data_dir,
                                                                      capsys):
  """Two commands: a changed model.base_channels must not destroy the run."""
  workdir = finished_run
  before = _tree_snapshot(workdir)
  with pytest.raises(run_dir.ConfigMismatchError,
                     match=r'(?s)model\.base_channels 16 -> 32.*another --workdir.*--start_over.*'
                           'superseded') as e:
    train_lib.train(_rerun_config(data_dir, **{'model.base_channels': 32,
                                               'training.num_steps': 6}), workdir)
  assert [key for key, _, _ in e.value.differences] == ['model.base_channels']
  assert _tree_snapshot(workdir) == before  # Nothing written, moved or deleted.
  assert run_lib.load_config(workdir).model.base_channels == 16

  # num_steps is safe to change: the run resumes and goes on to step 6.
  capsys.readouterr()
  state = train_lib.train(_rerun_config(data_dir, **{'training.num_steps': 6}), workdir)
  err = capsys.readouterr().err
  assert 'training.num_steps 4 -> 6' in err and 'Resumed from step 4' in err
  assert int(state.step) == 6
  assert checkpoints.Checkpointer(os.path.join(workdir, 'checkpoints')).all_steps() == [2, 4, 6]
  # Every config the run used is kept; config.json is the one in use.
  with open(os.path.join(workdir, 'config.0.json')) as f:
    assert json.load(f)['training']['num_steps'] == 4
  with open(os.path.join(workdir, 'config.4.json')) as f, \
      open(os.path.join(workdir, 'config.json')) as g:
    assert json.load(f) == json.load(g)
  assert run_lib.load_config(workdir).training.num_steps == 6


def test_start_over_moves_the_run_aside(finished_run, data_dir):
  workdir = finished_run
  config = _rerun_config(data_dir, **{'model.base_channels': 32})
  run_dir.prepare(config, workdir, start_over=True)
  [moved] = os.listdir(os.path.join(workdir, 'superseded'))
  moved = os.path.join(workdir, 'superseded', moved)
  assert checkpoints.list_steps(os.path.join(moved, 'checkpoints')) == [2, 4]
  assert {'config.json', 'config.0.json'} <= set(os.listdir(moved))
  assert sorted(os.listdir(workdir)) == ['superseded']
  run_dir.prepare(config, workdir)  # Nothing left to resume: the new model may start.


def test_unreadable_checkpoints_stop_without_training(finished_run, data_dir, monkeypatch):
  workdir = finished_run
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  # Checkpoint 4: truncated array files. Checkpoint 2: garbled tree metadata.
  for root, _, files in os.walk(os.path.join(ckpt_dir, '4')):
    for name in files:
      if os.path.basename(root) == 'd':  # Array data.
        path = os.path.join(root, name)
        os.truncate(path, os.path.getsize(path) // 2)
  for root, _, files in os.walk(os.path.join(ckpt_dir, '2')):
    for name in files:
      if name == '_METADATA':
        with open(os.path.join(root, name), 'w') as f:
          f.write('{garbage')
  before = _tree_snapshot(workdir)

  def no_training(*args, **kwargs):
    raise AssertionError('training started over unreadable checkpoints')
  monkeypatch.setattr(train_lib.Trainer, 'init_state', no_training)
  monkeypatch.setattr(train_lib.Trainer, 'compile_train_step', no_training)
  with pytest.raises(checkpoints.UnreadableCheckpointsError,
                     match=r'(?s)None of the 2 checkpoints .*step 4 .*step 2 .*did not start'):
    train_lib.train(_rerun_config(data_dir), workdir)
  assert _tree_snapshot(workdir) == before


def test_a_run_shorter_than_its_warmup_is_warned_of(capsys):
  config = tiny.get_config()
  config.training.num_steps, config.optimizer.warmup_steps = 50, 100
  train_lib._warn_short_warmup(config)  # pylint: disable=protected-access
  err = capsys.readouterr().err
  assert 'num_steps=50 is below optimizer.warmup_steps=100' in err
  assert '--config.optimizer.warmup_steps=5' in err
  config.optimizer.warmup_steps = 50
  train_lib._warn_short_warmup(config)  # pylint: disable=protected-access
  assert capsys.readouterr().err == ''


def _truncate_arrays(step_dir, size=None):
  """Cuts every array-data file of a checkpoint (to half, or to ``size`` bytes)."""
  for root, _, files in os.walk(step_dir):
    for name in files:
      if os.path.basename(root) == 'd':  # Array data.
        path = os.path.join(root, name)
        os.truncate(path, os.path.getsize(path) // 2 if size is None else size)


def test_sampling_passes_an_unreadable_checkpoint_with_one_warning_line(finished_run, capfd):
  _truncate_arrays(os.path.join(finished_run, 'checkpoints', '4'))
  capfd.readouterr()
  run = run_lib.restore_run(finished_run)
  assert run.step == 2
  lines = [l for l in capfd.readouterr().err.splitlines() if l.strip()]
  assert len(lines) == 1, lines[:20]
  assert re.fullmatch(r'warning: checkpoint 4 is unreadable \(.{10,}\); using step 2 \(the '
                      r'unreadable one is left in .*/checkpoints\)\.', lines[0]), lines[0]
  assert 'TensorStore' not in lines[0] and 'tensorstore_spec' not in lines[0]


def test_reads_abandoned_by_a_failed_restore_are_not_reported_one_by_one(caplog):
  # When one array of a large checkpoint is unreadable, orbax's other reads
  # are dropped unfinished: each used to log a traceback as it was collected
  # (51,575 lines for the default model). The failure is reported once.
  async def read():
    raise ValueError('OUT_OF_RANGE: requested byte range is not valid')

  def abandon_reads():
    loop = asyncio.new_event_loop()
    tasks = [loop.create_task(read()) for _ in range(20)]
    loop.run_until_complete(asyncio.sleep(0.01))  # All fail; no one asks.
    loop.close()
    tasks.clear()
    gc.collect()

  with caplog.at_level(logging.ERROR, logger='asyncio'):
    abandon_reads()  # Without the guard, the reports this test looks for.
    assert sum('never retrieved' in r.getMessage() for r in caplog.records) == 20
    caplog.clear()
    with checkpoints._quiet_aborted_reads():  # pylint: disable=protected-access
      abandon_reads()
    assert not caplog.records


def test_unreadable_newer_checkpoints_are_moved_aside_on_resume(tmp_path, capfd):
  # Resuming from checkpoint 1 past an unreadable 2: training will write step 2
  # again, which orbax refuses while the unreadable one is in the way.
  workdir = str(tmp_path)
  ckpt = checkpoints.Checkpointer(os.path.join(workdir, 'checkpoints'), async_save=False)
  state = {'w': jnp.ones(3)}
  ckpt.save(1, state)
  ckpt.save(2, state)
  ckpt.close()
  _truncate_arrays(os.path.join(workdir, 'checkpoints', '2'), size=1)
  ckpt = checkpoints.Checkpointer(os.path.join(workdir, 'checkpoints'), async_save=False)
  capfd.readouterr()
  step, _ = run_dir.restore(ckpt, checkpoints.abstract_like(state), workdir)
  assert step == 1 and ckpt.all_steps() == [1]
  [moved] = os.listdir(os.path.join(workdir, 'superseded'))
  assert os.listdir(os.path.join(workdir, 'superseded', moved, 'checkpoints')) == ['2']
  # One line: what was unreadable, what is used, where it went.
  lines = [l for l in capfd.readouterr().err.splitlines() if l.strip()]
  moved_to = re.escape(os.path.join(workdir, 'superseded', moved, 'checkpoints'))
  assert len(lines) == 1 and re.fullmatch(
      r'warning: checkpoint 2 is unreadable \(.+\); resuming from step 1; moved \[2\] into '
      + moved_to + '/.', lines[0]), lines
  ckpt.save(2, state)
  ckpt.close()
  assert checkpoints.list_steps(os.path.join(workdir, 'checkpoints')) == [1, 2]


def test_event_files_are_read_by_tensorflow(tmp_path):
  # The events written without TensorFlow, read back with TensorFlow's own
  # reader (what TensorBoard reads): the scalars and the PNG image.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from vdm.train import summaries  # pylint: disable=g-import-not-at-top
  writer = summaries.create_writer(str(tmp_path))
  writer.write_scalars(3, {'loss': 0.25, 'lr': 1e-3})
  image = np.random.default_rng(0).integers(0, 256, (1, 5, 7, 3), np.uint8)
  writer.write_images(4, {'samples': image})
  writer.close()
  [name] = os.listdir(tmp_path)
  assert name.startswith('events.out.tfevents.')
  events = list(tf.compat.v1.train.summary_iterator(str(tmp_path / name)))
  assert events[0].file_version == 'brain.Event:2'
  scalars = {(e.step, v.tag): v.simple_value for e in events for v in e.summary.value
             if v.HasField('simple_value')}
  assert scalars == {(3, 'loss'): 0.25, (3, 'lr'): pytest.approx(1e-3)}
  [png] = [v.image for e in events for v in e.summary.value if v.HasField('image')]
  assert (png.height, png.width, png.colorspace) == (5, 7, 3)
  np.testing.assert_array_equal(tf.io.decode_png(png.encoded_image_string).numpy(), image[0])
  # Processes other than 0 write nothing.
  summaries.create_writer(str(tmp_path / 'other'), enabled=False).write_scalars(1, {'x': 1.0})
  assert not os.path.exists(tmp_path / 'other')
