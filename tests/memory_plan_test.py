"""benchmarks/memory_plan.py on the tiny config and 8 CPU devices: the bytes
per device of the train state under the sharding rules, and XLA's memory
analysis of the sharded train step."""

import math
import os
import sys

import jax
import pytest

from configs import tiny

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'benchmarks'))
import memory_plan  # pylint: disable=g-import-not-at-top


def _param_bytes(config):
  from vdm.train import train_state  # pylint: disable=g-import-not-at-top
  from vdm import sharding  # pylint: disable=g-import-not-at-top
  layout = train_state.StateLayout(config, sharding.create_mesh((('data', 1), ('fsdp', 1))))
  return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(
      layout.abstract_state.params))


@pytest.mark.slow
def test_fsdp_divides_the_sharded_state_and_the_step_compiles():
  full = _param_bytes(tiny.get_config())
  replicated = memory_plan.plan(tiny.get_config(), memory_plan.MESHES['data8'])
  assert replicated['params_bytes'] == replicated['ema_bytes'] == full
  assert replicated['sharded_param_fraction'] == 0
  assert replicated['global_batch'] == 8 * memory_plan.PER_DEVICE_BATCH
  # Adam keeps two moments per parameter, plus a few scalars.
  assert 2 * full <= replicated['opt_state_bytes'] < 2 * full + 1024
  sharded = memory_plan.plan(tiny.get_config(), memory_plan.MESHES['fsdp8'], compile_step=True)
  share = sharded['sharded_param_fraction']
  assert share > 0.5  # The kernels, which hold most of the bytes, are split.
  # A sharded tensor is split 8 ways, the rest is replicated on every device.
  assert sharded['params_bytes'] == pytest.approx(full * (share / 8 + 1 - share), abs=64)
  # Adam's moments are placed like their parameters, not replicated.
  assert 2 * sharded['params_bytes'] <= sharded['opt_state_bytes'] < (
      2 * sharded['params_bytes'] + 1024)
  assert sharded['state_bytes'] < replicated['state_bytes']
  assert sharded['replicated_state_bytes'] == replicated['state_bytes']
  assert sharded['xla_memory']['temp_bytes'] > 0
