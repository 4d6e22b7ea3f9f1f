"""torchvision's VGG19 state dict -> sr_jax `VGGFeatures(depth=19)` params, for ESRGAN's loss.

ESRGAN's perceptual loss compares VGG19 conv5_4 features (before ReLU), but no VGG19 ImageNet
weights can be fetched at run time. Users convert torchvision's `vgg19-dcbb9e9d.pth` once:

  python -m sr_jax.convert --arch vgg19 --src vgg19-dcbb9e9d.pth --dst bases/vgg19

torchvision numbers the `features` Sequential by module, ReLUs and pools included, so the 16
convs sit at indices 0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34:
`features.{i}.weight` (cout, cin, 3, 3) -> `conv{b}_{k}/kernel` (3, 3, cin, cout), `.bias` ->
`/bias`. The classifier (`classifier.*`, fully connected) is not needed for features and is
dropped. Any other key, a missing key or a wrong shape is an error naming it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import logging

from sr_jax.convert import state_dict
from sr_jax.models import vgg
from sr_jax.util import exports

NAME = "VGG19"
SIGNATURE = "features.34.weight"  # conv5_4: only VGG19 (without BN) has a conv at index 34.
IGNORED_PREFIX = "classifier."


def torch_indices() -> dict[str, int]:
  """{'conv1_1': 0, 'conv1_2': 2, ..., 'conv5_4': 34}: each conv's index in `features`."""
  indices, position = {}, 0
  for block, widths in enumerate(vgg.VGG_BLOCKS[19], 1):
    for k in range(1, len(widths) + 1):
      indices[f"conv{block}_{k}"] = position
      position += 2  # The conv and its ReLU.
    position += 1  # The max-pool closing the block.
  return indices


def expected_shapes() -> dict[str, tuple[int, ...]]:
  """{torch key: OIHW or bias shape} of every VGG19 `features` tensor."""
  shapes, cin = {}, 3
  widths = [w for block in vgg.VGG_BLOCKS[19] for w in block]
  for index, cout in zip(torch_indices().values(), widths):
    shapes[f"features.{index}.weight"] = (cout, cin, 3, 3)
    shapes[f"features.{index}.bias"] = (cout,)
    cin = cout
  return shapes


def _check_keys(state: Mapping[str, Any]) -> None:
  """Raises a ValueError naming every missing, unexpected or mis-shaped key."""
  shapes = expected_shapes()
  problems = [f"missing {k} (expected shape {s})" for k, s in shapes.items() if k not in state]
  problems += [f"{k} has shape {tuple(np.shape(state[k]))}, expected {s}"
               for k, s in shapes.items() if k in state and tuple(np.shape(state[k])) != s]
  unexpected = sorted(k for k in state if k not in shapes and not k.startswith(IGNORED_PREFIX))
  if unexpected:
    problems.append(f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
  if not problems:
    return
  hint = ""
  if any("running_mean" in k for k in state):
    hint = (" This looks like vgg19_bn (batch norm), which ESRGAN does not use: convert "
            "torchvision's plain vgg19 weights.")
  raise ValueError("Not a torchvision VGG19 state dict:\n  " + "\n  ".join(problems) + hint)


def convert_vgg19(state: Mapping[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
  """Converts torchvision's vgg19 state dict (numpy arrays) to {'conv1_1': {'kernel', 'bias'}}.

  Kernels go from OIHW to HWIO; `classifier.*` is dropped (logged). Raises ValueError naming
  every missing, unexpected or mis-shaped key.
  """
  _check_keys(state)
  dropped = [k for k in state if k.startswith(IGNORED_PREFIX)]
  if dropped:
    logging.info("VGG19: dropping %d classifier tensors (only `features` is used).", len(dropped))
  params = {}
  for name, index in torch_indices().items():
    weight = np.asarray(state[f"features.{index}.weight"], np.float32)
    params[name] = {"kernel": np.ascontiguousarray(weight.transpose(2, 3, 1, 0)),
                    "bias": np.asarray(state[f"features.{index}.bias"], np.float32)}
  return params


def convert_vgg19_file(src: str | os.PathLike, dst: str | os.PathLike, overwrite: bool = False,
                       key: str = "auto") -> dict[str, dict[str, np.ndarray]]:
  """Reads torchvision's vgg19 .pth/.safetensors `src`, converts it and writes directory `dst`.

  `dst` must not exist (or be empty) unless `overwrite`; nothing is written if conversion
  fails. Returns the converted params. Read the result with `sr_jax.models.vgg.load_vgg19`.
  """
  dst = os.path.abspath(os.fspath(dst))
  if os.path.exists(dst) and (not os.path.isdir(dst) or os.listdir(dst)) and not overwrite:
    raise FileExistsError(f"--dst {dst} already exists; choose a new directory or pass "
                          "--overwrite.")
  state, found_key = state_dict.read(src, key)
  params = convert_vgg19(state)
  num_params = sum(a.size for layer in params.values() for a in layer.values())
  meta = {"model": {"name": "vgg19"}, "source": os.path.abspath(os.fspath(src)),
          "source_key": found_key, "num_params": int(num_params),
          "note": "torchvision vgg19 `features` only; classifier.* dropped"}
  exports.save_params(dst, params, meta)
  return params
