r"""python -m sr_jax.study --config configs/colora_nafnet.py:study --workdir W

Runs the adaptation study of the config (see sr_jax.study) and writes W/study.md and
W/study.png. Stages, each resumable: splits -> base -> per task: CoLoRA's probe and FAIG ->
per arm: learning rates on the validation split -> the chosen rate per seed on the test set.
"""

from __future__ import annotations

import functools
import os
import shlex
import sys
import time
from collections.abc import Sequence
from typing import Any

import ml_collections
from absl import app, flags, logging
from clu import metric_writers
from ml_collections import config_flags

from sr_jax import objectives
from sr_jax.adapt import colora, lora
from sr_jax.config import config_cli
from sr_jax.jobs import base_stage, stages, train
from sr_jax.study import arms as arms_lib, select, splits as splits_lib, table
from sr_jax.train import config_check
from sr_jax.util import console, errors, layout, paths, plots, runtime

FLAGS = flags.FLAGS


def base_config(config: ml_collections.ConfigDict,
                splits: splits_lib.Splits) -> ml_collections.ConfigDict:
  """The config whose base stage pre-trains (or loads) the study's one base."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.data.update(splits.data)
  c.base.update(splits.base_data)
  if splits.general_set:
    c.eval.general_set = splits.general_set
  return c


def run_task(config, workdir: str, task: str, splits: splits_lib.Splits, base_dir: str,
             base: Any, writer, trainer: select.Trainer = train.train_and_evaluate
             ) -> tuple[dict[str, list[dict]], dict[str, float]]:
  """Every arm of one task: its chosen learning rate and its test rows per seed."""
  task_dir = os.path.join(workdir, task)
  task_cfg = arms_lib.task_config(config, task, base_dir, splits.data)
  scores = None
  extras = colora.fully_tuned(base, colora.EXTRA_TRAINABLE)
  task_arms = [arms_lib.fit_extras(a, task_cfg, lora.count(base), extras)
               for a in arms_lib.arms(config, task)]
  if any(a.name == "colora" for a in task_arms):
    scores = select.faig_scores(task_cfg, task_dir, base_dir, base, writer)
  results, chosen = {}, {}
  seeds = list(config.study.seeds)
  for arm in task_arms:
    plan = select.plan_file(task_cfg, task_dir, arm, base, scores)
    main = arm.name not in arms_lib.LORA_ARMS or arm.budget == config.study.budget
    if not main and not config.study.curve_select_rates:  # The arm's main-budget rate.
      lr = chosen[arms_lib.Arm(arm.name, config.study.budget).label]
      logging.info("%s on %s: the rate %s chose at %g%%, %g.", arm.label, task, arm.name,
                   100 * config.study.budget, lr)
    else:
      lr = select.select_rate(task_cfg, workdir, task, arm, plan, seeds[0], trainer)
    results[arm.label] = select.test_runs(task_cfg, workdir, task, arm, plan, lr,
                                          seeds if main else seeds[:1], trainer)
    chosen[arm.label] = lr
  first = next(iter(results.values()))[0]
  references = {name: [row] for name, row in first.pop("references", {}).items()}
  for runs in results.values():
    for row in runs:
      row.pop("references", None)
  return dict(references, **results), chosen


def check(config: ml_collections.ConfigDict) -> None:
  """Everything that can fail before work: the study's settings and the whole config."""
  arms_lib.check_study(config)
  config_check.validate_all(config)


def _base(bconfig: ml_collections.ConfigDict, workdir: str) -> Any:
  base = base_stage.base_stage(bconfig, workdir)
  if base is None:
    raise ValueError("The study has no base to adapt: give base.checkpoint (a trained "
                     "model's export/params) or study.base_images > 0 with base.num_steps "
                     "> 0 to pre-train one here.")
  return base


def job_stages(config: ml_collections.ConfigDict, workdir: str, argv: Sequence[str],
               trainer: select.Trainer, start: float) -> list[stages.Stage]:
  """The splits, the base, one stage per task (every arm: its rate chosen on validation, then
  its test runs) and the report (study.md, study.png)."""
  paths.makedirs(workdir)
  splits = splits_lib.make_splits(config, workdir)
  bconfig = base_config(config, splits)
  base_dir = config.base.checkpoint or layout.Workdir(workdir).base.export_params
  writer = metric_writers.create_default_writer(workdir, just_logging=True)
  out = [stages.Stage("base", lambda _: _base(bconfig, workdir), counted=False)]
  for task in config.study.tasks:
    run_one = functools.partial(run_task, bconfig, workdir, task, splits, base_dir,
                                writer=writer, trainer=trainer)
    out.append(stages.Stage(f"task {task}", lambda done, run_one=run_one: run_one(
        base=done["base"])))
  out.append(stages.Stage("report", lambda done: _report(
      config, bconfig, workdir, splits, argv, start,
      {t: done[f"task {t}"] for t in config.study.tasks}), counted=False))
  return out


def _report(config, bconfig, workdir: str, splits: splits_lib.Splits, argv: Sequence[str],
            start: float, per_task: dict[str, tuple[dict, dict]]) -> str:
  """study.md and study.png from every task's results and chosen rates."""
  results = {task: r for task, (r, _) in per_task.items()}
  chosen = {task: c for task, (_, c) in per_task.items()}
  header = [f"# Adaptation study: {config.job}", "",
            "Command: `" + " ".join(shlex.quote(a) for a in argv) + "`" if argv else "",
            f"Wall time: {(time.perf_counter() - start) / 60:.1f} min (resumed stages "
            "count only their remaining work).",
            f"Model: {config.model.name} {config.model.preset}; {config.num_steps} steps at "
            f"batch {config.batch_size}, {config.data.crop_size}px crops; base: "
            f"{config.base.checkpoint or 'pre-trained here'}.",
            "Budget-curve points: " + ("each at its own rate chosen on validation."
                                       if config.study.curve_select_rates else
                                       "at the rate the same arm chose at "
                                       f"{100 * config.study.budget:g}% (not re-chosen)."),
            "Learning-rate candidates: full fine-tuning "
            f"{tuple(config.study.full_learning_rates)}, LoRA arms "
            f"{tuple(config.study.lora_learning_rates)}; a rate chosen at either end of its "
            "list may do better outside it.",
            "Arms marked '-adapters' are at a budget too small to also tune the biases and "
            "norms fully: they train their LoRA factors alone."]
  if config.study.objectives:
    header.append("Objectives: every arm with each of " + ", ".join(
        f"'+{o}'" for o in config.study.objectives) + "; a GAN-objective arm's rate is "
        "chosen by the lowest validation LPIPS-alex where scored, every other by PSNR.")
  if bconfig.eval.general_set:
    header.append("'general' columns: the same runs scored on the general set (the base's "
                  "own domain: what the adaptation forgets).")
  text = table.markdown(results, chosen, splits.to_json(), header)
  paths.write_text(os.path.join(workdir, "study.md"), text)
  plots.save_png(os.path.join(workdir, "study.png"), table.budget_plot(results))
  return text


def run(config: ml_collections.ConfigDict, workdir: str, argv: Sequence[str] = (),
        trainer: select.Trainer = train.train_and_evaluate) -> str:
  """The whole study, a job of stages (sr_jax.jobs.stages); returns study.md's text (also
  written to workdir). `trainer` runs one training run (train.train_and_evaluate; tests wrap
  it)."""
  workdir, start = paths.absolute(workdir), time.perf_counter()
  text = stages.run(stages.Job(check=lambda: check(config),
                               stages=lambda: job_stages(config, workdir, argv, trainer,
                                                         start)), workdir)
  print(text, flush=True)
  return text


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if config_cli.shown(sections=objectives.sections()):
    return
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required: the directory of the study's runs and report "
                         "(re-running with the same one resumes).")
  runtime.setup()
  console.log_to_file(FLAGS.workdir)
  run(FLAGS.config, FLAGS.workdir, ["python", "-m", "sr_jax.study"] + sys.argv[1:])


def command() -> None:
  """The `sr-jax-study` console command (the same as python -m sr_jax.study)."""
  flags.DEFINE_string("workdir", None, "Directory for the study's runs and its report.")
  config_flags.DEFINE_config_file("config", None, "Study config, e.g. "
                                  "configs/colora_nafnet.py:study.", lock_config=True)
  flags.mark_flags_as_required(["config"])
  config_cli.define_show_config()
  app.run(errors.guarded(main), flags_parser=config_cli.parse_flags)


if __name__ == "__main__":
  command()
