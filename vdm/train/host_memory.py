"""Returning freed host memory to the operating system.

XLA's compiler allocates hundreds of MiB of short-lived heap while it compiles
a training step. glibc keeps freed heap pages mapped, so without a trim the
process's resident size stays at the compile peak and the step's own buffers
land on top of it (on the CPU benchmark: 1.7-2.1 GiB peak instead of ~1 GiB,
see BENCHMARKS.md). ``malloc_trim(0)`` hands the free pages back.
"""

import ctypes
import ctypes.util
import functools


@functools.lru_cache(maxsize=None)
def _malloc_trim():
  name = ctypes.util.find_library('c')
  try:
    libc = ctypes.CDLL(name or 'libc.so.6')
    return libc.malloc_trim
  except (OSError, AttributeError):  # Not glibc (macOS, musl): nothing to do.
    return None


def release_host_memory() -> bool:
  """Returns free heap pages to the OS (glibc ``malloc_trim``).

  Cheap (milliseconds); call it after compiling or initialising, never inside
  a step.

  Returns:
    True when memory was trimmed, False where the C library has no
    ``malloc_trim``.
  """
  trim = _malloc_trim()
  if trim is None:
    return False
  trim(0)
  return True
