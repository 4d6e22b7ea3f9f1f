"""Atomic JSON files: a reader (or a resumed run) never sees half a file.

Every small record sr_jax keeps beside its checkpoints (meta.json, timing.json, FAIG scores,
CoLoRA allocations) is written here: to `<path>.tmp`, then renamed over `path`. Paths may be
local or gs:// URLs (`sr_jax.util.paths`).
"""

from __future__ import annotations

import json
from typing import Any, Callable

from sr_jax.util import paths


def write(path: str, value: Any, *, indent: int = 1, sort_keys: bool = False,
          default: Callable[[Any], Any] | None = None) -> None:
  """Writes `value` as JSON to `path` atomically (temporary file, then renamed)."""
  paths.write_text(path, json.dumps(value, indent=indent, sort_keys=sort_keys, default=default))


def read(path: str) -> Any:
  """The JSON value in `path` (local or gs://)."""
  return json.loads(paths.read_text(path))
