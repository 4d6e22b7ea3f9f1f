"""Training objectives as plugins: `config.objective` names one, the registry builds it.

Built in: 'pixel' (restoration and PSNR-oriented SR: one model, a pixel loss), 'gan' (a
generator against a discriminator, perceptual and adversarial losses), 'diffusion' (SR3:
noise-level sampling and epsilon prediction) and 'resshift' (residual-shifting diffusion: a
15-step chain from the upsampled input, x0 prediction). Each lives in its own module, which defines `SPEC`
(a base.ObjectiveSpec); the trainer only sees the protocol in base.py. To add an objective,
write a module with a `build(context) -> base.Built` and call `register` with its spec before
the run starts: nothing in the trainer changes. A spec also brings the objective's config
section and its rules, its restorer for inference and its labels (base.ObjectiveSpec); a job
config takes its objective with `configure(config, name)`, and an export records the objective
that wrote it (`for_export`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import ml_collections

from sr_jax.models import registry
from sr_jax.objectives.base import ObjectiveSpec
from sr_jax.util import exports

# Built-in objectives, imported when first asked for (the GAN pulls in VGG, the diffusion
# objective the samplers).
_BUILTIN = {"pixel": "sr_jax.objectives.pixel", "gan": "sr_jax.objectives.gan",
            "diffusion": "sr_jax.objectives.diffusion",
            "resshift": "sr_jax.objectives.resshift"}
_REGISTERED: dict[str, ObjectiveSpec] = {}


def register(spec: ObjectiveSpec) -> None:
  """Makes `spec.name` a valid `config.objective` (replacing a registration of that name)."""
  _REGISTERED[spec.name] = spec


def names() -> tuple[str, ...]:
  """Every valid `config.objective`."""
  return tuple(sorted(set(_BUILTIN) | set(_REGISTERED)))


def get(name: str) -> ObjectiveSpec:
  """The spec of objective `name`; an unknown name is an error listing the valid ones."""
  if name in _REGISTERED:
    return _REGISTERED[name]
  if not name:
    raise ValueError(f"config.objective is not set; set it to one of {list(names())}.")
  if name not in _BUILTIN:
    raise ValueError(f"Unknown config.objective {name!r}; valid objectives: {list(names())}.")
  spec = importlib.import_module(_BUILTIN[name]).SPEC
  _REGISTERED[name] = spec
  return spec


def configure(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """Makes `name` the config's objective and adds that objective's section (its defaults)
  unless the config has it already; returns the config."""
  spec = get(name)
  config.objective = name
  if spec.section and spec.section not in config:
    config[spec.section] = spec.section_defaults()
  return config


def sections() -> dict[str, Callable[[], ml_collections.ConfigDict]]:
  """{section: its defaults function} of every known objective (for --show_config's notes)."""
  specs = [get(name) for name in names()]
  return {s.section: s.section_defaults for s in specs if s.section and s.section_defaults}


def for_export(directory: str) -> ObjectiveSpec:
  """The objective that wrote an export: its meta.json's 'objective' when that is a known
  objective, else the one its records imply (exports written before they recorded it, and
  converted checkpoints): 'resshift' with a ResShift record, 'diffusion' for a diffusion
  model, 'pixel' otherwise. A directory without a readable meta.json gives 'pixel', whose
  restorer then names what is wrong with it."""
  try:
    meta = exports.read_params_meta(directory)
  except (FileNotFoundError, ValueError, OSError):
    return get("pixel")
  if meta.get("objective") in names():
    return get(meta["objective"])
  if meta.get("resshift"):
    return get("resshift")
  try:
    kind = registry.entry(meta.get("model", {}).get("name")).kind
  except (ValueError, KeyError, TypeError):
    kind = ""
  return get("diffusion" if kind == "diffusion" else "pixel")
