"""Run directories that may be local paths or object-store URLs (gs://bucket/run).

Multi-host runs keep data and workdirs on storage every host sees, on TPU VMs usually Google
Cloud Storage. Orbax and CLU's TensorBoard writer read and write gs:// themselves; sr_jax's
own small files (meta.json, timing.json, results.md, FAIG scores) go through `etils.epath`
(orbax's own path library), which treats local paths as `os` does. What `os.path` would break
is making a URL absolute: `absolute` leaves URLs as they are.
"""

from __future__ import annotations

import os

from etils import epath


def is_url(path: str) -> bool:
  """gs://..., s3://... and the like (anything with a scheme), as opposed to a local path."""
  return "://" in str(path)


def absolute(path: str) -> str:
  """An absolute local path, or the URL unchanged."""
  path = str(path)
  return path if is_url(path) else os.path.abspath(path)


def exists(path: str) -> bool:
  return epath.Path(path).exists()


def makedirs(path: str) -> None:
  epath.Path(path).mkdir(parents=True, exist_ok=True)


def read_text(path: str) -> str:
  return epath.Path(path).read_text()


def write_text(path: str, text: str) -> None:
  """Writes `text` to `path` through a temporary file renamed over it: a reader (or a resumed
  run) never sees half a file. (On object stores the rename is a copy; no reader sees the
  temporary name either way.)"""
  tmp = epath.Path(f"{path}.tmp")
  tmp.write_text(text)
  tmp.replace(path)


def directory_size(directory: str) -> int:
  """Bytes in the files under `directory`."""
  total = 0
  for path in epath.Path(directory).iterdir():
    total += directory_size(path) if path.is_dir() else path.stat().length
  return total
