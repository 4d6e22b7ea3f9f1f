"""BasicSR MSRResNet (SRResNet without batch norm) checkpoints: key rules and hyper-parameters.

Keys are sr_jax.models.srresnet's paths with dots: `body.7.conv2.weight` -> `body_7/conv2/
kernel`; `conv_first`, `upconv1`, `upconv2` (x4 only), `conv_hr` and `conv_last` keep their
names. The file is recognised by upconv1 together with conv_hr (RRDBNet files have conv_up1 /
upconv1 with HRconv instead).

The architecture is read from the shapes:
  num_in_ch, num_feat  conv_first (num_feat, num_in_ch, 3, 3)
  num_out_ch           conv_last (num_out_ch, num_feat, 3, 3)
  num_block            body.*
  scale                4 when upconv2 exists (two x2 pixel shuffles), else s with upconv1's
                       num_feat * s * s outputs (2 or 3)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sr_jax.convert import mapping

NAME = "MSRResNet"
RULES = ((r"^body_(\d+)/", r"body.\1/"),)
BROADCAST: dict[str, int] = {}
SIGNATURE = (("upconv1.weight", "conv_hr.weight"),)
SCALES = {4: 2, 9: 3}  # upconv1's outputs / num_feat -> scale, without upconv2.


def _scale(state: Mapping[str, Any], num_feat: int) -> int:
  """4 with upconv2, else the pixel-shuffle factor upconv1's output channels imply."""
  if "upconv2.weight" in state or "upconv2.bias" in state:
    return 4
  upconv1 = mapping.require(state, "upconv1.weight", NAME)
  ratio, rest = divmod(int(upconv1.shape[0]), num_feat)
  if rest or ratio not in SCALES:
    raise ValueError(f"upconv1.weight has shape {tuple(upconv1.shape)}: without upconv2, "
                     f"MSRResNet x2 / x3 needs {4 * num_feat} or {9 * num_feat} outputs "
                     f"(num_feat {num_feat} * 4 or 9). The file is not a BasicSR MSRResNet, "
                     "or it lost its upconv2 tensors.")
  return SCALES[ratio]


def infer_architecture(state: Mapping[str, Any]) -> dict[str, Any]:
  """The MSRResNet fields a state dict implies (before the user's overrides)."""
  upconv1 = mapping.require(state, "upconv1.weight", NAME)
  first = state.get("conv_first.weight")
  last = state.get("conv_last.weight")
  num_feat = int(first.shape[0] if first is not None else upconv1.shape[1])
  return dict(
      num_in_ch=int(first.shape[1]) if first is not None else 3,
      num_out_ch=int(last.shape[0]) if last is not None else 3,
      num_feat=num_feat,
      num_block=mapping.block_count(state, "body"),
      scale=_scale(state, num_feat),
  )
