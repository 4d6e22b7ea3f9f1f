"""Orbax checkpoints of a run: resumable training state, damaged steps set aside.

A run directory holds `checkpoints/<step>/` with three items: `state` (train state and the
frozen half of the tree), `data_iter` (the grain iterator position) and `meta` (config and the
model's architecture). Orbax writes each step to a temporary directory and renames it when
complete, so an interrupted save never leaves a checkpoint that looks valid.

A damaged checkpoint (a truncated array file, deleted files, a garbled iterator position, a
missing meta) is not fatal: `restore_latest_intact` falls back to the newest step that
restores, moving each newer one aside to `checkpoints_corrupt/` with a warning naming it
(nothing is deleted), or explains in one paragraph why no step restores. The exported weights
a deployment reads (base, adapters) are `sr_jax.util.exports`.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from sr_jax.util import distributed, layout, paths

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
  return ocp.CheckpointManager(layout.Workdir(paths.absolute(run_dir)).checkpoints,
                               options=options, item_names=ITEMS)


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
  run = layout.Workdir(str(epath.Path(mgr.directory).parent))
  target = epath.Path(run.corrupt_checkpoints) / f"{step}-{stamp}"
  if jax.process_index() == 0:
    target.parent.mkdir(parents=True, exist_ok=True)
    source.rename(target)
    (target.parent / f"{step}-{stamp}.reason.txt").write_text(reason + "\n")
  distributed.barrier(f"sr_jax_move_aside_{step}")
  return str(target)


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
