"""LoRA trained unmerged: the frozen kernel stays a constant and the low-rank branch runs beside it.

Merged, a LoRA layer computes y = conv(x, W + s * reshape(A @ B)); differentiating that with
respect to A and B first needs the gradient of the whole effective kernel, a full weight
gradient per step, as costly as full fine-tuning's. Unmerged, the same layer computes

    y = conv(x, W) + s * conv_1x1(conv_k(x, A), B)

(A reshaped to a kh x kw conv to r channels with the layer's strides and padding, B a 1x1 conv
r -> cout), with W a constant of the differentiated function: the step needs only the input
gradient through W and the rank-r gradients of A and B. The function computed is the same.

The branch is not free. Per output pixel it costs r (kh kw cin + cout) multiply-adds forward,
as many for the input gradient and as many for the factors' gradients, against the
kh kw cin cout of the weight gradient it removes; the merged form also multiplies A @ B and
projects the kernel gradient back onto A and B (3 kh kw cin r cout per step, whatever the
batch). `layer_costs` counts both for every adapted layer from an abstract trace of the model
(actual input and output sizes and strides), with the bytes each layout moves, and
`unmerged_paths` runs a layer unmerged where that is predicted faster (config.lora.formulation
'auto'; config.lora.cost_model 'flops': fewer multiply-adds; 'roofline': multiply-adds and
bytes at this machine's measured rates, sr_jax.adapt.roofline), or every layer one way ('merged',
'unmerged'): wide layers (NAFNet's middle blocks, Restormer's projections) go unmerged, narrow
full-resolution 1x1 convs stay merged.

How the model stays unaware of LoRA: `apply_model` merges the layers chosen merged into the
parameter tree, then runs `model.apply` inside `flax.linen.intercept_methods` with an
interceptor that, for each layer chosen unmerged (found by its module path), adds the low-rank
branch to the layer's own output. The branch reuses the layer's own linear operator with
another kernel (`layers.Conv.apply_kernel`, `layers.Conv1x1.apply_kernel`; flax's Dense and
grouped Conv by their fields), so strides, padding and the CPU formulation match. Inference
and export merge once (`lora.merge`): a plain tree with no overhead.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from sr_jax.adapt import lora, roofline
from sr_jax.models import layers
from sr_jax.util import trees

PyTree = Any
FORMULATIONS = ("auto", "merged", "unmerged")
COST_MODELS = ("flops", "roofline")
_SUPPORTED = (layers.Conv, layers.Conv1x1, nn.Dense, nn.Conv)


def module_path(module: nn.Module) -> str:
  """A module's path in the parameter tree ('encoders_0_0/conv1'), what branches are keyed by."""
  return "/".join(str(p) for p in module.scope.path)


def _kernel_geometry(module: nn.Module, kernel_shape: Sequence[int]) -> tuple[int, int, int]:
  """(fan_in per group, cout, groups) of an adapted layer's kernel."""
  groups = int(getattr(module, "feature_group_count", 1)) if isinstance(module, nn.Conv) else 1
  return math.prod(kernel_shape[:-1]), int(kernel_shape[-1]), groups


def branch(module: nn.Module, x: jax.Array, a: jax.Array, b: jax.Array,
           scale: float) -> jax.Array:
  """scale * B(A(x)) for `module`'s layer kind, in the module's compute dtype."""
  dtype = getattr(module, "dtype", None) or x.dtype
  x, a, b = (jnp.asarray(v, dtype) for v in (x, a, b))
  if isinstance(module, (nn.Dense, layers.Conv1x1)):
    out = layers.pixel_matmul(layers.pixel_matmul(x, a), b)
  elif isinstance(module, layers.Conv):
    kh, kw = layers.pair(module.kernel_size)
    z = module.apply_kernel(x, a.reshape(kh, kw, x.shape[-1], a.shape[-1]))
    out = layers.pixel_matmul(z, b)
  elif isinstance(module, nn.Conv):
    out = _flax_conv_branch(module, x, a, b)
  else:
    raise TypeError(f"No unmerged LoRA branch for {type(module).__name__} at "
                    f"{module_path(module)}; set config.lora.formulation='merged'.")
  return out * jnp.asarray(scale, dtype)


def _flax_conv_branch(module: nn.Conv, x: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
  """A flax (possibly grouped) conv's branch: every group applies A, then B as a grouped 1x1."""
  groups = module.feature_group_count
  kernel_size = tuple(module.kernel_size)
  cin_group, rank = x.shape[-1] // groups, a.shape[-1]
  a_kernel = jnp.tile(a.reshape(*kernel_size, cin_group, rank), (1,) * len(kernel_size) + (1, groups))
  strides = module.strides or (1,) * len(kernel_size)
  strides = (strides,) * len(kernel_size) if isinstance(strides, int) else tuple(strides)
  padding = module.padding if isinstance(module.padding, str) else [
      (p, p) if isinstance(p, int) else tuple(p) for p in module.padding]
  dims = ("NHWC", "HWIO", "NHWC")
  z = lax.conv_general_dilated(x, a_kernel, strides, padding, dimension_numbers=dims,
                               feature_group_count=groups)
  return lax.conv_general_dilated(z, b.reshape(1, 1, rank, -1), (1, 1), "VALID",
                                  dimension_numbers=dims, feature_group_count=groups)


def _interceptor(branches: dict[str, tuple[jax.Array, jax.Array, float]], next_fun, args,
                 kwargs, context):
  """Adds the low-rank branch to the output of each layer whose module path has one."""
  out = next_fun(*args, **kwargs)
  if context.method_name != "__call__":
    return out
  found = branches.get(module_path(context.module))
  if found is None:
    return out
  a, b, scale = found
  return out + branch(context.module, args[0], a, b, scale).astype(out.dtype)


def apply_model(model: nn.Module, params: PyTree, plan: lora.LoraPlan | None, *inputs: Any,
                unmerged: frozenset[str] = frozenset(), **kwargs: Any) -> Any:
  """`model` on {'base', 'lora'}: adapters in `unmerged` (kernel paths) as branches, the rest
  merged into their kernels. Equal to `model.apply` on `lora.merge(...)` up to rounding."""
  adapters = params.get("lora", {})
  if plan is None or not plan.ranks:
    return model.apply({"params": params["base"]}, *inputs, **kwargs)
  merged = lora.merge(params["base"], adapters, plan.without(unmerged))
  if not unmerged:
    return model.apply({"params": merged}, *inputs, **kwargs)
  flat = trees.flatten(adapters)
  branches = {path.rpartition("/")[0]: (flat[f"{path}/a"], flat[f"{path}/b"], plan.scale(path))
              for path in unmerged}
  with nn.intercept_methods(functools.partial(_interceptor, branches)):
    return model.apply({"params": merged}, *inputs, **kwargs)


@dataclasses.dataclass(frozen=True)
class LayerCost:
  """One adapted layer's cost per step beyond the frozen layer's own, both ways: multiply-adds
  and bytes moved (float32 elements x 4)."""
  path: str
  layer: str  # The module class, e.g. 'Conv1x1'.
  kernel: tuple[int, ...]
  rank: int
  out_pixels: int  # Output positions per step (batch x height x width; batch for a Dense).
  merged_macs: int  # Kernel gradient + forming A @ B and projecting its gradient onto A, B.
  unmerged_macs: int  # The branch: forward, input gradient, factor gradients.
  # The kernel gradient reads the layer's input and output gradient once more (and the kernel
  # -sized terms); the branch reads the input twice (forward, A's gradient), accumulates into
  # the output and the input gradient (read and write each) and reads the output gradient
  # twice (B's gradient, the rank-r gradient), besides its rank-r activations.
  merged_bytes: int = 0
  unmerged_bytes: int = 0

  @property
  def cheaper(self) -> str:
    """The layout of fewer multiply-adds (the chooser's rule under roofline.FLOPS_ONLY)."""
    return "unmerged" if self.unmerged_macs < self.merged_macs else "merged"

  def seconds(self, machine: roofline.Machine) -> dict[str, float]:
    """Each layout's predicted extra time per step on `machine`."""
    return {"merged": machine.seconds(self.merged_macs, self.merged_bytes),
            "unmerged": machine.seconds(self.unmerged_macs, self.unmerged_bytes)}

  def faster(self, machine: roofline.Machine) -> str:
    """The layout `machine`'s roofline predicts faster (merged on a tie)."""
    t = self.seconds(machine)
    return "unmerged" if t["unmerged"] < t["merged"] else "merged"


def layer_costs(model: nn.Module, base: PyTree, plan: lora.LoraPlan, *inputs: Any,
                **kwargs: Any) -> list[LayerCost]:
  """Each adapted layer's cost both ways, from an abstract trace of `model` on `inputs`."""
  kernels = {path.rpartition("/")[0]: path for path in plan.paths}
  seen: dict[str, tuple[nn.Module, tuple[int, ...], tuple[int, ...]]] = {}

  def record(next_fun, args, kw, context):
    out = next_fun(*args, **kw)
    path = module_path(context.module)
    if context.method_name == "__call__" and path in kernels:
      seen[path] = (context.module, tuple(args[0].shape), tuple(out.shape))
    return out

  with nn.intercept_methods(record):
    jax.eval_shape(lambda p, *x: model.apply({"params": p}, *x, **kwargs), base, *inputs)
  shapes = {path: tuple(leaf.shape) for path, leaf in trees.flatten(base).items()}
  costs = []
  for layer_path, path in kernels.items():
    if layer_path not in seen:
      raise ValueError(f"The adapted kernel {path} belongs to no layer the model calls.")
    module, in_shape, out_shape = seen[layer_path]
    if not isinstance(module, _SUPPORTED):
      raise TypeError(f"No unmerged LoRA branch for {type(module).__name__} at {layer_path}; "
                      "set config.lora.formulation='merged'.")
    fan_in, cout, groups = _kernel_geometry(module, shapes[path])
    r, pixels = plan.rank(path), math.prod(out_shape[:-1])
    inputs_, outputs = math.prod(in_shape), pixels * cout
    costs.append(LayerCost(
        path, type(module).__name__, shapes[path], r, pixels,
        merged_macs=pixels * fan_in * cout + 3 * fan_in * r * cout,
        unmerged_macs=3 * pixels * r * (fan_in * groups + cout),
        merged_bytes=4 * (inputs_ + outputs + 3 * fan_in * cout),
        unmerged_bytes=4 * (4 * inputs_ + 4 * outputs + 4 * pixels * r)))
  return costs


def cost_machine(cost_model: str) -> roofline.Machine:
  """The machine 'auto' predicts for: FLOPS_ONLY ('flops'), or this device's measured roofline."""
  if cost_model not in COST_MODELS:
    raise ValueError(f"Unknown config.lora.cost_model {cost_model!r}; use one of {COST_MODELS}.")
  return roofline.current() if cost_model == "roofline" else roofline.FLOPS_ONLY


def unmerged_paths(costs: Sequence[LayerCost], formulation: str,
                   machine: roofline.Machine = roofline.FLOPS_ONLY) -> frozenset[str]:
  """The kernels trained unmerged under config.lora.formulation ('auto': where `machine`'s
  roofline predicts the branch faster; under FLOPS_ONLY, where it has fewer multiply-adds)."""
  if formulation not in FORMULATIONS:
    raise ValueError(f"Unknown config.lora.formulation {formulation!r}; use one of "
                     f"{FORMULATIONS}.")
  if formulation == "merged":
    return frozenset()
  if formulation == "unmerged":
    return frozenset(c.path for c in costs)
  return frozenset(c.path for c in costs if c.faster(machine) == "unmerged")
