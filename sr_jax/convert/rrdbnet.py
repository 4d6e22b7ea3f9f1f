"""ESRGAN RRDBNet checkpoints in any of their three key layouts: renames and hyper-parameters.

Why three: the same network was released by three generations of code, with the same tensors
in the same order under different names. `normalize` renames the two older layouts to
BasicSR's, the names sr_jax.models.rrdbnet's paths map to (`body_3/rdb2/conv5/kernel` ->
`body.3.rdb2.conv5.weight`), so the exact-or-fail mapping applies to all three:

  BasicSR (`params_ema`)    newer xinntao                 oldest ESRGAN code
  conv_first                conv_first                    model.0
  body.{i}.rdb{j}.conv{k}   RRDB_trunk.{i}.RDB{j}.conv{k} model.1.sub.{i}.RDB{j}.conv{k}.0
  conv_body                 trunk_conv                    model.1.sub.{num_block}
  conv_up1, conv_up2        upconv1, upconv2              model.3, model.6 (x3: model.3 only)
  conv_hr, conv_last        HRconv, conv_last             model.8, model.10 (x3: model.5, 7)

(The oldest code is one flattened nn.Sequential: upsamplers are (Upsample, conv, LeakyReLU)
triples, conv_hr is followed by its LeakyReLU.) The layout is told by the key each one alone
has: conv_body, trunk_conv, model.1.sub.0.RDB1.conv1.0.

The architecture is read from the shapes (absent keys fall back to BasicSR's defaults and are
then reported missing by the mapping); `--set field=value` overrides any field:
  num_feat      conv_first (num_feat, in_channels, 3, 3)
  num_out_ch    conv_last (num_out_ch, num_feat, 3, 3)
  num_block     body.*
  num_grow_ch   body.0.rdb1.conv1 (num_grow_ch, num_feat, 3, 3)
  scale         3 when there is conv_up1 but no conv_up2 (one nearest-x3 upsampler, as the
                oldest code's x3; its one-upsampler x2 has the same keys and cannot be
                expressed: a warning is logged). Otherwise, assuming num_in_ch == num_out_ch
                as all released models have: in_channels == num_out_ch * 4 -> 2 and
                * 16 -> 1 (BasicSR pixel-unshuffles the input by 2 or 4), and anything
                else -> 4 with num_in_ch = in_channels. A 12-channel x4 model thus reads
                as x2: convert it with --set scale=4 --set num_in_ch=12.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from absl import logging

from sr_jax.convert import mapping

NAME = "RRDBNet"
RULES = ((r"^body_(\d+)/", r"body.\1/"),)
BROADCAST: dict[str, int] = {}
# The key only each layout has, in the order layouts are tried.
LAYOUT_KEYS = {"BasicSR": "conv_body.weight", "xinntao ESRGAN": "trunk_conv.weight",
               "oldest ESRGAN": "model.1.sub.0.RDB1.conv1.0.weight"}
SIGNATURE = tuple(LAYOUT_KEYS.values())
DEFAULTS = dict(num_out_ch=3, num_feat=64, num_grow_ch=32)  # BasicSR's, for absent keys.
_ESRGAN_TOP = {"conv_first": "conv_first", "trunk_conv": "conv_body", "upconv1": "conv_up1",
               "upconv2": "conv_up2", "HRconv": "conv_hr", "conv_last": "conv_last"}


def layout(state: Mapping[str, Any]) -> str | None:
  """Which layout's key names a state dict uses ('BasicSR', ...), or None if no RRDBNet's."""
  return next((name for name, key in LAYOUT_KEYS.items() if key in state), None)


def _rdb_convs(num_block: int) -> list[tuple[int, int, int]]:
  """(block i, dense block j, conv k) of every dense-block conv, in order."""
  return [(i, j, k) for i in range(num_block) for j in (1, 2, 3) for k in range(1, 6)]


def _esrgan_prefixes(state: Mapping[str, Any]) -> dict[str, str]:
  """{newer xinntao module name: BasicSR module name} for the file's number of blocks."""
  prefixes = dict(_ESRGAN_TOP)
  for i, j, k in _rdb_convs(mapping.block_count(state, "RRDB_trunk")):
    prefixes[f"RRDB_trunk.{i}.RDB{j}.conv{k}"] = f"body.{i}.rdb{j}.conv{k}"
  return prefixes


def _old_prefixes(state: Mapping[str, Any]) -> dict[str, str]:
  """{oldest-layout module name: BasicSR module name} for the file's blocks and upsamplers."""
  rrdbs = {int(m.group(1)) for k in state if (m := re.match(r"model\.1\.sub\.(\d+)\.RDB", k))}
  num_block = max(rrdbs) + 1
  indices = {int(m.group(1)) for k in state if (m := re.match(r"model\.(\d+)\.", k))}
  one_upsampler = bool(indices & {5, 7}) and not indices & {6, 8, 10}
  if one_upsampler:
    logging.warning("The checkpoint has one upsampler (model.3): converting it as x3 (nearest "
                    "x3, as the ESRGAN code's x3). Its x2 model has the same keys and would "
                    "give wrong results: sr_jax's RRDBNet x2 is BasicSR's.")
  top = (("conv_up1", 3), ("conv_hr", 5), ("conv_last", 7)) if one_upsampler else (
      ("conv_up1", 3), ("conv_up2", 6), ("conv_hr", 8), ("conv_last", 10))
  prefixes = {"model.0": "conv_first", f"model.1.sub.{num_block}": "conv_body"}
  prefixes.update({f"model.{index}": name for name, index in top})
  for i, j, k in _rdb_convs(num_block):
    prefixes[f"model.1.sub.{i}.RDB{j}.conv{k}.0"] = f"body.{i}.rdb{j}.conv{k}"
  return prefixes


def normalize(state: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
  """(the state dict with BasicSR key names, {BasicSR key: the file's key}).

  Keys of no known module keep their names (mapping.convert reports them as unknown); the
  second dict covers the file's keys and the keys its layout would have, so errors name keys
  as the file has them.
  """
  kind = layout(state)
  if kind in (None, "BasicSR"):
    return dict(state), {}
  prefixes = _esrgan_prefixes(state) if kind == "xinntao ESRGAN" else _old_prefixes(state)
  names = {f"{new}.{leaf}": f"{old}.{leaf}" for old, new in prefixes.items()
           for leaf in ("weight", "bias")}
  renamed, origin = {}, {}
  for key, value in state.items():
    module, _, leaf = key.rpartition(".")
    new = f"{prefixes[module]}.{leaf}" if module in prefixes else key
    if new in renamed:
      raise ValueError(f"The checkpoint ({kind} layout) has both {origin[new]} and {key}, "
                       f"which are the same tensor ({new}) in BasicSR's names; remove one.")
    renamed[new], origin[new] = value, key
  return renamed, {**names, **origin}


def _dim(state: Mapping[str, Any], key: str, axis: int) -> int | None:
  """state[key].shape[axis], or None when the key is absent (convert reports it later)."""
  return int(state[key].shape[axis]) if key in state else None


def _first(*values: int | None) -> int | None:
  return next((v for v in values if v is not None), None)


def _scale(state: Mapping[str, Any], in_channels: int, num_out_ch: int) -> tuple[int, int]:
  """(scale, num_in_ch) from the upsamplers present and conv_first's input channels."""
  present = {key.rpartition(".")[0] for key in state}
  if "conv_up1" in present and "conv_up2" not in present:
    return 3, in_channels
  for scale, factor in ((2, 4), (1, 16)):  # BasicSR pixel-unshuffles by 2 / 4 first.
    if in_channels == num_out_ch * factor:
      return scale, num_out_ch
  return 4, in_channels


def infer_architecture(state: Mapping[str, Any]) -> dict[str, Any]:
  """The RRDBNet fields a state dict (any layout) implies, before the user's overrides."""
  state, _ = normalize(state)
  num_out_ch = _first(_dim(state, "conv_last.weight", 0), DEFAULTS["num_out_ch"])
  num_feat = _first(_dim(state, "conv_first.weight", 0), _dim(state, "conv_body.weight", 0),
                    _dim(state, "conv_last.weight", 1), DEFAULTS["num_feat"])
  in_channels = _first(_dim(state, "conv_first.weight", 1), num_out_ch)
  scale, num_in_ch = _scale(state, in_channels, num_out_ch)
  return dict(
      num_in_ch=num_in_ch,
      num_out_ch=num_out_ch,
      scale=scale,
      num_feat=num_feat,
      num_block=mapping.block_count(state, "body"),
      num_grow_ch=_first(_dim(state, "body.0.rdb1.conv1.weight", 0), DEFAULTS["num_grow_ch"]),
  )
