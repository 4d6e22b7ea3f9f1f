"""SR3 (Saharia et al. 2021) as a sampler of images: condition, denoise, sample.

The one place that turns an SR3 UNet and its parameters into super-resolved images. Both the
training objective (sr_jax.objectives.diffusion, for evaluation during and after training) and
`sr_jax.infer` (for exported or converted checkpoints) use it, built from the same record: the
noise schedule, the timestep range a fine-tune was restricted to, whether the base samples the
steps outside that range, and the SR scale (`sampling_record`; exports store it in meta.json).

- The condition is the LR input upscaled to the HR size with MATLAB's bicubic (the resize that
  made the LR images), written as two matrix products so it jits, mapped to [-1, 1].
- `denoise` runs the UNet on {'base', 'lora'} parameters (adapters merged into their kernels,
  or in training laid out per layer, sr_jax.adapt.lora_branch) and returns its noise estimate.
- With split sampling (a fine-tune restricted to timesteps [t_min, t_max] whose record says
  the base samples outside it), steps inside the range use the tuned parameters and the others
  the untouched base, passed as the parameters' 'reference' entry.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sr_jax.adapt import lora, lora_branch
from sr_jax.data import resize
from sr_jax.diffusion import samplers, schedule as schedule_lib

PyTree = Any
# What an exported SR3 records besides its weights (with the SR 'scale').
RECORDED = ("schedule", "num_timesteps", "beta_start", "beta_end", "t_min", "t_max",
            "base_outside_range")
# The common PyTorch implementation's schedule: what a converted checkpoint was trained with.
COMMON_SCHEDULE = {"schedule": "linear", "num_timesteps": 2000, "beta_start": 1e-6,
                   "beta_end": 1e-2, "t_min": 1, "t_max": 0, "base_outside_range": True}


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


def sampling_record(diffusion: Any, scale: int) -> dict[str, Any]:
  """The record of config.diffusion (a ConfigDict or mapping) and the data's SR scale."""
  return dict({k: diffusion[k] for k in RECORDED}, scale=int(scale))


SAMPLER_NAMES = {"ddpm": "DDPM", "ddim": "DDIM", "dpmpp_2m": "DPM-Solver++(2M)"}


def sampler_label(sampler: samplers.SamplerConfig, num_timesteps: int) -> str:
  """E.g. 'DDIM 50 steps', 'DDPM 2000 steps' or 'DPM-Solver++(2M) 20 steps' (DDIM's eta when
  not 0, and a spacing other than the sampler's default)."""
  eta = f", eta {sampler.eta:g}" if sampler.kind == "ddim" and sampler.eta else ""
  default = "logsnr" if sampler.kind == "dpmpp_2m" else "uniform"
  shortened = 0 < sampler.num_steps < num_timesteps
  spacing = (f", {sampler.spacing} spacing"
             if shortened and sampler.spacing not in ("auto", default) else "")
  return (f"{SAMPLER_NAMES[sampler.kind]} {sampler.num_steps or num_timesteps} steps"
          f"{eta}{spacing}")


@dataclasses.dataclass
class SR3:
  """An SR3 UNet with its LoRA plan, noise schedule, scale, range and default sampler."""
  model: nn.Module
  plan: lora.LoraPlan | None
  noise: schedule_lib.NoiseSchedule
  scale: int
  t_min: int
  t_max: int
  split_sampling: bool  # Sample with the base outside [t_min, t_max].
  sampler: samplers.SamplerConfig
  seed: int = 0

  @classmethod
  def from_record(cls, model: nn.Module, record: dict[str, Any],
                  sampler: samplers.SamplerConfig, *, plan: lora.LoraPlan | None = None,
                  split: bool = True, seed: int = 0) -> "SR3":
    """From a sampling record; `split` False ignores a recorded split (e.g. no base at hand)."""
    noise = schedule_lib.NoiseSchedule.create(record["schedule"], record["num_timesteps"],
                                              record["beta_start"], record["beta_end"])
    t_min, t_max = schedule_lib.check_range(noise, record["t_min"], record["t_max"])
    restricted = (t_min, t_max) != (1, noise.num_steps)
    return cls(model, plan, noise, int(record["scale"]), t_min, t_max,
               bool(restricted and record["base_outside_range"] and split), sampler, seed)

  @property
  def restricted(self) -> bool:
    """Whether fine-tuning was restricted to part of the chain."""
    return (self.t_min, self.t_max) != (1, self.noise.num_steps)

  @property
  def sampler_label(self) -> str:
    return sampler_label(self.sampler, self.noise.num_steps)

  def without_adapters(self) -> "SR3":
    """The bare base: no LoRA plan, no split sampling."""
    plain = copy.copy(self)
    plain.plan, plain.split_sampling = None, False
    return plain

  def condition(self, lq: jax.Array) -> jax.Array:
    """The LR input upscaled to the HR size, in [-1, 1]."""
    return bicubic_resize(lq, self.scale) * 2.0 - 1.0

  def denoise(self, params: PyTree, condition: jax.Array, y_t: jax.Array,
              noise_level: jax.Array, t: jax.Array | None = None, *,
              dropout_rng: jax.Array | None = None,
              layouts: lora_branch.Layouts | None = None) -> jax.Array:
    """The predicted noise for {'base', 'lora'} `params`; dropout when given an rng. Adapters
    are merged into their kernels, or in a training step laid out as `layouts` says
    (sr_jax.adapt.lora_branch)."""
    del t  # The UNet is conditioned on the continuous noise level only.
    rngs = {} if dropout_rng is None else {"dropout": dropout_rng}
    return lora_branch.apply_model(self.model, params, self.plan, condition, y_t, noise_level,
                                   layouts=layouts, deterministic=dropout_rng is None,
                                   rngs=rngs)

  def sampling_denoiser(self, params: PyTree, condition: jax.Array, y_t: jax.Array,
                        noise_level: jax.Array, t: jax.Array) -> jax.Array:
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

  def sample(self, params: PyTree, lq: jax.Array, *,
             sampler: samplers.SamplerConfig | None = None, seed: int | None = None,
             progress: samplers.Progress | None = None) -> jax.Array:
    """Super-resolves `lq` (B, h, w, C) in [0, 1] by sampling; returns [0, 1] images."""
    condition = self.condition(lq)
    seed = self.seed if seed is None else seed
    y0 = samplers.sample(self.sampling_denoiser, params, condition, self.noise,
                         sampler or self.sampler, jax.random.PRNGKey(seed),
                         out_channels=self.model.out_channel, progress=progress)
    return (jnp.clip(y0, -1.0, 1.0) + 1.0) / 2.0
