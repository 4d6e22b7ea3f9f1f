"""Bar charts drawn with Pillow, for the FAIG and rank reports (PNG files and TensorBoard).

Pillow is already a dependency; a plotting library would be one more for two charts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from etils import epath
from PIL import Image, ImageDraw, ImageFont

_BAR, _GAP, _LABEL_W, _PLOT_W, _MARGIN = 12, 3, 230, 420, 8


def bar_chart(labels: Sequence[str], values: Sequence[float], title: str, *,
              log: bool = False, value_format: str = "{:.3g}") -> np.ndarray:
  """A horizontal bar chart as a uint8 RGB array: one labelled bar per value.

  With `log`, bar lengths follow log10 of the value over the positive values' range (FAIG
  scores span several decades: the paper's middle blocks are ~1e-7, the outer ones ~1e-3).
  """
  if len(labels) != len(values):
    raise ValueError(f"{len(labels)} labels for {len(values)} values.")
  font = ImageFont.load_default()
  height = 2 * _MARGIN + 18 + len(values) * (_BAR + _GAP)
  image = Image.new("RGB", (_LABEL_W + _PLOT_W + 90, height), (255, 255, 255))
  draw = ImageDraw.Draw(image)
  draw.text((_MARGIN, _MARGIN), title, fill=(0, 0, 0), font=font)
  lengths = _bar_lengths(values, log)
  for i, (label, value, length) in enumerate(zip(labels, values, lengths)):
    top = _MARGIN + 18 + i * (_BAR + _GAP)
    draw.text((_MARGIN, top), str(label)[:36], fill=(0, 0, 0), font=font)
    if length > 0:
      draw.rectangle([_LABEL_W, top, _LABEL_W + int(length * _PLOT_W), top + _BAR],
                     fill=(66, 110, 180))
    draw.text((_LABEL_W + int(length * _PLOT_W) + 4, top), value_format.format(value),
              fill=(60, 60, 60), font=font)
  return np.asarray(image)


def _bar_lengths(values: Sequence[float], log: bool) -> list[float]:
  """Bar lengths in [0, 1]."""
  values = [float(v) for v in values]
  top = max(values, default=0.0)
  if top <= 0:
    return [0.0] * len(values)
  if not log:
    return [max(v, 0.0) / top for v in values]
  positive = [v for v in values if v > 0]
  low = math.log10(min(positive)) - 0.5  # The smallest positive value still shows a stub.
  span = max(math.log10(top) - low, 1e-12)
  return [(math.log10(v) - low) / span if v > 0 else 0.0 for v in values]


def save_png(path: str, image: np.ndarray) -> None:
  with epath.Path(path).open("wb") as f:  # Local or gs://.
    Image.fromarray(image).save(f, format="PNG")
