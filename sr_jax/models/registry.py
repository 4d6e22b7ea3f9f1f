"""One registry from model names to architectures (as BasicSR has).

An entry builds the Flax module from `config.model`, and says which kernels are depthwise
(LoRA gives them no low-rank adapter) and what identifies the architecture (checkpoints
record it, and loading a checkpoint into another architecture is an error naming the
difference).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections


@dataclasses.dataclass(frozen=True)
class ModelEntry:
  build: Callable[..., nn.Module]  # (preset: str, **overrides) -> module
  presets: dict[str, dict[str, Any]]
  depthwise_kernels: str  # Regex over parameter paths.
  arch_fields: tuple[str, ...]  # Module fields that define the parameter tree.
  width_field: str = "width"  # The field `config.model.width` overrides.


def _nafnet() -> ModelEntry:
  from sr_jax.models import nafnet
  return ModelEntry(nafnet.nafnet_from_preset, nafnet.PRESETS, nafnet.DEPTHWISE_KERNELS,
                    ("img_channel", "width", "middle_blk_num", "enc_blk_nums", "dec_blk_nums"))


def _restormer() -> ModelEntry:
  from sr_jax.models import restormer
  return ModelEntry(restormer.restormer_from_preset, restormer.PRESETS,
                    restormer.DEPTHWISE_KERNELS,
                    ("inp_channels", "out_channels", "dim", "num_blocks",
                     "num_refinement_blocks", "heads", "ffn_expansion_factor", "bias",
                     "layernorm_type", "dual_pixel_task"),
                    width_field="dim")


_RRDB_FIELDS = ("num_in_ch", "num_out_ch", "scale", "num_feat", "num_block", "num_grow_ch")


def _rrdbnet() -> ModelEntry:
  from sr_jax.models import rrdbnet
  return ModelEntry(rrdbnet.rrdbnet_from_preset, rrdbnet.PRESETS, rrdbnet.NO_DEPTHWISE_KERNELS,
                    _RRDB_FIELDS, width_field="num_feat")


def _srresnet() -> ModelEntry:
  from sr_jax.models import srresnet
  return ModelEntry(srresnet.srresnet_from_preset, srresnet.PRESETS,
                    srresnet.NO_DEPTHWISE_KERNELS,
                    ("num_in_ch", "num_out_ch", "scale", "num_feat", "num_block"),
                    width_field="num_feat")


def _mesrgan() -> ModelEntry:
  from sr_jax.models import mesrgan
  return ModelEntry(mesrgan.mesrgan_from_preset, mesrgan.PRESETS, mesrgan.DEPTHWISE_KERNELS,
                    _RRDB_FIELDS + ("expansion",), width_field="num_feat")


def _sr3() -> ModelEntry:
  from sr_jax.models import sr3_unet
  return ModelEntry(sr3_unet.sr3_from_preset, sr3_unet.PRESETS, sr3_unet.DEPTHWISE_KERNELS,
                    ("in_channel", "out_channel", "inner_channel", "norm_groups",
                     "channel_mults", "attn_levels", "res_blocks"),
                    width_field="inner_channel")


_ENTRIES: dict[str, Callable[[], ModelEntry]] = {
    "nafnet": _nafnet, "restormer": _restormer, "rrdbnet": _rrdbnet, "srresnet": _srresnet,
    "mesrgan": _mesrgan, "sr3": _sr3}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def entry(name: str) -> ModelEntry:
  if name not in _ENTRIES:
    raise ValueError(f"Unknown config.model.name {name!r}; available: {sorted(_ENTRIES)}.")
  return _ENTRIES[name]()


def example_inputs(model: nn.Module, size: int, batch: int = 1) -> tuple[Any, ...]:
  """Zero inputs of a size x size image that `model.init(rng, *inputs)` accepts: the model's
  own `example_inputs` when it has one (e.g. SR3's (condition, noisy, noise_level)), else one
  (batch, size, size, input_channels) image."""
  if hasattr(model, "example_inputs"):
    return tuple(model.example_inputs(size, batch))
  return (jnp.zeros((batch, size, size, model.input_channels), jnp.float32),)


def _has_field(e: ModelEntry, field: str) -> bool:
  """Whether the entry's module type has a dataclass field `field`."""
  module_type = type(e.build(next(iter(e.presets))))
  return field in {f.name for f in dataclasses.fields(module_type)}


def _overrides(model_config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Non-default overrides from the config (width 0 / dropout < 0 mean 'keep the preset')."""
  out = {}
  e = entry(model_config.name)
  if model_config.get("width"):
    out[e.width_field] = model_config.width
  dropout = model_config.get("dropout", -1.0)
  if dropout is not None and dropout >= 0:
    if not _has_field(e, "dropout"):
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


def matching_preset(arch: dict[str, Any]) -> str | None:
  """The name of the preset whose architecture equals `arch`, if any."""
  e = entry(arch["name"])
  return next((p for p in e.presets
               if module_architecture(arch["name"], e.build(p)) == arch), None)
