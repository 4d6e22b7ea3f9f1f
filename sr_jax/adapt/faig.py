"""FAIG: filter attribution by integrated gradients (Xie et al. 2021), with `jax.grad`.

FAIG asks which parameters of a fine-tuned network carry the change that fine-tuning made for
a task. It integrates the gradient of the task loss along the straight path in parameter space
between a base tree theta_b and a fine-tuned tree theta_f, and multiplies by the displacement:

    theta(s)   = theta_f + (s / M) * (theta_b - theta_f),            s = 0, ..., M - 1
    attr       = | (1 / M) * sum_s dL/dtheta(theta(s)) * (theta_b - theta_f) |

with L the SUM (not the mean) of squared errors of the interpolated network's output against
the ground truth over all of the task's images, and a left Riemann sum over M steps (M = 100 in
the official code). The path starts at the fine-tuned model and moves toward the base, so the
left sum evaluates theta_f itself and never theta_b. This is a choice: a left sum that started
at theta_b would evaluate theta_b and not theta_f instead; before the absolute value the two
differ by (dL/dtheta(theta_f) - dL/dtheta(theta_b)) * (theta_b - theta_f) / M per entry.

Scores are per entry (same tree as the parameters) and are then aggregated: per leaf
(`layer_scores`), per filter (`filter_scores`, summing a conv kernel's spatial taps as the
official code does), per parameter group (`group_scores`) and per NAFNet block
(`block_scores`). Paths are `trees.flatten`'s, e.g. 'encoders_0_0/conv1/kernel'.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sr_jax.util import jsonfile, paths, trees

PyTree = Any
PARAM_GROUPS = ("conv", "depthwise", "bias", "norm", "beta_gamma", "temperature")

# A module holding a normalisation's scale/bias: NAFNet's 'norm1'/'norm2', flax's 'LayerNorm_0'.
_NORM_MODULE = re.compile(r"(?i).*norm.*|ln(_?\d+)?")
_FORMAT = "sr_jax.faig/1"


def param_group(path: str, depthwise_pattern: str = "") -> str:
  """The group of PARAM_GROUPS a parameter path belongs to.

  'depthwise' when `depthwise_pattern` (a regex, e.g. the registry entry's
  `depthwise_kernels`) fullmatches the path; 'conv' for any other '.../kernel' (dense kernels
  included); 'norm' for a normalisation's 'scale' and its 'bias' (NAFNet's 'norm1/scale',
  'norm2/bias'); 'bias' for other biases; 'beta_gamma' for NAFNet's residual scales
  '<block>/beta' and '<block>/gamma'; 'temperature' for Restormer's per-head attention
  temperatures. Any other leaf name is an error naming the path, so a new
  architecture cannot silently land in the wrong group.
  """
  if depthwise_pattern and re.fullmatch(depthwise_pattern, path):
    return "depthwise"
  *parents, leaf = path.split("/")
  in_norm = bool(parents) and _NORM_MODULE.fullmatch(parents[-1]) is not None
  if leaf == "scale" or (in_norm and leaf in ("bias", "beta", "gamma")):
    return "norm"
  if leaf in ("beta", "gamma"):
    return "beta_gamma"
  if leaf == "kernel":
    return "conv"
  if leaf == "temperature":
    return "temperature"
  if leaf == "bias":
    return "bias"
  raise ValueError(f"Cannot assign parameter {path!r} to a FAIG group {PARAM_GROUPS}: "
                   "expected a leaf named kernel, bias, scale, beta, gamma or temperature.")


def _check_same_tree(base: PyTree, tuned: PyTree) -> None:
  """Raises a ValueError naming the first path where `base` and `tuned` differ."""
  flat_base, flat_tuned = trees.flatten(base), trees.flatten(tuned)
  for path, leaf in flat_base.items():
    if path not in flat_tuned:
      raise ValueError(f"The fine-tuned tree has no parameter {path!r} (base shape "
                       f"{tuple(np.shape(leaf))}); base and tuned must be the same model.")
    if np.shape(leaf) != np.shape(flat_tuned[path]):
      raise ValueError(f"Parameter {path!r} has shape {tuple(np.shape(leaf))} in the base tree "
                       f"but {tuple(np.shape(flat_tuned[path]))} in the fine-tuned tree.")
  for path in flat_tuned:
    if path not in flat_base:
      raise ValueError(f"The fine-tuned tree has a parameter {path!r} that the base tree lacks.")
  if jax.tree.structure(base) != jax.tree.structure(tuned):
    raise ValueError("base and tuned have the same paths but different tree types "
                     f"({jax.tree.structure(base)} vs {jax.tree.structure(tuned)}).")


def _chunked(lq: Any, gt: Any, batch_size: int) -> tuple[jax.Array, jax.Array]:
  """(lq, gt) reshaped to (chunks, batch, ...) after checking that the batch divides N."""
  lq, gt = jnp.asarray(lq), jnp.asarray(gt)
  if lq.ndim < 1 or gt.ndim < 1 or lq.shape[0] != gt.shape[0]:
    raise ValueError(f"lq {lq.shape} and gt {gt.shape} must hold the same number of images "
                     "along axis 0.")
  n = lq.shape[0]
  if batch_size < 0:
    raise ValueError(f"batch_size must be >= 0 (0 = all images at once), got {batch_size}.")
  size = batch_size or n
  if n == 0 or n % size:
    raise ValueError(f"The number of images N={n} must be a positive multiple of "
                     f"batch_size={batch_size}.")
  return (lq.reshape(n // size, size, *lq.shape[1:]),
          gt.reshape(n // size, size, *gt.shape[1:]))


def integrated_gradients(apply_fn: Callable[[PyTree, jax.Array], jax.Array], base: PyTree,
                         tuned: PyTree, lq: Any, gt: Any, *, steps: int = 100,
                         batch_size: int = 0,
                         progress: Callable[[int], None] | None = None) -> PyTree:
  """Per-entry FAIG attribution |(1/M) sum_s dL/dtheta(theta(s)) * (base - tuned)|.

  `apply_fn(params, lq_batch)` is the model on a plain parameter tree (merge LoRA adapters
  first); it is a static argument of the jitted computation, so pass the same callable to reuse
  the compilation. `lq` and `gt` are (N, H, W, C); L is the sum of squared errors over all N
  images, evaluated in float32 in chunks of `batch_size` images (0: all at once) whose gradients
  are summed, so memory scales with the chunk while the cost stays M forward+backward passes
  over the N images. With `progress`, the M path points run in about ten jitted pieces (one
  compilation: the bounds are traced) and `progress(points done)` is called after each; the
  sum is accumulated in the same order either way. Returns a float32 tree shaped like `base`.
  """
  _check_same_tree(base, tuned)
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}.")
  lq_chunks, gt_chunks = _chunked(lq, gt, batch_size)
  as_f32 = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)
  base, tuned = as_f32(base), as_f32(tuned)
  delta = jax.tree.map(jnp.subtract, base, tuned)
  grad_sum = jax.tree.map(jnp.zeros_like, base)
  piece = steps if progress is None else max(1, -(-steps // 10))
  for start in range(0, steps, piece):
    stop = min(steps, start + piece)
    grad_sum = _grad_sum(tuned, delta, lq_chunks, gt_chunks, grad_sum, jnp.int32(start),
                         jnp.int32(stop), apply_fn=apply_fn, steps=int(steps))
    if progress is not None:
      jax.block_until_ready(grad_sum)
      progress(stop)
  return _finish(grad_sum, delta, steps=int(steps))


def squared_error(apply_fn: Callable[[PyTree, jax.Array], jax.Array], params: PyTree,
                  lq: jax.Array, gt: jax.Array) -> jax.Array:
  """FAIG's loss: the summed squared error of the model's output against `gt`, in float32."""
  pred = apply_fn(params, lq).astype(jnp.float32)
  return jnp.sum(jnp.square(pred - gt.astype(jnp.float32)))


@functools.partial(jax.jit, static_argnames=("apply_fn", "steps"))
def _grad_sum(tuned: PyTree, delta: PyTree, lq_chunks: jax.Array, gt_chunks: jax.Array,
              grad_sum: PyTree, start: jax.Array, stop: jax.Array, *,
              apply_fn: Callable[[PyTree, jax.Array], jax.Array], steps: int) -> PyTree:
  """grad_sum plus the gradients at path points start..stop-1, each over the image chunks.

  A `fori_loop` rather than `scan` over a range: the scan version ran slower than M separate
  jitted value_and_grad calls on a CPU, this one faster (docs/speed.md).
  """
  add = functools.partial(jax.tree.map, jnp.add)
  grad_fn = jax.grad(functools.partial(squared_error, apply_fn))

  def path_point(s, acc):
    alpha = s.astype(jnp.float32) / steps
    params = jax.tree.map(lambda t, d: t + alpha * d, tuned, delta)
    chunk = lambda c, inner: add(inner, grad_fn(params, lq_chunks[c], gt_chunks[c]))
    return lax.fori_loop(0, lq_chunks.shape[0], chunk, acc)

  return lax.fori_loop(start, stop, path_point, grad_sum)


@functools.partial(jax.jit, static_argnames=("steps",))
def _finish(grad_sum: PyTree, delta: PyTree, *, steps: int) -> PyTree:
  return jax.tree.map(lambda g, d: jnp.abs(g / steps * d), grad_sum, delta)


@dataclasses.dataclass(frozen=True)
class LayerScore:
  """FAIG score of one parameter leaf: the sum and the per-entry mean of its attribution."""
  path: str
  group: str
  size: int
  total: float
  mean: float


def layer_scores(attribution: PyTree, depthwise_pattern: str = "") -> list[LayerScore]:
  """One LayerScore per leaf, in `trees.flatten` order; sums are taken in float64."""
  scores = []
  for path, leaf in trees.flatten(jax.device_get(attribution)).items():
    values = np.asarray(leaf, np.float64)
    total = float(values.sum())
    scores.append(LayerScore(path, param_group(path, depthwise_pattern), int(values.size),
                             total, total / values.size if values.size else 0.0))
  return scores


def filter_scores(kernel_attribution: Any) -> np.ndarray:
  """Per-filter scores of one kernel's attribution, as the official code ranks filters.

  A conv kernel (kh, kw, cin, cout) is summed over its spatial taps to (cin, cout); a depthwise
  kernel (kh, kw, 1, C) thereby becomes (1, C). 2D (dense) and 1D attributions are already per
  filter and come back unchanged (as float64).
  """
  values = np.asarray(kernel_attribution, np.float64)
  if values.ndim == 4:
    return values.sum(axis=(0, 1))
  if values.ndim in (1, 2):
    return values
  raise ValueError(f"Expected a kernel attribution of rank 1, 2 or 4, got shape {values.shape}.")


def _aggregate(scores: Sequence[LayerScore],
               key: Callable[[LayerScore], str]) -> dict[str, dict[str, float]]:
  """{key: {'total', 'size', 'mean'}} in order of first appearance; mean is per entry."""
  out: dict[str, dict[str, float]] = {}
  for score in scores:
    agg = out.setdefault(key(score), {"total": 0.0, "size": 0, "mean": 0.0})
    agg["total"] += score.total
    agg["size"] += score.size
  for agg in out.values():
    agg["mean"] = agg["total"] / agg["size"] if agg["size"] else 0.0
  return out


def group_scores(scores: Sequence[LayerScore]) -> dict[str, dict[str, float]]:
  """Totals, sizes and per-entry means per parameter group; only groups present, in
  PARAM_GROUPS order."""
  by_group = _aggregate(scores, lambda s: s.group)
  return {g: by_group[g] for g in PARAM_GROUPS if g in by_group}


def block_scores(scores: Sequence[LayerScore]) -> dict[str, dict[str, float]]:
  """Totals, sizes and per-entry means per block: the first path component ('intro',
  'encoders_0_1', 'middle_blks_0', 'ups_1', ...), in the order the scores list them."""
  return _aggregate(scores, lambda s: s.path.split("/")[0])


def _json_default(value: Any) -> Any:
  """Lets numpy scalars and arrays in `meta` serialise."""
  if isinstance(value, (np.generic, np.ndarray)):
    return value.tolist()
  raise TypeError(f"Cannot write {type(value).__name__} {value!r} to FAIG scores JSON.")


def save_scores(path: str, scores: Sequence[LayerScore], meta: dict[str, Any]) -> None:
  """Writes the layer scores and `meta` as JSON atomically (temporary file, then os.replace).

  Group and block aggregates are written too, for reading by eye; `load_scores` recomputes
  them from the layers rather than trusting them.
  """
  doc = {"format": _FORMAT, "meta": meta, "layers": [dataclasses.asdict(s) for s in scores],
         "groups": group_scores(scores), "blocks": block_scores(scores)}
  paths.makedirs(os.path.dirname(paths.absolute(path)))
  jsonfile.write(path, doc, indent=2, default=_json_default)


def load_scores(path: str) -> tuple[list[LayerScore], dict[str, Any]]:
  """(layer scores, meta) as written by `save_scores`."""
  doc = jsonfile.read(path)
  if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
    raise ValueError(f"{path} is not a FAIG scores file written by sr_jax.adapt.faig.save_scores.")
  scores = [LayerScore(str(d["path"]), str(d["group"]), int(d["size"]), float(d["total"]),
                       float(d["mean"])) for d in doc["layers"]]
  return scores, doc["meta"]
