"""One registry from model names to architectures and the facts the rest of sr_jax needs.

An entry says how to build the Flax module (one generic builder: a preset's fields overridden
by keyword), which kernels are depthwise (LoRA gives them no low-rank adapter), which fields
identify the architecture (checkpoints record them, and loading a checkpoint into another
architecture is an error naming the difference), and the model's facts: its kind
('restoration', 'super_resolution' or 'diffusion'), upscaling factor, image channels, the
multiple input sides should have, and the order of its blocks in the data flow. Code elsewhere
asks the registry (`facts`, `example_inputs`) instead of probing modules for attributes.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

KINDS = ("restoration", "super_resolution", "diffusion")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def natural_order(block: str) -> tuple:
  """Sort key ordering 'conv_body' < 'body_2' < 'body_10' (numbers compared as numbers)."""
  return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", block))


@dataclasses.dataclass(frozen=True)
class ModelFacts:
  """What a built model is, as the trainer, data, inference and tools need to know it."""
  kind: str
  scale: int  # Output pixels per input pixel along a side (1 for restoration and diffusion).
  in_channels: int  # Channels of the image the model reads (SR3: of its LR condition).
  out_channels: int
  size_multiple: int  # Input sides should be multiples of this (others are padded inside).


@dataclasses.dataclass(frozen=True)
class ModelEntry:
  """A model family: its module class, presets and facts."""
  module: type[nn.Module]
  presets: dict[str, dict[str, Any]]
  kind: str
  depthwise_kernels: str  # Regex over parameter paths.
  arch_fields: tuple[str, ...]  # Module fields that define the parameter tree.
  width_field: str = "width"  # The field `config.model.width` overrides.
  out_channels_field: str = ""  # '' = as many output channels as input channels.
  scale_field: str = ""  # '' = scale 1.
  block_order: Callable[[str], tuple] = natural_order  # Sort key of top-level block names.

  def build(self, preset: str, **overrides: Any) -> nn.Module:
    """The module of a named preset with keyword overrides of any field."""
    if preset not in self.presets:
      raise ValueError(f"Unknown {self.module.__name__} preset {preset!r}; available: "
                       f"{sorted(self.presets)}.")
    return self.module(**{**self.presets[preset], **overrides})

  def facts(self, module: nn.Module) -> ModelFacts:
    """The facts of a module built from this entry."""
    in_channels = int(module.input_channels)
    out = int(getattr(module, self.out_channels_field)) if self.out_channels_field else in_channels
    scale = int(getattr(module, self.scale_field)) if self.scale_field else 1
    return ModelFacts(self.kind, scale, in_channels, out, int(module.size_multiple))


def _nafnet() -> ModelEntry:
  from sr_jax.models import nafnet
  return ModelEntry(nafnet.NAFNet, nafnet.PRESETS, "restoration", nafnet.DEPTHWISE_KERNELS,
                    ("img_channel", "width", "middle_blk_num", "enc_blk_nums", "dec_blk_nums"),
                    block_order=nafnet.block_order)


def _restormer() -> ModelEntry:
  from sr_jax.models import restormer
  return ModelEntry(restormer.Restormer, restormer.PRESETS, "restoration",
                    restormer.DEPTHWISE_KERNELS,
                    ("inp_channels", "out_channels", "dim", "num_blocks",
                     "num_refinement_blocks", "heads", "ffn_expansion_factor", "bias",
                     "layernorm_type", "dual_pixel_task"),
                    width_field="dim", out_channels_field="out_channels",
                    block_order=restormer.block_order)


_RRDB_FIELDS = ("num_in_ch", "num_out_ch", "scale", "num_feat", "num_block", "num_grow_ch")


def _rrdbnet() -> ModelEntry:
  from sr_jax.models import rrdbnet
  return ModelEntry(rrdbnet.RRDBNet, rrdbnet.PRESETS, "super_resolution",
                    rrdbnet.NO_DEPTHWISE_KERNELS, _RRDB_FIELDS, width_field="num_feat",
                    out_channels_field="num_out_ch", scale_field="scale")


def _srresnet() -> ModelEntry:
  from sr_jax.models import srresnet
  return ModelEntry(srresnet.MSRResNet, srresnet.PRESETS, "super_resolution",
                    srresnet.NO_DEPTHWISE_KERNELS,
                    ("num_in_ch", "num_out_ch", "scale", "num_feat", "num_block"),
                    width_field="num_feat", out_channels_field="num_out_ch",
                    scale_field="scale")


def _mesrgan() -> ModelEntry:
  from sr_jax.models import mesrgan
  return ModelEntry(mesrgan.MESRGAN, mesrgan.PRESETS, "super_resolution",
                    mesrgan.DEPTHWISE_KERNELS, _RRDB_FIELDS + ("expansion",),
                    width_field="num_feat", out_channels_field="num_out_ch",
                    scale_field="scale")


def _sr3() -> ModelEntry:
  from sr_jax.models import sr3_unet
  return ModelEntry(sr3_unet.SR3UNet, sr3_unet.PRESETS, "diffusion",
                    sr3_unet.DEPTHWISE_KERNELS,
                    ("in_channel", "out_channel", "inner_channel", "norm_groups",
                     "channel_mults", "attn_levels", "res_blocks"),
                    width_field="inner_channel", out_channels_field="out_channel")


_ENTRIES: dict[str, Callable[[], ModelEntry]] = {
    "nafnet": _nafnet, "restormer": _restormer, "rrdbnet": _rrdbnet, "srresnet": _srresnet,
    "mesrgan": _mesrgan, "sr3": _sr3}


def entry(name: str) -> ModelEntry:
  if name not in _ENTRIES:
    raise ValueError(f"Unknown config.model.name {name!r}; available: {sorted(_ENTRIES)}.")
  return _ENTRIES[name]()


def build_preset(name: str, preset: str, **overrides: Any) -> nn.Module:
  """The module of model `name`'s `preset`, e.g. build_preset('nafnet', 'sidd_w32', impl='xla')."""
  return entry(name).build(preset, **overrides)


def facts(name: str, module: nn.Module) -> ModelFacts:
  """The facts (kind, scale, channels, size multiple) of a module of model `name`."""
  return entry(name).facts(module)


def name_of(module: nn.Module) -> str:
  """The registry name of a built module (its class's entry)."""
  for name in _ENTRIES:
    if type(module) is entry(name).module:  # pylint: disable=unidiomatic-typecheck
      return name
  raise ValueError(f"{type(module).__name__} is not a registered model; registered: "
                   f"{sorted(_ENTRIES)}.")


def example_inputs(model: nn.Module, size: int, batch: int = 1) -> tuple[Any, ...]:
  """Zero inputs of a size x size image that `model.init(rng, *inputs)` accepts: a diffusion
  model's (condition, noisy image, noise level), else one (batch, size, size, channels) image."""
  model_facts = facts(name_of(model), model)
  if model_facts.kind == "diffusion":
    return tuple(model.example_inputs(size, batch))
  return (jnp.zeros((batch, size, size, model_facts.in_channels), jnp.float32),)


def _overrides(model_config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Non-default overrides from the config (width 0 / dropout < 0 mean 'keep the preset')."""
  out = {}
  e = entry(model_config.name)
  if model_config.get("width"):
    out[e.width_field] = model_config.width
  dropout = model_config.get("dropout", -1.0)
  if dropout is not None and dropout >= 0:
    if "dropout" not in {f.name for f in dataclasses.fields(e.module)}:
      raise ValueError(f"config.model.dropout={dropout} but the {model_config.name} model has "
                       "no dropout; leave config.model.dropout at -1.")
    out["dropout"] = float(dropout)
  return out


def build_model(model_config: ml_collections.ConfigDict) -> nn.Module:
  """The Flax module for `config.model` (name, preset, overrides, dtype, conv_impl)."""
  e = entry(model_config.name)
  if model_config.preset not in e.presets:
    raise ValueError(f"Unknown config.model.preset {model_config.preset!r} for "
                     f"{model_config.name}; presets: {sorted(e.presets)}.")
  if model_config.dtype not in DTYPES:
    raise ValueError(f"Unknown config.model.dtype {model_config.dtype!r}; use one of "
                     f"{sorted(DTYPES)}.")
  return e.build(model_config.preset, dtype=DTYPES[model_config.dtype],
                 impl=model_config.conv_impl, **_overrides(model_config))


def model_facts(model_config: ml_collections.ConfigDict) -> ModelFacts:
  """The facts of the model `config.model` builds."""
  return facts(model_config.name, build_model(model_config))


def module_architecture(name: str, module: nn.Module) -> dict[str, Any]:
  """JSON-able description of a built module's architecture (its entry's arch_fields)."""
  arch = {"name": name}
  for field in entry(name).arch_fields:
    value = getattr(module, field)
    arch[field] = list(value) if isinstance(value, (tuple, list)) else value
  return arch


def architecture(model_config: ml_collections.ConfigDict) -> dict[str, Any]:
  """JSON-able description of the parameter tree's architecture, stored with checkpoints."""
  return module_architecture(model_config.name, build_model(model_config))


def from_architecture(arch: dict[str, Any], **overrides: Any) -> nn.Module:
  """The module of a recorded architecture (a checkpoint's meta.json 'model').

  Checkpoints record the fields that define the parameter tree, not a preset name, so the
  module is built from the entry's first preset with every recorded field overriding it.
  """
  if "name" not in arch:
    raise ValueError(f"Recorded architecture {dict(arch)} has no model 'name'.")
  e = entry(arch["name"])
  missing = [f for f in e.arch_fields if f not in arch]
  if missing:
    raise ValueError(f"Recorded {arch['name']} architecture lacks {missing} (has {sorted(arch)}).")
  fields = {f: tuple(arch[f]) if isinstance(arch[f], list) else arch[f] for f in e.arch_fields}
  return e.build(next(iter(e.presets)), **fields, **overrides)


def matching_preset(arch: dict[str, Any]) -> str | None:
  """The name of the preset whose architecture equals `arch`, if any."""
  e = entry(arch["name"])
  return next((p for p in e.presets
               if module_architecture(arch["name"], e.build(p)) == arch), None)


def check_architecture(saved: dict[str, Any], current: dict[str, Any], where: str,
                       advice: str | None = None) -> None:
  """Raises when a checkpoint was written for another architecture, naming each difference.

  The fix depends on what holds the checkpoint: for a run directory (`where` starting with
  '--workdir') a new workdir, for a base or other input checkpoint another checkpoint or a
  config.model that matches it (named when a preset does). `advice` overrides the default.
  """
  diffs = [f"{k}: checkpoint has {saved.get(k)!r}, config has {current.get(k)!r}"
           for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
  if not diffs:
    return
  if advice is None:
    preset = _matching_preset(saved)
    matches = (f"set --config.model.name={saved.get('name')} --config.model.preset={preset} "
               "to match it" if preset else "set the config's model to match it")
    advice = (f"Use a new --workdir, or {matches}." if where.startswith("--workdir") else
              f"Use a checkpoint of the configured architecture, or {matches}.")
  raise ValueError(f"{where} holds a checkpoint of a different architecture:\n  " +
                   "\n  ".join(diffs) + "\n" + advice)


def _matching_preset(arch: dict[str, Any]) -> str | None:
  """The preset a saved architecture equals, if any (None for an unknown model name)."""
  try:
    return matching_preset(arch) if arch.get("name") else None
  except (ValueError, KeyError, TypeError, AttributeError):
    return None
