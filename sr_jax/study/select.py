"""Running the study's arms: allocations, the learning-rate choice on validation, the test runs.

For each arm of a task: every candidate learning rate is trained once (the first seed) and
scored on the validation split; the rate with the best validation PSNR is chosen (the first
of equals: the candidates are ordered; a GAN-objective arm, whose aim is perceptual, by the
lowest LPIPS where the runs score it) and written to <arm>/selection.json; then the arm runs
at that rate for each seed and is scored on the test images (and on the general set, when the
config names one: the row carries it as 'general'). A candidate whose run diverges (the
divergence guard refuses its state) loses the choice and is listed as diverged. The test
images never take part in a choice. Each run is train_and_evaluate in its own directory, so
the study resumes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
from absl import logging

from sr_jax.adapt import colora
from sr_jax.jobs import colora_job, train
from sr_jax.models import registry
from sr_jax.study import arms as arms_lib
from sr_jax.train import guards
from sr_jax.util import jsonfile, paths

Row = dict[str, Any]
Trainer = Callable[[ml_collections.ConfigDict, str], dict[str, Row]]


GENERAL = " @ general set"  # The suffix of a run's rows scored on the general set.


def _with_general(rows: dict[str, Row], name: str) -> Row:
  """Row `name`, with its general-set row under 'general' when the run scored one."""
  row = dict(rows[name])
  if name + GENERAL in rows:
    row["general"] = rows[name + GENERAL]
  return row


def tuned_row(rows: dict[str, Row]) -> Row:
  """The trained model's row of a run's table (the last one not on the general set), with its
  general-set row under 'general' when the run scored one."""
  return _with_general(rows, [n for n in rows if not n.endswith(GENERAL)][-1])


def reference_rows(rows: dict[str, Row]) -> dict[str, Row]:
  """A run's rows that do not depend on the arm: bicubic (or the degraded input) and the
  untouched base, each with its general-set row when scored."""
  return {name: _with_general(rows, name) for name in ("bicubic", "degraded input", "base")
          if name in rows}


def objective_metric(objective: str, row: Row) -> str:
  """What a validation choice maximises: 'psnr', or for the GAN objective '-lpips_alex'
  (lower is better) when its runs score LPIPS-alex (config.eval.lpips)."""
  return "-lpips_alex" if objective == "gan" and "lpips_alex" in row else "psnr"


def selection_metric(arm: arms_lib.Arm, row: Row) -> str:
  """The metric of `arm`'s choice (objective_metric of the arm's own objective)."""
  return objective_metric(arm.objective, row)


def choose_by(rows: dict[Any, Row], metric: str) -> Any:
  """The candidate (a key of `rows`) of the best `metric` (a '-' prefix: lower is better),
  the first listed among equals."""
  key, sign = metric.lstrip("-"), -1.0 if metric.startswith("-") else 1.0
  return choose({candidate: sign * float(r[key]) for candidate, r in rows.items()})


def choose(scores: dict[Any, float]) -> Any:
  """The candidate of the highest score (the first listed among equals)."""
  if not scores:
    raise ValueError("No candidate learning rate was scored.")
  return max(scores, key=lambda lr: (scores[lr], -list(scores).index(lr)))


def plan_file(task_cfg: ml_collections.ConfigDict, workdir: str, arm: arms_lib.Arm, base: Any,
              scores: Sequence[Any] | None) -> str:
  """The arm's LoRA plan file at its budget (CoLoRA from FAIG scores; uniform from none)."""
  if arm.name not in arms_lib.LORA_ARMS:
    return ""
  c = ml_collections.ConfigDict(task_cfg.colora.to_dict())
  c.budget = arm.budget
  c.tune_extras = c.tune_extras and not arm.adapters_only
  means = {s.path: getattr(s, task_cfg.colora.score) for s in scores} if scores else {}
  allocation = colora.allocate(base, means, c, task_cfg.lora.targets,
                               registry.entry(task_cfg.model.name).depthwise_kernels,
                               uniform=arm.name == "uniform")
  path = os.path.join(workdir, "allocations", f"{arm.label.replace('%', 'pct')}.json")
  paths.makedirs(os.path.dirname(path))
  allocation.save(path, c.lora_scale, settings={"arm": arm.label},
                  scaling=task_cfg.lora.scaling)
  return path


def faig_scores(task_cfg: ml_collections.ConfigDict, workdir: str, base_dir: str,
                base: Any, writer) -> list[Any]:
  """CoLoRA's per-layer FAIG contributions for the task (a probe fine-tune on its training
  images, then integrated gradients; both cached in the task's directory)."""
  probe = colora_job.probe_stage(task_cfg, workdir, base_dir)
  return colora_job.faig_stage(task_cfg, workdir, base_dir, base, probe, writer)


def candidate_row(trainer: Trainer, config: ml_collections.ConfigDict, run_dir: str
                  ) -> Row | None:
  """A validation run's tuned row, or None when it diverged (sr_jax.train.guards refused to save
  its state): a rate too high for the arm is a candidate that loses, not the end of the study.
  The divergence is recorded in the run's directory, so a resumed study does not train it
  again."""
  marker = os.path.join(run_dir, "diverged.json")
  if paths.exists(marker):
    return None
  try:
    return tuned_row(trainer(config, run_dir))
  except guards.Diverged as e:
    logging.warning("Learning rate %g diverged; it is not a candidate: %s",
                    config.optimizer.learning_rate, e)
    paths.makedirs(run_dir)
    jsonfile.write(marker, {"learning_rate": config.optimizer.learning_rate, "error": str(e)})
    return None


def select_rate(task_cfg: ml_collections.ConfigDict, workdir: str, task: str,
                arm: arms_lib.Arm, plan: str, seed: int, trainer: Trainer = train.train_and_evaluate
                ) -> float:
  """Trains every candidate rate on the validation split and returns the chosen one."""
  path = os.path.join(workdir, task, arm.label.replace("%", "pct"), "selection.json")
  rows, diverged = {}, []
  for lr in arms_lib.learning_rates(task_cfg, arm):
    config = arms_lib.run_config(task_cfg, arm, plan, lr, seed, "val")
    row = candidate_row(trainer, config, arms_lib.run_dir(workdir, task, arm, lr, seed, "val"))
    if row is None:
      diverged.append(lr)
    else:
      rows[lr] = row
  if not rows:
    raise guards.Diverged(f"Every candidate learning rate of {arm.label} on {task} diverged "
                          f"({', '.join(f'{lr:g}' for lr in diverged)}): lower "
                          f"study.{arm.family}_learning_rates.")
  metric = selection_metric(arm, next(iter(rows.values())))
  chosen, key = choose_by(rows, metric), metric.lstrip("-")
  record = {"validation_psnr": {f"{lr:g}": float(r["psnr"]) for lr, r in rows.items()},
            "metric": metric, "chosen": chosen, "seed": seed,
            "diverged": [f"{lr:g}" for lr in diverged]}
  if key != "psnr":
    record[f"validation_{key}"] = {f"{lr:g}": float(r[key]) for lr, r in rows.items()}
  paths.makedirs(os.path.dirname(path))
  jsonfile.write(path, record)
  logging.info("%s on %s: validation %s %s -> learning rate %g.", arm.label, task, key,
               ", ".join(f"{lr:g}: {float(r[key]):.4g}" for lr, r in rows.items()), chosen)
  return chosen


def test_runs(task_cfg: ml_collections.ConfigDict, workdir: str, task: str, arm: arms_lib.Arm,
              plan: str, learning_rate: float, seeds: Sequence[int],
              trainer: Trainer = train.train_and_evaluate) -> list[Row]:
  """The arm at its chosen rate, one run per seed, scored on the test images."""
  results = []
  for seed in seeds:
    config = arms_lib.run_config(task_cfg, arm, plan, learning_rate, seed, "eval")
    rows = trainer(config, arms_lib.run_dir(workdir, task, arm, learning_rate, seed, "eval"))
    results.append(dict(tuned_row(rows), seed=seed, learning_rate=learning_rate,
                        steps=config.num_steps, references=reference_rows(rows)))
  return results
