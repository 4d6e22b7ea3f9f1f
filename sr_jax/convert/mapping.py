"""Key and layout mapping between an official PyTorch state dict and an sr_jax parameter tree.

The Flax model is the source of truth: its parameter paths (traced abstractly, nothing is
allocated) are mapped one by one to the PyTorch key they come from, by an architecture's regex
rules plus three generic renames (`/` -> `.`, `kernel` -> `weight`, a norm's `scale` ->
`weight`). Every path must find its key with the expected shape, and every key must be used:
missing keys, unknown keys and shape mismatches are collected and raised together, each naming
the key and the shape the architecture expects, so a load is exact or it does not happen.

Layouts: conv kernels are OIHW in PyTorch and HWIO in Flax (a depthwise (C, 1, kh, kw) kernel
becomes flax's grouped (kh, kw, 1, C) by the same transpose); Linear weights (out, in) are
Dense kernels (in, out); parameters PyTorch keeps as broadcastable (1, C, 1, 1) or (h, 1, 1)
tensors (NAFNet's beta/gamma, Restormer's temperature) are flat in Flax. PixelShuffle needs no
weight permutation: sr_jax's pixel_shuffle reads the channels in PyTorch's order.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

Rules = Sequence[tuple[str, str]]
MAX_LISTED = 20


def torch_key(path: str, rules: Rules) -> str:
  """The PyTorch key of a Flax parameter path, after the architecture's regex `rules`."""
  for pattern, replacement in rules:
    path = re.sub(pattern, replacement, path)
  parts = path.split("/")
  if parts[-1] in ("kernel", "scale"):
    parts[-1] = "weight"
  return ".".join(parts)


def torch_shape(path: str, flax_shape: tuple[int, ...], broadcast: Mapping[str, int]) -> tuple[
    int, ...]:
  """The shape the PyTorch tensor of a Flax leaf has.

  `broadcast` maps a leaf name to the rank PyTorch stores it with, the flat dimension first
  (e.g. {'beta': 4} for NAFNet's (1, C, 1, 1); {'temperature': 3} for Restormer's (h, 1, 1)).
  """
  leaf = path.rsplit("/", 1)[-1]
  if leaf == "kernel" and len(flax_shape) == 2:  # Dense (in, out) <- Linear (out, in).
    return tuple(flax_shape[::-1])
  if leaf == "kernel":
    kh, kw, cin, cout = flax_shape
    return (cout, cin, kh, kw)
  if leaf in broadcast:
    rank = broadcast[leaf]
    (size,) = flax_shape
    return (1, size, 1, 1) if rank == 4 else (size,) + (1,) * (rank - 1)
  return tuple(flax_shape)


def to_flax(path: str, tensor: np.ndarray, flax_shape: tuple[int, ...]) -> np.ndarray:
  """A PyTorch tensor in the Flax leaf's layout (OIHW -> HWIO, Linear (out, in) -> Dense
  (in, out); broadcast shapes flattened)."""
  if path.endswith("/kernel") and np.ndim(tensor) == 2:
    return np.ascontiguousarray(np.transpose(tensor), dtype=np.float32)
  if path.endswith("/kernel"):
    return np.ascontiguousarray(np.transpose(tensor, (2, 3, 1, 0)), dtype=np.float32)
  return np.asarray(tensor, np.float32).reshape(flax_shape)


def to_torch(path: str, array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """The inverse of `to_flax`: a Flax leaf in the PyTorch tensor's layout."""
  if path.endswith("/kernel") and np.ndim(array) == 2:
    return np.ascontiguousarray(np.transpose(array))
  if path.endswith("/kernel"):
    return np.ascontiguousarray(np.transpose(array, (3, 2, 0, 1)))
  return np.asarray(array).reshape(shape)


def _listed(items: list[str]) -> str:
  more = len(items) - MAX_LISTED
  return "\n  ".join(items[:MAX_LISTED] + ([f"... and {more} more"] if more > 0 else []))


def convert(state: Mapping[str, np.ndarray], flax_shapes: Mapping[str, tuple[int, ...]],
            rules: Rules, broadcast: Mapping[str, int], what: str,
            names: Mapping[str, str] | None = None) -> dict[str, np.ndarray]:
  """Flat {flax path: array} from a state dict; raises naming every missing, unknown or
  mis-shaped key (`what` names the architecture in the message).

  `names` maps a key of `state` (or an expected one) to what the file calls it, for the
  messages, when a converter renamed the file's keys first (e.g. old RRDBNet layouts).
  """
  label = (lambda k: names.get(k, k)) if names else (lambda k: k)
  expected = {torch_key(p, rules): (p, torch_shape(p, s, broadcast))
              for p, s in flax_shapes.items()}
  if len(expected) != len(flax_shapes):
    raise AssertionError("Two Flax paths map to one PyTorch key; the mapping rules are wrong.")
  errors, out = [], {}
  for key, (path, shape) in expected.items():
    if key not in state:
      errors.append(f"missing key {label(key)} (expected shape {shape})")
    elif tuple(state[key].shape) != shape:
      errors.append(f"{label(key)}: checkpoint has shape {tuple(state[key].shape)}, "
                    f"expected {shape}")
    else:
      out[path] = to_flax(path, state[key], flax_shapes[path])
  errors += [f"unknown key {label(k)} (shape {tuple(v.shape)})" for k, v in state.items()
             if k not in expected]
  if errors:
    raise ValueError(f"The checkpoint does not fit {what} ({len(errors)} problem"
                     f"{'s' if len(errors) > 1 else ''}; nothing was converted):\n  " +
                     _listed(errors))
  return out


def export(flat: Mapping[str, np.ndarray], rules: Rules,
           broadcast: Mapping[str, int]) -> dict[str, np.ndarray]:
  """A PyTorch-layout state dict (numpy) of a flat Flax tree: the inverse of `convert`."""
  out = {}
  for path, array in flat.items():
    shape = torch_shape(path, tuple(array.shape), broadcast)
    out[torch_key(path, rules)] = to_torch(path, np.asarray(array), shape)
  return out


def block_count(state: Mapping[str, Any], prefix: str) -> int:
  """How many blocks `{prefix}.{b}.*` a state dict has (checking they are numbered 0..n-1)."""
  pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
  found = {int(m.group(1)) for k in state if (m := pattern.match(k))}
  if found and found != set(range(len(found))):
    raise ValueError(f"Blocks {prefix}.* are numbered {sorted(found)}, not 0..{len(found) - 1}.")
  return len(found)


def _not_a(state: Mapping[str, Any], lacking: str, what: str, hint: str) -> None:
  sample = ", ".join(sorted(state)[:6])
  raise ValueError(f"The checkpoint has no {lacking}, so it is not a {what} checkpoint (its keys "
                   f"begin {sample}, ...).{' ' + hint if hint else ''}")


def require(state: Mapping[str, Any], key: str, what: str, hint: str = "") -> np.ndarray:
  """state[key], or an error saying the file is not a `what` checkpoint."""
  if key not in state:
    _not_a(state, key, what, hint)
  return state[key]


# An architecture's signature: one key, or a tuple of alternatives (say, one per checkpoint
# layout), each a key or a tuple of keys that must all be present.
Signature = str | tuple[str | tuple[str, ...], ...]


def _alternatives(signature: Signature) -> list[tuple[str, ...]]:
  options = (signature,) if isinstance(signature, str) else signature
  return [(o,) if isinstance(o, str) else tuple(o) for o in options]


def has_signature(state: Mapping[str, Any], signature: Signature) -> bool:
  """Whether a state dict has all keys of at least one alternative of `signature`."""
  return any(all(k in state for k in keys) for keys in _alternatives(signature))


def require_signature(state: Mapping[str, Any], signature: Signature, what: str,
                      hint: str = "") -> None:
  """An error saying the file is not a `what` checkpoint unless it has `signature`."""
  if not has_signature(state, signature):
    options = [" together with ".join(keys) for keys in _alternatives(signature)]
    lacking = options[0] if len(options) == 1 else ", ".join(options[:-1]) + " or " + options[-1]
    _not_a(state, lacking, what, hint)


def parameter_count(flax_shapes: Mapping[str, tuple[int, ...]]) -> int:
  return sum(math.prod(s) for s in flax_shapes.values())


def coerce(value: Any, default: Any) -> Any:
  """An override value in its field's type (tuples from lists, numbers from strings)."""
  if isinstance(default, tuple) and isinstance(value, (list, tuple)):
    return tuple(value)
  return value
