"""vdm.train.host_memory: freed heap really goes back to the OS."""

import ctypes
import ctypes.util
import sys

import pytest

from vdm.train import host_memory


def _rss_bytes() -> int:
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith('VmRSS:'):
        return int(line.split()[1]) * 1024
  raise AssertionError('no VmRSS in /proc/self/status')


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc and /proc only')
def test_release_host_memory_returns_freed_heap_to_the_os():
  libc = ctypes.CDLL(ctypes.util.find_library('c'))
  libc.malloc.restype = ctypes.c_void_p
  libc.malloc.argtypes = [ctypes.c_size_t]
  libc.free.argtypes = [ctypes.c_void_p]
  block, count = 64 * 1024, 1024  # 64 MiB in blocks below the mmap threshold: heap.
  blocks = [libc.malloc(block) for _ in range(count)]
  guard = libc.malloc(block)  # Pins the heap top, so free() alone cannot shrink it.
  for b in blocks:
    ctypes.memset(b, 1, block)  # Make the pages resident.
  for b in blocks:
    libc.free(b)
  before = _rss_bytes()
  assert host_memory.release_host_memory()
  after = _rss_bytes()
  libc.free(guard)
  # glibc kept the freed pages mapped; the trim hands (nearly) all back.
  assert before - after > 0.75 * block * count, (before, after)
