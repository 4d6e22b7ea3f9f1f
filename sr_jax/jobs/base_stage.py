"""The base stage: the parameters a job starts from, pre-trained in workdir/base if need be.

The base is config.base.checkpoint, or a base pre-trained here in workdir/base (when
config.base.num_steps > 0; reused once finished), or none (a fresh initialisation). The base's
config is derived from the job's (`base_config`), with the objective's own adjustment (a GAN's
base is its PSNR-oriented L1 stage, a diffusion base learns the whole chain). config.mode='eval'
trains nothing: what it needs and does not find is named before any work (`eval_missing`).
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections
from absl import logging

from sr_jax import objectives
from sr_jax.jobs import run_stage
from sr_jax.models import registry
from sr_jax.util import exports, layout, paths

PyTree = Any


def base_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config of the base pre-training stage derived from a fine-tuning config."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.job = f"{config.job}/base"
  c.mode = "train"
  c.lora.enabled, c.lora.plan_file, c.colora.enabled = False, "", False
  c.eval.general_set = ""  # The general set scores the transfer, not the base.
  c.data.degradation = c.base.degradation
  c.data.num_train_images = 0  # Few-shot limits are for the fine-tuning task, not the base.
  c.num_steps = config.base.num_steps
  c.optimizer.learning_rate = config.base.learning_rate
  if config.base.milestones:
    c.optimizer.milestones = config.base.milestones
  if config.base.embedded_set:
    c.data.embedded_set = config.base.embedded_set
  if config.base.train_dir:  # Its own images: none of the task's validation split among them.
    c.data.source, c.data.train_dir, c.data.val_images = "folder", config.base.train_dir, 0
  if config.base.ema_decay >= 0:
    c.ema.decay = config.base.ema_decay
  c.base.checkpoint, c.base.num_steps = "", 0
  objectives.get(config.objective).base_stage(c)
  return c


def base_title(config: ml_collections.ConfigDict) -> str:
  """The base stage's name in logs and its printed table ('PROD base stage'; 'base' when
  config.base.checkpoint gives it)."""
  if config.base.checkpoint:
    return "base"
  return ("PROD " if config.base.degradation.kind == "prod" else "") + "base stage"


def base_export(config: ml_collections.ConfigDict, workdir: str) -> str:
  return layout.Workdir(workdir).base.export_params


def finished_base(config: ml_collections.ConfigDict, export_dir: str) -> bool:
  """Whether export_dir holds the base this config pre-trains (same steps and architecture)."""
  if not paths.exists(os.path.join(export_dir, "meta.json")):
    return False
  meta = exports.read_params_meta(export_dir)  # Its tensors are read only if it fits.
  return (meta.get("step") == config.base.num_steps
          and meta.get("model") == registry.architecture(config.model))


def eval_missing(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
  """What config.mode='eval' needs in `workdir` and does not find (empty: ready)."""
  missing = []
  if config.base.checkpoint:
    if not paths.exists(config.base.checkpoint):
      missing.append(f"the base config.base.checkpoint={config.base.checkpoint}")
  elif config.base.num_steps > 0 and not finished_base(config, base_export(config, workdir)):
    missing.append(f"the pre-trained base {base_export(config, workdir)} "
                   f"({config.base.num_steps} steps)")
  if not run_stage.has_checkpoint(workdir):
    missing.append(f"a checkpoint in {layout.Workdir(workdir).checkpoints}")
  return missing


def check_eval_ready(missing: list[str], workdir: str) -> None:
  """Raises FileNotFoundError naming everything eval mode lacks, before any work."""
  if missing:
    raise FileNotFoundError(
        f"--config.mode=eval evaluates a finished run, but {workdir} has no " +
        "; no ".join(missing) + ". Train first (the same command without "
        "--config.mode=eval), or pass the --workdir of a finished run.")


def base_stage(config: ml_collections.ConfigDict, workdir: str) -> PyTree | None:
  """The base parameters to start from: a given checkpoint, one pre-trained here, or None."""
  arch = registry.architecture(config.model)
  if config.base.checkpoint:
    params, meta = exports.load_params(config.base.checkpoint)
    registry.check_architecture(meta.get("model", {}), arch,
                                f"config.base.checkpoint={config.base.checkpoint}")
    return params
  if config.base.num_steps <= 0:
    return None
  base_dir = layout.Workdir(workdir).base.root
  export_dir = base_export(config, workdir)
  if finished_base(config, export_dir):
    logging.info("Using the base pre-trained earlier in %s.", base_dir)
    return exports.load_params(export_dir)[0]
  check_eval_ready([f"the pre-trained base {export_dir}"] if config.mode == "eval" else [],
                   workdir)
  logging.info("No config.base.checkpoint: pre-training a base in %s (%d steps).", base_dir,
               config.base.num_steps)
  run_stage.run_stage(base_config(config), base_dir, base=None, title=base_title(config))
  return exports.load_params(export_dir)[0]
