"""Files written whole or not at all: written aside, then renamed into place.

A reader (another process, a rerun after a crash) sees the old file or the
new one, never half of one.
"""

from __future__ import annotations

import json
import os
from typing import Any


def write_text(path: str, text: str) -> str:
  """Writes `text` to `path` atomically (creating its directory); returns the path."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)
  return path


def write_json(path: str, value: Any, indent: int = 2) -> str:
  """Writes `value` as JSON (sorted keys, trailing newline) atomically; returns the path."""
  return write_text(path, json.dumps(value, indent=indent, sort_keys=True) + '\n')
