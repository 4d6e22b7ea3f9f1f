"""The ResShift objective: residual-shifting diffusion SR (Yue, Wang and Loy 2023) in pixels.

A training step, with images mapped to [-1, 1] (sr_jax.diffusion.resshift has the chain):
1. y is the LR input upscaled to the HR size with MATLAB's bicubic (as SR3's condition);
2. per image, a timestep t uniform on [t_min, t_max] (1..T unless fine-tuning part of the
   chain) and x_t = x0 + eta_t (y - x0) + kappa sqrt(eta_t) noise;
3. the SR3 UNet (any preset) predicts x0 from (y, the scaled x_t, the noise level), directly
   or as y + a residual (config.resshift.output, sr_jax.diffusion.resshift_sr);
4. the loss is the mean squared error of x0_hat against x0 (the paper's).

Evaluation (`apply`) runs the T-step sampler (15 by default) from x_T = y + kappa sqrt(eta_T)
noise with a fixed seed, so scores are reproducible. With config.resshift.t_min/t_max the
step trains only those timesteps, and (base_outside_range) sampling uses the untouched base for
the others: the frozen tree's extra 'reference', or for a LoRA run that tunes no base leaf the
base half of the parameters itself. A job's base stage learns the whole chain.

This is the paper's pixel-space variant; its latent-space one needs a pretrained autoencoder
(VQGAN) that sr_jax does not have.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from sr_jax.adapt import lora, lora_branch
from sr_jax.config.rules import Int, Real, chain_range_problems
from sr_jax.diffusion import resshift, resshift_sr, restorers
from sr_jax.objectives import base, step as step_lib

PyTree = Any


class ResShiftObjective(base.ModelObjective):
  """ResShift: `model` (an SR3UNet) predicts x0; see the module doc."""

  def __init__(self, model, tx, plan, config: ml_collections.ConfigDict, scale: int,
               schedule=None, layouts: lora_branch.Layouts = lora_branch.ALL_MERGED):
    super().__init__(model, tx, plan, schedule, layouts)
    self.config = config
    self.sr = resshift_sr.ResShiftSR.from_record(
        model, resshift_sr.sampling_record(config, scale), plan=plan, clip_x0=config.clip_x0,
        seed=config.sample_seed)

  @property
  def chain(self) -> resshift.ShiftSchedule:
    return self.sr.schedule

  def arm_label(self, default: str) -> str:
    """The fine-tuning mode, its timestep range and the sampler, e.g. 'lora t in [1, 5]
    (base outside), ResShift 15 steps'."""
    if self.sr.restricted:
      default += f" t in [{self.sr.t_min}, {self.sr.t_max}]"
      if self.sr.split_sampling:
        default += " (base outside)"
    return f"{default}, {self.sr.sampler_label}"

  def eval_params(self, state, frozen: PyTree) -> PyTree:
    """{'base', 'lora'} plus, for split sampling, the base the other steps use."""
    params = super().eval_params(state, frozen)
    if self.sr.split_sampling:
      params["reference"] = frozen[base.EXTRA]["reference"] or params["base"]
    return params

  def without_adapters(self) -> "ResShiftObjective":
    plain = super().without_adapters()
    plain.sr = self.sr.without_adapters()
    return plain

  def apply(self, params: PyTree, lq: jax.Array, *, seed: int | None = None,
            progress=None) -> jax.Array:
    """Super-resolves `lq` (B, h, w, C) in [0, 1] by sampling; returns [0, 1] images."""
    return self.sr.sample(params, lq, seed=seed, progress=progress)

  def loss(self, trainable: PyTree, frozen: PyTree, batch: dict[str, jax.Array],
           rng: jax.Array) -> jax.Array:
    """The x0 mean squared error of one batch for the draws of `rng` (training forward)."""
    k_draw, k_dropout = jax.random.split(rng)
    params = lora.combine(trainable, frozen[base.MODEL])
    x0 = batch["gt"].astype(jnp.float32) * 2.0 - 1.0
    y = self.sr.condition(batch["lq"])

    def predict(condition, x_in, level, t):
      return self.sr.predict_x0(params, condition, x_in, level, t, dropout_rng=k_dropout,
                                layouts=self.layouts)

    return resshift.training_loss(predict, self.chain, x0, y, k_draw,
                                  (self.sr.t_min, self.sr.t_max))

  def update(self, state, frozen, batch):
    """One optimizer step on the x0 loss; gradients only for the trainable half."""
    rng = jax.random.fold_in(state.rng, state.step)  # Reproducible on resume.
    loss, grads = jax.value_and_grad(self.loss)(state.trainable, frozen, batch, rng)
    trainable, opt_state, grad_norm = base.apply_gradients(self.tx, state.trainable,
                                                           state.opt_state, grads)
    metrics = {"loss": loss, "grad_norm": grad_norm}
    new_state = state.replace(step=state.step + 1, trainable=trainable, opt_state=opt_state)
    return new_state, self.step_metrics(state, metrics)


def frozen_tree(model_frozen: PyTree, base_params: PyTree, objective: ResShiftObjective,
                labels: PyTree) -> PyTree:
  """The objective's frozen tree; keeps a copy of the base only when sampling needs it."""
  tuned_base_leaves = any(label == lora.TRAINABLE for label in jax.tree.leaves(labels["base"]))
  keep = objective.sr.split_sampling and tuned_base_leaves
  return base.frozen_tree(model_frozen, {"reference": copy.deepcopy(base_params) if keep else {}})


def build(context: base.BuildContext) -> base.Built:
  """The ResShift objective of config.resshift and a fresh train state."""
  config, r = context.config, context.config.resshift
  scale = int(config.data.degradation.scale)
  objective = ResShiftObjective(context.model, context.tx, context.plan, r, scale,
                                context.schedule, context.layouts)
  logging.info("ResShift: T=%d, kappa=%g, p=%g, eta_T=%g, eta_1=%g, the network outputs %s; "
               "training timesteps [%d, %d]; evaluation samples all %d steps.", r.num_steps,
               r.kappa, r.power, r.eta_T, objective.sr.schedule.etas[0], r.output,
               objective.sr.t_min, objective.sr.t_max, r.num_steps)
  extra = frozen_tree({}, context.base, objective, context.labels)[base.EXTRA]
  return base.Built(objective, step_lib.init_state(context.trainable, context.tx, context.seed),
                    extra_frozen=extra,
                    meta={"resshift": resshift_sr.sampling_record(r, scale)})


def _base_stage(config: ml_collections.ConfigDict) -> None:
  """A ResShift job's base learns the whole chain."""
  config.resshift.t_min, config.resshift.t_max = 1, 0


def config_section() -> ml_collections.ConfigDict:
  """The ResShift objective (config.objective='resshift', sr_jax/objectives/resshift.py):
  residual-shifting diffusion with an SR3 UNet (config.model) as the x0 network."""
  return ml_collections.ConfigDict(dict(
      # The shifting schedule (the paper's Eq. 10): T steps, noise scale kappa, power p, and
      # eta_T (the paper's text: 0.999; its public configs: 0.99^2 = 0.9801).
      num_steps=15,  # T: steps of the chain (and of sampling).
      kappa=2.0,  # Noise scale: x_t has variance kappa^2 eta_t.
      power=0.3,  # p: the schedule's sqrt(eta_t) is geometric in ((t-1)/(T-1))^p.
      eta_T=0.999,  # eta at the last step (the chain ends at y plus noise).
      # eta at the first step, where the last sampling step starts: its noise std is kappa
      # sqrt(eta_1). 0 = the paper's min((0.04 / kappa)^2, 0.001): a std of 0.04 for kappa >= 1.3.
      eta_1=0.0,
      normalize_input=True,  # Scale x_t by 1 / (1 + 3 kappa sqrt(eta_t)) at the network input.
      level="sqrt_eta",  # The network's noise level: 'sqrt_eta' or 'timestep' (t / T).
      # The network's output: 'x0' (the paper's) or 'residual' (x0_hat = y + output).
      output="residual",
      # Train only timesteps t in [t_min, t_max] (1..num_steps; t_max 0 = the last): partial
      # fine-tuning of the chain; small t is the data end.
      t_min=1,  # First trained timestep.
      t_max=0,  # Last trained timestep (0 = num_steps).
      base_outside_range=True,  # After a range fine-tune, the base samples the other steps.
      clip_x0=True,  # Clip the predicted x0 to [-1, 1] at every step.
      sample_seed=0,  # Sampling noise seed: evaluations are reproducible.
  ))


RULES = {
    "resshift.num_steps": Int(2), "resshift.kappa": Real(0, lo_open=True),
    "resshift.power": Real(0, lo_open=True), "resshift.eta_T": Real(0, 1, lo_open=True),
    "resshift.eta_1": Real(0, 1),
    "resshift.t_min": Int(1), "resshift.t_max": Int(0), "resshift.sample_seed": Int(0),
}


def config_problems(config: ml_collections.ConfigDict) -> list[str]:
  """ResShift's names and its training timestep range."""
  r = config.resshift
  problems = chain_range_problems("resshift", r.t_min, r.t_max, "num_steps", r.num_steps)
  if r.level not in resshift.LEVELS:
    problems.append(f"config.resshift.level={r.level!r}: must be one of {resshift.LEVELS}")
  if r.output not in resshift_sr.OUTPUTS:
    problems.append(f"config.resshift.output={r.output!r}: must be one of "
                    f"{resshift_sr.OUTPUTS}")
  if r.get("eta_1", 0.0) and not r.eta_1 < r.eta_T:
    problems.append(f"config.resshift.eta_1={r.eta_1}: must be below resshift.eta_T={r.eta_T} "
                    "(0 = the paper's rule)")
  return problems


SPEC = base.ObjectiveSpec("resshift", build, model_kinds=("diffusion",), base_stage=_base_stage,
                          section="resshift", section_defaults=config_section, rules=RULES,
                          problems=config_problems,
                          restorer=functools.partial(restorers.sampled_restorer,
                                                     name="ResShift"))
