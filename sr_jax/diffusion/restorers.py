"""Diffusion super-resolution exports as restorers: an LR image in, the sampled HR image out.

`diffusion_restorer(checkpoint, adapter)` reads a diffusion export (and an adapter trained on
it): ResShift when its meta.json holds a 'resshift' record, else SR3 with the sampler asked
for. Images are sampled whole (tiles sampled apart would not join). sr_jax.infer and
sr_jax.tools.sr3_sampling use them; the restoration models' restorer is
sr_jax.inference.restorer.Restorer.
"""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sr_jax.adapt import adapters
from sr_jax.diffusion import resshift_sr, samplers, sr3
from sr_jax.models import registry
from sr_jax.util import exports
from sr_jax.util.errors import UsageError

PyTree = Any


class DiffusionRestorer:
  """SR3: each image is super-resolved by sampling (sr_jax.diffusion.sr3), whole."""

  def __init__(self, model: nn.Module, base: PyTree, tuned: PyTree, record: dict[str, Any],
               sampler: str = "ddim", steps: int = 50, eta: float = 0.0, seed: int = 0,
               split: bool = False, spacing: str = "auto"):
    sampler_config = samplers.SamplerConfig(kind=sampler, num_steps=steps, eta=eta,
                                            spacing=spacing)
    self.sr3 = sr3.SR3.from_record(model, record, sampler_config, split=split, seed=seed)
    self.params = {"base": tuned, "lora": {}}
    if self.sr3.split_sampling:
      self.params["reference"] = base
    self.scale, self.multiple = self.sr3.scale, 1
    self.channels = registry.facts("sr3", model).in_channels
    self.steps = steps or self.sr3.noise.num_steps
    self.sample, self.label = self.sr3.sample, self.sr3.sampler_label
    self._jitted = jax.jit(self.sr3.sample)

  def __call__(self, image: np.ndarray) -> np.ndarray:
    """HWC float32 LR image in [0, 1] -> the sampled HR image (HWC float32 in [0, 1])."""
    x = jnp.asarray(image, jnp.float32)[None]
    if self.steps > 100:  # Long chains report their progress (chunked, jitted per chunk).
      out = self.sr3.sample(self.params, x, progress=samplers.progress_logger("sampling"))
    else:
      out = self._jitted(self.params, x)
    return np.asarray(out[0])

  def num_tiles(self, height: int, width: int) -> int:
    del height, width
    return 1


class ResShiftRestorer:
  """ResShift: each image is super-resolved by the recorded T-step chain
  (sr_jax.diffusion.resshift_sr), whole."""

  def __init__(self, model: nn.Module, base: PyTree, tuned: PyTree, record: dict[str, Any],
               seed: int = 0, split: bool = False):
    self.sr = resshift_sr.ResShiftSR.from_record(model, record, split=split, seed=seed)
    self.params = {"base": tuned, "lora": {}}
    if self.sr.split_sampling:
      self.params["reference"] = base
    self.scale, self.multiple = self.sr.scale, 1
    self.channels = registry.facts("sr3", model).in_channels
    self.steps = self.sr.schedule.num_steps
    self.sample, self.label = self.sr.sample, self.sr.sampler_label
    self._jitted = jax.jit(self.sr.sample)

  def __call__(self, image: np.ndarray) -> np.ndarray:
    """HWC float32 LR image in [0, 1] -> the sampled HR image (HWC float32 in [0, 1])."""
    return np.asarray(self._jitted(self.params, jnp.asarray(image, jnp.float32)[None])[0])

  def num_tiles(self, height: int, width: int) -> int:
    del height, width
    return 1


def is_diffusion(checkpoint: str) -> bool:
  """Whether a parameter directory holds an SR3 model (False when unreadable: load_model then
  reports what is wrong with it)."""
  if not os.path.exists(os.path.join(checkpoint, "meta.json")):
    return False
  name = exports.read_params_meta(checkpoint).get("model", {}).get("name")
  try:
    return registry.entry(name).kind == "diffusion"
  except ValueError:
    return False  # An unknown model: load_model names the problem.


def sampled_restorer(checkpoint: str, adapter: str | None, options: Any, *,
                     name: str) -> DiffusionRestorer | ResShiftRestorer:
  """`diffusion_restorer` from sr_jax.infer's options (RestoreOptions): every image sampled
  whole, so tiles are refused naming the model family `name`."""
  if options.tile:
    raise UsageError(f"--tile does not apply to {name}: tiles sampled apart would not join; "
                     "images are sampled whole (--tile 0).")
  return diffusion_restorer(checkpoint, adapter, dtype=options.dtype, scale=options.scale,
                            **options.sampling)


def diffusion_restorer(checkpoint: str, adapter: str | None, *, dtype: str = "float32",
                       scale: int = 0, **sampling) -> DiffusionRestorer | ResShiftRestorer:
  """A diffusion checkpoint (and adapter) ready to sample: ResShift when its meta.json holds a
  'resshift' record (only `seed` of `sampling` applies), else SR3; the scale from the record
  or `scale`."""
  base, meta = adapters.load_base(checkpoint)
  family = "resshift" if meta.get("resshift") else "diffusion"
  record, tuned = dict(meta.get(family) or {}), base
  if adapter:
    loaded = adapters.load_adapter(adapter)
    adapters.check_compatible(meta, loaded, base)
    tuned = adapters.apply_adapter(base, loaded)
    record.update(loaded.meta.get(family) or {})
  if scale:
    record["scale"] = scale
  if not record.get("scale"):
    raise UsageError(f"{checkpoint} records no SR scale (a converted SR3 checkpoint): pass "
                     "--scale, e.g. --scale 8 for the 16 -> 128 model.")
  model = adapters.model_from_architecture(meta["model"], dtype=dtype)
  if family == "resshift":
    return ResShiftRestorer(model, base, tuned, record, seed=sampling.get("seed", 0),
                            split=bool(adapter))
  record = dict(sr3.COMMON_SCHEDULE, **record)  # A converted checkpoint records no schedule.
  return DiffusionRestorer(model, base, tuned, record, split=bool(adapter), **sampling)
