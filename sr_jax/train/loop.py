"""The training loop: data -> jitted step -> metrics and checkpoints, then the export.

`train(run, mgr, writer)` resumes from the run's newest intact checkpoint, steps until
config.num_steps (logging every config.log_every steps, checkpointing every
config.checkpoint_every, evaluating every config.eval_every), and records the step's time and
compiled memory in workdir/timing.json. A non-finite loss, or an updated state that is
non-finite or beyond config.guard's bounds, stops the run before that state is saved. `export(run)` writes the merged model and, for LoRA
runs, the adapters.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from absl import logging

from sr_jax import objectives
from sr_jax.adapt import lora
from sr_jax.data import pipeline, preview
from sr_jax.train import checkpoint, guards, report, resume
from sr_jax.train.run_setup import Run
from sr_jax.util import console, exports, jsonfile, layout, sharding, timers, trees

PyTree = Any


def check_finite(pending: list[dict[str, jax.Array]], last_step: int,
                 last_saved: int | None = None) -> dict[str, float]:
  """Mean of the steps' metrics; a non-finite loss stops the run before anything is saved.

  Every '*loss' metric is checked (a GAN's generator and discriminator losses alike);
  `last_saved` is the checkpoint a re-run resumes from (None: it starts from step 0).
  """
  host = jax.device_get(pending)
  names = [k for k in host[0] if k == "loss" or k.endswith("_loss")]
  losses = np.array([[m[k] for k in names] for m in host])
  bad_steps = np.flatnonzero(~np.isfinite(losses).all(axis=1))
  if bad_steps.size:
    i = int(bad_steps[0])
    first = last_step - len(host) + 1 + i
    name = names[int(np.flatnonzero(~np.isfinite(losses[i]))[0])]
    raise FloatingPointError(
        f"{name} became {host[i][name]} at step {first}; stopping without writing a checkpoint "
        "from this state. Lower config.optimizer.learning_rate, set "
        "config.optimizer.grad_clip_norm, or check the data; a re-run "
        + (f"resumes from step {last_saved}." if last_saved else "starts from step 0."))
  return {k: float(np.mean([m[k] for m in host])) for k in host[0]}


def compile_step(run: Run, batch: PyTree):
  """The jitted step compiled for this batch's shapes; records its memory in run.timing."""
  with console.phase("compiling the train step"):
    compiled = run.train_step().lower(run.state, run.frozen, batch).compile()
  memory = compiled.memory_analysis()
  if memory is not None:
    run.timing["step_memory_mb"] = (memory.temp_size_in_bytes + memory.argument_size_in_bytes
                                    + memory.output_size_in_bytes
                                    - memory.alias_size_in_bytes) / 2**20
  return compiled


def loss_label(config) -> str:
  """What the logged 'loss' is, when its name does not say (NAFNet's loss is -PSNR in dB)."""
  return objectives.get(config.objective).loss_label(config)


def write_json(path: str, value: Any) -> None:
  """Writes JSON atomically (a reader never sees half a file), from process 0 only."""
  if jax.process_index() == 0:
    jsonfile.write(path, value)


def _log_metrics(writer, step: int, means: dict[str, float], wait: timers.DataWait,
                 progress: console.StepProgress) -> None:
  """TensorBoard's training scalars and the console's one line for this interval."""
  writer.write_scalars(step, {f"train/{k}": v for k, v in means.items()})
  timing = {"timing/data_wait_fraction": wait.fraction(reset=True)}
  rate = progress.rate(step)
  if rate is not None:
    timing["timing/steps_per_sec"] = rate
  writer.write_scalars(step, timing)
  logging.info("%s", progress.line(step, means))


def _check_before_save(run: Run, mgr, step: int, means: dict[str, float]) -> None:
  """The updated state must be finite and within config.guard's bounds to be saved: the loss
  a step logs predates its update, so a diverging update only shows in the state itself."""
  verdict = guards.check_config_state(run.state, step, run.config.guard, means)
  if not verdict.ok:
    mgr.wait_until_finished()  # Earlier good saves complete; this state is never written.
    raise guards.Diverged(verdict.message(mgr.latest_step()))


def train(run: Run, mgr, writer) -> None:
  """Runs steps until config.num_steps, logging, checkpointing and evaluating periodically."""
  config = run.config
  dataset = pipeline.make_train_dataset(config.data, seed=config.seed,
                                        batch_size=config.batch_size,
                                        process_index=jax.process_index(),
                                        process_count=jax.process_count())
  data_iter = iter(dataset)
  run.meta["data"] = {"num_train_records": pipeline.train_record_count(config.data),
                      "train_image_side": pipeline.train_image_side(config.data)}
  start = resume.restore_or_start(run, mgr, data_iter)
  if start == 0 and jax.process_index() == 0:
    grid = preview.degradation_grid(config.data, seed=config.seed)
    writer.write_images(0, {"data/degradations": grid[None]})
  step_fn, clock, wait, pending = None, timers.StepClock(), timers.DataWait(), []
  progress = console.StepProgress(config.num_steps, loss_label(config))
  if start < config.num_steps:
    logging.info("Training steps %d-%d in %s.", start + 1, config.num_steps, run.workdir)
  for step in range(start + 1, config.num_steps + 1):
    with wait:  # Only the host-side wait: the device transfer may queue behind the step.
      local_batch = next(data_iter)
    batch = sharding.global_batch(local_batch, run.mesh)
    if step_fn is None:  # Compiled once, ahead of time, to read its memory analysis.
      step_fn = compile_step(run, batch)
      clock.start(step)
    run.state, metrics = step_fn(run.state, run.frozen, batch)
    pending.append(metrics)
    if step == start + 1:  # Rates are timed from the first finished step (see sr_jax.util.console).
      jax.block_until_ready(metrics)
      progress.start(step)
    saving = step % config.checkpoint_every == 0 or step == config.num_steps
    if step % config.log_every == 0 or saving:
      means = check_finite(pending, step, mgr.latest_step())
      _log_metrics(writer, step, means, wait, progress)
      pending = []
    with clock.pause():  # Saves and evaluations do not count as step time.
      if saving:
        _check_before_save(run, mgr, step, means)
        checkpoint.save(mgr, step, run.state, run.model_frozen, data_iter, run.meta)
      if config.eval_every and step % config.eval_every == 0 and step < config.num_steps:
        result = report.evaluate_tuned(run, writer, step)
        logging.info("step %d: held-out PSNR %.3f dB, SSIM %.4f (%d images).", step,
                     result["psnr"], result["ssim"], len(result["per_image"]))
  mgr.wait_until_finished()
  jax.block_until_ready(run.state.step)
  step_ms = clock.step_ms(config.num_steps)
  if step_ms is not None:
    run.timing["step_ms"] = step_ms
    write_json(layout.Workdir(run.workdir).timing, run.timing)
  if config.num_steps > start:
    logging.info("Input pipeline: the train loop waited for data %.1f%% of its time.",
                 100 * wait.total_fraction())


def export(run: Run) -> None:
  """Writes the merged model (export/params) and, for LoRA runs, the adapters (export/adapters)."""
  with console.phase(f"exporting to {layout.Workdir(run.workdir).export}"):
    _export(run)


def _export(run: Run) -> None:
  trainable = jax.device_get(sharding.gather(run.objective.eval_trainable(run.state), run.mesh))
  params = lora.combine(trainable, jax.device_get(sharding.gather(run.model_frozen, run.mesh)))
  merged = lora.merge(params["base"], params["lora"], run.plan)
  # The objective that wrote it and its record travel with the export (sr_jax.infer asks that
  # objective for a restorer; SR3's record says how to sample), and the training crop size
  # (sr_jax.infer sizes TLC's windows from it).
  export_meta = {"model": run.meta["model"], "job": run.config.job, "step": int(run.state.step),
                 "objective": run.config.objective,
                 "train_size": int(run.config.data.crop_size),
                 "train_image_side": int(run.meta.get("data", {}).get("train_image_side", 0)),
                 **run.objective_meta}
  exports.save_params(layout.Workdir(run.workdir).export_params, merged, export_meta)
  if run.plan is not None:
    tuned_base = trees.flatten(trainable["base"])  # Drops the frozen (MaskedNode) positions.
    exports.save_adapters(layout.Workdir(run.workdir).export_adapters,
                          params["lora"], trees.unflatten(tuned_base),
                          dict(export_meta, lora_plan=run.plan.to_json(),
                               extra_trainable=list(run.config.lora.extra_trainable)))
