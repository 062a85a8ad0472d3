"""Host memory of this process, standard library only.

Both sides of the peer comparison import it: our workers through common.py,
the peer's worker (a torch venv without jax) directly.
"""

from __future__ import annotations

import resource
import sys
from typing import Optional


def host_peak_rss_bytes() -> int:
  """Peak resident set size of this process (ru_maxrss is KiB on Linux).

  On Linux it follows reset_rss_high_water_mark, like VmHWM.
  """
  scale = 1 if sys.platform == 'darwin' else 1024
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def reset_rss_high_water_mark() -> bool:
  """Resets the kernel's RSS high-water mark (Linux); False when not possible."""
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')
    return True
  except OSError:
    return False


def rss_high_water_mark_bytes() -> Optional[int]:
  """VmHWM of /proc/self/status: the peak RSS since the last reset."""
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None
