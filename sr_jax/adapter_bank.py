"""Many adapters on one base: a bank that restores a mixed batch in one compiled program.

A service, or a folder per task, holds one base and N task adapters (sr_jax.adapters). The bank
loads the base once and stacks the adapters: per adapted kernel, A as (N, fan_in, R) and B as
(N, R, cout), every adapter zero-padded to the bank's largest rank R (a zero column of A and row
of B add nothing: exact) with its own scale (alpha / r, or rsLoRA's alpha / sqrt(r)) folded into
B; and per base leaf any adapter tunes (biases, norms), an (N, ...) stack in which adapters that
do not tune it hold the base's value. A batch carries one adapter index per image. `apply`
gathers each row's factors and tuned leaves and runs the model once over the batch (vmapped per
row): the frozen kernels are shared by every row, and each adapted layer adds its row's own
low-rank branch, the unmerged formulation of training (sr_jax.lora_branch), as S-LoRA and Punica
serve language-model adapters. Shapes do not depend on which adapters a batch uses, so a new mix
never recompiles.

Why gathered branches rather than rows grouped per adapter through merged kernels: merged
kernels per row would stack N copies of every adapted kernel, and grouping needs a shape per
mix (or padding every group to the batch); the branch adds r (k^2 cin + cout) multiply-adds per
output pixel to each adapted layer, a few percent of the frozen layer's k^2 cin cout at the
ranks adapters use. `python -m sr_jax.tools.bank_benchmark` measures the cost against one
merged adapter.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sr_jax import adapters as adapters_lib, lora, lora_branch

PyTree = Any


@dataclasses.dataclass(frozen=True)
class AdapterBank:
  """A base and N adapters stacked for per-row gathering (see the module docstring)."""
  names: tuple[str, ...]
  model: nn.Module
  base: PyTree  # The plain base tree, shared by every row.
  plan: lora.LoraPlan  # Every kernel any adapter adapts, at the bank's rank R, scale 1.
  a: dict[str, jax.Array]  # Kernel path -> (N, fan_in, R).
  b: dict[str, jax.Array]  # Kernel path -> (N, R, cout), each adapter's scale folded in.
  tuned: dict[str, jax.Array]  # Base leaf path -> (N, *leaf shape).

  def index(self, name: str) -> int:
    """The row index of the adapter called `name`."""
    if name not in self.names:
      raise ValueError(f"No adapter {name!r} in the bank; it holds {', '.join(self.names)}.")
    return self.names.index(name)

  @property
  def rank(self) -> int:
    return max((r for _, r in self.plan.ranks), default=0)

  def arrays(self) -> dict[str, Any]:
    """The bank's arrays as one tree (what `apply` takes, so jit sees them as arguments)."""
    return {"base": self.base, "a": self.a, "b": self.b, "tuned": self.tuned}

  def apply(self, arrays: Mapping[str, Any], images: jax.Array, index: jax.Array) -> jax.Array:
    """The model on a batch (N, H, W, C), row i through adapter `index[i]`."""
    base_flat = lora.flatten(arrays["base"])
    paths = frozenset(self.plan.paths)

    def one(a, b, tuned, image):
      flat = dict(base_flat, **tuned)
      factors = {f"{p}/a": a[p] for p in a} | {f"{p}/b": b[p] for p in b}
      params = {"base": lora.unflatten(flat), "lora": lora.unflatten(factors)}
      return lora_branch.apply_model(self.model, params, self.plan, image[None],
                                     unmerged=paths)[0]

    take = lambda stacks: {p: v[index] for p, v in stacks.items()}
    return jax.vmap(one)(take(arrays["a"]), take(arrays["b"]), take(arrays["tuned"]), images)


def _padded(matrix: jax.Array, rank: int, axis: int) -> jax.Array:
  pad = [(0, 0)] * matrix.ndim
  pad[axis] = (0, rank - matrix.shape[axis])
  return jnp.pad(matrix, pad)


def build(model: nn.Module, base: PyTree, named: Sequence[tuple[str, adapters_lib.Adapter]]
          ) -> AdapterBank:
  """Stacks `named` adapters (already checked against `base`) into a bank."""
  if not named:
    raise ValueError("An adapter bank needs at least one adapter.")
  names = tuple(n for n, _ in named)
  if len(set(names)) != len(names):
    raise ValueError(f"Adapter names must differ; got {list(names)}.")
  base_flat = lora.flatten(base)
  kernels = sorted({p for _, a in named for p in a.plan.paths})
  rank = max(a.plan.rank(p) for _, a in named for p in a.plan.paths)
  a_stack, b_stack = {}, {}
  for path in kernels:
    fan_in, cout = int(np.prod(base_flat[path].shape[:-1])), int(base_flat[path].shape[-1])
    a_rows, b_rows = [], []
    for _, adapter in named:
      if path in adapter.plan.paths:
        flat = lora.flatten(adapter.lora)
        a_rows.append(_padded(flat[f"{path}/a"].reshape(fan_in, -1), rank, 1))
        b_rows.append(_padded(flat[f"{path}/b"] * adapter.plan.scale(path), rank, 0))
      else:  # This adapter leaves the kernel as the base has it.
        a_rows.append(jnp.zeros((fan_in, rank), jnp.float32))
        b_rows.append(jnp.zeros((rank, cout), jnp.float32))
    a_stack[path], b_stack[path] = jnp.stack(a_rows), jnp.stack(b_rows)
  tuned_paths = sorted({p for _, a in named for p in lora.flatten(a.tuned_base)})
  tuned = {p: jnp.stack([lora.flatten(a.tuned_base).get(p, base_flat[p]) for _, a in named])
           for p in tuned_paths}
  plan = lora.LoraPlan(tuple((p, rank) for p in kernels), tuple((p, float(rank)) for p in kernels))
  return AdapterBank(names, model, base, plan, a_stack, b_stack, tuned)


def load(checkpoint_dir: str, adapter_dirs: Mapping[str, str | os.PathLike], *,
         dtype: str = "float32") -> AdapterBank:
  """A bank from a base export and named adapter exports; every adapter is checked against the
  base before anything is stacked, and one that does not fit is named in the error."""
  base, meta = adapters_lib.load_base(checkpoint_dir)
  named = []
  for name, directory in adapter_dirs.items():
    try:
      adapter = adapters_lib.load_adapter(directory)
      adapters_lib.check_compatible(meta, adapter, base)
    except (ValueError, FileNotFoundError) as e:
      raise ValueError(f"Adapter {name!r} ({directory}) does not fit the base "
                       f"{checkpoint_dir}: {e}") from None
    named.append((name, adapter))
  model = adapters_lib.model_from_architecture(meta["model"], dtype=dtype)
  return build(model, base, named)
