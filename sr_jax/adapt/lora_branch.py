"""LoRA in training: three layouts of an adapted layer, all computing the same function.

Merged, a LoRA layer computes y = conv(x, W + s * reshape(A @ B)); differentiating that with
respect to A and B first forms the gradient of the whole effective kernel, a full weight
gradient per step, as costly as full fine-tuning's, and projects it onto A and B.

Unmerged, the same layer computes

    y = conv(x, W) + s * conv_1x1(conv_k(x, A), B)

(A reshaped to a kh x kw conv to r channels with the layer's strides and padding, B a 1x1 conv
r -> cout), with W a constant of the differentiated function: the step needs only the input
gradient through W and the rank-r gradients of A and B, but the branch adds full-width passes
of its own (its output accumulated into y, its input gradient into x's).

Factored, the layer runs merged, on its input and merged kernel held constant (so the forward
pass is the frozen layer's single pass with W_eff in W's place), and a tap on its output, the
identity going forward, supplies every gradient coming back from the output gradient g: x's
through the merged kernel (one full-width pass, as the frozen layer's), and the factors' from x
alone, z = A(x), dB = s z^T g, dz = s g B^T, dA = A's transpose of (x, dz). No weight gradient,
no full-width branch output or input gradient; what waits for the backward pass is x (which
the weight gradient of merged LoRA or full fine-tuning keeps too) and the frozen kernel the
step holds anyway: the merged kernel is formed again in the backward pass, not kept.

`apply_model` runs each adapted kernel in the layout `Layouts` names (merged unless named);
the per-layer choice is sr_jax.adapt.lora_layouts'. How the model stays unaware of LoRA: the
merged and factored kernels are merged into the parameter tree, then `model.apply` runs inside
`flax.linen.intercept_methods` with an interceptor that, for each layer run unmerged or
factored (found by its module path), adds the low-rank branch to the layer's output or taps it.
The branch reuses the layer's own linear operator with another kernel
(`layers.Conv.apply_kernel`, `layers.Conv1x1.apply_kernel`; flax's Dense and grouped Conv by
their fields), so strides, padding and the CPU formulation match. Inference and export merge
once (`lora.merge`): a plain tree with no overhead.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from sr_jax.adapt import lora
from sr_jax.models import layers
from sr_jax.util import trees

PyTree = Any
LAYOUTS = ("merged", "unmerged", "factored")
FORMULATIONS = ("auto",) + LAYOUTS  # config.lora.formulation


def module_path(module: nn.Module) -> str:
  """A module's path in the parameter tree ('encoders_0_0/conv1'), what branches are keyed by."""
  return "/".join(str(p) for p in module.scope.path)


# The layer kinds whose adapted kernels training can run unmerged, merged or factored.
SUPPORTED = (layers.Conv, layers.Conv1x1, nn.Dense, nn.Conv)


def unsupported(module: nn.Module, path: str) -> str:
  """The error for an adapted kernel in a layer kind LoRA training cannot run."""
  return (f"LoRA training runs adapted kernels of layers.Conv, layers.Conv1x1, flax Dense and "
          f"flax Conv layers; {path} is a {type(module).__name__}: leave it out of "
          "config.lora.targets (or add it to config.lora.rank_overrides with rank 0).")


@dataclasses.dataclass(frozen=True)
class Layouts:
  """Which adapted kernels (paths in the LoRA plan) train unmerged and which factored; every
  other adapted kernel trains merged. Static (hashable) metadata of a training step."""
  unmerged: frozenset[str] = frozenset()
  factored: frozenset[str] = frozenset()

  def __post_init__(self):
    both = self.unmerged & self.factored
    if both:
      raise ValueError(f"Kernels named both unmerged and factored: {sorted(both)[:3]}.")

  def route(self, path: str) -> str:
    """How a tapped kernel's factor gradients are formed: 'rank' (factored) or 'kernel'."""
    return "rank" if path in self.factored else "kernel"

  def of(self, path: str) -> str:
    """The layout of kernel `path`."""
    return ("unmerged" if path in self.unmerged else
            "factored" if path in self.factored else "merged")

  @classmethod
  def from_choice(cls, choice: dict[str, str]) -> Layouts:
    """From {kernel path: layout}."""
    unknown = set(choice.values()) - set(LAYOUTS)
    if unknown:
      raise ValueError(f"Unknown LoRA layouts {sorted(unknown)}; use one of {LAYOUTS}.")
    return cls(frozenset(p for p, k in choice.items() if k == "unmerged"),
               frozenset(p for p, k in choice.items() if k == "factored"))


# Every adapted kernel merged (and tapped, in a training step): the objectives' default.
ALL_MERGED = Layouts()


def _compute_dtype(module: nn.Module, x: jax.Array):
  return getattr(module, "dtype", None) or x.dtype


def down_projection(module: nn.Module, x: jax.Array, a: jax.Array) -> jax.Array:
  """z = A(x): A as the layer's own operator to r channels (strides, padding, groups)."""
  dtype = _compute_dtype(module, x)
  x, a = jnp.asarray(x, dtype), jnp.asarray(a, dtype)
  if isinstance(module, (nn.Dense, layers.Conv1x1)):
    return layers.pixel_matmul(x, a)
  if isinstance(module, layers.Conv):
    kh, kw = layers.pair(module.kernel_size)
    return module.apply_kernel(x, a.reshape(kh, kw, x.shape[-1], a.shape[-1]))
  if isinstance(module, nn.Conv):  # Every group applies A.
    groups, kernel_size = module.feature_group_count, tuple(module.kernel_size)
    a_kernel = jnp.tile(a.reshape(*kernel_size, x.shape[-1] // groups, a.shape[-1]),
                        (1,) * len(kernel_size) + (1, groups))
    return _flax_conv(module, x, a_kernel, groups)
  raise TypeError(unsupported(module, module_path(module)))


def up_projection(module: nn.Module, z: jax.Array, b: jax.Array) -> jax.Array:
  """B(z): a 1x1 map r -> cout (grouped for a grouped flax conv)."""
  b = jnp.asarray(b, z.dtype)
  if isinstance(module, nn.Conv) and module.feature_group_count > 1:
    return lax.conv_general_dilated(z, b.reshape(1, 1, b.shape[0], -1), (1, 1), "VALID",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    feature_group_count=module.feature_group_count)
  return layers.pixel_matmul(z, b)


def branch(module: nn.Module, x: jax.Array, a: jax.Array, b: jax.Array,
           scale: float) -> jax.Array:
  """scale * B(A(x)) for `module`'s layer kind, in the module's compute dtype."""
  z = down_projection(module, x, a)
  return up_projection(module, z, b) * jnp.asarray(scale, z.dtype)


def _flax_conv(module: nn.Conv, x: jax.Array, kernel: jax.Array, groups: int) -> jax.Array:
  """flax's Conv with `kernel` (kh, kw, cin / groups, c) in its place: strides, padding."""
  kernel_size = tuple(module.kernel_size)
  strides = module.strides or (1,) * len(kernel_size)
  strides = (strides,) * len(kernel_size) if isinstance(strides, int) else tuple(strides)
  padding = module.padding if isinstance(module.padding, str) else [
      (p, p) if isinstance(p, int) else tuple(p) for p in module.padding]
  return lax.conv_general_dilated(x, kernel, strides, padding,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                  feature_group_count=groups, precision=module.precision)


def linear_map(module: nn.Module, x: jax.Array, kernel: jax.Array) -> jax.Array:
  """The layer's linear map (no bias) with `kernel` in its kernel's place, in its compute
  dtype: what the factored layout transposes for the input gradient."""
  dtype = _compute_dtype(module, x)
  if isinstance(module, (layers.Conv, layers.Conv1x1)):
    return module.apply_kernel(x, kernel)
  x, kernel = jnp.asarray(x, dtype), jnp.asarray(kernel, dtype)
  if isinstance(module, nn.Dense):
    return lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())),
                           precision=module.precision)
  if isinstance(module, nn.Conv):
    return _flax_conv(module, x, kernel, module.feature_group_count)
  raise TypeError(unsupported(module, module_path(module)))


def _zero_after(value: jax.Array, dtype) -> jax.Array:
  """A scalar zero that XLA computes only once `value` exists (always finite, always 0)."""
  return jnp.isfinite(value.reshape(-1)[0]).astype(dtype) * jnp.zeros((), dtype)


def _factor_gradients(module: nn.Module, x: jax.Array, g: jax.Array, a: jax.Array,
                      b: jax.Array, scale: float) -> tuple[jax.Array, jax.Array]:
  """A's and B's gradients of scale * B(A(x)) for output gradient g."""
  z, down_vjp = jax.vjp(lambda a: down_projection(module, x, a), a)
  g = g.astype(z.dtype) * jnp.asarray(scale, z.dtype)
  _, up_vjp = jax.vjp(lambda z, b: up_projection(module, z, b), z, b)
  grad_z, grad_b = up_vjp(g)
  (grad_a,) = down_vjp(grad_z)
  return grad_a, grad_b.astype(b.dtype)


def tapped(module: nn.Module, out: jax.Array, x: jax.Array, kernel: jax.Array, a: jax.Array,
           b: jax.Array, scale: float, route: str) -> jax.Array:
  """`out` (the layer run on x and its merged kernel, both held constant) unchanged; coming
  back, the output gradient g passes through and yields x's gradient through the merged kernel
  and A's and B's by `route`: 'kernel' (merged: the merged kernel's weight gradient, projected
  onto A and B) or 'rank' (factored: from x and the factors alone, those of scale * B(A(x))).

  What waits for the backward pass is x (every route needs it) and the frozen kernel the step
  holds anyway: the merged kernel is formed again in the backward pass, never kept."""

  @jax.custom_vjp
  def tap(out, x, kernel, a, b):
    del x, kernel, a, b
    return out

  def forward(out, x, kernel, a, b):
    return out, (x, kernel, a, b)

  def backward(saved, g):
    x, kernel, a, b = saved
    # The merged kernel from A made a value XLA can compute only once g exists: otherwise XLA
    # shares it with the forward pass's (depending on W, A and B alone) and keeps a copy of
    # every adapted kernel alive in between (measured: NAFNet-w32 all factored, 1,766 against
    # 1,692 MiB of temporaries). z = A(x) below is left to XLA's placement: tying it to g as
    # well saved 46 MiB more on NAFNet-w32 but cost RRDBNet 783 MiB (its dense blocks' inputs
    # are concatenations that XLA then keeps whole).
    effective = lora.effective_kernel(kernel, a + _zero_after(g, a.dtype), b, scale)
    out_of_layer, x_vjp = jax.vjp(lambda v: linear_map(module, v, effective), x)
    g_layer = g.astype(out_of_layer.dtype)
    (grad_x,) = x_vjp(g_layer)
    if route == "rank":
      grad_a, grad_b = _factor_gradients(module, x, g, a, b, scale)
    else:  # The weight gradient, then its projection onto the factors.
      _, kernel_vjp = jax.vjp(lambda k: linear_map(module, x, k), effective)
      (grad_kernel,) = kernel_vjp(g_layer)
      _, merge_vjp = jax.vjp(lambda a, b: lora.effective_kernel(kernel, a, b, scale), a, b)
      grad_a, grad_b = merge_vjp(grad_kernel.astype(effective.dtype))
    return g, grad_x.astype(x.dtype), None, grad_a, grad_b  # The kernel is frozen.

  tap.defvjp(forward, backward)
  return tap(out, x, kernel, a, b)


def _interceptor(branches: dict[str, tuple[jax.Array, jax.Array, float]],
                 taps: dict[str, tuple[jax.Array, jax.Array, jax.Array, float, str]], next_fun,
                 args, kwargs, context):
  """Adds the low-rank branch to the output of each unmerged layer; runs every other adapted
  layer on its input held constant and taps its output."""
  if context.method_name != "__call__":
    return next_fun(*args, **kwargs)
  path = module_path(context.module)
  if path in taps:
    out = next_fun(lax.stop_gradient(args[0]), *args[1:], **kwargs)
    return tapped(context.module, out, args[0], *taps[path])
  out = next_fun(*args, **kwargs)
  if path in branches:
    a, b, scale = branches[path]
    return out + branch(context.module, args[0], a, b, scale).astype(out.dtype)
  return out


def apply_model(model: nn.Module, params: PyTree, plan: lora.LoraPlan | None, *inputs: Any,
                layouts: Layouts | None = None, **kwargs: Any) -> Any:
  """`model` on {'base', 'lora'}. With no `layouts` (inference), adapters merged into their
  kernels; with `layouts` (a training step), each adapted kernel in its layout: unmerged as a
  branch beside the frozen kernel, merged and factored merged as constants and tapped. Equal
  to `model.apply` on `lora.merge(...)` up to rounding, gradients included."""
  adapters = params.get("lora", {})
  if plan is None or not plan.ranks:
    return model.apply({"params": params["base"]}, *inputs, **kwargs)
  if layouts is None:
    return model.apply({"params": lora.merge(params["base"], adapters, plan)}, *inputs,
                       **kwargs)
  flat = trees.flatten(adapters)
  # Merged as constants: the taps give their factors' gradients.
  held = trees.unflatten({k: v if k.rpartition("/")[0] in layouts.unmerged
                          else lax.stop_gradient(v) for k, v in flat.items()})
  merged = lora.merge(params["base"], held, plan.without(layouts.unmerged))
  frozen = trees.flatten(params["base"])
  factors = {path: (flat[f"{path}/a"], flat[f"{path}/b"], plan.scale(path))
             for path in plan.paths}
  taps = {path.rpartition("/")[0]: (frozen[path], *factors[path], layouts.route(path))
          for path in plan.paths if path not in layouts.unmerged}
  branches = {path.rpartition("/")[0]: factors[path] for path in layouts.unmerged}
  with nn.intercept_methods(functools.partial(_interceptor, branches, taps)):
    return model.apply({"params": merged}, *inputs, **kwargs)
