"""Reading PyTorch state dicts from .pth/.pt and .safetensors files into numpy arrays.

`.safetensors` is read with the `safetensors` package's numpy loader, so it needs no PyTorch.
`.pth`/`.pt` need PyTorch (the optional `torch` extra) and are opened with
`torch.load(weights_only=True)`, which refuses pickled code: a checkpoint can never execute
anything on load. Checkpoints written by BasicSR-style trainers hold the weights under 'params'
or 'params_ema' (sometimes both); others under 'state_dict' or 'model', or at the top level.
A `module.` prefix (from DataParallel) is stripped.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

StateDict = dict[str, np.ndarray]
# Where trainers nest the weights, in the order `key='auto'` tries them. EMA weights are the
# ones BasicSR evaluates and releases when present.
NESTED_KEYS = ("params_ema", "params", "state_dict", "model")
SUFFIXES = (".pth", ".pt", ".safetensors")


def _load_torch(path: str) -> Mapping[str, Any]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f"Reading {path} needs PyTorch, the optional 'torch' extra: install the CPU build with "
        "`pip install torch==2.13.0`, or convert the file to .safetensors first.") from e
  try:
    return torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
    raise ValueError(f"Cannot read {path} as a PyTorch checkpoint (tensors only, no pickled "
                     f"code): {type(e).__name__}: {e}") from e


def _load_safetensors(path: str) -> Mapping[str, Any]:
  try:
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"Reading {path} needs the 'safetensors' package: "
                      "`pip install safetensors`.") from e
  try:
    return load_file(path)
  except Exception as e:  # SafetensorError, TypeError (dtype numpy lacks), ...
    raise ValueError(f"Cannot read {path} as a .safetensors file: {type(e).__name__}: {e}") from e


def _to_numpy(value: Any) -> np.ndarray:
  """A float32 (or integer) numpy copy of a torch tensor or array."""
  if hasattr(value, "detach"):  # A torch tensor; bfloat16/float16 go through float32.
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.float()
    value = value.numpy()
  array = np.asarray(value)
  floating = np.issubdtype(array.dtype, np.floating) or array.dtype.name == "bfloat16"
  return array.astype(np.float32) if floating else array


def _is_tensor_dict(obj: Any) -> bool:
  return isinstance(obj, Mapping) and bool(obj) and all(
      isinstance(k, str) and (hasattr(v, "shape") and hasattr(v, "dtype"))
      for k, v in obj.items())


def select_weights(obj: Any, key: str = "auto", where: str = "the checkpoint") -> tuple[
    Mapping[str, Any], str]:
  """(the tensor dict, the key it was found under: '' for the top level).

  `key='auto'` takes the first of NESTED_KEYS present, else the top level; any other value
  names the entry to use ('' for the top level).
  """
  if not isinstance(obj, Mapping):
    raise ValueError(f"{where} holds a {type(obj).__name__}, not a state dict.")
  if key == "auto":
    key = next((k for k in NESTED_KEYS if k in obj and isinstance(obj[k], Mapping)), "")
  if key:
    if key not in obj:
      raise ValueError(f"{where} has no entry {key!r}; its top-level keys are "
                       f"{sorted(map(str, obj))[:12]}. Pass --key with one of them, or --key='' "
                       "for the top level.")
    obj = obj[key]
  if not _is_tensor_dict(obj):
    entries = sorted(k for k, v in obj.items() if isinstance(v, Mapping))
    raise ValueError(f"{where}{f' [{key!r}]' if key else ''} is not a dict of tensors"
                     f"{f'; nested dicts: {entries}, choose one with --key' if entries else ''}.")
  return obj, key


def strip_prefix(state: Mapping[str, Any], prefix: str = "module.") -> dict[str, Any]:
  """Drops a prefix every key has (DataParallel's 'module.'); otherwise returns a copy."""
  if state and all(k.startswith(prefix) for k in state):
    return {k[len(prefix):]: v for k, v in state.items()}
  return dict(state)


def read(path: str | os.PathLike, key: str = "auto") -> tuple[StateDict, str]:
  """(state dict as float32 numpy arrays, the key the weights were under) of a checkpoint."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Checkpoint file {path} does not exist.")
  suffix = os.path.splitext(path)[1].lower()
  if suffix not in SUFFIXES:
    raise ValueError(f"{path}: unknown checkpoint format {suffix!r}; expected one of {SUFFIXES}.")
  raw = _load_safetensors(path) if suffix == ".safetensors" else _load_torch(path)
  weights, found = select_weights(raw, key, path)
  return {k: _to_numpy(v) for k, v in strip_prefix(weights).items()}, found
