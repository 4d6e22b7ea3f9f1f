"""Building a run: model, LoRA plan, optimizer, objective, mesh and the placed train state.

`build_run(config, workdir, base)` assembles everything a training run holds between steps (a
`Run`) from the config and the base parameters it starts from (None: a fresh initialisation).
The objective comes from the registry in sr_jax.objectives by `config.objective`; nothing here
depends on which one it is. No checkpoint is read here (see sr_jax.train.resume).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from sr_jax import objectives
from sr_jax.adapt import lora, lora_branch, lora_layouts, roofline
from sr_jax.data import pipeline
from sr_jax.models import registry
from sr_jax.objectives import base as objective_base, step as step_lib
from sr_jax.util import jsonfile, sharding

PyTree = Any


@dataclasses.dataclass
class Run:
  """Everything a training run holds between steps."""
  config: ml_collections.ConfigDict
  workdir: str
  objective: objective_base.Objective
  mesh: jax.sharding.Mesh
  state: Any  # step.TrainState or an objective's own state (e.g. the GAN's).
  frozen: PyTree  # {'model': frozen half of {'base', 'lora'}, 'extra': objective constants}.
  plan: lora.LoraPlan | None
  meta: dict[str, Any]  # Recorded with every checkpoint: architecture, config, plan, ...
  num_base_params: int
  objective_meta: dict[str, Any] = dataclasses.field(default_factory=dict)  # In meta and exports.
  # One NamedSharding per leaf of `state` / `frozen` (sharding.tree_shardings): replicated, or
  # split along the mesh's 'fsdp' axis.
  state_sharding: Any = None
  frozen_sharding: Any = None
  timing: dict[str, float] = dataclasses.field(default_factory=dict)
  _eval_set: list[dict[str, Any]] | None = None

  def train_step(self):
    """The objective's update jitted over the mesh with this run's state and frozen layouts."""
    update = self.objective.update
    if ema_decay(self.config):
      update = step_lib.ema_update(update, ema_decay(self.config))
    return step_lib.build_train_step(update, self.mesh, state_sharding=self.state_sharding,
                                     frozen_sharding=self.frozen_sharding)

  @property
  def model_frozen(self) -> PyTree:
    """The model's frozen half (what checkpoints hold beside the state)."""
    return self.frozen[objective_base.MODEL]

  @property
  def eval_set(self) -> list[dict[str, Any]]:
    """The held-out images, loaded and degraded once (deterministically) per run."""
    if self._eval_set is None:
      self._eval_set = pipeline.make_eval_set(self.config.data, seed=self.config.seed)
    return self._eval_set


def ema_decay(config: ml_collections.ConfigDict) -> float:
  """config.ema.decay (0: no EMA of weights)."""
  return float(config.get("ema", {}).get("decay", 0.0))


def init_base(model, size: int, rng: jax.Array) -> PyTree:
  """Freshly initialised parameters of `model` (traced on zero inputs of `size` pixels)."""
  return jax.jit(model.init)(rng, *registry.example_inputs(model, size))["params"]


def lora_plan(config: ml_collections.ConfigDict, base: PyTree) -> lora.LoraPlan:
  """The LoRA plan: read from config.lora.plan_file, or chosen by targets and ranks."""
  if not config.lora.plan_file:
    exclude = (registry.entry(config.model.name).depthwise_kernels,)
    return lora.make_plan(base, targets=config.lora.targets, rank=config.lora.rank,
                          alpha=config.lora.alpha, exclude=exclude,
                          rank_overrides=config.lora.rank_overrides,
                          scaling=config.lora.scaling)
  try:
    plan = lora.LoraPlan.from_json(jsonfile.read(config.lora.plan_file), config.lora.scaling)
  except (OSError, ValueError, KeyError) as e:
    raise ValueError(f"config.lora.plan_file={config.lora.plan_file!r} is not a readable LoRA "
                     f"plan (JSON with 'ranks' and 'alphas' by kernel path): {e}") from e
  lora.check_plan(plan, base, where=f"config.lora.plan_file={config.lora.plan_file}")
  return plan


def initial_params(config: ml_collections.ConfigDict, model, base: PyTree | None,
                   rng: jax.Array) -> tuple[PyTree, lora.LoraPlan | None, PyTree]:
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


def choose_layouts(config: ml_collections.ConfigDict, model, facts: registry.ModelFacts,
                   base: PyTree, plan: lora.LoraPlan | None,
                   devices: int) -> lora_branch.Layouts:
  """How the step trains each adapted kernel (config.lora.formulation), chosen from each
  layer's cost on one device's share of a training batch (sr_jax.adapt.lora_layouts)."""
  if plan is None:
    return lora_branch.Layouts()
  size = config.data.crop_size
  if facts.kind != "diffusion":
    size //= max(int(config.data.degradation.scale), 1)
  inputs = registry.example_inputs(model, size, max(config.batch_size // devices, 1))
  costs = lora_layouts.layer_costs(model, base, plan, *inputs)
  machine = (lora_layouts.cost_machine(config.lora.cost_model)
             if config.lora.formulation == "auto" else roofline.FLOPS_ONLY)
  layouts = lora_layouts.choose(costs, config.lora.formulation, machine,
                                tuple(config.lora.auto_layouts))
  logging.info("LoRA formulation %r: of %d adapted kernels, %d trained factored, %d unmerged "
               "(no weight gradient of their frozen kernel), %d merged.",
               config.lora.formulation, len(costs), len(layouts.factored),
               len(layouts.unmerged), len(costs) - len(layouts.factored) - len(layouts.unmerged))
  if machine is not roofline.FLOPS_ONLY:
    logging.info("Cost model: the roofline of %s (%.3g GMAC/s, %.3g GB/s); predicted %.3g ms "
                 "per device-step saved against all merged.", machine.kind,
                 machine.macs_per_s / 1e9, machine.bytes_per_s / 1e9,
                 lora_layouts.saved_seconds(costs, layouts, machine) * 1e3)
  return layouts


def check_model(config: ml_collections.ConfigDict, facts: registry.ModelFacts,
                spec: objective_base.ObjectiveSpec) -> None:
  """The objective must train this kind of model, and an SR model's scale must be the data's."""
  if facts.kind not in spec.model_kinds:
    raise ValueError(
        f"config.objective={spec.name!r} trains {' or '.join(spec.model_kinds)} models, but "
        f"config.model.name={config.model.name!r} is a {facts.kind} model. Set "
        f"--config.objective to one that trains it, e.g. 'diffusion' for 'sr3' (see "
        f"configs/sr3.py), or pick another model.")
  data_scale = int(config.data.degradation.scale)
  if facts.kind != "diffusion" and facts.scale != data_scale:  # SR3 works at the HR size.
    raise ValueError(
        f"config.model ({config.model.name} preset {config.model.preset!r}) upscales by "
        f"{facts.scale}, but config.data.degradation.scale={data_scale}. Set "
        f"--config.data.degradation.scale={facts.scale} (and base.degradation.scale) or pick "
        f"a x{data_scale} preset.")


def build_run(config: ml_collections.ConfigDict, workdir: str, base: PyTree | None) -> Run:
  """Model, objective, mesh and a fresh (placed) state; no checkpoint restored yet."""
  spec = objectives.get(config.objective)
  model = registry.build_model(config.model)
  facts = registry.facts(config.model.name, model)
  check_model(config, facts, spec)
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
  sharding.check_batch_size(config.batch_size, mesh)
  rng = jax.random.PRNGKey(config.seed)
  params, plan, labels = initial_params(config, model, base, rng)
  peak = config.optimizer.learning_rate * (
      config.lora.learning_rate_multiplier if config.lora.enabled else 1.0)
  schedule = step_lib.learning_rate_schedule(config.optimizer, config.num_steps, peak)
  tx = lora.partitioned_optimizer(step_lib.make_optimizer(config.optimizer, schedule), labels)
  trainable, model_frozen = lora.split(params, labels)
  layouts = choose_layouts(config, model, facts, params["base"], plan, mesh.size)
  built = spec.build(objective_base.BuildContext(
      config=config, model=model, facts=facts, tx=tx, schedule=schedule, plan=plan,
      trainable=trainable, model_frozen=model_frozen, base=params["base"], labels=labels,
      seed=config.seed, layouts=layouts))
  if ema_decay(config):
    if not isinstance(built.state, step_lib.TrainState):
      raise ValueError(f"config.ema.decay={ema_decay(config)} needs an objective whose state is "
                       f"step.TrainState; {config.objective!r} keeps its own (a GAN's generator "
                       f"EMA is gan.ema_decay). Set --config.ema.decay=0.")
    built.state = step_lib.with_ema(built.state)
  frozen = objective_base.frozen_tree(model_frozen, built.extra_frozen)
  meta = {"model": registry.architecture(config.model), "config": config.to_json_best_effort(),
          "lora_plan": plan.to_json() if plan else None, **built.meta}
  state_sharding = sharding.tree_shardings(built.state, mesh, config.mesh.fsdp_min_size)
  frozen_sharding = sharding.tree_shardings(frozen, mesh, config.mesh.fsdp_min_size)
  if config.mesh.fsdp > 1:
    log_fsdp(built.state, state_sharding, mesh)
  return Run(config, workdir, built.objective, mesh,
             sharding.place(built.state, state_sharding), sharding.place(frozen, frozen_sharding),
             plan, meta, lora.count(params["base"]), built.meta, state_sharding,
             frozen_sharding)


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


def report_trainable(run: Run) -> tuple[int, float]:
  """Logs and returns the trainable parameter count and its share of the base."""
  n = lora.count(run.state.trainable)
  pct = 100.0 * n / run.num_base_params
  logging.info("Trainable parameters: %s of %s base parameters (%.2f%%)%s.", f"{n:,}",
               f"{run.num_base_params:,}", pct,
               f"; LoRA on {len(run.plan.paths)} kernels" if run.plan else "; full training")
  return n, pct
