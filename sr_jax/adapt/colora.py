r"""Contribution-based LoRA (CoLoRA): per-layer ranks from FAIG scores under a parameter budget.

The CoLoRA paper (Park, Kim and Chun, "Contribution-based Low-Rank Adaptation with Pre-training
Model for Real Image Restoration", ECCV 2024) sets each layer's share of learnable parameters
from its FAIG contribution and totals about 7% of NAFNet; it does not publish its exact
formula. This is our design:

  candidates  every kernel LoRA targets (config.lora.targets), except depthwise convs, which
              are frozen or tuned fully (colora.depthwise); kernel i costs k_i = fan_in + fan_out
              parameters per unit of rank and allows at most R_i ranks: min(fan_in, fan_out),
              lowered to fan_in * fan_out / (fan_in + fan_out) (beyond which the adapter is
              larger than the kernel) and to colora.max_rank
  score       c_i = the mean per-entry FAIG of kernel i (faig.LayerScore.mean; or, with
              colora.score='total', its sum), normalised s_i = c_i / max_j c_j
  weight      w_i = beta + (1 - beta) * s_i ** alpha  (alpha: how sharply rank follows
              contribution, 0 = uniform; beta: the floor, the weight of a zero-score layer)
  budget      B = budget * (base parameters) - F, where F counts the leaves tuned fully
              (biases, norms, NAFNet beta/gamma and Restormer temperatures when
              colora.tune_extras; depthwise kernels when colora.depthwise='full'); a negative B
              is an error
  ranks       r_i = min(R_i, floor(lambda * w_i)) with the largest lambda for which
              sum_i r_i k_i <= B (bisection); the rest of B is then spent one rank at a time
              on layers of positive weight, in decreasing weight, that still fit, so less than
              the cheapest possible increment is left over (unless every such layer is at its
              cap). r_i = 0 freezes kernel i.

Every adapter gets LoRA alpha = lora_scale * r_i, i.e. the same scale alpha / r. Uniform LoRA at
the same budget is the same procedure with alpha = 0 (every weight 1).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from sr_jax.adapt import lora
from sr_jax.util import jsonfile, trees

PyTree = Any
# Leaves CoLoRA tunes fully when colora.tune_extras (about 0.5% of NAFNet's parameters).
EXTRA_TRAINABLE = (r".*/bias", r".*/scale", r".*/beta", r".*/gamma", r".*/temperature")


@dataclasses.dataclass(frozen=True)
class Allocation:
  """Per-kernel ranks plus the fully tuned leaves, and how they add up against the budget."""
  ranks: dict[str, int]
  weights: dict[str, float]
  scores: dict[str, float]
  rank_costs: dict[str, int]
  extra_trainable: tuple[str, ...]
  fixed_params: int
  num_base_params: int
  budget_params: int

  @property
  def adapter_params(self) -> int:
    return sum(r * self.rank_costs[p] for p, r in self.ranks.items())

  @property
  def trainable_params(self) -> int:
    return self.fixed_params + self.adapter_params

  def plan(self, lora_scale: float = 1.0, scaling: str = "standard") -> lora.LoraPlan:
    """The LoRA plan of the adapted kernels (rank > 0), alpha = lora_scale * rank, with the
    run's config.lora.scaling (the plan file records it, and a recorded scaling wins)."""
    kept = sorted((p, r) for p, r in self.ranks.items() if r > 0)
    return lora.LoraPlan(tuple(kept), tuple((p, float(lora_scale * r)) for p, r in kept),
                         scaling)

  def to_json(self, lora_scale: float = 1.0, scaling: str = "standard") -> dict[str, Any]:
    """JSON for config.lora.plan_file ('ranks', 'alphas') plus the allocation's accounting."""
    return dict(self.plan(lora_scale, scaling).to_json(), all_ranks=self.ranks,
                weights=self.weights,
                scores=self.scores, rank_costs=self.rank_costs,
                extra_trainable=list(self.extra_trainable), fixed_params=self.fixed_params,
                adapter_params=self.adapter_params, trainable_params=self.trainable_params,
                num_base_params=self.num_base_params, budget_params=self.budget_params)

  def save(self, path: str, lora_scale: float = 1.0,
           settings: Mapping[str, Any] | None = None, scaling: str = "standard") -> None:
    """Writes to_json (plus the `settings` it was made with) atomically."""
    jsonfile.write(path, dict(self.to_json(lora_scale, scaling),
                              settings=dict(settings or {})))


def layer_weights(scores: Mapping[str, float], alpha: float, beta: float) -> dict[str, float]:
  """w_i = beta + (1 - beta) * (c_i / max c) ** alpha (all 1 when every score is 0)."""
  if alpha < 0 or not 0 <= beta <= 1:
    raise ValueError(f"colora.alpha must be >= 0 and colora.beta in [0, 1], got alpha={alpha}, "
                     f"beta={beta}.")
  top = max(scores.values(), default=0.0)
  if top <= 0:
    return {p: 1.0 for p in scores}
  return {p: beta + (1 - beta) * (max(c, 0.0) / top) ** alpha for p, c in scores.items()}


def fit_ranks(weights: Mapping[str, float], rank_costs: Mapping[str, int],
              caps: Mapping[str, int], budget: int) -> dict[str, int]:
  """Ranks r_i = min(cap_i, floor(lambda w_i)) for the largest lambda within `budget`, then
  single ranks for the highest-weight layers that still fit (see the module docstring)."""
  def ranks_at(lam: float) -> dict[str, int]:
    return {p: min(caps[p], int(math.floor(lam * w))) for p, w in weights.items()}

  def cost(ranks: Mapping[str, int]) -> int:
    return sum(r * rank_costs[p] for p, r in ranks.items())

  lo, hi = 0.0, 1.0 + max((caps[p] / w for p, w in weights.items() if w > 0), default=0.0)
  for _ in range(100):
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if cost(ranks_at(mid)) <= budget else (lo, mid)
  ranks = ranks_at(lo)
  used = cost(ranks)
  order = sorted((p for p in weights if weights[p] > 0), key=lambda p: (-weights[p], p))
  grew = True
  while grew:
    grew = False
    for p in order:
      if ranks[p] < caps[p] and used + rank_costs[p] <= budget:
        ranks[p] += 1
        used += rank_costs[p]
        grew = True
  return ranks


def candidates(base: PyTree, targets: Sequence[str], depthwise_pattern: str,
               max_rank: int = 0) -> tuple[dict[str, int], dict[str, int]]:
  """(rank cost, rank cap) of every kernel LoRA may adapt."""
  target_res = [re.compile(t) for t in targets]
  depthwise = re.compile(depthwise_pattern) if depthwise_pattern else None
  costs, caps = {}, {}
  for path, leaf in trees.flatten(base).items():
    if not path.endswith("kernel") or leaf.ndim not in (2, 4):
      continue
    if not any(r.fullmatch(path) for r in target_res) or (depthwise and depthwise.fullmatch(path)):
      continue
    fan_in, fan_out = math.prod(leaf.shape[:-1]), leaf.shape[-1]
    costs[path] = fan_in + fan_out
    # Beyond fan_in * fan_out / (fan_in + fan_out) an adapter is larger than its kernel.
    cap = max(1, min(lora.max_rank(leaf.shape), fan_in * fan_out // (fan_in + fan_out)))
    caps[path] = cap if max_rank <= 0 else min(max_rank, cap)
  if not costs:
    raise ValueError(f"No kernel matches config.lora.targets {list(targets)}; nothing for "
                     "CoLoRA to adapt.")
  return costs, caps


def fully_tuned(base: PyTree, patterns: Sequence[str]) -> int:
  """Entries of the base leaves matching any of `patterns` (trained fully)."""
  res = [re.compile(p) for p in patterns]
  return sum(math.prod(leaf.shape) for path, leaf in trees.flatten(base).items()
             if any(r.fullmatch(path) for r in res))


def allocate(base: PyTree, layer_means: Mapping[str, float], colora_config: Any,
             targets: Sequence[str], depthwise_pattern: str, *,
             uniform: bool = False) -> Allocation:
  """CoLoRA's allocation (or, with uniform=True, uniform LoRA) under colora.budget."""
  c = colora_config
  if c.depthwise not in ("frozen", "full"):
    raise ValueError(f"colora.depthwise must be 'frozen' or 'full', got {c.depthwise!r}.")
  if not 0 < c.budget <= 1:
    raise ValueError(f"colora.budget is a share of the base's parameters in (0, 1], got "
                     f"{c.budget}.")
  rank_costs, caps = candidates(base, targets, depthwise_pattern, c.max_rank)
  extras = (EXTRA_TRAINABLE if c.tune_extras else ()) + (
      (depthwise_pattern,) if c.depthwise == "full" else ())
  fixed = fully_tuned(base, extras)
  total = lora.count(base)
  budget = int(c.budget * total)
  if fixed > budget:
    raise ValueError(
        f"The fully tuned leaves ({fixed:,} parameters: {list(extras)}) exceed the CoLoRA budget "
        f"of {budget:,} ({c.budget:.1%} of {total:,}); raise colora.budget, or set "
        "colora.tune_extras=False / colora.depthwise='frozen'.")
  missing = sorted(set(rank_costs) - set(layer_means))
  if missing and not uniform:
    raise ValueError(f"No FAIG score for kernels {missing[:5]}; the scores were computed for "
                     "another model.")
  scores = {p: float(layer_means.get(p, 0.0)) for p in rank_costs}
  weights = layer_weights(scores, 0.0 if uniform else c.alpha, 1.0 if uniform else c.beta)
  ranks = fit_ranks(weights, rank_costs, caps, budget - fixed)
  return Allocation(ranks, weights, scores, rank_costs, tuple(extras), fixed, total, budget)
