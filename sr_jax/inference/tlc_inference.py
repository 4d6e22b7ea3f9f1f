"""Large-image inference with TLC (sr_jax.models.tlc): when to convert a model, and tile context.

NAFNet and Restormer gather statistics over their whole input (channel attention's global
pooling, transposed attention). Restoring a large image, whole or tile by tile, therefore
mixes content the model never saw together in training, and each tile gets its own statistics:
tiles of different tone. TLC gathers them in windows of 1.5x the training crop instead, grown
by how much larger the image is than the training images (`scaled_window`), when the export
records their size.

  mode 'auto'  TLC on for NAFNet and Restormer when the training crop size is known (given, or
               recorded in the checkpoint's meta.json); a window that covers the input is the
               global operation, so inputs up to the window are restored exactly as before.
  mode 'on'    as 'auto', but an error when the model has no global statistics or the crop
               size is unknown.
  mode 'off'   the model as trained (global statistics).

With TLC on, each tile also sees `context` pixels of its surroundings (by default half the
window, `default_context`): the windows of a tile's outer pixels then hold what they hold in the
whole image, so tiles agree with whole-image inference (and with each other) to within rounding
far more closely than tiles without context. A tile then costs (tile + 2 context)^2 pixels of
memory and compute.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
from absl import logging

from sr_jax.models import tlc
from sr_jax.util import exports

MODES = ("auto", "on", "off")


@dataclasses.dataclass(frozen=True)
class LocalPlan:
  """What TLC does for one inference run: the model's window (0 = off) and the tile context."""
  window: int
  context: int

  def describe(self) -> str:
    if not self.window:
      return "global statistics (TLC off)"
    return f"TLC windows of {self.window} px, tile context {self.context} px"


def supports_tlc(model: nn.Module) -> bool:
  """Whether the model has global statistics TLC can make local (a `tlc_window` field)."""
  return "tlc_window" in {f.name for f in dataclasses.fields(model)}


def recorded_train_size(*metas: Mapping[str, Any] | None) -> int:
  """The training crop size recorded in checkpoint metas (the first that has one; 0 if none).

  Reads meta['train_size'], else the crop size in a recorded run config (meta['config'], JSON).
  """
  for meta in metas:
    if not meta:
      continue
    if meta.get("train_size"):
      return int(meta["train_size"])
    config = meta.get("config")
    if isinstance(config, str):
      try:
        config = json.loads(config)
      except json.JSONDecodeError:
        continue
    crop = ((config or {}).get("data") or {}).get("crop_size")
    if crop:
      return int(crop)
  return 0


def train_size_of(checkpoint_dir: str, adapter_dir: str | None = None) -> int:
  """The training crop size an adapter (first) or a parameter directory records; 0 if none."""
  metas = [exports.read_params_meta(d) for d in (adapter_dir, checkpoint_dir) if d]
  return recorded_train_size(*metas)


def train_image_side_of(checkpoint_dir: str, adapter_dir: str | None = None) -> int:
  """The median short side of the training images an adapter (first) or a parameter directory
  records (meta 'train_image_side'); 0 if none (exports made before it was recorded)."""
  for directory in (adapter_dir, checkpoint_dir):
    meta = exports.read_params_meta(directory) if directory else None
    if meta and meta.get("train_image_side"):
      return int(meta["train_image_side"])
  return 0


def scaled_window(train_size: int, image_side: int = 0, train_image_side: int = 0) -> int:
  """1.5x the training crop, times how much larger the image is than the training images.

  A crop of the training images covered a share of their scene; on a photograph several times
  larger (in pixels, the same scene), the same window covers a far smaller share, and the
  statistics it gathers are ones the network never saw (on a 4000x3000 photo, 96-pixel windows
  of a network trained on 64-pixel crops of ~500-pixel photos cost 0.95 dB against whole-image
  inference). Scaling the window by image side / training image side keeps the share; images
  no larger than the training images keep 1.5x the crop.
  """
  window = tlc.window_for(train_size)
  if image_side > train_image_side > 0:
    window = int(round(window * image_side / train_image_side))
  return window


def default_context(window: int, multiple: int) -> int:
  """Half the TLC window, rounded up to a multiple of the model's downsampling."""
  half = -(-window // 2)
  return -(-half // multiple) * multiple


def plan(model: nn.Module, mode: str, train_size: int, *, context: int = -1,
         multiple: int = 1, name: str = "the model", image_side: int = 0,
         train_image_side: int = 0) -> LocalPlan:
  """Decides TLC for `model` (see the module docstring); `context` < 0 picks the default.
  With `image_side` and `train_image_side` (the short sides of the image to restore and of the
  training images) the window grows with the image (`scaled_window`).

  Raises ValueError for an unknown mode, or mode 'on' without a model or crop size to use.
  """
  if mode not in MODES:
    raise ValueError(f"Unknown TLC mode {mode!r}; use one of {MODES}.")
  if train_size < 0:
    raise ValueError(f"The training crop size must be >= 0 (0 = as recorded), got {train_size}.")
  if mode == "off" or (mode == "auto" and not supports_tlc(model)):
    return LocalPlan(0, max(context, 0))
  if not supports_tlc(model):
    raise ValueError(f"TLC (--tlc on) applies to NAFNet and Restormer; {name} "
                     f"({type(model).__name__}) has no global statistics. Use --tlc auto or off.")
  if not train_size:
    if mode == "on":
      raise ValueError(f"TLC needs the training crop size, and {name} records none: pass "
                       "--train_size (e.g. 256, config.data.crop_size of its training).")
    logging.warning("%s records no training crop size, so TLC is off: tiles may differ in "
                    "tone. Pass --train_size (config.data.crop_size of its training).", name)
    return LocalPlan(0, max(context, 0))
  window = scaled_window(train_size, image_side, train_image_side)
  return LocalPlan(window, default_context(window, multiple) if context < 0 else context)


def convert(model: nn.Module, local: LocalPlan) -> nn.Module:
  """The model with the plan's TLC window (unchanged when TLC is off)."""
  return model.clone(tlc_window=local.window) if local.window else model
