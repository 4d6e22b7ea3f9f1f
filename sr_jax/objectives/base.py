"""The objective protocol: what the trainer asks of every training objective, and nothing more.

An objective is built once per run by its module's `build(context)` from a `BuildContext` (the
config, the model, the LoRA plan, the optimizer and the two halves of the parameter tree) and
returns a `Built`: the objective, its initial train state, the constants its step needs beside
the model's frozen half, and what checkpoints and exports must record about it. From then on the
trainer only calls the methods of `Objective`:

  update(state, frozen, batch) -> (state, metrics)   the per-step function the step builder jits
  apply(params, lq) -> output                        evaluation: a batch of inputs -> images
  eval_params(state, frozen) -> params               the parameters `apply` evaluates
  eval_trainable(state) -> trainable half            what is exported (its EMA when kept)
  without_adapters() -> objective                    the same objective on the bare base
  arm_label(default) -> str                          the results-table row's name

The frozen tree passed to `update` has one shape for every objective: {'model': the model's
frozen half of {'base', 'lora'}, 'extra': the objective's own constants ({} when it has none:
a GAN's perceptual network, a diffusion run's reference base)}. Only 'model' is checkpointed.

`ModelObjective` implements everything but `update` for an objective that trains one model with
one optimizer; `apply_gradients` is the shared optimizer step.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import flax.linen as nn
import jax
import ml_collections
import optax

from sr_jax.adapt import lora, lora_branch
from sr_jax.config.rules import Rule
from sr_jax.models import registry

PyTree = Any
Metrics = dict[str, jax.Array]
MODEL, EXTRA = "model", "extra"


class Objective(Protocol):
  """The interface the trainer, evaluation and export use (see the module docstring)."""
  plan: lora.LoraPlan | None
  layouts: lora_branch.Layouts  # How its step trains each adapted kernel (lora_branch).

  def update(self, state: Any, frozen: PyTree, batch: dict[str, jax.Array]
             ) -> tuple[Any, Metrics]: ...

  def apply(self, params: PyTree, lq: jax.Array) -> jax.Array: ...

  def eval_params(self, state: Any, frozen: PyTree) -> PyTree: ...

  def eval_trainable(self, state: Any) -> PyTree: ...

  def without_adapters(self) -> "Objective": ...

  def arm_label(self, default: str) -> str: ...


@dataclasses.dataclass(frozen=True)
class BuildContext:
  """What an objective's `build` receives."""
  config: ml_collections.ConfigDict
  model: nn.Module
  facts: registry.ModelFacts
  tx: optax.GradientTransformation  # The model's optimizer, partitioned by the labels.
  schedule: optax.Schedule
  plan: lora.LoraPlan | None
  trainable: PyTree  # Trainable half of {'base', 'lora'} (frozen leaves are MaskedNodes).
  model_frozen: PyTree  # Frozen half of {'base', 'lora'}.
  base: PyTree  # The full base tree the run starts from.
  labels: PyTree  # 'trainable' / 'frozen' for every leaf of {'base', 'lora'}.
  seed: int
  # How the step trains each adapted kernel: merged, unmerged or factored (adapt.lora_branch).
  layouts: lora_branch.Layouts = lora_branch.ALL_MERGED


@dataclasses.dataclass
class Built:
  """What an objective's `build` returns."""
  objective: Objective
  state: Any  # A flax struct with at least `step` and `trainable` (see step.TrainState).
  extra_frozen: PyTree = dataclasses.field(default_factory=dict)
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)  # Recorded with checkpoints.


def _no_problems(config: ml_collections.ConfigDict) -> list[str]:
  del config
  return []


def _no_label(config: ml_collections.ConfigDict) -> str:
  del config
  return ""


@dataclasses.dataclass(frozen=True)
class ObjectiveSpec:
  """A registered objective and everything the rest of sr_jax asks of it, from config to
  inference: the trainer, the config checks, `--show_config`, exports and `sr_jax.infer` read
  these fields and never an objective's name."""
  name: str
  build: Callable[[BuildContext], Built]
  model_kinds: tuple[str, ...]
  # How a job's base pre-training stage differs from the job (a GAN's base is its L1 stage).
  base_stage: Callable[[ml_collections.ConfigDict], None] = lambda config: None
  # Its own config section, config.<section>, present only in the configs of jobs that use it:
  # `section_defaults()` returns it with every key commented on its line (--show_config reads
  # the comments from the function's source). '' = no section of its own.
  section: str = ""
  section_defaults: Callable[[], ml_collections.ConfigDict] | None = None
  # The allowed values of its section's numeric keys ('section.key' -> rule), and the rules
  # tying its keys together (one message per problem, naming each key).
  rules: Mapping[str, Rule] = dataclasses.field(default_factory=dict)
  problems: Callable[[ml_collections.ConfigDict], list[str]] = _no_problems
  # An export it wrote, as a restorer for sr_jax.infer: (export dir, adapter dir or None,
  # sr_jax.inference.restorer.RestoreOptions) -> an object mapping an HWC image to its output.
  restorer: Callable[[str, str | None, Any], Any] | None = None
  # What the logged 'loss' is when its name does not say (e.g. '-PSNR, dB').
  loss_label: Callable[[ml_collections.ConfigDict], str] = _no_label


def frozen_tree(model_frozen: PyTree, extra: PyTree | None = None) -> dict[str, PyTree]:
  """The frozen tree every objective's `update` receives."""
  return {MODEL: model_frozen, EXTRA: {} if extra is None else extra}


def apply_gradients(tx: optax.GradientTransformation, params: PyTree, opt_state: PyTree,
                    grads: PyTree) -> tuple[PyTree, PyTree, jax.Array]:
  """One optimizer step: (new params, new optimizer state, the gradients' global norm)."""
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, optax.tree.norm(grads)


class ModelObjective:
  """One model (with its LoRA plan) and one optimizer: everything but `update`."""

  def __init__(self, model: nn.Module, tx: optax.GradientTransformation | None,
               plan: lora.LoraPlan | None, schedule: optax.Schedule | None = None,
               layouts: lora_branch.Layouts = lora_branch.ALL_MERGED):
    self.model, self.tx, self.plan, self.schedule = model, tx, plan, schedule
    self.layouts = layouts

  def forward(self, params: PyTree, *inputs: Any, **kwargs: Any) -> jax.Array:
    """The model on {'base', 'lora'} `params`, adapters merged into their kernels (inference:
    no overhead)."""
    return lora_branch.apply_model(self.model, params, self.plan, *inputs, **kwargs)

  def train_forward(self, params: PyTree, *inputs: Any, **kwargs: Any) -> jax.Array:
    """The model as the training step differentiates it: each adapted kernel in its
    layout (`self.layouts`: merged or factored, tapped, or unmerged beside its branch;
    lora_branch)."""
    return lora_branch.apply_model(self.model, params, self.plan, *inputs,
                                   layouts=self.layouts, **kwargs)

  def apply(self, params: PyTree, lq: jax.Array) -> jax.Array:
    return self.forward(params, lq)

  def eval_trainable(self, state: Any) -> PyTree:
    """The trainable values evaluated and exported: their EMA when the run keeps one."""
    ema = getattr(state, "ema", None)
    return state.trainable if ema is None else ema

  def eval_params(self, state: Any, frozen: PyTree) -> PyTree:
    return lora.combine(self.eval_trainable(state), frozen[MODEL])

  def without_adapters(self) -> "ModelObjective":
    """This objective without its LoRA plan: `apply` then runs {'base': ...} alone."""
    plain = copy.copy(self)
    plain.plan, plain.layouts = None, lora_branch.ALL_MERGED
    return plain

  def arm_label(self, default: str) -> str:
    return default

  def step_metrics(self, state: Any, metrics: Metrics) -> Metrics:
    """`metrics` plus the learning rate of this step (when the schedule is known)."""
    if self.schedule is not None:
      metrics["learning_rate"] = self.schedule(state.step)
    return metrics
