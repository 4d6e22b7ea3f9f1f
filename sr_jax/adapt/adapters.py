"""Adapters as deployable artefacts: one base on disk, many small task adapters beside it.

A deployment loads a base parameter tree once (`load_base`: a run's export/params or a
converted checkpoint) and any number of adapters (`load_adapter`: a run's export/adapters, i.e.
the LoRA tree, the base leaves tuned with it and the LoRA plan). `check_compatible` says, before
anything runs, whether an adapter was trained for this base's architecture and whether every
adapted kernel has the shape the adapter expects; `apply_adapter` gives the plain merged tree
without touching the base, so switching tasks is one merge, never a reload.

The recorded architecture (meta.json's 'model') is also enough to rebuild the Flax module
(`model_from_architecture`), so inference needs no config file.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sr_jax.adapt import lora
from sr_jax.models import registry
from sr_jax.util import exports, trees

PyTree = Any
Shapes = Mapping[str, tuple[int, ...]]


@dataclasses.dataclass(frozen=True)
class Adapter:
  """One task's adapter as written by loop.export: LoRA factors, tuned base leaves, plan.

  `source` (the directory it came from, if any) only makes error messages name the file.
  """
  lora: PyTree
  tuned_base: PyTree
  plan: lora.LoraPlan
  meta: dict[str, Any]
  source: str = ""


def _require_dir(directory: str, what: str) -> str:
  directory = os.path.abspath(os.fspath(directory))
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"{what} directory {directory} does not exist (or is not a "
                            "directory).")
  return directory


def load_base(directory: str | os.PathLike) -> tuple[PyTree, dict[str, Any]]:
  """(params, meta) of a full parameter tree: a run's export/params or a converted checkpoint.

  An adapters directory is refused before its tensors are read: it holds only a fraction of
  the model and would fail later with a confusing missing-key error.
  """
  directory = _require_dir(directory, "Parameter")
  if exports.read_params_meta(directory).get("lora_plan"):
    raise ValueError(
        f"{directory} holds LoRA adapters, not a full parameter tree (its meta.json has a "
        "lora_plan). Pass the base they were trained on as the checkpoint (a run's "
        "export/params, or its base.checkpoint) and this directory as the adapter.")
  params, meta = exports.load_params(directory)
  if not meta.get("model"):
    raise ValueError(f"{directory}/meta.json records no architecture ('model'); it was not "
                     "written by sr_jax.util.exports.save_params.")
  return jax.tree.map(jnp.asarray, params), meta


def load_adapter(directory: str | os.PathLike) -> Adapter:
  """The adapter written by `exports.save_adapters` (a run's export/adapters)."""
  directory = _require_dir(directory, "Adapter")
  adapters, tuned_base, meta = exports.load_adapters(directory)
  if not meta.get("model"):
    raise ValueError(f"{directory}/meta.json records no architecture ('model'); cannot tell "
                     "which base the adapter belongs to.")
  to_jax = lambda tree: jax.tree.map(jnp.asarray, tree or {})
  return Adapter(to_jax(adapters), to_jax(tuned_base), lora.LoraPlan.from_json(meta["lora_plan"]),
                 meta, directory)


def model_from_architecture(arch: Mapping[str, Any], *, dtype: str = "float32",
                            impl: str = "auto") -> nn.Module:
  """The Flax module of a recorded architecture (meta.json's 'model', see registry.architecture)
  in compute `dtype` ('float32', 'bfloat16' or 'float16') with conv formulation `impl`."""
  if dtype not in registry.DTYPES:
    raise ValueError(f"Unknown dtype {dtype!r}; use one of {sorted(registry.DTYPES)}.")
  return registry.from_architecture(dict(arch), dtype=registry.DTYPES[dtype], impl=impl)


def _shapes(tree: PyTree) -> dict[str, tuple[int, ...]]:
  return {path: tuple(leaf.shape) for path, leaf in trees.flatten(tree).items()}


def architecture_shapes(arch: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
  """Parameter shapes an architecture implies (traced abstractly: nothing is allocated)."""
  model = model_from_architecture(arch, impl="xla")  # Shapes are impl-independent; traces faster.
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                             *registry.example_inputs(model, 16))
  return _shapes(variables["params"])


def _architecture_diffs(base: Mapping[str, Any], adapter: Mapping[str, Any]) -> list[str]:
  return [f"{k}: adapter has {adapter.get(k)!r}, base has {base.get(k)!r}"
          for k in sorted(set(base) | set(adapter)) if base.get(k) != adapter.get(k)]


def _factor_errors(path: str, kernel: tuple[int, ...], rank: int,
                   factors: Shapes) -> list[str]:
  """Shape errors of one kernel's LoRA factors: A (prod(kernel[:-1]), r), B (r, kernel[-1])."""
  errors = []
  expected = {"a": (math.prod(kernel[:-1]), rank), "b": (rank, kernel[-1])}
  for name, want in expected.items():
    got = factors.get(f"{path}/{name}")
    if got is None:
      errors.append(f"{path}: the plan adapts it but the adapter has no '{name}' factor")
    elif got != want:
      errors.append(f"{path}/{name}: expected shape {want} (base kernel {kernel}, rank {rank}), "
                    f"adapter has {got}")
  return errors


def _shape_errors(base: Shapes, adapter: Adapter) -> list[str]:
  """Every way the adapter's leaves do not fit the base's parameter shapes."""
  factors = _shapes(adapter.lora)
  errors = []
  for path in adapter.plan.paths:
    if path not in base:
      errors.append(f"{path}: adapted kernel does not exist in the base")
    else:
      errors += _factor_errors(path, base[path], adapter.plan.rank(path), factors)
  planned = {f"{p}/{n}" for p in adapter.plan.paths for n in ("a", "b")}
  errors += [f"{p}: LoRA factor not listed in the adapter's plan" for p in factors
             if p not in planned]
  for path, shape in _shapes(adapter.tuned_base).items():
    if path not in base:
      errors.append(f"{path}: tuned base leaf does not exist in the base")
    elif base[path] != shape:
      errors.append(f"{path}: tuned base leaf has shape {shape}, base has {base[path]}")
  return errors


def check_compatible(base_meta: Mapping[str, Any], adapter: Adapter,
                     base_params: PyTree | None = None) -> None:
  """Raises ValueError, naming each field or path, when `adapter` cannot run on the base.

  The adapter's recorded architecture must equal the base's; every adapted kernel must exist
  with the shape the factors expect, and every tuned leaf with its shape. Shapes are those of
  `base_params` when given, else those the base's architecture implies.
  """
  where = f"Adapter {adapter.source}" if adapter.source else "The adapter"
  diffs = _architecture_diffs(base_meta.get("model", {}), adapter.meta.get("model", {}))
  if diffs:
    raise ValueError(f"{where} was trained for another architecture than the base:\n  " +
                     "\n  ".join(diffs))
  shapes = (_shapes(base_params) if base_params is not None
            else architecture_shapes(base_meta["model"]))
  errors = _shape_errors(shapes, adapter)
  if errors:
    raise ValueError(f"{where} does not fit the base:\n  " + "\n  ".join(errors))


def apply_adapter(base_params: PyTree, adapter: Adapter) -> PyTree:
  """The plain tree the model runs with: tuned leaves replace the base's, then LoRA is merged.

  Pure: `base_params` is neither modified nor aliased by the result's changed leaves, so one
  loaded base serves any number of adapters applied one after another.
  """
  flat = trees.flatten(base_params)  # A new dict: the base's own nesting is never touched.
  errors = _shape_errors({p: tuple(v.shape) for p, v in flat.items()}, adapter)
  if errors:
    where = f"Adapter {adapter.source}" if adapter.source else "The adapter"
    raise ValueError(f"{where} does not fit the base:\n  " + "\n  ".join(errors))
  flat.update(trees.flatten(adapter.tuned_base))
  return lora.merge(trees.unflatten(flat), adapter.lora, adapter.plan)
