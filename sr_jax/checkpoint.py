"""Orbax checkpoints: resumable runs, and base weights and adapters stored on their own.

A run directory holds `checkpoints/<step>/` with three items: `state` (train state and the
frozen half of the tree), `data_iter` (the grain iterator position) and `meta` (config and the
model's architecture). Orbax writes each step to a temporary directory and renames it when
complete, so an interrupted save never leaves a checkpoint that looks valid.

Exports are plain directories a deployment can hold separately: `save_params` (a full
parameter tree, e.g. a base) and `save_adapters` (the LoRA tree, the base leaves tuned with it,
and the LoRA plan), each with a `meta.json` naming the architecture.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging

from sr_jax import jsonfile, paths

PyTree = Any
ITEMS = ("state", "data_iter", "meta")


# Orbax saves a replicated array in slices, one per replica, and compiles a slicing program per
# array shape: on 8 devices a model with a few hundred parameter shapes took ~20 s per save
# (measured on CPU), for arrays of a few KiB. Arrays whose slices would be smaller than this are
# written whole by one replica, as orbax does without replica-parallel saving.
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


def check_architecture(saved: dict[str, Any], current: dict[str, Any], where: str) -> None:
  """Raises when a checkpoint was written for another architecture, naming each difference."""
  diffs = [f"{k}: checkpoint has {saved.get(k)!r}, config has {current.get(k)!r}"
           for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
  if diffs:
    raise ValueError(
        f"{where} holds a checkpoint of a different architecture:\n  " + "\n  ".join(diffs) +
        "\nUse a new --workdir, or set the config's model to match the checkpoint.")


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


def _write_meta(directory: str, meta: dict[str, Any]) -> None:
  if jax.process_index() == 0:
    jsonfile.write(os.path.join(directory, "meta.json"), meta, indent=2, sort_keys=True)


def read_params_meta(directory: str, what: str = "params") -> dict[str, Any]:
  """The meta.json of a directory written by `save_params` (architecture, job, step, ...)."""
  path = os.path.join(directory, "meta.json")
  if not paths.exists(path):
    raise FileNotFoundError(
        f"{directory} is not an sr_jax {what} directory (no meta.json). Pass a directory "
        f"written by sr_jax (a run's export/{what}, or `python -m sr_jax.convert`).")
  return jsonfile.read(path)


def save_params(directory: str, params: PyTree, meta: dict[str, Any]) -> None:
  """Writes a full parameter tree and its meta (architecture) to `directory`."""
  directory = paths.absolute(directory)
  paths.makedirs(directory)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(directory, "params"), params, force=True)
  _write_meta(directory, meta)
  logging.info("Wrote parameters to %s", directory)


def load_params(directory: str) -> tuple[PyTree, dict[str, Any]]:
  """Reads a tree written by `save_params` (onto the host's default device)."""
  directory = paths.absolute(directory)
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
