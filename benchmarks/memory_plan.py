"""Bytes per device of a config's train state on a mesh, before any GPU runs it.

  python benchmarks/memory_plan.py --workloads=bair64,ucf64
  python benchmarks/memory_plan.py --workloads=bair64 --compile   # + XLA's activation estimate

On 8 fake CPU devices, for each workload and mesh: the exact bytes that one
device holds of the parameters, the EMA parameters and the optimizer state,
as the sharding rules (config.sharding.rules) place them; the share of the
parameter bytes that is sharded at all (FSDP must split the big kernels); and,
with --compile, XLA's memory analysis of the sharded train step compiled at
the global batch (16 videos per device). XLA:CPU fuses and rematerialises
differently from XLA:GPU, so the compiled figure is an estimate of the
activations, to be checked against the device check's peak memory.
"""

import argparse
import json
import math
import os
import sys

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

PER_DEVICE_BATCH = 16
MESHES = {
    'data8': (('data', 8), ('fsdp', 1)),
    'fsdp8': (('data', 1), ('fsdp', 8)),
    'data2_fsdp4': (('data', 2), ('fsdp', 4)),
}


def device_bytes(tree) -> int:
  """Bytes one device holds of a tree of sharded abstract arrays."""
  total = 0
  for x in jax.tree.leaves(tree):
    shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
    total += math.prod(shape) * x.dtype.itemsize
  return total


def full_bytes(tree) -> int:
  return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def plan(config, mesh_spec, compile_step: bool = False) -> dict:
  """The state's bytes per device on ``mesh_spec`` (and the step's, compiled)."""
  from vdm import sharding  # pylint: disable=g-import-not-at-top
  from vdm.train import train_lib  # pylint: disable=g-import-not-at-top
  mesh = sharding.create_mesh(mesh_spec)
  config.training.batch_size = PER_DEVICE_BATCH * sharding.batch_size_divisor(mesh)
  trainer = train_lib.Trainer(config, mesh=mesh)
  state = trainer.abstract_state
  params = state.params
  # Split at all: over some mesh axis of more than one device.
  sharded = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(params)
                if math.prod(x.sharding.shard_shape(x.shape)) < math.prod(x.shape))
  out = dict(mesh=dict(mesh.shape), global_batch=config.training.batch_size,
             param_count=sum(math.prod(x.shape) for x in jax.tree.leaves(params)),
             params_bytes=device_bytes(params), ema_bytes=device_bytes(state.ema_params),
             opt_state_bytes=device_bytes(state.opt_state),
             replicated_state_bytes=full_bytes(params) + full_bytes(state.ema_params)
             + full_bytes(state.opt_state),
             sharded_param_fraction=sharded / max(full_bytes(params), 1))
  out['state_bytes'] = out['params_bytes'] + out['ema_bytes'] + out['opt_state_bytes']
  if compile_step:
    batch = sharding.global_batch(common.make_batch(config), mesh)
    out['xla_memory'] = common.xla_memory(trainer.train_step.lower(state, batch).compile())
  return out


def _gib(n):
  return f'{n / 2**30:.2f}'


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workloads', default='bair64,ucf64')
  parser.add_argument('--meshes', default=','.join(MESHES), help=f'of {list(MESHES)}')
  parser.add_argument('--compile', action='store_true',
                      help='also compile the sharded train step (minutes per workload on a CPU)')
  parser.add_argument('--set', action='append', default=[], metavar='SECTION.KEY=VALUE',
                      help='config override, e.g. --set model.remat=true (repeatable)')
  args = parser.parse_args(argv)
  rows = [['workload', 'mesh', 'params', 'GiB/device: params', 'EMA', 'optimizer', 'state',
           'state replicated', 'sharded share'] + (['XLA temporaries GiB'] if args.compile else [])]
  records = []
  for workload in args.workloads.split(','):
    for name in args.meshes.split(','):
      config = common.get_config(workload, 0, args.set)
      r = plan(config, MESHES[name], args.compile)
      r.update(workload=workload, mesh_name=name, overrides=args.set)
      records.append(r)
      row = [workload, name, f"{r['param_count']:,}", _gib(r['params_bytes']), _gib(r['ema_bytes']),
             _gib(r['opt_state_bytes']), _gib(r['state_bytes']), _gib(r['replicated_state_bytes']),
             f"{r['sharded_param_fraction']:.0%}"]
      if args.compile:
        row.append(_gib(r['xla_memory'].get('temp_bytes', 0)))
      rows.append(row)
      print(f'{workload} {name} done', file=sys.stderr, flush=True)
  print(common.table(rows))
  common.write_result({'benchmark': 'memory_plan', 'rows': records}, 'memory_plan')
  print(json.dumps(records, sort_keys=True))


if __name__ == '__main__':
  main()
