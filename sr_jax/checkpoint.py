"""Orbax checkpoints: resumable runs, and base weights and adapters stored on their own.

A run directory holds `checkpoints/<step>/` with three items: `state` (train state and the
frozen half of the tree), `data_iter` (the grain iterator position) and `meta` (config and the
model's architecture). Orbax writes each step to a temporary directory and renames it when
complete, so an interrupted save never leaves a checkpoint that looks valid.

A damaged checkpoint (a truncated array file, deleted files, a garbled iterator position, a
missing meta) is not fatal: `restore_latest_intact` falls back to the newest step that
restores, moving each newer one aside to `checkpoints_corrupt/` with a warning naming it
(nothing is deleted), or explains in one paragraph why no step restores.

Exports are plain directories a deployment can hold separately: `save_params` (a full
parameter tree, e.g. a base) and `save_adapters` (the LoRA tree, the base leaves tuned with it,
and the LoRA plan), each with a `meta.json` naming the architecture and the content's hash.
An export is written beside its directory and swapped in by renames, so a killed export keeps
the previous one; an identical one is not rewritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from sr_jax import jsonfile, lora, paths

PyTree = Any
ITEMS = ("state", "data_iter", "meta")


# Orbax saves a replicated array in slices, one per replica, and compiles a slicing program per
# array shape, which makes saving a model of a few hundred small arrays slow on many devices
# (docs/speed.md). Arrays whose slices would be smaller than this are written whole by one
# replica, as orbax does without replica-parallel saving.
MIN_REPLICA_SLICE_BYTES = 1 << 20


def use_whole_small_arrays() -> None:
  """Registers orbax's array handler with MIN_REPLICA_SLICE_BYTES (for every save after it)."""
  ocp.type_handlers.register_type_handler(
      jax.Array, ocp.type_handlers.ArrayHandler(
          min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES), override=True)


def manager(run_dir: str, keep: int = 3) -> ocp.CheckpointManager:
  """The run's checkpoint manager (created on first use)."""
  use_whole_small_arrays()
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
  return ocp.CheckpointManager(os.path.join(paths.absolute(run_dir), "checkpoints"),
                               options=options, item_names=ITEMS)


def check_architecture(saved: dict[str, Any], current: dict[str, Any], where: str,
                       advice: str | None = None) -> None:
  """Raises when a checkpoint was written for another architecture, naming each difference.

  The fix depends on what holds the checkpoint: for a run directory (`where` starting with
  '--workdir') a new workdir, for a base or other input checkpoint another checkpoint or a
  config.model that matches it (named when a preset does). `advice` overrides the default.
  """
  diffs = [f"{k}: checkpoint has {saved.get(k)!r}, config has {current.get(k)!r}"
           for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
  if not diffs:
    return
  if advice is None:
    preset = _matching_preset(saved)
    matches = (f"set --config.model.name={saved.get('name')} --config.model.preset={preset} "
               "to match it" if preset else "set the config's model to match it")
    advice = (f"Use a new --workdir, or {matches}." if where.startswith("--workdir") else
              f"Use a checkpoint of the configured architecture, or {matches}.")
  raise ValueError(f"{where} holds a checkpoint of a different architecture:\n  " +
                   "\n  ".join(diffs) + "\n" + advice)


def _matching_preset(arch: dict[str, Any]) -> str | None:
  """The preset a saved architecture equals, if any (None for an unknown model name)."""
  from sr_jax.models import registry  # pylint: disable=g-import-not-at-top
  try:
    return registry.matching_preset(arch) if arch.get("name") else None
  except (ValueError, KeyError, TypeError, AttributeError):
    return None


def save(mgr: ocp.CheckpointManager, step: int, state: Any, frozen: PyTree, data_iter: Any,
         meta: dict[str, Any]) -> None:
  """Queues an asynchronous save of the whole run at `step`."""
  args = {"state": ocp.args.StandardSave({"state": state, "frozen": frozen}),
          "meta": ocp.args.JsonSave(meta)}
  if data_iter is not None:
    args["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
  mgr.save(step, args=ocp.args.Composite(**args))


def read_meta(mgr: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  return mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def restore(mgr: ocp.CheckpointManager, step: int, state: Any, frozen: PyTree,
            data_iter: Any) -> tuple[Any, PyTree]:
  """Restores `step` into the layout (shapes, shardings) of the given state and frozen tree.

  `data_iter` is restored in place.
  """
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, {"state": state, "frozen": frozen})
  args = {"state": ocp.args.StandardRestore(abstract)}
  if data_iter is not None:
    args["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
  restored = mgr.restore(step, args=ocp.args.Composite(**args))["state"]
  return restored["state"], restored["frozen"]


CORRUPT_DIR = "checkpoints_corrupt"


class NoIntactCheckpoint(RuntimeError):
  """No step of a run directory restores; the message names each step's problem and the fix."""


def _root_cause(error: BaseException) -> str:
  """The innermost message of an exception chain, on one line (TensorStore's names the file)."""
  while (error.__cause__ or error.__context__) is not None:
    error = error.__cause__ or error.__context__
  text = " ".join(str(error).split())
  return f"{type(error).__name__}: {text[:400]}"


def diagnose_step(step_dir: str, items: tuple[str, ...] = ITEMS) -> list[str]:
  """Problems cheap to see in a step directory: missing items and JSON files that do not parse."""
  step_dir = epath.Path(step_dir)
  problems = [f"{step_dir / item} is missing" for item in items if not (step_dir / item).exists()]
  json_files = [step_dir / "_CHECKPOINT_METADATA", step_dir / "meta" / "metadata"]
  if (step_dir / "data_iter").exists():
    json_files += sorted((step_dir / "data_iter").glob("*.json"))
  for path in json_files:
    if path.exists():
      try:
        json.loads(path.read_text())
      except ValueError as e:
        problems.append(f"{path} is not valid JSON ({e})")
  return problems


def _move_aside(mgr: ocp.CheckpointManager, step: int, reason: str) -> str:
  """Renames a bad step directory to checkpoints_corrupt/<step>-<time> (process 0); returns it."""
  source = epath.Path(mgr.directory) / str(step)
  stamp = time.strftime("%Y%m%d-%H%M%S")
  target = epath.Path(mgr.directory).parent / CORRUPT_DIR / f"{step}-{stamp}"
  if jax.process_index() == 0:
    target.parent.mkdir(parents=True, exist_ok=True)
    source.rename(target)
    (target.parent / f"{step}-{stamp}.reason.txt").write_text(reason + "\n")
  _sync(f"sr_jax_move_aside_{step}")
  return str(target)


def _sync(name: str) -> None:
  """A barrier across processes of a multi-host run (nothing on one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def _try_step(mgr, step, state, frozen, data_iter, check_meta, check_restored):
  """(state, frozen, None) restored from `step`, or (None, None, (kind, reason)) if it fails.

  kind is 'damaged' (orbax could not read it) or 'rejected' (check_restored refused the
  restored state, e.g. a diverged one). Errors raised by `check_meta` (a config that does not
  fit the run) propagate: they are not damage.
  """
  step_dir = os.path.join(str(mgr.directory), str(step))
  try:
    meta = read_meta(mgr, step)
  except Exception as e:  # pylint: disable=broad-except  # orbax raises many kinds.
    return None, None, ("damaged", "; ".join(diagnose_step(step_dir)) or _root_cause(e))
  if check_meta is not None:
    check_meta(step, meta)
  try:
    restored, restored_frozen = restore(mgr, step, state, frozen, data_iter)
  except Exception as e:  # pylint: disable=broad-except
    return None, None, ("damaged", "; ".join(diagnose_step(step_dir)) or _root_cause(e))
  reason = check_restored(step, restored) if check_restored is not None else None
  if reason:
    return None, None, ("rejected", reason)
  return restored, restored_frozen, None


def restore_latest_intact(mgr: ocp.CheckpointManager, state: Any, frozen: PyTree,
                          data_iter: Any, *, check_meta=None,
                          check_restored=None) -> tuple[int | None, Any, PyTree]:
  """Restores the newest step that reads back whole; returns (step, state, frozen).

  (None, state, frozen) unchanged when the run has no checkpoint. Steps are tried newest first.
  `check_meta(step, meta)` may raise for a checkpoint that does not fit the config (that error
  propagates); `check_restored(step, state) -> reason or None` may refuse a restored state
  (e.g. `guards.check_state` on a diverged one). Once an older step restores, each newer one
  that failed is moved to checkpoints_corrupt/ with a warning naming it. A damaged step is
  only moved aside when an older one restores: a failure every step shares (say, an
  optimizer changed since the save) is a config problem, not damage, and raises
  NoIntactCheckpoint naming every step. Refused states are moved aside even with nothing older.
  """
  failures = []
  initial_position = data_iter.get_state() if data_iter is not None else None
  for step in sorted(mgr.all_steps(), reverse=True):
    restored, restored_frozen, failure = _try_step(mgr, step, state, frozen, data_iter,
                                                   check_meta, check_restored)
    if failure is None:
      _set_aside(mgr, failures, f"falling back to step {step}")
      return step, restored, restored_frozen
    failures.append((step, *failure))
  if failures and all(kind == "rejected" for _, kind, _ in failures):
    _set_aside(mgr, failures, "starting from step 0")
    if data_iter is not None:  # A refused step's restore moved it.
      data_iter.set_state(initial_position)
    return None, state, frozen
  if failures:
    raise NoIntactCheckpoint(_no_intact_message(mgr, failures))
  return None, state, frozen


def _set_aside(mgr, failures, outcome: str) -> None:
  for step, kind, reason in failures:
    target = _move_aside(mgr, step, reason)
    logging.warning("Checkpoint step %d in %s is %s (%s); moved it to %s and %s.", step,
                    mgr.directory, "damaged" if kind == "damaged" else "refused", reason,
                    target, outcome)
  if failures:
    mgr.reload()


def _no_intact_message(mgr, failures) -> str:
  listing = " ".join(f"Step {step}: {reason}." for step, _, reason in failures)
  return (f"No checkpoint in {mgr.directory} restores, so the run cannot resume. {listing} "
          "If every step fails the same way, the checkpoints may not fit this config (a "
          "changed optimizer, model or LoRA setting): run with the config that wrote them. "
          "If files were damaged, restore them from a backup, or move the checkpoints "
          "directory aside to train from step 0 (nothing here was changed or deleted).")


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
  for path, leaf in sorted(lora.flatten(tree).items()):
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
  _sync("sr_jax_repair_export")


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
  _sync("sr_jax_swap_export")


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
  _sync("sr_jax_export_read")  # Every process decides on the same files.
  if existing.get("content_sha256") == meta["content_sha256"]:
    if existing != meta:
      _write_meta(directory, meta)
    logging.info("Parameters in %s are unchanged; kept them.", directory)
    return
  staging = directory + _NEW
  if jax.process_index() == 0 and paths.exists(staging):
    epath.Path(staging).rmtree()  # What a killed export left: incomplete by definition.
  _sync("sr_jax_export_staging")
  paths.makedirs(staging)
  # Without OCDBT, an export's size on disk depends only on its contents: OCDBT's data files
  # vary from save to save (235-346 KB for one 100 KB tree), so the size users are told did.
  with ocp.Checkpointer(ocp.StandardCheckpointHandler(use_ocdbt=False)) as ckptr:
    ckptr.save(os.path.join(staging, "params"), args=ocp.args.StandardSave(params), force=True)
  _write_meta(staging, meta)
  _sync("sr_jax_export_written")
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
