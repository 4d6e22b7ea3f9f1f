"""The configs of the study's runs: a task, an arm at a budget, a learning rate, a seed, a split.

Arms: 'full' fine-tuning (every parameter), 'uniform' LoRA (one rank for every dense kernel)
and 'colora' (ranks from FAIG contributions), the two LoRA arms at the same trainable budget
(adapters plus the fully tuned biases and norms; sr_jax.adapt.colora.allocate); for a diffusion
objective also 'range', full fine-tuning of the data end of the chain only (timesteps 1 to
study.range_t_max, the base sampling the others; full fine-tuning's rate candidates). With
study.objectives (e.g. ('pixel', 'gan')) every arm runs once per training objective ('full+gan':
full fine-tuning with the GAN objective). A task is a degradation chain of one op the base never
saw ('haze', 'low_light', 'poisson_noise', ...), or 'domain': the config's own degradation on the
data folder's images, a domain the base never saw (photographs to manga pages).
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections

from sr_jax import objectives
from sr_jax.adapt import colora
from sr_jax.data import ops
from sr_jax.models import registry

ARMS = ("full", "uniform", "colora", "range")
LORA_ARMS = ("uniform", "colora")
DIFFUSION = ("diffusion", "resshift")  # Objectives whose timestep chain 'range' restricts.
OBJECTIVES = ("pixel", "gan")  # The objectives an arm may train with (study.objectives).
DOMAIN_TASK = "domain"  # The task that keeps the config's degradation: a new image domain.


@dataclasses.dataclass(frozen=True)
class Arm:
  """One arm at one budget (0 for full fine-tuning). adapters_only: a LoRA arm at a budget too
  small to also tune the biases and norms fully (colora.tune_extras) trains its adapters alone.
  objective: the training objective ('' = the config's own; else config.objective is set)."""
  name: str
  budget: float = 0.0
  adapters_only: bool = False
  objective: str = ""

  @property
  def label(self) -> str:
    suffix = f"+{self.objective}" if self.objective else ""
    if self.name not in LORA_ARMS:
      return self.name + suffix
    return (f"{self.name}@{100 * self.budget:g}%" + ("-adapters" if self.adapters_only else "")
            + suffix)

  @property
  def family(self) -> str:
    """Which learning-rate candidates it draws from: 'full' or 'lora'."""
    return "lora" if self.name in LORA_ARMS else "full"


def check_study(config: ml_collections.ConfigDict) -> None:
  """Unknown arms or tasks, or no seeds, are errors naming the valid choices (before any run)."""
  s = config.study
  unknown = [a for a in s.arms if a not in ARMS]
  if unknown or not s.arms:
    raise ValueError(f"Unknown study.arms {unknown or '(none)'}; choose from {list(ARMS)}.")
  bad = [t for t in s.tasks if t not in ops.OPS and t != DOMAIN_TASK]
  if bad or not s.tasks:
    raise ValueError(f"Unknown study.tasks {bad or '(none)'}; each is a degradation op "
                     f"{list(ops.OPS)} or {DOMAIN_TASK!r} (the config's own degradation on a "
                     "new domain's images).")
  unknown = [o for o in s.objectives if o not in OBJECTIVES]
  if unknown:
    raise ValueError(f"Unknown study.objectives {unknown}; choose from {list(OBJECTIVES)} (or "
                     "none: every arm trains with config.objective).")
  if "range" in s.arms and config.objective not in DIFFUSION:
    raise ValueError(f"study.arms has 'range' (part of a diffusion chain) but config.objective "
                     f"is {config.objective!r}; it needs one of {list(DIFFUSION)}.")
  if "gan" in s.objectives and not ("gan" in config and config.gan.discriminator):
    raise ValueError("study.objectives has 'gan' but config.gan.discriminator is empty: start "
                     "from a GAN job's config (e.g. configs/esrgan_lora.py:transfer).")
  seen = set(config.base.degradation.ops) if config.base.degradation.kind in (
      "prod", "chain", "fixed", "single") else set()
  overlap = [t for t in s.tasks if t in seen]
  if overlap:
    raise ValueError(f"study.tasks {overlap} are among the base's own degradations "
                     f"(base.degradation.ops); the study adapts to tasks the base never saw.")
  if not s.seeds:
    raise ValueError("study.seeds is empty; give at least one seed.")
  missing = [t for t in s.curve_tasks if t not in s.tasks]
  if missing:
    raise ValueError(f"study.curve_tasks {missing} are not in study.tasks {list(s.tasks)}.")


def arms(config: ml_collections.ConfigDict, task: str) -> list[Arm]:
  """The task's arms: the main table's, then (on curve tasks) the LoRA arms at other budgets."""
  s = config.study
  arm_objectives = tuple(s.objectives) or ("",)
  main = [Arm(a, s.budget if a in LORA_ARMS else 0.0, objective=o)
          for o in arm_objectives for a in s.arms]
  if task not in s.curve_tasks:
    return main
  return main + [Arm(a, b, objective=o) for o in arm_objectives for b in s.curve_budgets
                 for a in s.arms if a in LORA_ARMS and b != s.budget]


def fit_extras(arm: Arm, task_cfg: ml_collections.ConfigDict, base_params: int,
               extras_params: int) -> Arm:
  """The arm, made adapters-only when its budget cannot hold the fully tuned extras (so a 1%
  curve point of a small model still runs, and says how it differs)."""
  if (arm.name not in LORA_ARMS or not task_cfg.colora.tune_extras
      or extras_params <= int(arm.budget * base_params)):
    return arm
  return dataclasses.replace(arm, adapters_only=True)


def learning_rates(config: ml_collections.ConfigDict, arm: Arm) -> tuple[float, ...]:
  s = config.study
  return tuple(s.full_learning_rates if arm.family == "full" else s.lora_learning_rates)


def task_degradation(config: ml_collections.ConfigDict, task: str) -> ml_collections.ConfigDict:
  """The task as a degradation config: its one op, with config.data.degradation's ranges."""
  d = ml_collections.ConfigDict(config.data.degradation.to_dict())
  d.kind, d.ops, d.min_ops, d.max_ops = "chain", (task,), 1, 1
  return d


def task_config(config: ml_collections.ConfigDict, task: str, base_dir: str,
                data: dict) -> ml_collections.ConfigDict:
  """The study's config for one task: its data, degradation and base; CoLoRA and the study's
  own stages off (each run is a plain training run)."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.data.update(data)
  if task != DOMAIN_TASK:
    c.data.degradation = task_degradation(config, task)
  c.job = f"{config.job}/{task}"
  c.colora.enabled = False
  c.base.checkpoint, c.base.num_steps = base_dir, 0
  c.lora.plan_file = ""
  return c


def run_config(task_cfg: ml_collections.ConfigDict, arm: Arm, plan_file: str, learning_rate: float,
               seed: int, split: str) -> ml_collections.ConfigDict:
  """One training run: the arm's trainable set, its learning rate, the seed, and what it is
  evaluated on ('val': the validation split, to choose the rate; 'eval': the test images).
  A validation run scores no general set and no NIQE: the choice reads neither."""
  c = ml_collections.ConfigDict(task_cfg.to_dict())
  c.job = f"{task_cfg.job}/{arm.label}/lr{learning_rate:g}/seed{seed}/{split}"
  c.seed, c.optimizer.learning_rate, c.data.eval_split = seed, learning_rate, split
  if arm.objective:
    objectives.configure(c, arm.objective)
  if split == "val":
    c.eval.general_set, c.eval.niqe = "", False
  c.lora.enabled = arm.name in LORA_ARMS
  if arm.name == "range":
    chain = c[c.objective]
    chain.t_min, chain.t_max, chain.base_outside_range = 1, task_cfg.study.range_t_max, True
  c.lora.learning_rate_multiplier = 1.0  # The study sets every arm's rate itself.
  c.lora.plan_file = plan_file
  if c.lora.enabled:
    tune_extras = task_cfg.colora.tune_extras and not arm.adapters_only
    extras = colora.EXTRA_TRAINABLE if tune_extras else ()
    if task_cfg.colora.depthwise == "full":
      extras += (registry.entry(task_cfg.model.name).depthwise_kernels,)
    c.lora.extra_trainable = extras
  return c


def run_dir(workdir: str, task: str, arm: Arm, learning_rate: float, seed: int,
            split: str) -> str:
  return os.path.join(workdir, task, arm.label.replace("%", "pct"),
                      f"lr{learning_rate:g}_seed{seed}_{split}")
