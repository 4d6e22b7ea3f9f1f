"""The training job: an optional base pre-training stage, then the run itself.

`train_and_evaluate(config, workdir)` is a job of stages (sr_jax.jobs.stages) read in the order
they happen:

1. the base stage (sr_jax.jobs.base_stage): the parameters to start from are
   config.base.checkpoint, or a base pre-trained here in workdir/base (when
   config.base.num_steps > 0; reused once finished), or none (a fresh initialisation); it is
   counted as a stage only when it pre-trains;
2. the run stage (sr_jax.jobs.run_stage): build the run, train it from its latest checkpoint and
   export it, or with config.mode='eval' restore a checkpoint; then score it on held-out images
   and write the results table. config.mode='eval' trains nothing: a workdir without a
   checkpoint (or a base pre-trained here that is missing) is an error naming what is missing,
   before any work.

Each stage leaves its results in its own directory, so re-running the same command resumes
where it stopped; a finished run only re-evaluates. Before any work the whole config is checked
(sr_jax.train.config_check: ranges, the LoRA plan against the architecture, every image), and
the workdir is locked for the job (sr_jax.train.workdir_lock: a second run on it is refused).
"""

from __future__ import annotations

from typing import Any

import ml_collections

from sr_jax import objectives
from sr_jax.jobs import base_stage, run_stage, stages
from sr_jax.train import config_check
from sr_jax.util import paths

MODES = ("train", "eval")


def check(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Everything that can fail before work: the mode, the objective, what eval mode needs, the
  whole config (ranges, the LoRA plan, every image)."""
  if config.mode not in MODES:
    raise ValueError(f"Unknown config.mode {config.mode!r}; use one of {MODES}.")
  objectives.get(config.objective)  # An unknown objective fails before any work.
  if config.mode == "eval":  # Nothing is trained in eval mode: all of it must exist.
    base_stage.check_eval_ready(base_stage.eval_missing(config, workdir), workdir)
  config_check.validate_all(config)  # Ranges, the LoRA plan and every image, before any work.


def job_stages(config: ml_collections.ConfigDict, workdir: str, *, label: str | None = None,
               title: str = "final results", echo: bool = True) -> list[stages.Stage]:
  """The base stage (counted when it pre-trains), then the run stage."""
  pretrains = (not config.base.checkpoint and config.base.num_steps > 0
               and not base_stage.finished_base(config,
                                                base_stage.base_export(config, workdir)))
  base = base_stage.base_title(config)
  return [
      stages.Stage(base, lambda _: base_stage.base_stage(config, workdir),
                   f"{config.base.num_steps} steps", counted=pretrains),
      stages.Stage("training", lambda done: run_stage.run_stage(
          config, workdir, done[base], label=label, title=title, echo=echo),
                   f"{config.num_steps} steps")]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       label: str | None = None, title: str = "final results",
                       echo: bool = True) -> dict[str, Any]:
  """Runs the job's stages (see the module docstring); returns the run's rows {arm: metrics}.

  `label` names the tuned model's row, `title` the printed table; `echo=False` prints none (a
  job made of several runs names them).
  """
  workdir = paths.absolute(workdir)
  return stages.run(stages.Job(
      check=lambda: check(config, workdir),
      stages=lambda: job_stages(config, workdir, label=label, title=title, echo=echo)),
      workdir)
