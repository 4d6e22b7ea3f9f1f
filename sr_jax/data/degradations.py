"""How a clean image becomes a training pair: degradation chains, PROD, and SR downscaling.

A degradation is a *chain*: a sequence of (op name, concrete parameters) from sr_jax/data/ops.py,
chosen per sample by `plan_chain` and applied in order. `DegradationSpec.kind` decides the
chain:

  'noise', 'blur', 'noise_blur'   shorthands: Gaussian noise, Gaussian blur, blur then noise
  'none', 'bicubic'               no op ('bicubic' is 'none' with scale >= 2 and bicubic resize)
  'chain'                         every op of `ops`, in the listed order
  'prod'                          PROD (Park et al. 2024): a random subset of min_ops..max_ops of
                                  `ops`,
                                  applied in a random order
  'fixed'                         a random subset of the same size, in the listed order
  'single'                        one op of `ops`, chosen at random

'fixed' and 'single' are PROD's ablation baselines: they differ from 'prod' only in order and in
how many degradations a sample combines. Every choice (which ops, their order, their parameters,
the noise itself) is drawn from the caller's `np.random.Generator`; in the pipeline that is
grain's per-record rng, so a sample is a pure function of (seed, record index).

Super-resolution (`scale` > 1): the clean image is modcropped to a multiple of `scale` (the
target), downscaled with `resize`, rounded to 8-bit levels as stored LR files are, and the chain
is applied to the LR image (noise and JPEG act at the resolution the model sees).

Images are float32 HWC RGB in [0, 1]; outputs are clipped to [0, 1]. numpy and Pillow only:
this runs in grain worker processes, which are spawned and must not touch JAX.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from sr_jax.data import op_ranges, ops, resize
from sr_jax.data.op_ranges import OpRanges
from sr_jax.data.resize import modcrop

SHORTHANDS = {"noise": ("gaussian_noise",), "blur": ("gaussian_blur",),
              "noise_blur": ("gaussian_blur", "gaussian_noise"), "none": (), "bicubic": ()}
CHAIN_MODES = ("chain", "prod", "fixed", "single")
KINDS = tuple(SHORTHANDS) + CHAIN_MODES

Chain = tuple[tuple[str, dict[str, Any]], ...]


@dataclasses.dataclass(frozen=True)
class DegradationSpec:
  """A validated, picklable copy of a `degradation` config.

  Transforms hold this instead of the ConfigDict so that spawned workers need no ml_collections
  and a bad config fails when the pipeline is built, not inside a worker.
  """
  kind: str
  ops: tuple[str, ...] = ()
  min_ops: int = 1
  max_ops: int = 1
  scale: int = 1
  resize: str = "bicubic"
  ranges: OpRanges = dataclasses.field(default_factory=OpRanges)

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"Unknown degradation.kind {self.kind!r}; valid kinds: {list(KINDS)}.")
    if self.kind in CHAIN_MODES:
      self._check_ops()
    if "motion_blur" in self.chain_ops:
      self.ranges.check_motion_fits()
    if self.scale < 1:
      raise ValueError(f"degradation.scale must be >= 1, got {self.scale}.")
    if self.kind == "bicubic" and self.scale < 2:
      raise ValueError("degradation.kind='bicubic' downscales by degradation.scale, which must "
                       f"be >= 2 (got {self.scale}).")
    if self.resize not in resize.RESIZE_METHODS:
      raise ValueError(f"Unknown degradation.resize {self.resize!r}; valid: "
                       f"{list(resize.RESIZE_METHODS)}.")
    if self.kind == "bicubic" and self.resize != "bicubic":
      raise ValueError(f"degradation.kind='bicubic' means bicubic downscaling, but "
                       f"degradation.resize={self.resize!r}; use kind='none' with that resize.")

  def _check_ops(self) -> None:
    unknown = [name for name in self.ops if name not in ops.OPS]
    if unknown or not self.ops:
      raise ValueError(f"degradation.ops must name at least one of {sorted(ops.OPS)}; "
                       f"got {list(self.ops)}" + (f" (unknown: {unknown})." if unknown else "."))
    if len(set(self.ops)) != len(self.ops):
      raise ValueError(f"degradation.ops lists an op twice: {list(self.ops)}.")
    if self.kind in ("prod", "fixed") and not 1 <= self.min_ops <= self.max_ops <= len(self.ops):
      raise ValueError(
          f"degradation.min_ops={self.min_ops} and max_ops={self.max_ops} must satisfy "
          f"1 <= min_ops <= max_ops <= len(degradation.ops)={len(self.ops)}.")

  @property
  def chain_ops(self) -> tuple[str, ...]:
    """The candidate ops: `ops` for chain modes, the shorthand's ops otherwise."""
    return self.ops if self.kind in CHAIN_MODES else SHORTHANDS[self.kind]

  @property
  def effective_scale(self) -> int:
    """The SR factor (1 for restoration)."""
    return self.scale if self.kind == "bicubic" or self.scale > 1 else 1


def as_spec(cfg: Any) -> DegradationSpec:
  """Converts a `degradation` ConfigDict (or a DegradationSpec) to a DegradationSpec."""
  if isinstance(cfg, DegradationSpec):
    return cfg
  return DegradationSpec(
      kind=str(cfg.kind),
      ops=tuple(str(name) for name in cfg.ops),
      min_ops=int(cfg.min_ops),
      max_ops=int(cfg.max_ops),
      scale=int(cfg.scale),
      resize=str(cfg.resize),
      ranges=op_ranges.ranges_from_config(cfg),
  )


def choose_ops(rng: np.random.Generator, spec: DegradationSpec) -> tuple[str, ...]:
  """The op names of one sample's chain, in the order they are applied (see module doc)."""
  candidates = spec.chain_ops
  if spec.kind == "single":
    return (candidates[int(rng.integers(len(candidates)))],)
  if spec.kind not in ("prod", "fixed"):
    return candidates
  count = int(rng.integers(spec.min_ops, spec.max_ops + 1))
  picked = rng.choice(len(candidates), size=count, replace=False)
  if spec.kind == "fixed":
    picked = np.sort(picked)  # Listed order; 'prod' keeps the random permutation order.
  return tuple(candidates[int(i)] for i in picked)


def plan_chain(rng: np.random.Generator, spec: DegradationSpec) -> Chain:
  """Chooses one sample's ops and draws their parameters."""
  return tuple((name, ops.OPS[name].draw(rng, spec.ranges)) for name in choose_ops(rng, spec))


def apply_chain(image: np.ndarray, chain: Chain, rng: np.random.Generator,
                window: ops.Window | None = None) -> np.ndarray:
  """Applies `chain` to `image` in order (the rng supplies noise realisations, rain, haze);
  `window` places the image in its scene (ops.Window; None: the image is the scene)."""
  out = np.asarray(image, np.float32)
  for name, params in chain:
    out = ops.apply_op(name, out, rng, params, window)
  return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def downscale_to_lr(hr: np.ndarray, scale: int, method: str = "bicubic") -> np.ndarray:
  """Downscales an HR image (sides multiples of `scale`) and rounds it to 8-bit levels."""
  lr = resize.downscale(np.asarray(hr, np.float32), scale, method)
  return (np.round(np.clip(lr, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


def degrade_with_chain(clean: np.ndarray, rng: np.random.Generator, cfg: Any,
                       window: ops.Window | None = None
                       ) -> tuple[np.ndarray, np.ndarray, Chain]:
  """Returns (lq, gt, chain): the model input, its target and the chain that made it.
  `window` is `clean`'s place in its photograph (see ops.Window)."""
  spec = as_spec(cfg)
  gt = np.asarray(clean, np.float32)
  scale = spec.effective_scale
  lq = gt
  if scale > 1:
    gt = np.ascontiguousarray(modcrop(gt, scale))
    lq = downscale_to_lr(gt, scale, spec.resize)
    window = None if window is None else window.scaled(scale)
  chain = plan_chain(rng, spec)
  return apply_chain(lq, chain, rng, window), gt, chain


def make_pair(clean: np.ndarray, rng: np.random.Generator, cfg: Any,
              window: ops.Window | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Returns (lq, gt): the degraded input and the target it must be restored to.

  For scale > 1, gt is `clean` modcropped to a multiple of the scale and lq is H/scale x
  W/scale; otherwise gt is `clean` and lq has its shape. Use this rather than `degrade`
  whenever the pair is needed, so the two stay consistent. `window` places `clean` in its
  photograph (a crop's corner and the photograph's size; see ops.Window).
  """
  lq, gt, _ = degrade_with_chain(clean, rng, cfg, window)
  return lq, gt


def degrade(clean: np.ndarray, rng: np.random.Generator, cfg: Any) -> np.ndarray:
  """The degraded version of `clean` (float32 in [0, 1]); see `make_pair` for SR shapes."""
  return make_pair(clean, rng, cfg)[0]


def describe(chain: Chain) -> str:
  """A short human-readable chain, e.g. 'jpeg(q=41) > rain > gaussian_noise(s=12.3)'."""
  if not chain:
    return "clean"
  return " > ".join(_describe_op(name, params) for name, params in chain)


# The parameter that best says how strong each op is, and its label.
_HEADLINE = {"gaussian_blur": ("sigma_x", "s"), "motion_blur": ("length", "len"),
             "gaussian_noise": ("sigma", "s"), "poisson_noise": ("peak", "peak"),
             "jpeg": ("quality", "q"), "rain": ("intensity", "i"), "haze": ("beta", "b"),
             "low_light": ("exposure", "e")}


def _describe_op(name: str, params: dict[str, Any]) -> str:
  key, label = _HEADLINE.get(name, (None, None))
  if key not in params:
    return name
  value = params[key]
  return f"{name}({label}={value:.3g})" if isinstance(value, float) else f"{name}({label}={value})"
