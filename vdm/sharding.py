"""Device mesh, logical-axis sharding of parameters, global batches, multi-host.

One code path from one CPU to a pod: parameters carry logical axis names
(``vdm.models.layers``), ``config.sharding.rules`` maps them onto mesh axes,
and ``jax.jit`` with these shardings (the modern pjit) does the rest.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Optional, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# Mesh axes the batch is split over, in this order, where the mesh has them.
BATCH_AXES = ('data', 'fsdp')


def create_mesh(mesh_spec: Sequence[tuple[str, int]],
                devices: Optional[Sequence[Any]] = None) -> Mesh:
  """Builds a mesh like (('data', -1), ('fsdp', 1)).

  Args:
    mesh_spec: (axis name, size) pairs; one size may be -1 to take the
      remaining devices. A product smaller than the device count uses the
      first devices (handy for tests on fake CPU devices).
    devices: the devices to use; all of them by default.

  Returns:
    A jax.sharding.Mesh.
  """
  devices = list(jax.devices() if devices is None else devices)
  names = tuple(name for name, _ in mesh_spec)
  sizes = [int(size) for _, size in mesh_spec]
  if sizes.count(-1) > 1:
    raise ValueError(f'config.sharding.mesh={tuple(mesh_spec)} has more than one -1.')
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f'config.sharding.mesh={tuple(mesh_spec)}: {len(devices)} devices '
                       f'do not divide into the fixed axes of size {known}.')
    sizes[sizes.index(-1)] = len(devices) // known
  total = math.prod(sizes)
  if total > len(devices):
    raise ValueError(f'config.sharding.mesh={tuple(mesh_spec)} needs {total} devices; '
                     f'{len(devices)} are available.')
  if total < len(devices):
    logging.warning('Mesh %s uses %d of %d devices.', mesh_spec, total, len(devices))
  return Mesh(np.asarray(devices[:total]).reshape(sizes), names)


def logical_to_partition_spec(logical_axes: Sequence[Optional[str]], shape: Sequence[int],
                              rules: dict, mesh: Mesh) -> P:
  """The PartitionSpec of one array from its logical axis names.

  A dimension is sharded over the mesh axis its rule names only when the
  dimension divides evenly and that mesh axis is not already used by an
  earlier dimension; otherwise it is replicated.
  """
  spec, used = [], set()
  for name, dim in zip(logical_axes, shape):
    axis = rules.get(name) if name is not None else None
    if axis is None or axis in used or axis not in mesh.shape or dim % mesh.shape[axis]:
      spec.append(None)
    else:
      spec.append(axis)
      used.add(axis)
  return P(*spec)


def _is_variable(x) -> bool:
  return isinstance(x, nnx.Variable)


def param_shardings(abstract_state: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> Any:
  """NamedShardings for every parameter of an (abstract) nnx.State.

  Args:
    abstract_state: nnx.State whose Params have ``logical_axes`` metadata.
    mesh: the device mesh.
    rules: (logical name, mesh axis or None) pairs, config.sharding.rules.

  Returns:
    A tree with the same structure as abstract_state holding NamedShardings.
  """
  rules = dict(rules)

  def one(v):
    axes = v.get_metadata().get('logical_axes') or (None,) * len(v.shape)
    return v.replace(NamedSharding(mesh, logical_to_partition_spec(axes, v.shape, rules, mesh)))
  return jax.tree.map(one, abstract_state, is_leaf=_is_variable)


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
  return tuple(a for a in BATCH_AXES if a in mesh.shape)


def batch_size_divisor(mesh: Mesh) -> int:
  """Number of batch shards: the global batch must be a multiple of it."""
  return math.prod(mesh.shape[a] for a in batch_axes(mesh))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data axes."""
  return NamedSharding(mesh, P(batch_axes(mesh)))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local: dict, mesh: Mesh) -> dict:
  """Assembles each process's share of a batch into global jax.Arrays.

  Args:
    local: numpy arrays of this process; batch-major except ``is_image``,
      which is the same [T] mask on every process and is replicated.
    mesh: the device mesh.

  Returns:
    Dict of global arrays sharded over the batch axes.
  """
  out = {}
  for key, value in local.items():
    sharding = replicated(mesh) if key == 'is_image' else batch_sharding(mesh)
    if key == 'is_image':
      out[key] = jax.make_array_from_process_local_data(sharding, value, value.shape)
    else:
      out[key] = jax.make_array_from_process_local_data(sharding, value)
  return out


def shard_rows(rows, mesh: Optional[Mesh]) -> jax.Array:
  """A host array that every process holds whole, split by rows over the batch axes.

  Sampling and evaluation inputs (labels, given frames, sample indices) are
  known to every process, so each one builds only the shards of its own
  devices; no process sends data to another.

  Args:
    rows: numpy (or jax) array [B, ...], the same on every process, with B a
      multiple of batch_size_divisor(mesh).
    mesh: the device mesh; None places the array on the default device.

  Returns:
    A jax.Array [B, ...] sharded over the batch axes of mesh.
  """
  rows = np.asarray(rows)
  if mesh is None:
    return jax.numpy.asarray(rows)
  divisor = batch_size_divisor(mesh)
  if rows.shape[0] % divisor:
    raise ValueError(f'{rows.shape[0]} rows do not split over the {divisor} batch shards of '
                     f'mesh {dict(mesh.shape)}; pad them to a multiple of {divisor}.')
  return jax.make_array_from_callback(rows.shape, batch_sharding(mesh), lambda index: rows[index])


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Every array of a host pytree (the same on every process) on every device of mesh."""
  def one(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, replicated(mesh), lambda index: x[index])
  return jax.tree.map(one, tree)


def to_host(x) -> np.ndarray:
  """A (possibly multi-host) jax.Array as a whole numpy array on every process."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def initialize_distributed(coordinator_address: str = '', num_processes: int = 0,
                           process_id: int = -1) -> None:
  """Starts JAX's multi-host runtime when several processes are launched.

  Explicit arguments win. Otherwise, on SLURM with several tasks or on a TPU
  pod, ``jax.distributed.initialize()`` discovers everything from the
  environment. A single process needs nothing.
  """
  if coordinator_address:
    jax.distributed.initialize(coordinator_address, num_processes=num_processes,
                               process_id=process_id)
  elif int(os.environ.get('SLURM_NTASKS', '1')) > 1 or 'TPU_WORKER_HOSTNAMES' in os.environ or \
      int(os.environ.get('JAX_NUM_PROCESSES', '1')) > 1:
    jax.distributed.initialize()
