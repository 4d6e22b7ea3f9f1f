"""Resuming a run from its checkpoints, after checking they belong to this run.

A checkpoint is restored only into the run that wrote it: the same architecture, the same LoRA
plan and, when the data-iterator position is restored too, the same number of grain workers.
Each mismatch is an error naming both sides and what to do.
"""

from __future__ import annotations

import json
from typing import Any

from absl import logging

from sr_jax.data import integrity
from sr_jax.models import registry
from sr_jax.objectives import base as objective_base
from sr_jax.train import checkpoint, guards
from sr_jax.train.run_setup import Run


def _plan_summary(plan: dict[str, Any] | None) -> str:
  if not plan:
    return "no adapters"
  ranks = plan["ranks"]
  return f"{len(ranks)} adapters, {sum(ranks.values())} ranks in all"


def check_data_workers(saved_meta: dict[str, Any], num_workers: int, workdir: str) -> None:
  """grain's iterator state depends on the worker count: resuming needs the same count."""
  try:
    saved = json.loads(saved_meta["config"])["data"]["num_workers"]
  except (KeyError, TypeError, ValueError):
    return  # No record of it: let grain try.
  if saved != num_workers:
    raise ValueError(
        f"The checkpoint in {workdir} saved its data-iterator position with "
        f"data.num_workers={saved}, but this run has data.num_workers={num_workers}; grain "
        f"cannot carry the position across worker counts. Resume with "
        f"--config.data.num_workers={saved} (or start a new workdir).")


def check_saved(run: Run, saved: dict[str, Any], resuming_data: bool) -> None:
  """The saved run must be this run: architecture, LoRA plan and (resuming the data stream)
  grain's worker count; a training set that shrank since is worth a warning."""
  registry.check_architecture(saved.get("model", {}), run.meta["model"],
                              f"--workdir {run.workdir}")
  if saved.get("lora_plan") != run.meta["lora_plan"]:
    raise ValueError(
        f"The checkpoint in {run.workdir} was trained with another LoRA plan (ranks or adapted "
        f"kernels differ: {_plan_summary(saved.get('lora_plan'))} saved, "
        f"{_plan_summary(run.meta['lora_plan'])} now). Use the original config.lora settings "
        "(or plan file), or a new --workdir.")
  if resuming_data:
    check_data_workers(saved, run.config.data.num_workers, run.workdir)
    integrity.warn_if_fewer((saved.get("data") or {}).get("num_train_records"),
                            run.meta.get("data", {}).get("num_train_records", 0),
                            f"of {run.workdir}")


def restore_step(run: Run, mgr, step: int, data_iter=None) -> None:
  """Restores checkpoint `step` into `run` after checking it belongs to this run."""
  check_saved(run, checkpoint.read_meta(mgr, step), data_iter is not None)
  run.state, model_frozen = checkpoint.restore(mgr, step, run.state, run.model_frozen, data_iter)
  run.frozen = dict(run.frozen, **{objective_base.MODEL: model_frozen})


def restore_or_start(run: Run, mgr, data_iter) -> int:
  """Restores the newest intact checkpoint into `run`, if any; returns its step (0: none).

  A damaged step (truncated or missing files, unreadable metadata) or a diverged state is
  moved aside with a warning and the next older one tried (checkpoint.restore_latest_intact).
  """
  def check_restored(step, state):
    verdict = guards.check_config_state(state, step, run.config.guard)
    return None if verdict.ok else verdict.reason

  step, run.state, model_frozen = checkpoint.restore_latest_intact(
      mgr, run.state, run.model_frozen, data_iter,
      check_meta=lambda step, saved: check_saved(run, saved, data_iter is not None),
      check_restored=check_restored)
  if step is None:
    return 0
  run.frozen = dict(run.frozen, **{objective_base.MODEL: model_frozen})
  logging.info("Resumed from step %d in %s.", step, run.workdir)
  return step


def restore_for_eval(run: Run, mgr) -> None:
  """Restores config.eval_checkpoint_step (-1: the latest) for evaluation only."""
  step = None if run.config.eval_checkpoint_step < 0 else run.config.eval_checkpoint_step
  step = mgr.latest_step() if step is None else step
  if step is None or step not in mgr.all_steps():
    raise FileNotFoundError(f"No checkpoint {'' if step is None else step} in "
                            f"{run.workdir}/checkpoints (steps: {list(mgr.all_steps())}); train "
                            "first with --config.mode=train.")
  restore_step(run, mgr, step)
