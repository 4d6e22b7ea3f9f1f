"""Conversion of official PyTorch checkpoints into sr_jax parameter directories.

  python -m sr_jax.convert --arch nafnet --src NAFNet-SIDD-width32.pth --dst bases/nafnet_sidd
  python -m sr_jax.convert --arch restormer --src real_denoising.pth --dst bases/restormer_sidd
  python -m sr_jax.convert --arch rrdbnet --src RRDB_ESRGAN_x4.pth --dst bases/esrgan_x4
  python -m sr_jax.convert --arch srresnet --src MSRResNet_x4.pth --dst bases/msrresnet_x4
  python -m sr_jax.convert --arch sr3 --src I640000_E37_gen.pth --dst bases/sr3_16_128

RRDBNet reads BasicSR's, the newer xinntao (`RRDB_trunk.*`) and the oldest ESRGAN (`model.*`)
key layouts: a converter's optional `normalize` renames a layout to its canonical key names
before mapping, and errors still name the keys as the file has them. Each converter's
SIGNATURE (a key, or alternative keys / key sets, see mapping.has_signature) recognises its
files, so a file given the wrong --arch is told which one to use.

The architecture is read from the checkpoint's keys and shapes (`infer_architecture` of each
architecture's module), then a `--preset` and explicit `--set field=value` options override it.
The Flax model of that architecture defines the parameter paths; every one must come from a
key of the expected shape and every key must be used (sr_jax.convert.mapping), so a conversion
is exact or fails naming each key. The result is an `exports.save_params` directory whose
meta.json records the architecture: configs load it with `--config.base.checkpoint=DIR` (the
config's model must describe the same architecture, e.g. `--config.model.preset=sidd_w32`),
and `python -m sr_jax.infer --checkpoint DIR` runs it directly.
"""

from __future__ import annotations

import dataclasses
import os
import types
from collections.abc import Mapping
from typing import Any

import numpy as np

from sr_jax.convert import mapping, nafnet, restormer, rrdbnet, sr3, srresnet, state_dict

CONVERTERS: dict[str, types.ModuleType] = {"nafnet": nafnet, "restormer": restormer,
                                           "rrdbnet": rrdbnet, "srresnet": srresnet, "sr3": sr3}


@dataclasses.dataclass(frozen=True)
class Conversion:
  """A converted checkpoint: flat {flax path: array}, its architecture and where it came from."""
  params: dict[str, np.ndarray]
  architecture: dict[str, Any]
  inferred: dict[str, Any]  # What the keys alone implied (before --preset / overrides).
  preset: str | None  # The registry preset equal to the architecture, if any.
  num_params: int


def converter(arch: str) -> types.ModuleType:
  if arch not in CONVERTERS:
    raise ValueError(f"Unknown --arch {arch!r}; sr_jax converts {sorted(CONVERTERS)}.")
  return CONVERTERS[arch]


def detect(state: Mapping[str, Any]) -> list[str]:
  """Architectures whose signature keys the state dict has (for 'wrong --arch' hints)."""
  return [name for name, module in CONVERTERS.items()
          if mapping.has_signature(state, module.SIGNATURE)]


def _normalized(module: types.ModuleType, state: Mapping[str, np.ndarray]) -> tuple[
    Mapping[str, np.ndarray], dict[str, str]]:
  """(the state dict in the converter's canonical key names, {canonical key: the file's name})
  for converters with a `normalize` (several key layouts); else the state dict as it is."""
  if hasattr(module, "normalize"):
    return module.normalize(state)
  return state, {}


def _fields(arch: str, state: Mapping[str, Any], preset: str | None,
            overrides: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
  """(the architecture fields to build, the fields the keys implied)."""
  from sr_jax.models import registry  # pylint: disable=g-import-not-at-top
  entry = registry.entry(arch)
  module = converter(arch)
  if not mapping.has_signature(state, module.SIGNATURE):
    others = [a for a in detect(state) if a != arch]
    hint = f" It looks like a {others[0]} checkpoint: use --arch {others[0]}." if others else ""
    mapping.require_signature(state, module.SIGNATURE, module.NAME, hint)
  inferred = module.infer_architecture(state)
  fields = dict(inferred)
  if preset:
    if preset not in entry.presets:
      raise ValueError(f"Unknown --preset {preset!r} for {arch}; presets: {sorted(entry.presets)}.")
    fields.update({k: v for k, v in entry.presets[preset].items() if k in entry.arch_fields})
  unknown = sorted(set(overrides) - set(entry.arch_fields))
  if unknown:
    raise ValueError(f"Unknown {arch} option(s) {unknown}; the architecture's fields are "
                     f"{list(entry.arch_fields)}.")
  defaults = entry.build(next(iter(entry.presets)))
  any_length = getattr(module, "VARIABLE_LENGTH", ())  # Tuple fields of no fixed length.
  fields.update({k: _checked(k, v, getattr(defaults, k), k in any_length)
                 for k, v in overrides.items()})
  return fields, inferred


def _checked(field: str, value: Any, default: Any, any_length: bool = False) -> Any:
  """An override in its field's type, or a ValueError naming the field and the type wanted
  (a tuple field has the default's length unless `any_length`)."""
  value = mapping.coerce(value, default)
  if isinstance(default, tuple):
    ok = (isinstance(value, tuple) and (any_length or len(value) == len(default)) and
          all(isinstance(v, int) and not isinstance(v, bool) for v in value))
    count = "" if any_length else f"{len(default)} "
    want = f"a list of {count}integers, e.g. {list(default)}"
  elif isinstance(default, bool):
    ok, want = isinstance(value, bool), "True or False"
  elif isinstance(default, float):
    ok, want = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    value = float(value) if ok else value
  elif isinstance(default, int):
    ok, want = isinstance(value, int) and not isinstance(value, bool), "an integer"
  else:
    ok, want = isinstance(value, type(default)), f"a {type(default).__name__}"
  if not ok:
    raise ValueError(f"Option {field}={value!r} must be {want}.")
  return value


def convert_state_dict(arch: str, state: Mapping[str, np.ndarray], preset: str | None = None,
                       overrides: Mapping[str, Any] | None = None) -> Conversion:
  """Converts a PyTorch state dict (numpy arrays) of the `arch` architecture; nothing is written.

  Raises ValueError naming every missing, unknown or mis-shaped key.
  """
  from sr_jax.adapt import adapters  # pylint: disable=g-import-not-at-top
  from sr_jax.models import registry  # pylint: disable=g-import-not-at-top
  module = converter(arch)
  state, names = _normalized(module, state)
  fields, inferred = _fields(arch, state, preset, dict(overrides or {}))
  model = adapters.model_from_architecture({"name": arch, **fields})
  architecture = registry.module_architecture(arch, model)
  shapes = adapters.architecture_shapes(architecture)
  described = ", ".join(f"{k}={v}" for k, v in architecture.items() if k != "name")
  changed = [f"{k}={fields[k]!r} (the file implies {inferred[k]!r})" for k in sorted(fields)
             if k in inferred and fields[k] != inferred[k]]
  if changed:  # Put the likely cause of shape errors first.
    described += "; set by --preset/--set: " + ", ".join(changed)
  params = mapping.convert(state, shapes, module.RULES, module.BROADCAST,
                           f"{module.NAME}({described})", names)
  return Conversion(params, architecture, inferred, registry.matching_preset(architecture),
                    mapping.parameter_count(shapes))


def convert_file(arch: str, src: str | os.PathLike, dst: str | os.PathLike, *,
                 preset: str | None = None, overrides: Mapping[str, Any] | None = None,
                 key: str = "auto", overwrite: bool = False) -> Conversion:
  """Reads `src`, converts it, and writes the sr_jax parameter directory `dst`.

  `dst` must not exist (or be empty) unless `overwrite`; it is written only once the whole
  checkpoint has converted.
  """
  from sr_jax.util import exports, trees  # pylint: disable=g-import-not-at-top
  dst = os.path.abspath(os.fspath(dst))
  if os.path.exists(dst) and (not os.path.isdir(dst) or os.listdir(dst)) and not overwrite:
    raise FileExistsError(f"--dst {dst} already exists; choose a new directory or pass "
                          "--overwrite.")
  state, found_key = state_dict.read(src, key)
  result = convert_state_dict(arch, state, preset, overrides)
  meta = {"model": result.architecture, "job": "convert", "step": 0,
          "source": os.path.abspath(os.fspath(src)), "source_key": found_key,
          "preset": result.preset, "num_params": result.num_params}
  exports.save_params(dst, trees.unflatten(result.params), meta)
  return result
