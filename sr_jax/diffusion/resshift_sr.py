"""ResShift (sr_jax.diffusion.resshift) as a sampler of images: condition, predict x0, sample.

The one place that turns an SR3 UNet used as ResShift's x0 network, and its parameters, into
super-resolved images; the training objective (sr_jax.objectives.resshift) and `sr_jax.infer`
build it from the same record (`sampling_record`, stored in exports' meta.json under
'resshift'): the shifting schedule (T, kappa, p, eta_T, eta_1; an export written before
eta_1 existed reads as the paper's rule), how the network sees the chain, what it outputs,
the timestep range a fine-tune was restricted to, whether the base samples the steps outside
that range, and the SR scale.

- The condition y is the LR input upscaled to the HR size with MATLAB's bicubic, in [-1, 1]
  (SR3's, sr_jax.diffusion.sr3.bicubic_resize). The UNet sees (y, the scaled x_t, the level).
- output 'x0': the UNet's output is x0_hat, as in the paper; 'residual': x0_hat = y + output,
  the same model and loss with the network asked for the detail bicubic misses (x0 - y), which
  a freshly initialised network starts near (its output near 0 gives x0_hat near y) instead
  of having to learn to copy y first.
- With split sampling (a fine-tune restricted to timesteps [t_min, t_max] whose record says
  the base samples outside it), steps inside the range use the tuned parameters and the others
  the untouched base, passed as the parameters' 'reference' entry.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sr_jax.adapt import lora, lora_branch
from sr_jax.diffusion import resshift, samplers
from sr_jax.diffusion.sr3 import bicubic_resize

PyTree = Any
OUTPUTS = ("x0", "residual")
# What an exported ResShift records besides its weights (with the SR 'scale').
RECORDED = ("num_steps", "kappa", "power", "eta_T", "eta_1", "normalize_input", "level", "output",
            "t_min", "t_max", "base_outside_range")


def sampling_record(config: Any, scale: int) -> dict[str, Any]:
  """The record of config.resshift (a ConfigDict or mapping) and the data's SR scale."""
  return dict({k: config[k] for k in RECORDED}, scale=int(scale))


def schedule_of(record: dict[str, Any]) -> resshift.ShiftSchedule:
  """The shifting schedule a record describes."""
  return resshift.ShiftSchedule.create(
      int(record["num_steps"]), float(record["kappa"]), float(record["power"]),
      float(record["eta_T"]), float(record.get("eta_1", 0.0)) or None,
      normalize_input=bool(record["normalize_input"]),
      level=str(record["level"]))


@dataclasses.dataclass(eq=False)
class ResShiftSR:
  """An SR3 UNet as ResShift's x0 network, with its LoRA plan, schedule, scale and range."""
  model: nn.Module
  plan: lora.LoraPlan | None
  schedule: resshift.ShiftSchedule
  scale: int
  output: str
  t_min: int
  t_max: int
  split_sampling: bool  # Sample with the base outside [t_min, t_max].
  clip_x0: bool = True
  seed: int = 0

  @classmethod
  def from_record(cls, model: nn.Module, record: dict[str, Any], *,
                  plan: lora.LoraPlan | None = None, split: bool = True, clip_x0: bool = True,
                  seed: int = 0) -> "ResShiftSR":
    """From a sampling record; `split` False ignores a recorded split (e.g. no base at hand)."""
    if record["output"] not in OUTPUTS:
      raise ValueError(f"Unknown config.resshift.output {record['output']!r}; choose one of "
                       f"{OUTPUTS}.")
    schedule = schedule_of(record)
    t_min, t_max = resshift.check_range(schedule, int(record["t_min"]), int(record["t_max"]))
    restricted = (t_min, t_max) != (1, schedule.num_steps)
    return cls(model, plan, schedule, int(record["scale"]), str(record["output"]), t_min, t_max,
               bool(restricted and record["base_outside_range"] and split), bool(clip_x0),
               int(seed))

  @property
  def restricted(self) -> bool:
    """Whether fine-tuning was restricted to part of the chain."""
    return (self.t_min, self.t_max) != (1, self.schedule.num_steps)

  @property
  def sampler_label(self) -> str:
    return f"ResShift {self.schedule.num_steps} steps"

  def without_adapters(self) -> "ResShiftSR":
    """The bare base: no LoRA plan, no split sampling."""
    plain = copy.copy(self)
    plain.plan, plain.split_sampling = None, False
    return plain

  def condition(self, lq: jax.Array) -> jax.Array:
    """The LR input (B, h, w, C) in [0, 1] upscaled to the HR size, in [-1, 1]."""
    return bicubic_resize(lq, self.scale) * 2.0 - 1.0

  def predict_x0(self, params: PyTree, y: jax.Array, x_in: jax.Array, level: jax.Array,
                 t: jax.Array | None = None, *, dropout_rng: jax.Array | None = None,
                 layouts: lora_branch.Layouts | None = None) -> jax.Array:
    """x0_hat for {'base', 'lora'} `params` (float32); dropout when given an rng. Adapters are
    merged into their kernels, or in training laid out as `layouts` says (adapt.lora_branch)."""
    del t  # The UNet is conditioned on the level only.
    rngs = {} if dropout_rng is None else {"dropout": dropout_rng}
    out = lora_branch.apply_model(self.model, params, self.plan, y, x_in, level,
                                  layouts=layouts, deterministic=dropout_rng is None,
                                  rngs=rngs).astype(jnp.float32)
    return y.astype(jnp.float32) + out if self.output == "residual" else out

  def sampling_network(self, params: PyTree, y: jax.Array, x_in: jax.Array, level: jax.Array,
                       t: jax.Array) -> jax.Array:
    """The tuned model inside [t_min, t_max] and (split sampling) the base outside it."""
    if not self.split_sampling:
      return self.predict_x0(params, y, x_in, level)
    tuned = {"base": params["base"], "lora": params.get("lora", {})}
    reference = {"base": params["reference"], "lora": {}}
    plain = self.without_adapters()
    step = jnp.reshape(t, (-1,))[0]  # One timestep per reverse step, shared by the batch.
    inside = (step >= self.t_min) & (step <= self.t_max)
    return jax.lax.cond(inside,
                        lambda: self.predict_x0(tuned, y, x_in, level),
                        lambda: plain.predict_x0(reference, y, x_in, level))

  def sample(self, params: PyTree, lq: jax.Array, *, seed: int | None = None,
             first_index: int = 0, mesh=None,
             progress: samplers.Progress | None = None) -> jax.Array:
    """Super-resolves `lq` (B, h, w, C) in [0, 1] with the T reverse steps; [0, 1] images.

    Image i's noise comes from (seed, first_index + i) alone (resshift.sample), so a batch
    sampled in parts, or split over a mesh, gives the same images.
    """
    seed = self.seed if seed is None else seed
    x0 = resshift.sample(self.sampling_network, params, self.condition(lq), self.schedule,
                         jax.random.PRNGKey(seed), clip_x0=self.clip_x0,
                         first_index=first_index, mesh=mesh, progress=progress)
    return (jnp.clip(x0, -1.0, 1.0) + 1.0) / 2.0
