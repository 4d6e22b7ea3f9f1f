"""Parameter trees as flat {'a/b/kernel': leaf} maps: the project's one spelling of a path.

Checkpoints, exports, LoRA plans, FAIG scores and guards all name a leaf by its slash-joined
path, so they agree on what a path is by sharing these three functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax

PyTree = Any


def path_str(path: Sequence[Any]) -> str:
  """'encoders_0_0/conv1/kernel' for a jax key path."""
  parts = []
  for k in path:
    parts.append(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))))
  return "/".join(parts)


def flatten(tree: PyTree) -> dict[str, Any]:
  """{'a/b/kernel': leaf} for a nested dict tree."""
  return {path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """Inverse of `flatten` for nested dicts."""
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree
