"""Many samples on the whole mesh: fixed-size chunks, per-sample noise, uint8 on device.

The one loop behind ``sample.py`` and ``evaluate.py`` (and so behind
training's periodic evaluation). N samples are drawn in chunks of a global
batch B that is split over the mesh's batch axes ('data', 'fsdp'), with the
weights laid out as in training (``run_lib.restore_run(mesh=...)``), so a
host of 8 GPUs or a pod draws B samples per sampler call and an FSDP-sharded
model samples without gathering its weights onto one device.

Sample i is the same video whatever B and the device count: every noise
draw of row j comes from ``fold_in(key, i)`` with i its global index
(``samplers.per_sample_noise``), and the network treats rows independently,
so only float rounding of differently batched kernels separates two runs.

Multi-host: every process runs the same loop over the same chunks (one jitted
program over the global mesh); per-sample inputs (labels, given frames) are
known to every process and each builds only its own devices' rows
(``sharding.shard_rows``); results come back to every process
(``sharding.to_host``) and process 0 writes them.
"""

from __future__ import annotations

import sys
from typing import Iterator, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from vdm import progress as progress_lib
from vdm import sharding


class Chunk(NamedTuple):
  """One sampler call's worth of samples.

  Attributes:
    start: global index of its first sample.
    rows: samples of the chunk that are wanted (the rest pads it to ``size``).
    size: B, the chunk's (global) batch.
    sample_ids: int32 [B] global sample indices start, start + 1, ..., sharded
      over the batch axes (padding rows continue the count and are dropped).
    inputs: the chunk's rows of each per-sample input, padded by repeating
      the last row, sharded over the batch axes.
  """
  start: int
  rows: int
  size: int
  sample_ids: jax.Array
  inputs: dict


def chunk_size(batch_size: int, num: int, mesh) -> int:
  """B: min(batch_size, num) rounded up to a multiple of the mesh's batch shards."""
  divisor = 1 if mesh is None else sharding.batch_size_divisor(mesh)
  wanted = max(1, min(int(batch_size), int(num)))
  return -(-wanted // divisor) * divisor


def pad_rows(x: np.ndarray, size: int) -> np.ndarray:
  """Pads axis 0 to ``size`` by repeating the last row (one compiled shape)."""
  if len(x) == size:
    return x
  return np.concatenate([x, np.repeat(x[-1:], size - len(x), axis=0)])


def chunks(num: int, batch_size: int, mesh, inputs: Optional[Mapping[str, np.ndarray]] = None,
           *, what: str = 'sampling', unit: str = 'videos') -> Iterator[Chunk]:
  """The chunks of N samples, with a progress line (and ETA) after each.

  Args:
    num: N, samples wanted.
    batch_size: samples per chunk, before rounding up to the mesh (chunk_size).
    mesh: the device mesh (None: the default device).
    inputs: per-sample host arrays [N, ...] (None values are skipped), the
      same on every process.
    what: name of the work in progress lines (stderr, process 0).
    unit: what is counted.

  Yields:
    Chunk, in order of start.
  """
  if num < 1:
    raise ValueError(f'num_samples={num} must be >= 1.')
  size = chunk_size(batch_size, num, mesh)
  inputs = {k: np.asarray(v) for k, v in (inputs or {}).items() if v is not None}
  for key, value in inputs.items():
    if len(value) != num:
      raise ValueError(f'per-sample input {key!r} has {len(value)} rows for {num} samples.')
  note = '' if size == batch_size or size >= num else f' (batch_size {batch_size} rounded up)'
  count = -(-num // size)
  if (count > 1 or note) and jax.process_index() == 0:
    print(f'{what}: {num} {unit} in {count} chunk(s) of {size}{note} on '
          f'{1 if mesh is None else mesh.size} device(s).', file=sys.stderr, flush=True)
  progress = progress_lib.Progress(what, num, unit, file=sys.stderr)
  for start in range(0, num, size):
    rows = min(size, num - start)
    ids = sharding.shard_rows(np.arange(start, start + size, dtype=np.int32), mesh)
    placed = {k: sharding.shard_rows(pad_rows(v[start:start + rows], size), mesh)
              for k, v in inputs.items()}
    yield Chunk(start, rows, size, ids, placed)
    progress(start + rows)


def uint8_videos(space, videos: jax.Array) -> jax.Array:
  """Sampled videos (or latents) as uint8 frames, where they lie.

  Args:
    space: the run's vdm.latent space (latents are decoded).
    videos: float [B, T, h, w, c] from a sampler, possibly sharded.

  Returns:
    uint8 [B, T, H, W, C], exactly ``video_io.to_uint8`` of the clipped
    decoded videos, sharded like the input.
  """
  return _uint8_fn(space)(videos)


_UINT8_FNS = {}


def _uint8_fn(space):
  key = space if space.is_latent else 'pixels'  # One compiled function per autoencoder.
  if key not in _UINT8_FNS:
    def convert(x):
      x = space.decode(x) if space.is_latent else x
      return jnp.clip(jnp.round((jnp.asarray(x, jnp.float32) + 1.0) * 127.5),
                      0, 255).astype(jnp.uint8)
    _UINT8_FNS[key] = jax.jit(convert)
  return _UINT8_FNS[key]
