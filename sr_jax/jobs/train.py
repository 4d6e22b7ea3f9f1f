"""Training a job: an optional base pre-training stage, then the run itself.

`train_and_evaluate(config, workdir)` reads top to bottom in the order a job happens:

1. the base stage: the parameters to start from are config.base.checkpoint, or a base
   pre-trained here in workdir/base (when config.base.num_steps > 0; reused once finished), or
   none (a fresh initialisation);
2. the run stage (`run_stage`): build the run (sr_jax.train.run_setup), train it from its latest
   checkpoint (sr_jax.train.loop) and export it, or with config.mode='eval' restore a checkpoint;
   then score it on held-out images and write the results table (sr_jax.train.report).
   config.mode='eval' trains nothing: a workdir without a checkpoint (or a base pre-trained
   here that is missing) is an error naming what is missing, before any work.

Each stage leaves its results in its own directory, so re-running the same command resumes where it
stopped; a finished run only re-evaluates. Before any work the whole config is checked
(sr_jax.train.config_check: ranges, the LoRA plan against the architecture, every image), and the
workdir is locked for the job (sr_jax.train.workdir_lock: a second run on it is refused). The base
stage's config is derived from the job's (`base_config`), with the objective's own adjustments (e.g.
a GAN's base is its PSNR-oriented L1 stage).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
from absl import logging
from etils import epath

from sr_jax import objectives
from sr_jax.models import registry
from sr_jax.train import checkpoint, config_check, loop, report, resume, run_setup, workdir_lock
from sr_jax.util import console, exports, layout, paths

PyTree = Any
MODES = ("train", "eval")


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


def _base_export(config: ml_collections.ConfigDict, workdir: str) -> str:
  return layout.Workdir(workdir).base.export_params


def _finished_base(config: ml_collections.ConfigDict, export_dir: str) -> bool:
  """Whether export_dir holds the base this config pre-trains (same steps and architecture)."""
  if not paths.exists(os.path.join(export_dir, "meta.json")):
    return False
  meta = exports.read_params_meta(export_dir)  # Its tensors are read only if it fits.
  return (meta.get("step") == config.base.num_steps
          and meta.get("model") == registry.architecture(config.model))


def has_checkpoint(workdir: str) -> bool:
  """Whether workdir/checkpoints holds at least one saved step."""
  directory = layout.Workdir(workdir).checkpoints
  return paths.exists(directory) and any(
      p.name.isdigit() for p in epath.Path(directory).iterdir())


def eval_missing(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
  """What config.mode='eval' needs in `workdir` and does not find (empty: ready)."""
  missing = []
  if config.base.checkpoint:
    if not paths.exists(config.base.checkpoint):
      missing.append(f"the base config.base.checkpoint={config.base.checkpoint}")
  elif config.base.num_steps > 0 and not _finished_base(config, _base_export(config, workdir)):
    missing.append(f"the pre-trained base {_base_export(config, workdir)} "
                   f"({config.base.num_steps} steps)")
  if not has_checkpoint(workdir):
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
  export_dir = _base_export(config, workdir)
  if _finished_base(config, export_dir):
    logging.info("Using the base pre-trained earlier in %s.", base_dir)
    return exports.load_params(export_dir)[0]
  check_eval_ready([f"the pre-trained base {export_dir}"] if config.mode == "eval" else [],
                   workdir)
  logging.info("No config.base.checkpoint: pre-training a base in %s (%d steps).", base_dir,
               config.base.num_steps)
  run_stage(base_config(config), base_dir, base=None, title=base_title(config))
  return exports.load_params(export_dir)[0]


def write_config(config: ml_collections.ConfigDict, workdir: str, writer) -> None:
  """The whole config, to workdir/config.yaml and TensorBoard's text tab (the console gets
  sr_jax.config.config_doc.summary)."""
  text = str(config)
  if jax.process_index() == 0:
    paths.makedirs(workdir)
    paths.write_text(layout.Workdir(workdir).config_yaml, text)
  writer.write_texts(0, {"config": f"```\n{text}\n```"})


def run_stage(config: ml_collections.ConfigDict, workdir: str, base: PyTree | None, *,
              label: str | None = None, title: str = "final results",
              echo: bool = True) -> dict[str, Any]:
  """Builds, trains (or restores) and evaluates one run in `workdir`; returns its rows.

  `label` names the tuned model's row, `title` the printed table; `echo=False` prints none.
  """
  # A host copy: restored arrays may already carry the mesh's sharding, and the training state
  # built from them is donated to the step, which would delete the base evaluated at the end.
  base = None if base is None else jax.device_get(base)
  run = run_setup.build_run(config, workdir, base)
  writer = console.tensorboard_writer(workdir)
  write_config(config, workdir, writer)
  mgr = checkpoint.manager(workdir, config.keep_checkpoints)
  trainable, pct = run_setup.report_trainable(run)
  try:
    if config.mode == "train":
      writer.write_hparams(scalar_hparams(config))
      loop.train(run, mgr, writer)
      loop.export(run)
    else:
      resume.restore_for_eval(run, mgr)
  finally:
    mgr.close()  # Finishes queued saves of good states even when training stopped on an error.
  rows = report.evaluate_run(run, base, writer, trainable, pct, label)
  report.write_table(workdir, rows, writer, config, title=title, echo=echo)
  writer.flush()
  return rows


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       label: str | None = None, title: str = "final results",
                       echo: bool = True) -> dict[str, Any]:
  """Runs the job's stages (see the module docstring); returns the run's rows {arm: metrics}.

  `label`, `title` and `echo` as in `run_stage` (a job made of several runs names them).
  """
  if config.mode not in MODES:
    raise ValueError(f"Unknown config.mode {config.mode!r}; use one of {MODES}.")
  objectives.get(config.objective)  # An unknown objective fails before any work.
  workdir = paths.absolute(workdir)
  if config.mode == "eval":  # Nothing is trained in eval mode: all of it must exist.
    check_eval_ready(eval_missing(config, workdir), workdir)
  config_check.validate_all(config)  # Ranges, the LoRA plan and every image, before any work.
  pretrains = (not config.base.checkpoint and config.base.num_steps > 0
               and not _finished_base(config, _base_export(config, workdir)))
  stages = console.Stages([base_title(config), "training"]) if pretrains else None
  with workdir_lock.hold(workdir, jax.process_index()):  # One run per workdir.
    if stages:
      stages.begin(base_title(config), f"{config.base.num_steps} steps")
    base = base_stage(config, workdir)
    if stages:
      stages.begin("training", f"{config.num_steps} steps")
    return run_stage(config, workdir, base, label=label, title=title, echo=echo)


def scalar_hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config's scalar values, flattened to 'a.b.c' keys (TensorBoard's hparams)."""
  flat = {}

  def walk(prefix, node):
    for k, v in node.items():
      key = f"{prefix}{k}"
      if isinstance(v, (dict, ml_collections.ConfigDict)):
        walk(key + ".", v)
      elif isinstance(v, (int, float, str, bool)):
        flat[key] = v
  walk("", config)
  return flat
