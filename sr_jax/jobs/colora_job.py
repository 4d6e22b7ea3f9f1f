"""The CoLoRA job (Park, Kim and Chun, ECCV 2024): base -> probe -> FAIG -> ranks -> arms -> table.

`run(config, workdir)` reads top to bottom in the order the job happens; every stage leaves its
result in the workdir and is skipped when re-run, so an interrupted job resumes where it
stopped (each training stage also resumes from its own checkpoints):

  base/     the base, pre-trained here (PROD when base.degradation.kind='prod') unless
            config.base.checkpoint names one
  probe/    a short full fine-tune on the task: FAIG's fine-tuned endpoint (skipped when
            colora.probe_checkpoint names one)
  faig/     scores.json (per-leaf FAIG), allocation_<arm>.json (ranks; config.lora.plan_file
            format), faig_blocks.png, ranks_<arm>.png; each reused while the settings and
            inputs it was made from are unchanged
  colora/, uniform/, full/   one training run per arm of colora.arms, same steps and data
  results.md  every arm: PSNR/SSIM, trainable share, export size, step time and memory
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from sr_jax.adapt import colora, faig
from sr_jax.data import pipeline
from sr_jax.jobs import base_stage as base_stage_lib, run_stage, stages, train
from sr_jax.models import registry
from sr_jax.train import config_check, report
from sr_jax.util import console, exports, jsonfile, layout, paths, plots

PyTree = Any
ARMS = {"colora": "CoLoRA", "uniform": "uniform LoRA", "full": "full fine-tuning"}
PROBE_TITLE = "probe (full fine-tune, used only for FAIG)"


def check(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Everything that can fail before work: the arms, the objective, eval mode's needs, the
  whole config (ranges and every image)."""
  unknown = [a for a in config.colora.arms if a not in ARMS]
  if unknown or not config.colora.arms:
    raise ValueError(f"Unknown colora.arms {unknown}; choose from {list(ARMS)}.")
  if config.objective != "pixel":
    # FAIG integrates the gradient of the summed squared error of the model's output along the
    # path from the probe to the base (sr_jax.adapt.faig); a GAN's or a diffusion model's
    # contributions would need that objective's own loss and sampling, which it does not have.
    raise ValueError(f"CoLoRA scores kernels with FAIG on the model's squared error, but "
                     f"config.objective={config.objective!r}: set config.colora.enabled=False "
                     "(uniform LoRA: config.lora.enabled=True) for this objective.")
  if config.mode == "eval":
    base_stage_lib.check_eval_ready(eval_missing(config, workdir), workdir)
  config_check.validate_all(config)  # Ranges and every image, before any stage runs.


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) every stage; returns the results-table rows {arm: metrics}."""
  workdir = paths.absolute(workdir)
  return stages.run(stages.Job(check=lambda: check(config, workdir),
                               stages=lambda: job_stages(config, workdir)), workdir)


def eval_missing(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
  """What config.mode='eval' needs (the base and, per arm, its checkpoint and allocation)."""
  missing = [m for m in base_stage_lib.eval_missing(config, workdir)
             if "checkpoint in" not in m]
  for arm in config.colora.arms:
    arm_dir = layout.Workdir(workdir).sub(arm).root
    if not run_stage.has_checkpoint(arm_dir):
      missing.append(f"checkpoint of the {ARMS[arm]} arm in {arm_dir}")
    allocation = layout.Workdir(workdir).allocation(arm)
    if arm != "full" and not paths.exists(allocation):
      missing.append(f"{ARMS[arm]} allocation {allocation}")
  return missing


BASE, PROBE, FAIG = "base", PROBE_TITLE, "FAIG"


def job_stages(config: ml_collections.ConfigDict, workdir: str) -> list[stages.Stage]:
  """The base; outside eval mode the probe and FAIG; one stage per arm; the final table."""
  writer = console.tensorboard_writer(workdir)
  run_stage.write_config(config, workdir, writer)
  evaluating = config.mode == "eval"  # Eval mode reuses the allocations: no probe or FAIG.
  out = [stages.Stage(BASE if evaluating else base_stage_lib.base_title(config),
                      lambda _: base_stage(config, workdir))]
  base_key = out[0].title
  if not evaluating:
    out += [
        stages.Stage(PROBE, lambda done: probe_stage(config, workdir, done[base_key][0]),
                     f"{config.colora.probe_steps} steps"),
        stages.Stage(FAIG, lambda done: faig_stage(config, workdir, *done[base_key],
                                                   done[PROBE], writer),
                     f"M={config.colora.faig_steps} points on {config.colora.faig_images} "
                     "crops")]
  for arm in config.colora.arms:
    out.append(stages.Stage(f"{ARMS[arm]} arm" + (" (evaluation)" if evaluating else ""),
                            functools.partial(_arm_stage, config, workdir, arm, base_key,
                                              writer),
                            "" if evaluating else f"{config.num_steps} steps"))
  out.append(stages.Stage("final results", lambda done: _final_table(config, workdir, done,
                                                                      writer), counted=False))
  return out


def _arm_stage(config: ml_collections.ConfigDict, workdir: str, arm: str, base_key: str,
               writer, done: stages.Products) -> dict[str, Any]:
  """One arm: its allocation (made from FAIG's scores, or the saved one in eval mode), then a
  training job of its own in workdir/<arm>."""
  base_dir, base = done[base_key]
  scores = done.get(FAIG)
  plan_file = (allocation_stage(config, workdir, base_dir, base, scores, arm, writer)
               if scores is not None else _saved_allocation(workdir, arm))
  return train.train_and_evaluate(arm_config(config, arm, base_dir, plan_file),
                                  layout.Workdir(workdir).sub(arm).root, label=ARMS[arm],
                                  echo=False)


def _final_table(config: ml_collections.ConfigDict, workdir: str, done: stages.Products,
                 writer) -> dict[str, Any]:
  """Every arm's rows in one table (the input's and the base's rows once)."""
  rows = {}
  for arm in config.colora.arms:
    arm_rows = next(v for k, v in done.items() if k.startswith(f"{ARMS[arm]} arm"))
    for shared in ("degraded input", "base", "base @ general set"):
      if shared in arm_rows:
        rows.setdefault(shared, arm_rows[shared])
    rows.update({k: v for k, v in arm_rows.items() if k.startswith(ARMS[arm])})
  report.write_table(workdir, rows, writer, config, title="final results")
  writer.flush()
  return rows


def _saved_allocation(workdir: str, arm: str) -> str:
  """The allocation a LoRA arm was trained with ('' for full fine-tuning)."""
  return "" if arm == "full" else layout.Workdir(workdir).allocation(arm)


def stage_config(config: ml_collections.ConfigDict, name: str,
                 base_dir: str) -> ml_collections.ConfigDict:
  """A copy of `config` for one training stage that starts from the base in `base_dir`."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.job = f"{config.job}/{name}"
  c.colora.enabled = False
  c.base.checkpoint, c.base.num_steps = base_dir, 0
  return c


def base_stage(config: ml_collections.ConfigDict, workdir: str) -> tuple[str, PyTree]:
  """The base's params directory (config.base.checkpoint, or one pre-trained in workdir/base)
  and its parameters, loaded once for the stages that read them."""
  if not config.base.checkpoint and config.base.num_steps <= 0:
    raise ValueError("CoLoRA adapts a base: set config.base.checkpoint (e.g. a PROD run's "
                     "export/params) or config.base.num_steps > 0 to pre-train one here.")
  base = base_stage_lib.base_stage(config, workdir)  # Checks the architecture; pre-trains.
  return config.base.checkpoint or layout.Workdir(workdir).base.export_params, base


def probe_stage(config: ml_collections.ConfigDict, workdir: str, base_dir: str) -> str:
  """FAIG's fine-tuned endpoint: colora.probe_checkpoint, or a short full fine-tune here."""
  if config.colora.probe_checkpoint:
    return config.colora.probe_checkpoint
  c = stage_config(config, "probe", base_dir)
  c.lora.enabled = False
  c.num_steps = config.colora.probe_steps
  c.optimizer.learning_rate = config.colora.probe_learning_rate
  c.checkpoint_every = max(1, min(c.checkpoint_every, c.num_steps))
  c.eval_every = 0
  probe = layout.Workdir(workdir).probe
  probe_dir = probe.root
  logging.info("CoLoRA probe: %d steps of full fine-tuning in %s.", c.num_steps, probe_dir)
  train.train_and_evaluate(c, probe_dir, label="probe", title=PROBE_TITLE)
  return probe.export_params


def faig_batch(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """colora.faig_images task crops, fixed by the seed (the first batch of the train stream)."""
  dataset = pipeline.make_train_dataset(config.data, seed=config.seed,
                                        batch_size=config.colora.faig_images)
  return next(iter(dataset))


def faig_stage(config: ml_collections.ConfigDict, workdir: str, base_dir: str, base: PyTree,
               tuned_dir: str, writer) -> list[faig.LayerScore]:
  """Per-leaf FAIG between the base and the probe on the task's crops (cached in faig/)."""
  out = layout.Workdir(workdir).faig
  paths.makedirs(out)
  path = os.path.join(out, "scores.json")
  settings = json.loads(json.dumps({
      "base": base_dir, "tuned": tuned_dir, "tuned_meta": _export_meta(tuned_dir),
      "steps": config.colora.faig_steps, "images": config.colora.faig_images,
      "seed": config.seed, "data": config.data.to_dict(), "model": config.model.to_dict()}))
  if paths.exists(path):
    scores, meta = faig.load_scores(path)
    if meta.get("settings") == settings:
      logging.info("Using the FAIG scores computed earlier in %s.", path)
      return scores
  tuned, _ = exports.load_params(tuned_dir)
  batch = faig_batch(config)
  model = registry.build_model(config.model)
  apply_fn = lambda params, lq: model.apply({"params": params}, lq)  # pylint: disable=unnecessary-lambda-assignment
  t0 = time.perf_counter()
  progress = console.Counter("FAIG", "path points", config.colora.faig_steps)
  attribution = faig.integrated_gradients(apply_fn, base, tuned, batch["lq"], batch["gt"],
                                          steps=config.colora.faig_steps,
                                          batch_size=config.colora.faig_batch,
                                          progress=progress)
  jax.block_until_ready(attribution)
  seconds = time.perf_counter() - t0
  step_seconds = _grad_step_seconds(apply_fn, base, batch, config.colora.faig_batch)
  cost = seconds / (config.colora.faig_steps * step_seconds)
  logging.info("FAIG: %d steps x %d crops in %.1f s (compile included) = %.2f x M gradient "
               "passes of %.3f s.", config.colora.faig_steps, config.colora.faig_images,
               seconds, cost, step_seconds)
  depthwise = registry.entry(config.model.name).depthwise_kernels
  scores = faig.layer_scores(attribution, depthwise)
  faig.save_scores(path, scores, {"settings": settings, "seconds": seconds,
                                  "gradient_pass_seconds": step_seconds,
                                  "cost_in_gradient_passes_with_compile":
                                      cost * config.colora.faig_steps,
                                  "groups": faig.group_scores(scores)})
  _plot_faig(scores, out, writer, registry.entry(config.model.name).block_order)
  return scores


def _export_meta(params_dir: str) -> dict[str, Any]:
  """The step and job an exported tree came from (so a changed probe invalidates FAIG)."""
  meta = exports.read_params_meta(params_dir)
  return {"step": meta.get("step"), "job": meta.get("job")}


def _grad_step_seconds(apply_fn, params: PyTree, batch: dict[str, np.ndarray],
                       chunk: int) -> float:
  """Seconds of one compiled forward+backward of FAIG's loss on the same crops."""
  lq, gt = jnp.asarray(batch["lq"]), jnp.asarray(batch["gt"])
  if chunk:
    lq, gt = lq[:chunk], gt[:chunk]

  grad = jax.jit(jax.grad(functools.partial(faig.squared_error, apply_fn)))
  jax.block_until_ready(grad(params, lq, gt))
  t0 = time.perf_counter()
  jax.block_until_ready(grad(params, lq, gt))
  chunks = 1 if not chunk else len(batch["lq"]) // chunk
  return (time.perf_counter() - t0) * chunks


def _plot_faig(scores: list[faig.LayerScore], out: str, writer, block_order) -> None:
  blocks = faig.block_scores(scores)
  blocks = {name: blocks[name] for name in sorted(blocks, key=block_order)}
  image = plots.bar_chart(list(blocks), [b["mean"] for b in blocks.values()],
                          "FAIG per block", log=True,
                          xlabel="mean FAIG per parameter (summed squared error of [0, 1] pixels)")
  plots.save_png(os.path.join(out, "faig_blocks.png"), image)
  writer.write_images(0, {"colora/faig_blocks": image[None]})
  groups = faig.group_scores(scores)
  logging.info("FAIG mean per parameter by group: %s", ", ".join(
      f"{g} {v['mean']:.3g} ({v['size']:,} params)" for g, v in groups.items()))


def allocation_stage(config: ml_collections.ConfigDict, workdir: str, base_dir: str,
                     base: PyTree, scores: list[faig.LayerScore], arm: str, writer) -> str:
  """Writes faig/allocation_<arm>.json (a LoRA plan file) for a LoRA arm; '' for 'full'."""
  if arm == "full":
    return ""
  path = layout.Workdir(workdir).allocation(arm)
  settings = _allocation_settings(config, arm, base_dir, scores)
  if paths.exists(path) and jsonfile.read(path).get("settings") == settings:
    logging.info("Using the %s allocation made earlier in %s.", ARMS[arm], path)
    return path
  if config.colora.score not in ("mean", "total"):
    raise ValueError(f"colora.score must be 'mean' or 'total', got {config.colora.score!r}.")
  means = {s.path: getattr(s, config.colora.score) for s in scores}
  allocation = colora.allocate(base, means, config.colora, config.lora.targets,
                               registry.entry(config.model.name).depthwise_kernels,
                               uniform=arm == "uniform")
  allocation.save(path, config.colora.lora_scale, settings=settings,
                  scaling=config.lora.scaling)
  logging.info("%s allocation: %s trainable of %s (budget %s): %d adapters, %d frozen kernels.",
               ARMS[arm], f"{allocation.trainable_params:,}", f"{allocation.num_base_params:,}",
               f"{allocation.budget_params:,}", sum(r > 0 for r in allocation.ranks.values()),
               sum(r == 0 for r in allocation.ranks.values()))
  image = rank_chart(config, base, allocation.ranks, ARMS[arm])
  plots.save_png(layout.Workdir(workdir).ranks_plot(arm), image)
  writer.write_images(0, {f"colora/ranks_{arm}": image[None]})
  return path


def network_order(block_order: Callable[[str], tuple]) -> Callable[[str], tuple]:
  """Sort key of parameter paths in data-flow order: the registry's order of top-level blocks,
  then the path inside the block with numbers compared as numbers."""
  def key(path: str) -> tuple:
    block, _, rest = path.partition("/")
    return (block_order(block), [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", rest)])
  return key


def rank_chart(config: ml_collections.ConfigDict, base: PyTree, ranks: dict[str, int],
               name: str) -> np.ndarray:
  """The rank of every kernel in network order, bars at their kernel's cap marked."""
  entry = registry.entry(config.model.name)
  _, caps = colora.candidates(base, config.lora.targets, entry.depthwise_kernels,
                              config.colora.max_rank)
  paths = sorted(ranks, key=network_order(entry.block_order))
  capped = [ranks[p] > 0 and ranks[p] >= caps.get(p, ranks[p] + 1) for p in paths]
  return plots.bar_chart(paths, [ranks[p] for p in paths],
                         f"{name} rank per kernel, in network order", value_format="{:.0f}",
                         marked=capped, marked_note="at its cap", xlabel="LoRA rank")


def _allocation_settings(config: ml_collections.ConfigDict, arm: str, base_dir: str,
                         scores: list[faig.LayerScore]) -> dict[str, Any]:
  """What an allocation depends on: a saved one is reused while these are unchanged, so a
  re-run never hands an arm's checkpoints a plan of other ranks."""
  keys = ("score", "budget", "alpha", "beta", "max_rank", "depthwise", "tune_extras",
          "lora_scale")
  digest = hashlib.sha256(json.dumps([(s.path, s.total) for s in scores]).encode()).hexdigest()
  return json.loads(json.dumps(dict({k: config.colora[k] for k in keys}, arm=arm,
                                    base=base_dir, targets=list(config.lora.targets),
                                    scores=digest)))


def arm_config(config: ml_collections.ConfigDict, arm: str, base_dir: str,
               plan_file: str) -> ml_collections.ConfigDict:
  """The fine-tuning run of one arm: same steps, data and optimizer; different trainables."""
  c = stage_config(config, arm, base_dir)
  c.lora.enabled = arm != "full"
  c.lora.plan_file = plan_file
  if c.lora.enabled:
    extras = colora.EXTRA_TRAINABLE if config.colora.tune_extras else ()
    if config.colora.depthwise == "full":
      extras += (registry.entry(config.model.name).depthwise_kernels,)
    c.lora.extra_trainable = extras
  return c
