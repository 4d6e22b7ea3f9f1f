"""The training loop: data -> jitted step -> metrics, checkpoints and evaluations.

`train_and_evaluate(config, workdir)` reads top to bottom in the order a run happens:
prepare the base (load it, or pre-train one in workdir/base), build the model, the LoRA plan and
the partitioned optimizer, restore the latest checkpoint if there is one, train, export, then
evaluate the base and the tuned model on held-out images and print the table. Re-running the
same command resumes; a finished run only re-evaluates.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions

from sr_jax import checkpoint, evaluate, jsonfile, lora, paths, sharding, step as step_lib
from sr_jax.data import pipeline, preview
from sr_jax.models import registry
from sr_jax.objectives import diffusion, gan, pixel

PyTree = Any


@dataclasses.dataclass
class Run:
  """Everything a training run holds between steps."""
  config: ml_collections.ConfigDict
  workdir: str
  objective: pixel.PixelObjective  # Or a subclass: gan.GanObjective, diffusion.DiffusionObjective.
  mesh: jax.sharding.Mesh
  state: step_lib.TrainState | gan.GanState
  frozen: PyTree
  plan: lora.LoraPlan | None
  meta: dict[str, Any]
  num_base_params: int
  # One NamedSharding per leaf of `state` / `frozen` (sharding.tree_shardings): replicated, or
  # split along the mesh's 'fsdp' axis.
  state_sharding: Any = None
  frozen_sharding: Any = None
  timing: dict[str, float] = dataclasses.field(default_factory=dict)
  _eval_set: list[dict[str, Any]] | None = None

  def train_step(self):
    """The objective's update jitted over the mesh with this run's state and frozen layouts."""
    return step_lib.build_train_step(self.objective.update, self.mesh,
                                     state_sharding=self.state_sharding,
                                     frozen_sharding=self.frozen_sharding)

  @property
  def eval_set(self) -> list[dict[str, Any]]:
    """The held-out images, loaded and degraded once (deterministically) per run."""
    if self._eval_set is None:
      self._eval_set = pipeline.make_eval_set(self.config.data, seed=self.config.seed)
    return self._eval_set


def prepare_base(config: ml_collections.ConfigDict, workdir: str) -> PyTree | None:
  """The base parameters to start from: a given checkpoint, one pre-trained here, or None."""
  arch = registry.architecture(config.model)
  if config.base.checkpoint:
    params, meta = checkpoint.load_params(config.base.checkpoint)
    checkpoint.check_architecture(meta.get("model", {}), arch,
                                  f"config.base.checkpoint={config.base.checkpoint}")
    return params
  if config.base.num_steps <= 0:
    return None
  base_dir = os.path.join(workdir, "base")
  export_dir = os.path.join(base_dir, "export", "params")
  if paths.exists(os.path.join(export_dir, "meta.json")):
    meta = checkpoint.read_params_meta(export_dir)  # Its tensors are read only if it fits.
    if meta.get("step") == config.base.num_steps and meta.get("model") == arch:
      logging.info("Using the base pre-trained earlier in %s.", base_dir)
      return checkpoint.load_params(export_dir)[0]
  logging.info("No config.base.checkpoint: pre-training a base in %s.", base_dir)
  train_and_evaluate(base_config(config), base_dir)
  return checkpoint.load_params(export_dir)[0]


def base_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config of the base pre-training stage derived from a fine-tuning config."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.job = f"{config.job}/base"
  c.mode = "train"
  c.lora.enabled, c.lora.plan_file, c.colora.enabled = False, "", False
  c.gan.enabled = False  # A GAN job's base is its PSNR-oriented first stage (ESRGAN's recipe).
  c.diffusion.t_min, c.diffusion.t_max = 1, 0  # A diffusion base learns the whole chain.
  c.eval.general_set = ""  # The general set scores the transfer, not the base.
  c.data.degradation = c.base.degradation
  c.data.num_train_images = 0  # Few-shot limits are for the fine-tuning task, not the base.
  c.num_steps = config.base.num_steps
  c.optimizer.learning_rate = config.base.learning_rate
  if config.base.milestones:
    c.optimizer.milestones = config.base.milestones
  if config.base.embedded_set:
    c.data.embedded_set = config.base.embedded_set
  c.base.checkpoint, c.base.num_steps = "", 0
  return c


def init_base(model, size: int, rng: jax.Array) -> PyTree:
  """Freshly initialised parameters of `model` (traced on zero inputs of `size` pixels)."""
  return jax.jit(model.init)(rng, *registry.example_inputs(model, size))["params"]


def initial_params(config, model, base: PyTree | None, rng: jax.Array):
  """{'base', 'lora'}, the LoRA plan (or None) and the trainable/frozen labels."""
  if base is None:
    base = init_base(model, config.data.crop_size, rng)
  base = jax.tree.map(jnp.asarray, base)
  plan, adapters = None, {}
  if config.lora.enabled:
    plan = lora_plan(config, base)
    adapters = lora.init_adapters(jax.random.fold_in(rng, 1), base, plan)
  params = {"base": base, "lora": adapters}
  labels = lora.labels(params, config.lora.extra_trainable,
                       full_finetune=not config.lora.enabled)
  return params, plan, labels


def lora_plan(config: ml_collections.ConfigDict, base: PyTree) -> lora.LoraPlan:
  """The LoRA plan: read from config.lora.plan_file, or chosen by targets and ranks."""
  if not config.lora.plan_file:
    exclude = (registry.entry(config.model.name).depthwise_kernels,)
    return lora.make_plan(base, targets=config.lora.targets, rank=config.lora.rank,
                          alpha=config.lora.alpha, exclude=exclude,
                          rank_overrides=config.lora.rank_overrides)
  try:
    plan = lora.LoraPlan.from_json(jsonfile.read(config.lora.plan_file))
  except (OSError, ValueError, KeyError) as e:
    raise ValueError(f"config.lora.plan_file={config.lora.plan_file!r} is not a readable LoRA "
                     f"plan (JSON with 'ranks' and 'alphas' by kernel path): {e}") from e
  lora.check_plan(plan, base, where=f"config.lora.plan_file={config.lora.plan_file}")
  return plan


def build_run(config: ml_collections.ConfigDict, workdir: str, base: PyTree | None) -> Run:
  """Model, objective, mesh and a fresh (replicated) state; no checkpoint restored yet."""
  model = registry.build_model(config.model)
  check_objective(model, config)
  if not config.diffusion.enabled:  # SR3's UNet works at the HR size: any data scale fits.
    check_scale(model, config)
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
  sharding.check_batch_size(config.batch_size, mesh)
  rng = jax.random.PRNGKey(config.seed)
  params, plan, labels = initial_params(config, model, base, rng)
  schedule = step_lib.learning_rate_schedule(config.optimizer, config.num_steps)
  tx = lora.partitioned_optimizer(step_lib.make_optimizer(config.optimizer, schedule), labels)
  trainable, frozen = lora.split(params, labels)
  meta = {"model": registry.architecture(config.model), "config": config.to_json_best_effort(),
          "lora_plan": plan.to_json() if plan else None}
  if config.gan.enabled and config.diffusion.enabled:
    raise ValueError("config.gan.enabled and config.diffusion.enabled are both set; a job "
                     "trains one objective.")
  if config.gan.enabled:
    objective, state, frozen = gan_setup(config, model, tx, plan, schedule, trainable, frozen)
    meta["discriminator"] = {k: config.gan[k] for k in ("discriminator", "d_num_feat")}
  elif config.diffusion.enabled:
    objective = diffusion_objective(config, model, tx, plan, schedule)
    frozen = diffusion.frozen_tree(frozen, params["base"], objective, labels)
    meta["diffusion"] = diffusion.sampling_record(config.diffusion,
                                                  int(config.data.degradation.scale))
    state = step_lib.init_state(trainable, tx, config.seed)
  else:
    objective = pixel.PixelObjective(model, tx, plan, config.loss.kind,
                                     config.loss.charbonnier_eps, schedule)
    state = step_lib.init_state(trainable, tx, config.seed)
  state_sharding = sharding.tree_shardings(state, mesh, config.mesh.fsdp_min_size)
  frozen_sharding = sharding.tree_shardings(frozen, mesh, config.mesh.fsdp_min_size)
  if config.mesh.fsdp > 1:
    log_fsdp(state, state_sharding, mesh)
  return Run(config, workdir, objective, mesh, sharding.place(state, state_sharding),
             sharding.place(frozen, frozen_sharding), plan, meta, lora.count(params["base"]),
             state_sharding, frozen_sharding)


def log_fsdp(state: PyTree, shardings: PyTree, mesh: jax.sharding.Mesh) -> None:
  """Says how much of the train state (parameters and optimizer moments) FSDP splits."""
  leaves = jax.tree.leaves(state)
  specs = jax.tree.leaves(shardings,
                          is_leaf=lambda x: isinstance(x, jax.sharding.NamedSharding))
  split = sum(int(np.size(x)) for x, s in zip(leaves, specs) if not s.is_fully_replicated)
  total = max(sum(int(np.size(x)) for x in leaves), 1)
  logging.info("FSDP: %.1f%% of the train state (parameters and optimizer moments) split %d "
               "ways over the 'fsdp' axis, the rest replicated; mesh %s.", 100 * split / total,
               mesh.shape[sharding.FSDP], dict(mesh.shape))


def diffusion_objective(config: ml_collections.ConfigDict, model, tx, plan,
                        schedule) -> diffusion.DiffusionObjective:
  """The SR3 objective with config.diffusion's noise schedule, range and sampler."""
  d = config.diffusion
  objective = diffusion.DiffusionObjective(model, tx, plan, d,
                                           int(config.data.degradation.scale), schedule)
  logging.info("SR3: %s schedule, T=%d, %s loss on epsilon, training timesteps [%d, %d]; "
               "evaluation samples with %s.", d.schedule, objective.noise.num_steps, d.loss,
               objective.t_min, objective.t_max, objective.sampler_label)
  return objective


def check_objective(model, config: ml_collections.ConfigDict) -> None:
  """A diffusion model (one taking a noisy image and a noise level) needs the diffusion
  objective, and the diffusion objective needs one."""
  is_diffusion = hasattr(model, "example_inputs")
  if is_diffusion and not config.diffusion.enabled:
    raise ValueError(f"config.model.name={config.model.name!r} is a diffusion model: set "
                     "--config.diffusion.enabled=True (see configs/sr3.py).")
  if config.diffusion.enabled and not is_diffusion:
    raise ValueError(f"config.diffusion.enabled needs a diffusion model (config.model.name="
                     f"'sr3'), not {config.model.name!r}.")


def check_scale(model, config: ml_collections.ConfigDict) -> None:
  """An SR model's upscaling factor must equal the data's (data.degradation.scale)."""
  model_scale = int(getattr(model, "scale", 1))
  data_scale = int(config.data.degradation.scale)
  if model_scale != data_scale:
    raise ValueError(
        f"config.model ({config.model.name} preset {config.model.preset!r}) upscales by "
        f"{model_scale}, but config.data.degradation.scale={data_scale}. Set "
        f"--config.data.degradation.scale={model_scale} (and base.degradation.scale) or pick a "
        f"x{data_scale} preset.")


def gan_setup(config, model, tx, plan, schedule, trainable, frozen):
  """The GAN objective, its state (generator half + discriminator) and frozen tree."""
  from sr_jax.models import discriminators  # pylint: disable=g-import-not-at-top
  g = config.gan
  d_model = discriminators.build_discriminator(g.discriminator, num_feat=g.d_num_feat,
                                               input_size=config.data.crop_size,
                                               dtype=registry.DTYPES[config.model.dtype])
  d_vars = discriminators.init_discriminator(d_model, config.data.crop_size,
                                             jax.random.PRNGKey(config.seed + 1))
  d_schedule = step_lib.learning_rate_schedule(g.d_optimizer, config.num_steps)
  d_tx = step_lib.make_optimizer(g.d_optimizer, d_schedule)
  perceptual = None
  if g.perceptual_weight:
    from sr_jax.objectives import perceptual as perceptual_lib  # pylint: disable=g-import-not-at-top
    perceptual = perceptual_lib.PerceptualLoss(
        g.perceptual_network, g.perceptual_checkpoint, parse_weights(g.perceptual_layers),
        g.perceptual_criterion, g.perceptual_before_activation)
    logging.info("Perceptual loss: %s.", perceptual.description)
  objective = gan.GanObjective(model, tx, plan, d_model, d_tx, g, perceptual, config.loss.kind,
                               schedule, d_schedule)
  state = gan.init_state(trainable, tx, d_vars, d_tx, config.seed, ema=g.ema_decay > 0)
  frozen = {"generator": frozen, "perceptual": perceptual.params if perceptual else {}}
  logging.info("Discriminator %s: %s parameters, trained fully.", g.discriminator,
               f"{lora.count(d_vars['params']):,}")
  return objective, state, frozen


def parse_weights(entries) -> dict[str, float]:
  """('conv5_4=1.0', ...) -> {'conv5_4': 1.0}; a malformed entry names the config key."""
  out = {}
  for entry in entries:
    name, sep, value = str(entry).partition("=")
    try:
      out[name.strip()] = float(value)
    except ValueError:
      sep = ""
    if not sep:
      raise ValueError(f"config.gan.perceptual_layers entry {entry!r} must be 'layer=weight', "
                       "e.g. 'conv5_4=1.0'.")
  return out


def report_trainable(run: Run) -> tuple[int, float]:
  """Logs and returns the trainable parameter count and its share of the base."""
  n = lora.count(run.state.trainable)
  pct = 100.0 * n / run.num_base_params
  logging.info("Trainable parameters: %s of %s base parameters (%.2f%%)%s.", f"{n:,}",
               f"{run.num_base_params:,}", pct,
               f"; LoRA on {len(run.plan.paths)} kernels" if run.plan else "; full training")
  return n, pct


def check_finite(pending: list[dict[str, jax.Array]], last_step: int) -> dict[str, float]:
  """Mean of the steps' metrics; a non-finite loss stops the run before anything is saved.

  Every '*loss' metric is checked (a GAN's generator and discriminator losses alike).
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
        "config.optimizer.grad_clip_norm, or check the data; re-running resumes from the last "
        "good checkpoint.")
  return {k: float(np.mean([m[k] for m in host])) for k in host[0]}


def restore_step(run: Run, mgr, step: int, data_iter=None) -> None:
  """Restores checkpoint `step` into `run` after checking it holds the same architecture."""
  saved = checkpoint.read_meta(mgr, step)
  checkpoint.check_architecture(saved.get("model", {}), run.meta["model"],
                                f"--workdir {run.workdir}")
  if saved.get("lora_plan") != run.meta["lora_plan"]:
    raise ValueError(
        f"The checkpoint in {run.workdir} was trained with another LoRA plan (ranks or adapted "
        f"kernels differ: {_plan_summary(saved.get('lora_plan'))} saved, "
        f"{_plan_summary(run.meta['lora_plan'])} now). Use the original config.lora settings "
        "(or plan file), or a new --workdir.")
  if data_iter is not None:
    check_data_workers(saved, run.config.data.num_workers, run.workdir)
  model_frozen = run.objective.model_frozen(run.frozen)
  run.state, model_frozen = checkpoint.restore(mgr, step, run.state, model_frozen, data_iter)
  run.frozen = run.objective.with_model_frozen(run.frozen, model_frozen)


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


def restore_or_start(run: Run, mgr, data_iter) -> int:
  """Restores the latest checkpoint into `run`, if any; returns its step (0 for a new run)."""
  latest = mgr.latest_step()
  if latest is None:
    return 0
  restore_step(run, mgr, latest, data_iter)
  logging.info("Resumed from step %d in %s.", latest, run.workdir)
  return latest


class DataWait:
  """Times the train loop's waits for the next batch, as a share of the loop's wall time.

  The step is dispatched asynchronously, so time spent in `next()` while the previous step
  still runs costs nothing; only a wait the prefetching workers did not cover shows up here.
  (clu's ReportProgress.timed would first block on the previous step, serialising the two.)
  """

  def __init__(self):
    self._start = self._since = time.perf_counter()
    self._waited = self._waited_since = 0.0
    self._entered = 0.0

  def __enter__(self):
    self._entered = time.perf_counter()

  def __exit__(self, *exc):
    waited = time.perf_counter() - self._entered
    self._waited += waited
    self._waited_since += waited

  def fraction(self, reset: bool = False) -> float:
    """The waiting share since the last reset."""
    now = time.perf_counter()
    value = self._waited_since / max(now - self._since, 1e-9)
    if reset:
      self._since, self._waited_since = now, 0.0
    return value

  def total_fraction(self) -> float:
    return self._waited / max(time.perf_counter() - self._start, 1e-9)


def train(run: Run, mgr, writer) -> None:
  """Runs steps until config.num_steps, logging, checkpointing and evaluating periodically."""
  config = run.config
  dataset = pipeline.make_train_dataset(config.data, seed=config.seed,
                                        batch_size=config.batch_size,
                                        process_index=jax.process_index(),
                                        process_count=jax.process_count())
  data_iter = iter(dataset)
  start = restore_or_start(run, mgr, data_iter)
  if start == 0 and jax.process_index() == 0:
    grid = preview.degradation_grid(config.data, seed=config.seed)
    writer.write_images(0, {"data/degradations": grid[None]})
  step_fn = None
  report = periodic_actions.ReportProgress(num_train_steps=config.num_steps, writer=writer,
                                           every_steps=config.log_every)
  wait = DataWait()
  pending = []
  for step in range(start + 1, config.num_steps + 1):
    with wait:  # Only the host-side wait: the device transfer may queue behind the step.
      local_batch = next(data_iter)
    batch = sharding.global_batch(local_batch, run.mesh)
    if step_fn is None:  # Compiled once, ahead of time, to read its memory analysis.
      step_fn = compile_step(run, batch)
      step_start, step_clock = step, time.perf_counter()
    run.state, metrics = step_fn(run.state, run.frozen, batch)
    pending.append(metrics)
    report(step)
    saving = step % config.checkpoint_every == 0 or step == config.num_steps
    if step % config.log_every == 0 or saving:
      means = check_finite(pending, step)
      pending = []
      writer.write_scalars(step, {f"train/{k}": v for k, v in means.items()})
      writer.write_scalars(step, {"timing/data_wait_fraction": wait.fraction(reset=True)})
      logging.info("step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in means.items()))
    paused = time.perf_counter()  # Saves and evaluations do not count as step time.
    if saving:
      checkpoint.save(mgr, step, run.state, run.objective.model_frozen(run.frozen), data_iter,
                      run.meta)
    if config.eval_every and step % config.eval_every == 0 and step < config.num_steps:
      evaluate_tuned(run, writer, step)
    if step_fn is not None:
      step_clock += time.perf_counter() - paused
  mgr.wait_until_finished()
  if step_fn is not None and config.num_steps > step_start:
    jax.block_until_ready(run.state.step)
    run.timing["step_ms"] = (1000 * (time.perf_counter() - step_clock)
                             / (config.num_steps - step_start + 1))
    _write_json(os.path.join(run.workdir, "timing.json"), run.timing)
  if config.num_steps > start:
    logging.info("Input pipeline: the train loop waited for data %.1f%% of its time.",
                 100 * wait.total_fraction())


def compile_step(run: Run, batch: PyTree):
  """The jitted step compiled for this batch's shapes; records its memory in run.timing."""
  lowered = run.train_step().lower(run.state, run.frozen, batch)
  compiled = lowered.compile()
  memory = compiled.memory_analysis()
  if memory is not None:
    run.timing["step_memory_mb"] = (memory.temp_size_in_bytes + memory.argument_size_in_bytes
                                    + memory.output_size_in_bytes
                                    - memory.alias_size_in_bytes) / 2**20
  return compiled


def _write_json(path: str, value: Any) -> None:
  """Writes JSON atomically (a reader never sees half a file)."""
  if jax.process_index() == 0:
    jsonfile.write(path, value)


def tuned_params(run: Run) -> PyTree:
  """The model's {'base', 'lora'} as evaluated (a GAN generator's EMA when it keeps one)."""
  return sharding.gather(run.objective.eval_params(run.state, run.frozen), run.mesh)


def eval_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return evaluate.options(config.eval, int(config.data.degradation.scale))


def evaluate_tuned(run: Run, writer, step: int) -> dict[str, Any]:
  """Evaluates the current parameters on the held-out set and writes metrics and images."""
  config, eval_set = run.config, run.eval_set
  result = evaluate.evaluate(run.objective.apply, tuned_params(run), eval_set,
                             **eval_options(config))
  writer.write_scalars(step, {f"eval/{k}": v for k, v in result.items()
                              if isinstance(v, float)})
  for i, (item, out) in enumerate(zip(eval_set, result["outputs"])):
    if i >= config.num_image_summaries:
      break
    grid = evaluate.image_grid(item["lq"], out, item["gt"])
    writer.write_images(step, {f"eval/{item['name']}": grid[None]})
  return result


def export(run: Run) -> None:
  """Writes the merged model (export/params) and, for LoRA runs, the adapters (export/adapters)."""
  trainable = jax.device_get(sharding.gather(run.objective.eval_trainable(run.state), run.mesh))
  params = lora.combine(trainable, jax.device_get(
      sharding.gather(run.objective.model_frozen(run.frozen), run.mesh)))
  merged = lora.merge(params["base"], params["lora"], run.plan)
  export_meta = {"model": run.meta["model"], "job": run.config.job,
                 "step": int(run.state.step)}
  if "diffusion" in run.meta:  # What sr_jax.infer needs to sample with the export.
    export_meta["diffusion"] = run.meta["diffusion"]
  checkpoint.save_params(os.path.join(run.workdir, "export", "params"), merged, export_meta)
  if run.plan is not None:
    tuned_base = lora.flatten(trainable["base"])  # Drops the frozen (MaskedNode) positions.
    checkpoint.save_adapters(os.path.join(run.workdir, "export", "adapters"),
                             params["lora"], lora.unflatten(tuned_base),
                             dict(export_meta, lora_plan=run.plan.to_json(),
                                  extra_trainable=list(run.config.lora.extra_trainable)))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes), exports and evaluates; returns {arm: metrics}. See module doc."""
  if config.mode not in ("train", "eval"):
    raise ValueError(f"Unknown config.mode {config.mode!r}; use 'train' or 'eval'.")
  workdir = paths.absolute(workdir)
  base = prepare_base(config, workdir)
  # A host copy: restored arrays may already carry the mesh's sharding, and the training state
  # built from them is donated to the step, which would delete the base evaluated at the end.
  base = None if base is None else jax.device_get(base)
  run = build_run(config, workdir, base)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  mgr = checkpoint.manager(workdir, config.keep_checkpoints)
  trainable, pct = report_trainable(run)
  try:
    if config.mode == "train":
      writer.write_hparams(_scalar_hparams(config))
      train(run, mgr, writer)
      export(run)
    else:
      _restore_for_eval(run, mgr)
  finally:
    mgr.close()  # Finishes queued saves of good states even when training stopped on an error.
  rows = {}
  rows.update(_evaluate_input(run))
  if base is not None:
    rows["base"] = _evaluate_base(run, base)
  arm = "lora" if run.plan else ("fine-tuned" if base is not None else "trained")
  if config.gan.enabled:
    arm = "GAN + LoRA" if run.plan else "GAN"
  if config.diffusion.enabled:
    arm = diffusion_arm(run, arm)
  rows[arm] = _row(evaluate_tuned(run, writer, int(run.state.step)), trainable, pct)
  rows[arm].update(_run_costs(run))
  rows.update(_evaluate_general(run, base, arm, trainable, pct))
  write_table(workdir, rows, writer, config)
  writer.flush()
  return rows


def diffusion_arm(run: Run, arm: str) -> str:
  """The SR3 row's name: the fine-tuning mode, its timestep range and the sampler."""
  objective = run.objective
  if objective.restricted:
    arm += f" t in [{objective.t_min}, {objective.t_max}]"
    if objective.split_sampling:
      arm += " (base outside)"
  return f"{arm}, {objective.sampler_label}"


def _restore_for_eval(run: Run, mgr) -> None:
  step = None if run.config.eval_checkpoint_step < 0 else run.config.eval_checkpoint_step
  step = mgr.latest_step() if step is None else step
  if step is None or step not in mgr.all_steps():
    raise FileNotFoundError(f"No checkpoint {'' if step is None else step} in "
                            f"{run.workdir}/checkpoints (steps: {list(mgr.all_steps())}); train "
                            "first with --config.mode=train.")
  restore_step(run, mgr, step)


def _evaluate_input(run: Run) -> dict[str, dict[str, Any]]:
  """The baseline row: the degraded input itself, or for SR its MATLAB-bicubic upscaling."""
  scale = int(run.config.data.degradation.scale)
  eval_set, name = run.eval_set, "degraded input"
  if scale > 1:
    eval_set, name = evaluate.bicubic_set(eval_set, scale), "bicubic"
  if any(item["lq"].shape != item["gt"].shape for item in eval_set):
    return {}
  return {name: _row(evaluate.evaluate(lambda params, lq: lq, None, eval_set,
                                       **eval_options(run.config)))}


def _evaluate_base(run: Run, base: PyTree,
                   eval_set: list[dict[str, Any]] | None = None) -> dict[str, Any]:
  """The base alone (no adapters, no tuned leaves) on `eval_set` (default: the task's)."""
  plain = run.objective.without_adapters()
  return _row(evaluate.evaluate(plain.apply, {"base": base, "lora": {}},
                               run.eval_set if eval_set is None else eval_set,
                               **eval_options(run.config)))


def general_eval_set(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
  """config.eval.general_set's images, degraded as the task's ('embedded': the photos)."""
  data = ml_collections.ConfigDict(config.data.to_dict())
  if config.eval.general_set == "embedded":
    data.source, data.embedded_set = "embedded", "photos"
  else:
    data.source, data.eval_dir = "folder", config.eval.general_set
  return pipeline.make_eval_set(data, seed=config.seed)


def _evaluate_general(run: Run, base: PyTree | None, arm: str, trainable: int,
                      pct: float) -> dict[str, Any]:
  """Rows for the base and the tuned model on the general set (what a transfer forgets)."""
  if not run.config.eval.general_set:
    return {}
  eval_set = general_eval_set(run.config)
  rows = {}
  if base is not None:
    rows["base @ general set"] = _evaluate_base(run, base, eval_set)
  rows[f"{arm} @ general set"] = _row(evaluate.evaluate(
      run.objective.apply, tuned_params(run), eval_set, **eval_options(run.config)),
      trainable, pct)
  return rows


def _run_costs(run: Run) -> dict[str, float]:
  """Step time and memory (this run's, or timing.json's) and the size of what it exports."""
  costs = {}
  path = os.path.join(run.workdir, "timing.json")
  if paths.exists(path):
    costs = jsonfile.read(path)
  costs.update(run.timing)
  exported = os.path.join(run.workdir, "export", "adapters" if run.plan else "params")
  if paths.exists(exported):
    costs["export_mb"] = checkpoint.directory_size(exported) / 2**20
  return costs


def _row(result: dict[str, Any], trainable: int = 0, pct: float = 0.0) -> dict[str, Any]:
  """One results-table row from an evaluation."""
  row = {k: v for k, v in result.items() if isinstance(v, float)}
  return dict(row, trainable=trainable, trainable_pct=pct, per_image=result["per_image"])


def write_table(workdir: str, rows: dict[str, Any], writer,
                config: ml_collections.ConfigDict | None = None) -> None:
  """Writes the results table to workdir/results.md, stdout and TensorBoard."""
  opts = eval_options(config) if config is not None else {"crop_border": 0, "y_channel": False}
  table = evaluate.results_table(rows, evaluate.protocol(opts["crop_border"], opts["y_channel"]))
  if jax.process_index() == 0:
    paths.write_text(os.path.join(workdir, "results.md"), table + "\n")
    print(table, flush=True)
  writer.write_texts(0, {"results": table})


def _scalar_hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
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
