"""Which layout each adapted layer trains in: every layout's cost per step, and the choice.

Beyond the frozen layer's own forward pass and input gradient, per step (P output positions,
fan-in f per group, g groups, cout outputs, rank r; sr_jax.adapt.lora_branch has the layouts):

| layout | multiply-adds | bytes moved (float32) |
|---|---|---|
| merged | P f cout (the weight gradient) + 4 f r cout | input + output gradient + 6 kernels |
| unmerged | 3 P r (f g + cout) | 4 inputs + 4 outputs + 4 P r |
| factored | 2 P r (f g + cout) + 2 f r cout | 2 inputs + 2 outputs + 4 P r + 4 kernels |

Merged reads the layer's input and output gradient once more for the weight gradient, which it
writes and reads back to project onto A and B; the unmerged branch reads the input twice (its
forward pass, A's gradient), accumulates into the output and the input gradient (read and
write each) and reads the output gradient twice (B's gradient, the rank-r gradient); the
factored tap reads the input and the output gradient twice each and accumulates nothing
full-width. Merged and factored form the merged kernel twice (forward and backward passes:
sr_jax.adapt.lora_branch keeps no copy of it between them), each time reading W and writing
W_eff, and project with A and B (f r cout each).
`layer_costs` counts them for every adapted layer from an abstract trace of the model (actual
input and output sizes and strides).

`choose` picks under config.lora.formulation: one layout for every layer ('merged',
'unmerged', 'factored'), or per layer ('auto') by config.lora.cost_model:

- 'roofline' (the default): of config.lora.auto_layouts (default merged and factored), the
  layout of least predicted time, multiply-adds at the machine's matrix-product rate plus
  bytes at its streaming rate (sr_jax.adapt.roofline measures both once per device kind). On
  a CPU, where memory is slow against arithmetic, thin rank-r passes cost their bytes and
  wide layers go factored while narrow ones stay merged; on an accelerator the multiply-adds
  dominate and the choice follows them.
- 'flops': the former rule, kept to compare: merged or unmerged, whichever has fewer
  multiply-adds, bytes free.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax

from sr_jax.adapt import lora, lora_branch, roofline
from sr_jax.adapt.lora_branch import LAYOUTS, Layouts
from sr_jax.util import trees

COST_MODELS = ("roofline", "flops")
_FLOPS_RULE = ("merged", "unmerged")  # The layouts the former rule chose between.
# What 'auto' chooses from by default (config.lora.auto_layouts): unmerged is left out because
# it keeps more memory than merged and factored (its rank-r activation and branch output wait
# for the backward pass), while the roofline rates it faster only where kernels outweigh
# activations (NAFNet-w32's 8x8 middle blocks: under 1% of the step; docs/speed.md).
AUTO_LAYOUTS = ("merged", "factored")


@dataclasses.dataclass(frozen=True)
class LayerCost:
  """One adapted layer's cost per step beyond the frozen layer's own, in each layout:
  multiply-adds and bytes moved (float32 elements x 4)."""
  path: str
  layer: str  # The module class, e.g. 'Conv1x1'.
  kernel: tuple[int, ...]
  rank: int
  out_pixels: int  # Output positions per step (batch x height x width; batch for a Dense).
  macs: dict[str, int]  # Per layout.
  bytes: dict[str, int]  # Per layout.

  @property
  def cheaper(self) -> str:
    """Merged or unmerged, whichever has fewer multiply-adds (the former rule; merged on a tie)."""
    return "unmerged" if self.macs["unmerged"] < self.macs["merged"] else "merged"

  def seconds(self, machine: roofline.Machine) -> dict[str, float]:
    """Each layout's predicted extra time per step on `machine`."""
    return {k: machine.seconds(self.macs[k], self.bytes[k]) for k in LAYOUTS}

  def fastest(self, machine: roofline.Machine, candidates: Sequence[str] = LAYOUTS) -> str:
    """The candidate `machine`'s roofline predicts fastest (the earlier in LAYOUTS on a tie)."""
    t = self.seconds(machine)
    return min((k for k in LAYOUTS if k in candidates), key=lambda k: t[k])


def costs_of(path: str, layer: str, kernel: tuple[int, ...], rank: int, pixels: int,
             inputs: int, fan_in: int, cout: int, groups: int = 1) -> LayerCost:
  """A layer's LayerCost from its geometry (`inputs`: input elements per step)."""
  outputs, r = pixels * cout, rank
  branch_in = fan_in * groups  # A reads every group's input.
  return LayerCost(
      path, layer, kernel, r, pixels,
      macs={"merged": pixels * fan_in * cout + 4 * fan_in * r * cout,
            "unmerged": 3 * pixels * r * (branch_in + cout),
            "factored": 2 * pixels * r * (branch_in + cout) + 2 * fan_in * r * cout},
      bytes={"merged": 4 * (inputs + outputs + 6 * fan_in * cout),
             "unmerged": 4 * (4 * inputs + 4 * outputs + 4 * pixels * r),
             "factored": 4 * (2 * inputs + 2 * outputs + 4 * pixels * r + 4 * fan_in * cout)})


def layer_costs(model: nn.Module, base: Any, plan: lora.LoraPlan, *inputs: Any,
                **kwargs: Any) -> list[LayerCost]:
  """Each adapted layer's cost in each layout, from an abstract trace of `model` on `inputs`."""
  kernels = {path.rpartition("/")[0]: path for path in plan.paths}
  seen: dict[str, tuple[nn.Module, tuple[int, ...], tuple[int, ...]]] = {}

  def record(next_fun, args, kw, context):
    out = next_fun(*args, **kw)
    path = lora_branch.module_path(context.module)
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
    if not isinstance(module, lora_branch.SUPPORTED):
      raise TypeError(lora_branch.unsupported(module, layer_path))
    groups = int(getattr(module, "feature_group_count", 1)) if isinstance(module, nn.Conv) else 1
    costs.append(costs_of(path, type(module).__name__, shapes[path], plan.rank(path),
                          math.prod(out_shape[:-1]), math.prod(in_shape),
                          math.prod(shapes[path][:-1]), int(shapes[path][-1]), groups))
  return costs


def setting_problems(formulation: str = "auto", cost_model: str = "roofline",
                     auto_layouts: Sequence[str] = AUTO_LAYOUTS) -> list[str]:
  """What is wrong with config.lora's formulation, cost_model and auto_layouts, one message
  each: the config check reports them before any work, `choose` and `cost_machine` refuse
  them when called directly."""
  problems = []
  if cost_model not in COST_MODELS:
    problems.append(f"config.lora.cost_model={cost_model!r}: must be one of "
                    f"{list(COST_MODELS)}.")
  if set(auto_layouts) - set(LAYOUTS) or not auto_layouts:
    problems.append(f"config.lora.auto_layouts={tuple(auto_layouts)}: name one or more of "
                    f"{LAYOUTS}")
  if formulation not in lora_branch.FORMULATIONS:
    problems.append(f"config.lora.formulation={formulation!r}: must be one of "
                    f"{lora_branch.FORMULATIONS}")
  return problems


def _refuse(problems: list[str]) -> None:
  if problems:
    raise ValueError("; ".join(problems))


def cost_machine(cost_model: str) -> roofline.Machine:
  """The machine 'auto' predicts for: this device's measured roofline ('roofline') or
  multiply-adds alone ('flops')."""
  _refuse(setting_problems(cost_model=cost_model))
  return roofline.current() if cost_model == "roofline" else roofline.FLOPS_ONLY


def choose(costs: Sequence[LayerCost], formulation: str,
           machine: roofline.Machine = roofline.FLOPS_ONLY,
           candidates: Sequence[str] = AUTO_LAYOUTS) -> Layouts:
  """Each adapted kernel's layout under config.lora.formulation: one layout for all, or
  ('auto') the fastest of `candidates` (config.lora.auto_layouts) on `machine`'s roofline;
  under FLOPS_ONLY the former rule (merged or unmerged, fewer multiply-adds)."""
  _refuse(setting_problems(formulation, auto_layouts=candidates))
  if formulation != "auto":
    return Layouts.from_choice({c.path: formulation for c in costs})
  if machine is roofline.FLOPS_ONLY:
    candidates = _FLOPS_RULE
  return Layouts.from_choice({c.path: c.fastest(machine, candidates) for c in costs})


def saved_seconds(costs: Sequence[LayerCost], layouts: Layouts,
                  machine: roofline.Machine) -> float:
  """The predicted time per step `layouts` saves against every layer merged."""
  return sum(t["merged"] - t[layouts.of(c.path)] for c in costs
             for t in (c.seconds(machine),))
