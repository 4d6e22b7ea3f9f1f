"""Training objectives as plugins: `config.objective` names one, the registry builds it.

Built in: 'pixel' (restoration and PSNR-oriented SR: one model, a pixel loss), 'gan' (a
generator against a discriminator, perceptual and adversarial losses), 'diffusion' (SR3:
noise-level sampling and epsilon prediction) and 'resshift' (residual-shifting diffusion: a
15-step chain from the upsampled input, x0 prediction). Each lives in its own module, which defines `SPEC`
(a base.ObjectiveSpec); the trainer only sees the protocol in base.py. To add an objective,
write a module with a `build(context) -> base.Built` and call `register` with its spec before
the run starts: nothing in the trainer changes.
"""

from __future__ import annotations

import importlib

from sr_jax.objectives.base import ObjectiveSpec

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
