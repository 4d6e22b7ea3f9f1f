"""Exported weights: base parameters and adapters stored as plain directories.

Exports are what a deployment holds separately from any run: `save_params` (a full parameter
tree, e.g. a base) and `save_adapters` (the LoRA tree, the base leaves tuned with it, and the
LoRA plan), each with a `meta.json` naming the architecture and the content's hash. An export
is written beside its directory and swapped in by renames, so a killed export keeps the
previous one; an identical one is not rewritten.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from sr_jax.util import distributed, jsonfile, paths, trees

PyTree = Any


def _write_meta(directory: str, meta: dict[str, Any]) -> None:
  if jax.process_index() == 0:
    jsonfile.write(os.path.join(directory, "meta.json"), meta, indent=2, sort_keys=True)


def _readable_export(directory: str) -> str:
  """`directory`, or its `.old` copy when a killed swap left only that (see save_params)."""
  if not paths.exists(os.path.join(directory, "meta.json")):
    old = directory + _OLD
    if paths.exists(os.path.join(old, "meta.json")):
      logging.warning("%s is missing but %s holds the previous export (a save was interrupted "
                      "mid-swap); reading that. The next save repairs the directory.",
                      directory, old)
      return old
  return directory


def read_params_meta(directory: str, what: str = "params") -> dict[str, Any]:
  """The meta.json of a directory written by `save_params` (architecture, job, step, ...)."""
  path = os.path.join(_readable_export(directory), "meta.json")
  if not paths.exists(path):
    raise FileNotFoundError(
        f"{directory} is not an sr_jax {what} directory (no meta.json). Pass a directory "
        f"written by sr_jax (a run's export/{what}, or `python -m sr_jax.convert`).")
  return jsonfile.read(path)


# A new export is written to <directory>.new and swapped in; the previous one waits in
# <directory>.old until the new one is in place.
_NEW, _OLD = ".new", ".old"


def tree_digest(tree: PyTree) -> str:
  """SHA-256 of a parameter tree's paths, dtypes, shapes and bytes (export identity)."""
  digest = hashlib.sha256()
  for path, leaf in sorted(trees.flatten(tree).items()):
    value = np.ascontiguousarray(jax.device_get(leaf))
    digest.update(f"{path}:{value.dtype}:{value.shape};".encode())
    digest.update(value.tobytes())
  return digest.hexdigest()


def _repair_export(directory: str) -> None:
  """Finishes or undoes a swap a kill interrupted: final + .old -> drop .old; only .old -> final."""
  final, old = epath.Path(directory), epath.Path(directory + _OLD)
  if jax.process_index() == 0 and old.exists():
    if (final / "meta.json").exists():
      old.rmtree()
    else:
      if final.exists():
        final.rmtree()  # A final without meta.json is never a complete export.
      old.rename(final)
  distributed.barrier("sr_jax_repair_export")


def _check_own_directory(directory: str) -> None:
  """A swap replaces the whole directory: refuse one holding files save_params did not write."""
  final = epath.Path(directory)
  if not final.exists():
    return
  own = ("params", "meta.json", "meta.json.tmp", "params.orbax-checkpoint-tmp")
  foreign = sorted(p.name for p in final.iterdir() if not p.name.startswith(own))
  if foreign:
    raise FileExistsError(
        f"{directory} holds files sr_jax did not write ({', '.join(foreign[:5])}); writing "
        "parameters there replaces the whole directory. Move them, or choose another one.")


def _swap_in(staging: str, directory: str) -> None:
  """Replaces `directory` by `staging` with renames; at every instant one complete copy exists."""
  final, old = epath.Path(directory), epath.Path(directory + _OLD)
  if jax.process_index() == 0:
    if final.exists():
      final.rename(old)
    epath.Path(staging).rename(final)
    if old.exists():
      old.rmtree()
  distributed.barrier("sr_jax_swap_export")


def save_params(directory: str, params: PyTree, meta: dict[str, Any]) -> None:
  """Writes a full parameter tree and its meta (architecture, content hash) to `directory`.

  The tree goes to `<directory>.new` and is swapped in by renames, so a kill at any point
  leaves the previous export loadable (a swap cut short is repaired by the next save, and
  read from `<directory>.old` meanwhile). An export whose hash and meta match is left as it is.
  The tensors are stored one zarr array per leaf (no OCDBT), so the directory's size in bytes
  (`directory_size`, the "export MiB" of results tables) is the same for the same contents.
  The directory is replaced as a whole, so one holding other files is refused.
  """
  directory = paths.absolute(directory)
  _repair_export(directory)
  _check_own_directory(directory)
  meta = dict(meta, content_sha256=tree_digest(params))
  meta_path = os.path.join(directory, "meta.json")
  existing = jsonfile.read(meta_path) if paths.exists(meta_path) else {}
  distributed.barrier("sr_jax_export_read")  # Every process decides on the same files.
  if existing.get("content_sha256") == meta["content_sha256"]:
    if existing != meta:
      _write_meta(directory, meta)
    logging.info("Parameters in %s are unchanged; kept them.", directory)
    return
  staging = directory + _NEW
  if jax.process_index() == 0 and paths.exists(staging):
    epath.Path(staging).rmtree()  # What a killed export left: incomplete by definition.
  distributed.barrier("sr_jax_export_staging")
  paths.makedirs(staging)
  # Without OCDBT, an export's size on disk depends only on its contents: OCDBT's data files
  # vary from save to save (235-346 KB for one 100 KB tree), so the size users are told did.
  with ocp.Checkpointer(ocp.StandardCheckpointHandler(use_ocdbt=False)) as ckptr:
    ckptr.save(os.path.join(staging, "params"), args=ocp.args.StandardSave(params), force=True)
  _write_meta(staging, meta)
  distributed.barrier("sr_jax_export_written")
  _swap_in(staging, directory)
  logging.info("Wrote parameters to %s", directory)


def load_params(directory: str) -> tuple[PyTree, dict[str, Any]]:
  """Reads a tree written by `save_params` (onto the host's default device)."""
  directory = _readable_export(paths.absolute(directory))
  meta = read_params_meta(directory, "params")
  with ocp.StandardCheckpointer() as ckptr:
    params = ckptr.restore(os.path.join(directory, "params"))
  return params, meta


def save_adapters(directory: str, adapters: PyTree, tuned_base: PyTree,
                  meta: dict[str, Any]) -> None:
  """Writes LoRA adapters plus the base leaves tuned alongside them (biases, norms, ...).

  `meta` must hold 'lora_plan' (LoraPlan.to_json()) and the base's architecture.
  """
  save_params(directory, {"lora": adapters, "tuned_base": tuned_base}, meta)


def load_adapters(directory: str) -> tuple[PyTree, PyTree, dict[str, Any]]:
  """(adapters, tuned base leaves, meta) as written by `save_adapters`."""
  tree, meta = load_params(directory)
  if "lora_plan" not in meta:
    raise ValueError(f"{directory} holds parameters, not adapters (no lora_plan in meta.json).")
  return tree.get("lora", {}), tree.get("tuned_base", {}), meta


def directory_size(directory: str) -> int:
  """Bytes on disk under `directory` (the adapter file size users ask about)."""
  return paths.directory_size(directory)
