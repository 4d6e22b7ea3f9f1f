"""Many adapters on one base: a bank that restores a mixed batch in one compiled program.

A service, or a folder per task, holds one base and N task adapters (sr_jax.adapt.adapters). The
bank loads the base once and stacks the adapters: per adapted kernel, A as (N, fan_in, R) and B as
(N, R, cout), every adapter zero-padded to the bank's largest rank R (a zero column of A and row of
B add nothing: exact) with its own scale (alpha / r, or rsLoRA's alpha / sqrt(r)) folded into B; and
per base leaf any adapter tunes (biases, norms), an (N, ...) stack in which adapters that do not
tune it hold the base's value. A batch carries one adapter index per image. `apply` gathers each
row's factors and tuned leaves and runs the model once over the batch (vmapped per row), as S-LoRA
and Punica serve language-model adapters. Shapes do not depend on which adapters a batch uses, so a
new mix never recompiles.

How each row takes its adapter: every adapted kernel gets the row's factors merged in, W + A B
(per row, so a kernel is (N, ...) across the batch), and every convolution runs as matrix
products (`matmul_conv`: 1x1 convs and NAFNet's 2x2 stride-2 down-samplings are one already;
3x3 convs go through their input patches or, when they have fewer output than input channels,
through each pixel's product with every kernel tap). A per-row kernel then costs one batched
matrix product, where XLA's convolution would turn into a grouped one (several times slower on
CPU) and an unmerged branch would add a second pass over the layer's input. Rows are not
grouped per adapter: groups would need a shape per mix. `python -m
sr_jax.tools.bank_benchmark` measures the cost against one merged adapter.
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
from jax import lax

from sr_jax.adapt import adapters as adapters_lib, lora
from sr_jax.models import layers
from sr_jax.util import trees

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
    """The model on a batch (N, H, W, C), row i through adapter `index[i]`.

    Per row (vmapped), every adapted kernel gets the row's factors merged in, W + A B, and
    every convolution runs as matrix products (`matmul_conv`), so a per-row kernel becomes one
    batched matrix product rather than a grouped convolution.
    """
    base_flat = trees.flatten(arrays["base"])

    def one(a, b, tuned, image):
      flat = dict(base_flat, **tuned)
      for p in a:
        flat[p] = lora.effective_kernel(flat[p], a[p], b[p], 1.0)
      with nn.intercept_methods(_matmul_convs):
        return self.model.apply({"params": trees.unflatten(flat)}, image[None])[0]

    take = lambda stacks: {p: v[index] for p, v in stacks.items()}
    return jax.vmap(one)(take(arrays["a"]), take(arrays["b"]), take(arrays["tuned"]), images)


def patches(x: jax.Array, kernel_size: Sequence[int], strides: Sequence[int],
            padding: str | Sequence[tuple[int, int]]) -> jax.Array:
  """(N, Ho, Wo, kh*kw*C) input patches of a convolution, in (kh, kw, C) order (that of a
  kernel (kh, kw, C, c) flattened): shifted strided slices, no arithmetic."""
  (kh, kw), (sh, sw) = kernel_size, strides
  xp = jnp.pad(x, [(0, 0), *_pads(x, (kh, kw), strides, padding), (0, 0)])
  ho, wo = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
  cells = [xp[:, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw, :]
           for i in range(kh) for j in range(kw)]
  return jnp.stack(cells, axis=3).reshape(x.shape[0], ho, wo, -1)


def _pads(x: jax.Array, kernel_size: Sequence[int], strides: Sequence[int],
          padding: str | Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
  """Explicit (before, after) paddings of height and width, as lax's convolution reads
  `padding` ('SAME' depends on the stride and the input size)."""
  if isinstance(padding, str):
    return [tuple(p) for p in lax.padtype_to_pads(x.shape[1:3], tuple(kernel_size),
                                                  tuple(strides), padding)]
  return [tuple(p) for p in padding]


def matmul_conv(x: jax.Array, kernel: jax.Array, strides: Sequence[int],
                padding: str | Sequence[tuple[int, int]], precision: Any = None) -> jax.Array:
  """A convolution (NHWC, kernel (kh, kw, cin, cout)) as one 2-D matrix product, through the
  smaller of two intermediates: the input patches (kh*kw*cin per pixel, then a product to
  cout) or, for stride 1 and cout < cin, the products of every pixel with every kernel tap
  (kh*kw*cout per pixel) summed at their shifted places. Equal to the convolution up to float
  rounding; with a per-row kernel under vmap either is a batched matrix product, where XLA's
  convolution becomes a grouped one (several times slower on CPU)."""
  kh, kw, cin, cout = kernel.shape
  if tuple(strides) != (1, 1) or cout >= cin:
    cols = patches(x, (kh, kw), strides, padding)
    return layers.pixel_matmul(cols, kernel.reshape(kh * kw * cin, cout), precision)
  n, h, w, _ = x.shape
  taps = layers.pixel_matmul(x, kernel.transpose(2, 0, 1, 3).reshape(cin, kh * kw * cout),
                              precision)
  (top, bottom), (left, right) = _pads(x, (kh, kw), strides, padding)
  taps = jnp.pad(taps.reshape(n, h, w, kh * kw, cout),
                 [(0, 0), (top, bottom), (left, right), (0, 0), (0, 0)])
  ho, wo = h + top + bottom - kh + 1, w + left + right - kw + 1
  out = None
  for i in range(kh):
    for j in range(kw):
      term = taps[:, i:i + ho, j:j + wo, i * kw + j]
      out = term if out is None else out + term
  return out


def _matmul_convs(next_fun, args, kwargs, context):
  """Runs layers.Conv's kernel application as `matmul_conv` where it would be XLA's
  convolution (its space-to-depth and 1x1 forms are matrix products already)."""
  module = context.module
  if context.method_name != "apply_kernel" or not isinstance(module, layers.Conv):
    return next_fun(*args, **kwargs)
  shifted = layers.resolve_impl(module.impl) == "shifted"
  if shifted and module._is_patchify():  # pylint: disable=protected-access
    return next_fun(*args, **kwargs)
  x, kernel = (jnp.asarray(v, module.dtype) for v in args)
  return matmul_conv(x, kernel, layers.pair(module.strides),
                     layers._padding(module.padding),  # pylint: disable=protected-access
                     module.precision)


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
  base_flat = trees.flatten(base)
  factors = [trees.flatten(a.lora) for _, a in named]
  tuned_flats = [trees.flatten(a.tuned_base) for _, a in named]
  kernels = sorted({p for _, a in named for p in a.plan.paths})
  rank = max(a.plan.rank(p) for _, a in named for p in a.plan.paths)
  a_stack, b_stack = {}, {}
  for path in kernels:
    fan_in, cout = int(np.prod(base_flat[path].shape[:-1])), int(base_flat[path].shape[-1])
    a_rows, b_rows = [], []
    for (_, adapter), flat in zip(named, factors):
      if path in adapter.plan.paths:
        a_rows.append(_padded(flat[f"{path}/a"].reshape(fan_in, -1), rank, 1))
        b_rows.append(_padded(flat[f"{path}/b"] * adapter.plan.scale(path), rank, 0))
      else:  # This adapter leaves the kernel as the base has it.
        a_rows.append(jnp.zeros((fan_in, rank), jnp.float32))
        b_rows.append(jnp.zeros((rank, cout), jnp.float32))
    a_stack[path], b_stack[path] = jnp.stack(a_rows), jnp.stack(b_rows)
  tuned_paths = sorted({p for flat in tuned_flats for p in flat})
  tuned = {p: jnp.stack([flat.get(p, base_flat[p]) for flat in tuned_flats])
           for p in tuned_paths}
  plan = lora.LoraPlan(tuple((p, rank) for p in kernels), tuple((p, float(rank)) for p in kernels))
  return AdapterBank(names, model, base, plan, a_stack, b_stack, tuned)


def load(checkpoint_dir: str, adapter_dirs: Mapping[str, str | os.PathLike], *,
         dtype: str = "float32") -> AdapterBank:
  """A bank from a base export and named adapter exports; every adapter is checked against the
  base before anything is stacked, and one that does not fit is named in the error."""
  model, base, named = load_parts(checkpoint_dir, adapter_dirs, dtype=dtype)
  return build(model, base, named)


def load_parts(checkpoint_dir: str, adapter_dirs: Mapping[str, str | os.PathLike], *,
               dtype: str = "float32"
               ) -> tuple[nn.Module, PyTree, list[tuple[str, adapters_lib.Adapter]]]:
  """(model, base, named adapters) read and checked as `load` does, before stacking."""
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
  return adapters_lib.model_from_architecture(meta["model"], dtype=dtype), base, named
