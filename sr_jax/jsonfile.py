"""Atomic JSON files: a reader (or a resumed run) never sees half a file.

Every small record sr_jax keeps beside its checkpoints (meta.json, timing.json, FAIG scores,
CoLoRA allocations) is written here: to `<path>.tmp`, then renamed over `path`.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable


def write(path: str, value: Any, *, indent: int = 1, sort_keys: bool = False,
          default: Callable[[Any], Any] | None = None) -> None:
  """Writes `value` as JSON to `path` atomically (temporary file, then os.replace)."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=indent, sort_keys=sort_keys, default=default)
  os.replace(tmp, path)
