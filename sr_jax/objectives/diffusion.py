"""The SR3 diffusion objective: noise-level sampling and epsilon prediction in one jitted step.

A training step (Saharia et al. 2021), with images mapped to [-1, 1]:
1. the condition is the LR input upscaled to the HR size with MATLAB's bicubic
   (sr_jax.diffusion.sr3), concatenated to the noisy image inside the UNet;
2. per image, a timestep t uniform on [t_min, t_max] and a continuous noise level gamma
   uniform between gamma_t and gamma_{t-1} (sr_jax.diffusion.schedule);
3. y_t = sqrt(gamma) y0 + sqrt(1 - gamma) eps, and the UNet predicts eps from
   (condition, y_t, sqrt(gamma)) with dropout on;
4. the loss is the mean |eps_hat - eps| (L1, SR3's choice) or its square (L2). The common
   implementation sums instead of averaging; Adam's updates do not depend on that scale.

Restricting [t_min, t_max] fine-tunes part of the chain (does a fine-tune need every timestep?).
With config.diffusion.base_outside_range, sampling then uses the base model outside the range,
so the chain is changed only where it was trained; the base's parameters for that are the
frozen tree's extra 'reference' (the untouched base) or, for a LoRA run that tunes no base
leaf, the base half of the parameters itself.

Evaluation (`apply`) samples with the configured sampler (DDIM with 50 steps by default) from a
fixed seed, so scores are reproducible. A diffusion job's base stage learns the whole chain.
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
from sr_jax.diffusion import restorers, samplers, schedule as schedule_lib, sr3
from sr_jax.objectives import base, step as step_lib

PyTree = Any
LOSSES = ("l1", "l2")


def epsilon_loss(kind: str, eps_hat: jax.Array, eps: jax.Array) -> jax.Array:
  """Mean L1 or L2 error of the predicted noise, in float32."""
  diff = eps_hat.astype(jnp.float32) - eps.astype(jnp.float32)
  if kind == "l1":
    return jnp.mean(jnp.abs(diff))
  if kind == "l2":
    return jnp.mean(jnp.square(diff))
  raise ValueError(f"Unknown config.diffusion.loss {kind!r}; choose one of {LOSSES}.")


def sampler_config(diffusion: ml_collections.ConfigDict) -> samplers.SamplerConfig:
  return samplers.SamplerConfig(kind=diffusion.sampler, num_steps=diffusion.sample_steps,
                                eta=diffusion.eta, clip_x0=diffusion.clip_x0,
                                spacing=diffusion.get("spacing", "auto"))


class DiffusionObjective(base.ModelObjective):
  """SR3: `model` (an SR3UNet) predicts the noise; see the module doc."""

  def __init__(self, model, tx, plan, diffusion: ml_collections.ConfigDict, scale: int,
               schedule=None, layouts: lora_branch.Layouts = lora_branch.ALL_MERGED):
    super().__init__(model, tx, plan, schedule, layouts)
    epsilon_loss(diffusion.loss, jnp.zeros(()), jnp.zeros(()))  # Validates the name early.
    self.diffusion = diffusion
    self.sr3 = sr3.SR3.from_record(model, sr3.sampling_record(diffusion, scale),
                                   sampler_config(diffusion), plan=plan,
                                   seed=diffusion.sample_seed)

  @property
  def noise(self) -> schedule_lib.NoiseSchedule:
    return self.sr3.noise

  @property
  def sampler_label(self) -> str:
    return self.sr3.sampler_label

  def arm_label(self, default: str) -> str:
    """The fine-tuning mode, its timestep range and the sampler, e.g. 'lora t in [1, 500]
    (base outside), DDIM 50 steps'."""
    if self.sr3.restricted:
      default += f" t in [{self.sr3.t_min}, {self.sr3.t_max}]"
      if self.sr3.split_sampling:
        default += " (base outside)"
    return f"{default}, {self.sampler_label}"

  # -- what the loop reads ------------------------------------------------------------------

  def eval_params(self, state, frozen: PyTree) -> PyTree:
    """{'base', 'lora'} plus, for split sampling, the base the other steps use."""
    params = super().eval_params(state, frozen)
    if self.sr3.split_sampling:
      params["reference"] = frozen[base.EXTRA]["reference"] or params["base"]
    return params

  def without_adapters(self) -> "DiffusionObjective":
    plain = super().without_adapters()
    plain.sr3 = self.sr3.without_adapters()
    return plain

  # -- the model ----------------------------------------------------------------------------

  def condition(self, lq: jax.Array) -> jax.Array:
    return self.sr3.condition(lq)

  def denoise(self, params: PyTree, condition: jax.Array, y_t: jax.Array,
              noise_level: jax.Array, t: jax.Array | None = None, *,
              dropout_rng: jax.Array | None = None,
              layouts: lora_branch.Layouts | None = None) -> jax.Array:
    return self.sr3.denoise(params, condition, y_t, noise_level, t, dropout_rng=dropout_rng,
                            layouts=layouts)

  def _sampling_denoiser(self, params: PyTree, condition, y_t, noise_level, t):
    return self.sr3.sampling_denoiser(params, condition, y_t, noise_level, t)

  def apply(self, params: PyTree, lq: jax.Array, *, sampler: samplers.SamplerConfig | None = None,
            seed: int | None = None, progress=None) -> jax.Array:
    """Super-resolves `lq` (B, h, w, C) in [0, 1] by sampling; returns [0, 1] images."""
    return self.sr3.sample(params, lq, sampler=sampler, seed=seed, progress=progress)

  # -- the step -----------------------------------------------------------------------------

  def noisy_batch(self, rng: jax.Array, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The step's random draws: t, gamma, eps and y_t for the batch's HR images."""
    k_level, k_noise = jax.random.split(rng)
    y0 = batch["gt"].astype(jnp.float32) * 2.0 - 1.0
    t, gamma = schedule_lib.sample_noise_level(k_level, y0.shape[0], self.noise,
                                               self.sr3.t_min, self.sr3.t_max)
    eps = jax.random.normal(k_noise, y0.shape, jnp.float32)
    return {"t": t, "gamma": gamma, "eps": eps,
            "y_t": schedule_lib.q_sample(y0, gamma, eps)}

  def update(self, state, frozen, batch):
    """One optimizer step on the epsilon loss; gradients only for the trainable half."""
    rng = jax.random.fold_in(state.rng, state.step)  # Reproducible on resume.
    k_noise, k_dropout = jax.random.split(rng)
    draw = self.noisy_batch(k_noise, batch)
    condition = self.condition(batch["lq"])

    def loss_fn(trainable):
      params = lora.combine(trainable, frozen[base.MODEL])
      eps_hat = self.denoise(params, condition, draw["y_t"], jnp.sqrt(draw["gamma"]),
                             dropout_rng=k_dropout, layouts=self.layouts)
      return epsilon_loss(self.diffusion.loss, eps_hat, draw["eps"])

    loss, grads = jax.value_and_grad(loss_fn)(state.trainable)
    trainable, opt_state, grad_norm = base.apply_gradients(self.tx, state.trainable,
                                                           state.opt_state, grads)
    metrics = {"loss": loss, "grad_norm": grad_norm,
               "t_mean": jnp.mean(draw["t"].astype(jnp.float32))}
    new_state = state.replace(step=state.step + 1, trainable=trainable, opt_state=opt_state)
    return new_state, self.step_metrics(state, metrics)


def frozen_tree(model_frozen: PyTree, base_params: PyTree, objective: DiffusionObjective,
                labels: PyTree) -> PyTree:
  """The objective's frozen tree; keeps a copy of the base only when sampling needs it."""
  tuned_base_leaves = any(label == lora.TRAINABLE for label in jax.tree.leaves(labels["base"]))
  keep = objective.sr3.split_sampling and tuned_base_leaves
  return base.frozen_tree(model_frozen, {"reference": copy.deepcopy(base_params) if keep else {}})


def build(context: base.BuildContext) -> base.Built:
  """The SR3 objective of config.diffusion and a fresh train state."""
  config, d = context.config, context.config.diffusion
  scale = int(config.data.degradation.scale)
  objective = DiffusionObjective(context.model, context.tx, context.plan, d, scale,
                                 context.schedule, context.layouts)
  logging.info("SR3: %s schedule, T=%d, %s loss on epsilon, training timesteps [%d, %d]; "
               "evaluation samples with %s.", d.schedule, objective.noise.num_steps, d.loss,
               objective.sr3.t_min, objective.sr3.t_max, objective.sampler_label)
  extra = frozen_tree({}, context.base, objective, context.labels)[base.EXTRA]
  return base.Built(objective, step_lib.init_state(context.trainable, context.tx, context.seed),
                    extra_frozen=extra, meta={"diffusion": sr3.sampling_record(d, scale)})


def _base_stage(config: ml_collections.ConfigDict) -> None:
  """A diffusion job's base learns the whole chain."""
  config.diffusion.t_min, config.diffusion.t_max = 1, 0


def config_section() -> ml_collections.ConfigDict:
  """The SR3 diffusion objective (config.objective='diffusion', sr_jax/objectives/diffusion.py)
  and its samplers."""
  return ml_collections.ConfigDict(dict(
      # The noise schedule: 'linear' (SR3's common implementation: T=2000, 1e-6 -> 1e-2),
      # 'cosine' or 'quad'.
      schedule="linear",
      num_timesteps=2000,  # T: steps of the noise schedule.
      beta_start=1e-6,  # Noise variance at t = 1 (linear and quad schedules).
      beta_end=1e-2,  # Noise variance at t = T (linear and quad schedules).
      loss="l1",  # Epsilon-prediction loss: 'l1' (SR3's choice) or 'l2'.
      # Train only on timesteps t in [t_min, t_max] (1..num_timesteps; t_max 0 = the last):
      # partial fine-tuning of the chain. Small t is the data end (least noise).
      t_min=1,
      t_max=0,  # Last trained timestep (0 = num_timesteps).
      # Sampling after a range-restricted fine-tune: steps outside [t_min, t_max] use the base
      # model (the chain is fine-tuned only where it was trained); False uses the tuned model
      # for every step.
      base_outside_range=True,
      # Evaluation sampler: 'ddim', 'ddpm' or 'dpmpp_2m' (DPM-Solver++(2M)); sample_steps 0 =
      # every step of the schedule (the paper's ancestral sampler), fewer = a shortened chain.
      sampler="ddim",
      sample_steps=50,  # Sampling steps at evaluation (0 = every step of the schedule).
      eta=0.0,  # DDIM stochasticity (0 = deterministic, 1 = DDPM-like).
      # Timesteps of a shortened chain: even in t ('uniform'), in log-SNR ('logsnr'), or
      # 'auto' ('logsnr' for dpmpp_2m, 'uniform' for DDPM and DDIM).
      spacing="auto",
      clip_x0=True,  # Clip the predicted clean image to [-1, 1] at every step.
      sample_seed=0,  # Sampling noise seed: evaluations are reproducible.
  ))


RULES = {
    "diffusion.num_timesteps": Int(1), "diffusion.beta_start": Real(0, 1, lo_open=True),
    "diffusion.beta_end": Real(0, 1, lo_open=True), "diffusion.t_min": Int(1),
    "diffusion.t_max": Int(0), "diffusion.sample_steps": Int(0), "diffusion.eta": Real(0, 1),
    "diffusion.sample_seed": Int(0),
}


def config_problems(config: ml_collections.ConfigDict) -> list[str]:
  """The rules tying config.diffusion's keys together."""
  d = config.diffusion
  problems = chain_range_problems("diffusion", d.t_min, d.t_max, "num_timesteps",
                                  d.num_timesteps)
  if d.sample_steps > d.num_timesteps:
    problems.append(f"config.diffusion.sample_steps={d.sample_steps}: must be at most "
                    f"diffusion.num_timesteps={d.num_timesteps} (0 = every step)")
  if d.schedule != "cosine" and not d.beta_start < d.beta_end:
    problems.append(f"config.diffusion.beta_start={d.beta_start:g} must be below "
                    f"diffusion.beta_end={d.beta_end:g}")
  return problems


SPEC = base.ObjectiveSpec("diffusion", build, model_kinds=("diffusion",),
                          base_stage=_base_stage, section="diffusion",
                          section_defaults=config_section, rules=RULES,
                          problems=config_problems,
                          restorer=functools.partial(restorers.sampled_restorer, name="SR3"))
