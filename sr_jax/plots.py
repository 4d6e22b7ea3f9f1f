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


BAR_COLOUR, MARKED_COLOUR = (66, 110, 180), (220, 120, 30)


def _short(label: str, chars: int = 36) -> str:
  """The label, or its end when too long (a path's last parts tell layers apart)."""
  label = str(label)
  return label if len(label) <= chars else "..." + label[-(chars - 3):]


def bar_chart(labels: Sequence[str], values: Sequence[float], title: str, *,
              log: bool = False, value_format: str = "{:.3g}",
              marked: Sequence[bool] | None = None, marked_note: str = "") -> np.ndarray:
  """A horizontal bar chart as a uint8 RGB array: one labelled bar per value, in the given
  order; bars where `marked` is true are drawn in MARKED_COLOUR, followed by `marked_note`
  (also explained under the title).

  With `log`, bar lengths follow log10 of the value over the positive values' range (FAIG
  scores span several decades: the paper's middle blocks are ~1e-7, the outer ones ~1e-3).
  """
  marked = list(marked) if marked is not None else [False] * len(values)
  if not len(labels) == len(values) == len(marked):
    raise ValueError(f"{len(labels)} labels, {len(values)} values, {len(marked)} marks.")
  font = ImageFont.load_default()
  head = 18 + (14 if any(marked) else 0)
  height = 2 * _MARGIN + head + len(values) * (_BAR + _GAP)
  image = Image.new("RGB", (_LABEL_W + _PLOT_W + 90, height), (255, 255, 255))
  draw = ImageDraw.Draw(image)
  draw.text((_MARGIN, _MARGIN), title, fill=(0, 0, 0), font=font)
  if any(marked):
    draw.text((_MARGIN, _MARGIN + 14), f"orange bars: {marked_note or 'marked'}",
              fill=MARKED_COLOUR, font=font)
  lengths = _bar_lengths(values, log)
  for i, (label, value, length) in enumerate(zip(labels, values, lengths)):
    top = _MARGIN + head + i * (_BAR + _GAP)
    draw.text((_MARGIN, top), _short(label), fill=(0, 0, 0), font=font)
    if length > 0:
      draw.rectangle([_LABEL_W, top, _LABEL_W + int(length * _PLOT_W), top + _BAR],
                     fill=MARKED_COLOUR if marked[i] else BAR_COLOUR)
    text = value_format.format(value) + (f" ({marked_note})" if marked[i] and marked_note else "")
    draw.text((_LABEL_W + int(length * _PLOT_W) + 4, top), text, fill=(60, 60, 60), font=font)
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
