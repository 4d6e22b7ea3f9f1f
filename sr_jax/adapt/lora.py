"""LoRA as a transform of a parameter tree.

The model never knows LoRA exists. Adapters live in a separate tree keyed by the same paths as
the kernels they adapt, and the effective kernel is

    W_eff = W + (alpha / r) * reshape(A @ B)

with, for a kernel of shape (kh, kw, cin, cout), A of shape (kh*kw*cin, r) and B of shape
(r, cout). This is exactly PEFT's conv LoRA (a kh x kw conv to r channels followed by a 1x1
conv r -> cout) and, for a dense (cin, cout) kernel, the usual matrix LoRA. B starts at zero, so
an adapted model equals its base at step 0, and `merge` evaluated once gives a plain tree for
inference with no overhead.

Which leaves train is a labelling of the tree {'base': ..., 'lora': ...} ('trainable' or
'frozen'); `split` separates the trainable half so `jax.grad` sees only it: no gradient and no
optimizer state ever exists for a frozen leaf.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from sr_jax.util import trees

PyTree = Any
TRAINABLE, FROZEN = "trainable", "frozen"


# How an adapter's alpha becomes its scale: 'standard' alpha / r (Hu et al. 2021, LoRA), or
# 'rank_stabilized' alpha / sqrt(r) (Kalajdzievski 2023, rsLoRA: with alpha / r the update's
# size falls as the rank grows, so higher ranks learn slower at the same rate).
SCALINGS = ("standard", "rank_stabilized")


@dataclasses.dataclass(frozen=True)
class LoraPlan:
  """Which kernels carry adapters, with their rank and alpha. Static (hashable) metadata."""
  ranks: tuple[tuple[str, int], ...]
  alphas: tuple[tuple[str, float], ...]
  scaling: str = "standard"  # One of SCALINGS.

  def rank(self, path: str) -> int:
    return dict(self.ranks)[path]

  def scale(self, path: str) -> float:
    """The factor of the adapter's product A @ B: alpha / r, or alpha / sqrt(r) (rsLoRA)."""
    rank = self.rank(path)
    return dict(self.alphas)[path] / (math.sqrt(rank) if self.scaling == "rank_stabilized"
                                      else rank)

  @property
  def paths(self) -> tuple[str, ...]:
    return tuple(p for p, _ in self.ranks)

  def without(self, paths) -> "LoraPlan":
    """The plan without the kernels in `paths`."""
    drop = frozenset(paths)
    return LoraPlan(tuple(x for x in self.ranks if x[0] not in drop),
                    tuple(x for x in self.alphas if x[0] not in drop), self.scaling)

  def to_json(self) -> dict[str, Any]:
    return {"ranks": dict(self.ranks), "alphas": dict(self.alphas), "scaling": self.scaling}

  @classmethod
  def from_json(cls, d: Mapping[str, Any], scaling: str = "standard") -> "LoraPlan":
    """A plan from its JSON; `scaling` applies when the JSON names none (older plans)."""
    scaling = d.get("scaling", scaling)
    if scaling not in SCALINGS:
      raise ValueError(f"Unknown LoRA scaling {scaling!r}; use one of {SCALINGS}.")
    return cls(tuple(sorted((k, int(v)) for k, v in d["ranks"].items())),
               tuple(sorted((k, float(v)) for k, v in d["alphas"].items())), scaling)


def _fan_in_out(shape: Sequence[int]) -> tuple[int, int]:
  return math.prod(shape[:-1]), shape[-1]


def _parse_overrides(overrides: Sequence[str]) -> list[tuple[re.Pattern, int]]:
  parsed = []
  for item in overrides:
    pattern, sep, rank = item.rpartition("=")
    if not sep or not rank.strip().isdigit():
      raise ValueError(f"LoRA rank override {item!r} must look like 'regex=rank', e.g. "
                       "'middle_blks_.*=4'.")
    parsed.append((re.compile(pattern), int(rank)))
  return parsed


def make_plan(params: PyTree, *, targets: Sequence[str], rank: int, alpha: float,
              exclude: Sequence[str] = (), rank_overrides: Sequence[str] = (),
              scaling: str = "standard") -> LoraPlan:
  """Chooses the adapted kernels: paths matching `targets` and no `exclude` regex.

  `rank_overrides` entries 'regex=rank' set the rank of matching paths (the last match wins;
  rank 0 leaves the kernel without an adapter). A rank above min(fan_in, fan_out) adds nothing
  a full update could not and is an error naming the layer.
  """
  target_res = [re.compile(t) for t in targets]
  exclude_res = [re.compile(e) for e in exclude]
  overrides = _parse_overrides(rank_overrides)
  ranks, alphas = [], []
  for path, leaf in trees.flatten(params).items():
    if not path.endswith("kernel") or leaf.ndim not in (2, 4):
      continue
    if not any(r.fullmatch(path) for r in target_res) or any(
        r.fullmatch(path) for r in exclude_res):
      continue
    r = rank
    for pattern, override in overrides:
      if pattern.fullmatch(path):
        r = override
    if r <= 0:
      continue
    fan_in, fan_out = _fan_in_out(leaf.shape)
    if r > min(fan_in, fan_out):
      raise ValueError(
          f"LoRA rank {r} for {path} (kernel {tuple(leaf.shape)}) exceeds min(fan_in={fan_in}, "
          f"fan_out={fan_out}) = {min(fan_in, fan_out)}; lower the rank (config.lora.rank or a "
          f"config.lora.rank_overrides entry '{path}={min(fan_in, fan_out)}') or train this "
          "layer fully.")
    ranks.append((path, r))
    alphas.append((path, float(alpha)))
  if not ranks:
    raise ValueError(f"No kernel matches the LoRA targets {list(targets)} (excluding "
                     f"{list(exclude)}); kernel paths look like "
                     f"{[p for p in trees.flatten(params) if p.endswith('kernel')][:3]}.")
  if scaling not in SCALINGS:
    raise ValueError(f"Unknown LoRA scaling {scaling!r}; use one of {SCALINGS}.")
  return LoraPlan(tuple(ranks), tuple(alphas), scaling)


def max_rank(shape: Sequence[int]) -> int:
  """The largest useful rank of a kernel: min(fan_in, fan_out)."""
  return min(_fan_in_out(shape))


def check_plan(plan: LoraPlan, params: PyTree, where: str) -> None:
  """Every planned path must be a 2D/4D kernel of `params` and its rank within max_rank."""
  flat = trees.flatten(params)
  for path, r in plan.ranks:
    if path not in flat or getattr(flat[path], "ndim", 0) not in (2, 4):
      kernels = [p for p in flat if p.endswith("kernel")][:3]
      raise ValueError(f"{where}: {path!r} is not a kernel of this model (kernels look like "
                       f"{kernels}); the plan was made for another architecture.")
    if not 0 < r <= max_rank(flat[path].shape):
      raise ValueError(f"{where}: rank {r} for {path} (kernel {tuple(flat[path].shape)}) must "
                       f"be in [1, {max_rank(flat[path].shape)}].")


def init_adapters(rng: jax.Array, params: PyTree, plan: LoraPlan) -> dict[str, Any]:
  """A: uniform(+-1/sqrt(fan_in)) like PEFT's kaiming-uniform(a=sqrt(5)); B: zeros."""
  flat = trees.flatten(params)
  adapters = {}
  for i, path in enumerate(plan.paths):
    fan_in, fan_out = _fan_in_out(flat[path].shape)
    r = plan.rank(path)
    bound = 1.0 / math.sqrt(fan_in)
    a = jax.random.uniform(jax.random.fold_in(rng, i), (fan_in, r), jnp.float32, -bound, bound)
    adapters[path] = {"a": a, "b": jnp.zeros((r, fan_out), jnp.float32)}
  return trees.unflatten(adapters)


def effective_kernel(kernel: jax.Array, a: jax.Array, b: jax.Array, scale: float) -> jax.Array:
  """W + scale * reshape(A @ B), in the kernel's dtype."""
  # jnp throughout, so numpy inputs (host copies at export) and device arrays (a restored
  # adapter) take the same arithmetic and merge to identical bits.
  delta = jnp.matmul(jnp.asarray(a), jnp.asarray(b)).reshape(kernel.shape) * scale
  return jnp.asarray(kernel) + delta.astype(jnp.asarray(kernel).dtype)


def merge(base: PyTree, adapters: PyTree, plan: LoraPlan | None) -> PyTree:
  """The plain parameter tree the model runs with; `base` unchanged when there are no adapters."""
  if plan is None or not plan.ranks:
    return base
  flat = trees.flatten(base)
  flat_adapters = trees.flatten(adapters)
  for path in plan.paths:
    flat[path] = effective_kernel(flat[path], flat_adapters[f"{path}/a"],
                                  flat_adapters[f"{path}/b"], plan.scale(path))
  return trees.unflatten(flat)


def labels(params: PyTree, extra_trainable: Sequence[str] = (), *,
           full_finetune: bool = False) -> PyTree:
  """'trainable'/'frozen' for every leaf of {'base': ..., 'lora': ...}.

  Adapters always train; base leaves train when `full_finetune` or a regex in
  `extra_trainable` matches their path inside the base tree.
  """
  extra = [re.compile(e) for e in extra_trainable]

  def label(path, _):
    p = trees.path_str(path)
    if p.startswith("lora/") or full_finetune:
      return TRAINABLE
    inner = p.removeprefix("base/")
    return TRAINABLE if any(r.fullmatch(inner) for r in extra) else FROZEN
  return jax.tree_util.tree_map_with_path(label, params)


def _masked(x: Any) -> bool:
  return isinstance(x, optax.MaskedNode)


def split(params: PyTree, label_tree: PyTree) -> tuple[PyTree, PyTree]:
  """(trainable, frozen): same structure, the other half's leaves replaced by MaskedNode."""
  trainable = jax.tree.map(lambda p, l: p if l == TRAINABLE else optax.MaskedNode(),
                           params, label_tree)
  frozen = jax.tree.map(lambda p, l: optax.MaskedNode() if l == TRAINABLE else p,
                        params, label_tree)
  return trainable, frozen


def combine(trainable: PyTree, frozen: PyTree) -> PyTree:
  """Inverse of `split`."""
  return jax.tree.map(lambda t, f: f if _masked(t) else t, trainable, frozen, is_leaf=_masked)


def count(tree: PyTree) -> int:
  """Number of array entries (MaskedNodes count zero)."""
  return sum(int(math.prod(x.shape)) for x in jax.tree.leaves(tree))


def partitioned_optimizer(inner: optax.GradientTransformation,
                          label_tree: PyTree) -> optax.GradientTransformation:
  """`inner` on trainable leaves, `set_to_zero` on frozen ones (which never reach it anyway)."""
  return optax.multi_transform({TRAINABLE: inner, FROZEN: optax.set_to_zero()}, label_tree)
