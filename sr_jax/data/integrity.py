"""Image files checked before training starts, so a bad file fails the run at once.

Training folders are read lazily by grain workers, so a truncated file used to pass the header
scan and fail at its first decode, hours in; a bad evaluation image surfaced only after
training and export. Before the first step:

  training images    a cheap integrity check per file (`file_problem`): PNG and WebP streams
                     verified (chunk CRCs, no decoding), a JPEG's end-of-image marker, other
                     formats decoded. data.skip_bad_images=True drops a bad file with a warning
                     naming it; False (the default) fails naming every bad file.
  evaluation images  fully decoded (`decode_problem`); a bad one always fails, since silently
                     scoring fewer images would change the reported numbers.

Results are cached per (path, size, mtime), so the sources built after the checks (run by
sr_jax.train.config_check.check_images) do not
read the files again. Also here: a warning for image sub-folders a non-recursive listing skips,
and one for a training set that shrank since its checkpoint. numpy and Pillow only (this module
runs in grain workers too).
"""

from __future__ import annotations

import functools
import os
import pathlib
import warnings
from collections.abc import Sequence
from typing import Any

from PIL import Image

_JPEG_SUFFIXES = (".jpg", ".jpeg")
_VERIFIED_SUFFIXES = (".png", ".webp")  # Pillow's verify() reads the whole stream for these.
_JPEG_TAIL_BYTES = 1024  # Trailing bytes (padding, metadata) allowed after a JPEG's marker.
_warned: set[str] = set()


def _pillow_errors() -> tuple[type[BaseException], ...]:
  return (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


@functools.lru_cache(maxsize=None)
def _cached_problem(path: str, size: int, mtime_ns: int, decode: bool) -> str | None:
  del size, mtime_ns  # Cache keys: a rewritten file is checked again.
  suffix = pathlib.Path(path).suffix.lower()
  try:
    if not decode and suffix in _JPEG_SUFFIXES:
      with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - _JPEG_TAIL_BYTES))
        if b"\xff\xd9" not in f.read():
          return "truncated (no JPEG end-of-image marker)"
      with Image.open(path):
        return None
    with Image.open(path) as image:
      if not decode and suffix in _VERIFIED_SUFFIXES:
        image.verify()
      else:
        image.load()
  except _pillow_errors() as e:
    return f"{type(e).__name__}: {e}"
  return None


def _problem(path: str | pathlib.Path, decode: bool) -> str | None:
  try:
    stat = os.stat(path)
  except OSError as e:
    return f"cannot be read ({e.strerror})"
  return _cached_problem(str(path), stat.st_size, stat.st_mtime_ns, decode)


def file_problem(path: str | pathlib.Path) -> str | None:
  """Why a training image is unusable (cheap check, see module doc), or None."""
  return _problem(path, decode=False)


def decode_problem(path: str | pathlib.Path) -> str | None:
  """Why an image does not decode (full decode), or None."""
  return _problem(path, decode=True)


def _listing(bad: Sequence[tuple[Any, str]]) -> str:
  shown = "; ".join(f"{path}: {problem}" for path, problem in bad[:20])
  return shown + (f"; ... ({len(bad)} in all)" if len(bad) > 20 else "")


def usable(groups: Sequence[Sequence[pathlib.Path]], skip: bool, where: str) -> list[int]:
  """Indices of the groups (one file, or an LQ/GT pair) whose files all pass `file_problem`.

  With `skip`, each dropped file gets a warning naming it; otherwise any bad file is an error
  naming every one.
  """
  kept, bad = [], []
  for index, group in enumerate(groups):
    problems = [(path, p) for path in group if (p := file_problem(path))]
    bad += problems
    if not problems:
      kept.append(index)
  if bad and not skip:
    raise ValueError(f"{len(bad)} training image file(s) {where} are damaged: {_listing(bad)}. "
                     "Replace or remove them, or set data.skip_bad_images=True to train "
                     "without them.")
  for path, problem in bad:
    if str(path) not in _warned:
      _warned.add(str(path))
      warnings.warn(f"Skipping damaged training image {path} ({problem}); "
                    "data.skip_bad_images=True.", stacklevel=3)
  if not kept:
    raise ValueError(f"Every training image {where} is damaged; nothing to train on.")
  return kept


def check_decodes(files: Sequence[pathlib.Path], where: str) -> None:
  """Decodes every file; raises naming each one that fails (evaluation sets)."""
  bad = [(path, p) for path in files if (p := decode_problem(path))]
  if bad:
    raise ValueError(f"{len(bad)} evaluation image file(s) {where} do not decode: "
                     f"{_listing(bad)}. Replace or remove them before training (the "
                     "evaluation set must be whole for its scores to compare).")


def nested_image_dirs(directory: pathlib.Path, extensions: Sequence[str]) -> list[str]:
  """Sub-folders of `directory` holding image files somewhere below them (sorted names)."""
  found = []
  for sub in sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")):
    if any(f.suffix.lower() in extensions for f in sub.rglob("*") if f.is_file()):
      found.append(sub.name)
  return found


def warn_nested_dirs(directory: pathlib.Path, extensions: Sequence[str]) -> None:
  """Warns (once per folder) about image sub-folders a flat listing of `directory` skips."""
  nested = nested_image_dirs(directory, extensions)
  if nested and str(directory) not in _warned:
    _warned.add(str(directory))
    warnings.warn(f"{len(nested)} sub-folder(s) of {directory} hold images that are not read: "
                  f"{', '.join(nested[:10])}. Set data.recursive=True to include them.",
                  stacklevel=3)


def warn_if_fewer(saved_count: int | None, count: int, where: str) -> None:
  """Warns when a training set has fewer records than when its checkpoint was written.

  Resuming changes which record each index names, so the run no longer continues the stream it
  was on; worth knowing, not worth stopping for. `saved_count` None (not recorded) is silent.
  """
  if saved_count is not None and count < saved_count:
    warnings.warn(f"The training data {where} now holds {count} records, {saved_count - count} "
                  f"fewer than the {saved_count} recorded at the checkpoint; resuming on the "
                  "smaller set (restore the missing files to continue the same stream).",
                  stacklevel=2)
