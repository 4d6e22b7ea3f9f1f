"""The SR3 diffusion objective: noise-level sampling and epsilon prediction in one jitted step.

A training step (Saharia et al. 2021; REFERENCE.md section 7), with images mapped to [-1, 1]:
1. the condition is the LR input upscaled to the HR size with MATLAB's bicubic (the same
   resize that made the LR images, as two matrix products so it jits), concatenated to the
   noisy image inside the UNet;
2. per image, a timestep t uniform on [t_min, t_max] and a continuous noise level gamma
   uniform between gamma_t and gamma_{t-1} (sr_jax.diffusion.schedule);
3. y_t = sqrt(gamma) y0 + sqrt(1 - gamma) eps, and the UNet predicts eps from
   (condition, y_t, sqrt(gamma)) with dropout on;
4. the loss is the mean |eps_hat - eps| (L1, SR3's choice) or its square (L2). The common
   implementation sums instead of averaging; Adam's updates do not depend on that scale.

Restricting [t_min, t_max] fine-tunes part of the chain (seed 003's question). With
config.diffusion.base_outside_range, sampling then uses the base model outside the range, so
the chain is changed only where it was trained; the base's parameters for that are the frozen
tree's 'reference' (the untouched base) or, for a LoRA run that tunes no base leaf, the base
half of the parameters itself.

Evaluation (`apply`) samples with the configured sampler (DDIM with 50 steps by default) from a
fixed seed, so scores are reproducible.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sr_jax import lora
from sr_jax.data import resize
from sr_jax.diffusion import samplers, schedule as schedule_lib
from sr_jax.objectives import pixel

PyTree = Any
LOSSES = ("l1", "l2")


@functools.lru_cache(maxsize=32)
def _resize_matrices(height: int, width: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
  out_h, out_w = resize.output_size((height, width), scale, None)[0]
  return (resize.resize_matrix(height, out_h, scale).astype(np.float32),
          resize.resize_matrix(width, out_w, scale).astype(np.float32))


def bicubic_resize(images: jax.Array, scale: float) -> jax.Array:
  """MATLAB-bicubic resize of (B, H, W, C) images by `scale`, jittable (equals `imresize`)."""
  if scale == 1:
    return images
  mh, mw = _resize_matrices(images.shape[1], images.shape[2], float(scale))
  hp = jax.lax.Precision.HIGHEST
  out = jnp.einsum("oh,bhwc->bowc", mh, images.astype(jnp.float32), precision=hp)
  return jnp.einsum("pw,bowc->bopc", mw, out, precision=hp)


def epsilon_loss(kind: str, eps_hat: jax.Array, eps: jax.Array) -> jax.Array:
  """Mean L1 or L2 error of the predicted noise, in float32."""
  diff = eps_hat.astype(jnp.float32) - eps.astype(jnp.float32)
  if kind == "l1":
    return jnp.mean(jnp.abs(diff))
  if kind == "l2":
    return jnp.mean(jnp.square(diff))
  raise ValueError(f"Unknown config.diffusion.loss {kind!r}; choose one of {LOSSES}.")


RECORDED = ("schedule", "num_timesteps", "beta_start", "beta_end", "t_min", "t_max",
            "base_outside_range")


def sampling_record(diffusion: ml_collections.ConfigDict, scale: int) -> dict[str, Any]:
  """What an exported SR3 needs besides its weights: the noise schedule, the timestep range it
  was tuned on (for sampling the base outside it) and the SR scale."""
  return dict({k: diffusion[k] for k in RECORDED}, scale=int(scale))


def sampler_config(diffusion: ml_collections.ConfigDict) -> samplers.SamplerConfig:
  return samplers.SamplerConfig(kind=diffusion.sampler, num_steps=diffusion.sample_steps,
                                eta=diffusion.eta, clip_x0=diffusion.clip_x0)


class DiffusionObjective(pixel.PixelObjective):
  """SR3: `model` (an SR3UNet) predicts the noise; see the module doc.

  The frozen tree is {'model': the model's frozen half, 'reference': the untouched base when
  range-restricted sampling needs one (else {})}; only 'model' is checkpointed.
  """

  def __init__(self, model, tx, plan, diffusion: ml_collections.ConfigDict, scale: int,
               schedule=None):
    super().__init__(model, tx, plan, "l1", schedule=schedule)
    epsilon_loss(diffusion.loss, jnp.zeros(()), jnp.zeros(()))  # Validates the name early.
    noise = schedule_lib.NoiseSchedule.create(diffusion.schedule, diffusion.num_timesteps,
                                              diffusion.beta_start, diffusion.beta_end)
    self.noise, self.diffusion, self.scale = noise, diffusion, int(scale)
    self.t_min, self.t_max = schedule_lib.check_range(noise, diffusion.t_min, diffusion.t_max)
    self.restricted = (self.t_min, self.t_max) != (1, noise.num_steps)
    self.split_sampling = self.restricted and diffusion.base_outside_range
    self.sampler = sampler_config(diffusion)

  @property
  def sampler_label(self) -> str:
    """E.g. 'DDIM 50 steps' or 'DDPM 2000 steps' (eta shown when DDIM's is not 0)."""
    s = self.sampler
    eta = f", eta {s.eta:g}" if s.kind == "ddim" and s.eta else ""
    return f"{s.kind.upper()} {s.num_steps or self.noise.num_steps} steps{eta}"

  # -- what the loop reads ------------------------------------------------------------------

  FROZEN_KEY = "model"  # The reference base beside it is the run's base: not checkpointed.

  def eval_params(self, state, frozen: PyTree) -> PyTree:
    """{'base', 'lora'} plus, for split sampling, the base the other steps use."""
    params = super().eval_params(state, frozen)
    if self.split_sampling:
      params["reference"] = frozen["reference"] or params["base"]
    return params

  def without_adapters(self) -> "DiffusionObjective":
    plain = super().without_adapters()
    plain.split_sampling = False
    return plain

  # -- the model ----------------------------------------------------------------------------

  def condition(self, lq: jax.Array) -> jax.Array:
    """The LR input upscaled to the HR size, in [-1, 1]."""
    return bicubic_resize(lq, self.scale) * 2.0 - 1.0

  def denoise(self, params: PyTree, condition: jax.Array, y_t: jax.Array,
              noise_level: jax.Array, t: jax.Array | None = None, *,
              dropout_rng: jax.Array | None = None) -> jax.Array:
    """The predicted noise (float32) for {'base', 'lora'} `params`; dropout with an rng."""
    del t  # The UNet is conditioned on the continuous noise level only.
    merged = lora.merge(params["base"], params.get("lora", {}), self.plan)
    rngs = {} if dropout_rng is None else {"dropout": dropout_rng}
    return self.model.apply({"params": merged}, condition, y_t, noise_level,
                            deterministic=dropout_rng is None, rngs=rngs)

  def _sampling_denoiser(self, params: PyTree, condition, y_t, noise_level, t):
    """The tuned model inside [t_min, t_max] and (split sampling) the base outside it."""
    if not self.split_sampling:
      return self.denoise(params, condition, y_t, noise_level)
    tuned = {"base": params["base"], "lora": params.get("lora", {})}
    reference = {"base": params["reference"], "lora": {}}
    plain = self.without_adapters()
    inside = (t >= self.t_min) & (t <= self.t_max)
    return jax.lax.cond(inside,
                        lambda: self.denoise(tuned, condition, y_t, noise_level),
                        lambda: plain.denoise(reference, condition, y_t, noise_level))

  def apply(self, params: PyTree, lq: jax.Array, *, sampler: samplers.SamplerConfig | None = None,
            seed: int | None = None, progress=None) -> jax.Array:
    """Super-resolves `lq` (B, h, w, C) in [0, 1] by sampling; returns [0, 1] images."""
    condition = self.condition(lq)
    seed = self.diffusion.sample_seed if seed is None else seed
    y0 = samplers.sample(self._sampling_denoiser, params, condition, self.noise,
                         sampler or self.sampler, jax.random.PRNGKey(seed),
                         out_channels=self.model.out_channel, progress=progress)
    return (jnp.clip(y0, -1.0, 1.0) + 1.0) / 2.0

  # -- the step -----------------------------------------------------------------------------

  def noisy_batch(self, rng: jax.Array, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The step's random draws: t, gamma, eps and y_t for the batch's HR images."""
    k_level, k_noise = jax.random.split(rng)
    y0 = batch["gt"].astype(jnp.float32) * 2.0 - 1.0
    t, gamma = schedule_lib.sample_noise_level(k_level, y0.shape[0], self.noise, self.t_min,
                                               self.t_max)
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
      params = lora.combine(trainable, self.model_frozen(frozen))
      eps_hat = self.denoise(params, condition, draw["y_t"], jnp.sqrt(draw["gamma"]),
                             dropout_rng=k_dropout)
      return epsilon_loss(self.diffusion.loss, eps_hat, draw["eps"])

    loss, grads = jax.value_and_grad(loss_fn)(state.trainable)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.trainable)
    trainable = optax.apply_updates(state.trainable, updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
               "t_mean": jnp.mean(draw["t"].astype(jnp.float32))}
    if self.schedule is not None:
      metrics["learning_rate"] = self.schedule(state.step)
    return state.replace(step=state.step + 1, trainable=trainable, opt_state=opt_state), metrics


def frozen_tree(model_frozen: PyTree, base: PyTree, objective: DiffusionObjective,
                labels: PyTree) -> PyTree:
  """The objective's frozen tree; keeps a copy of the base only when sampling needs it."""
  tuned_base_leaves = any(label == lora.TRAINABLE for label in jax.tree.leaves(labels["base"]))
  keep = objective.split_sampling and tuned_base_leaves
  return {"model": model_frozen, "reference": copy.deepcopy(base) if keep else {}}
