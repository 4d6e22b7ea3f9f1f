"""Figures, drawn with matplotlib (Agg, no display): the FAIG and rank bar charts of a CoLoRA
job and the adaptation study's PSNR-against-budget curves.

Each figure comes back as a uint8 RGB array (TensorBoard takes images as arrays) and is saved
with `save_png`; axes carry labels with units, and seeds are shown as mean +- std.
"""

from __future__ import annotations

import io

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # Before pyplot: never look for a display.
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top
import numpy as np  # noqa: E402
from etils import epath  # noqa: E402
from PIL import Image  # noqa: E402

BAR_COLOUR, MARKED_COLOUR = (66, 110, 180), (220, 120, 30)
WIDTH_IN, DPI = 6.4, 100  # 640 pixels: readable at the width of a README.


def rgb(colour: tuple[int, int, int]) -> tuple[float, float, float]:
  return tuple(c / 255 for c in colour)


def _short(label: str, chars: int = 36) -> str:
  """The label, or its end when too long (a path's last parts tell layers apart)."""
  label = str(label)
  return label if len(label) <= chars else "..." + label[-(chars - 3):]


def to_array(figure: plt.Figure) -> np.ndarray:
  """The figure rendered as a uint8 RGB array; closes it."""
  figure.canvas.draw()
  image = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
  plt.close(figure)
  return image


def bar_chart(labels: Sequence[str], values: Sequence[float], title: str, *,
              log: bool = False, value_format: str = "{:.3g}",
              marked: Sequence[bool] | None = None, marked_note: str = "",
              xlabel: str = "") -> np.ndarray:
  """A horizontal bar chart as a uint8 RGB array: one labelled bar per value, top to bottom in
  the given order; bars where `marked` is true are drawn in MARKED_COLOUR and their value is
  followed by `marked_note` (also in the legend). With `log` the value axis is logarithmic
  (FAIG scores span several decades: the paper's middle blocks ~1e-7, the outer ones ~1e-3);
  values <= 0 then get no bar."""
  marked = list(marked) if marked is not None else [False] * len(values)
  if not len(labels) == len(values) == len(marked):
    raise ValueError(f"{len(labels)} labels, {len(values)} values, {len(marked)} marks.")
  values = [float(v) for v in values]
  figure, axes = plt.subplots(figsize=(WIDTH_IN, 1.2 + 0.22 * max(len(values), 1)), dpi=DPI)
  ys = np.arange(len(values))
  shown = [v if (v > 0 or not log) else 0.0 for v in values]
  colours = [rgb(MARKED_COLOUR if m else BAR_COLOUR) for m in marked]
  axes.barh(ys, shown, color=colours, antialiased=False)
  axes.set_yticks(ys, [_short(l) for l in labels], fontsize=7)
  axes.invert_yaxis()
  if log and any(v > 0 for v in values):
    axes.set_xscale("log")
    positive = [v for v in values if v > 0]
    axes.set_xlim(min(positive) / 3, max(positive) * 30)
  elif values:
    axes.set_xlim(0, max(max(values), 1e-12) * 1.35)
  for y, value, m in zip(ys, values, marked):
    text = value_format.format(value) + (f" ({marked_note})" if m and marked_note else "")
    axes.text(value if value > 0 else axes.get_xlim()[0], y, " " + text, va="center", fontsize=7)
  axes.set_title(title, fontsize=9)
  axes.set_xlabel(xlabel + (" (log scale)" if log else ""), fontsize=8)
  if any(marked):
    axes.legend(handles=[matplotlib.patches.Patch(color=rgb(MARKED_COLOUR),
                                                  label=marked_note or "marked")],
                fontsize=7, loc="lower right")
  figure.tight_layout()
  return to_array(figure)


def save_png(path: str, image: np.ndarray) -> None:
  with epath.Path(path).open("wb") as f:  # Local or gs://.
    Image.fromarray(image).save(f, format="PNG")


def png_bytes(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  return buffer.getvalue()


def panel_grid(count: int, height_in: float = 3.0) -> tuple[plt.Figure, list[plt.Axes]]:
  """A figure of `count` stacked panels at the README's width."""
  figure, axes = plt.subplots(max(count, 1), 1, figsize=(WIDTH_IN, height_in * max(count, 1)),
                              dpi=DPI, squeeze=False)
  return figure, [a[0] for a in axes]


def log_ticks(axes: plt.Axes, values: Sequence[float], unit: str = "%") -> None:
  """Ticks at the values themselves on a log axis, labelled with their unit."""
  values = sorted(set(float(v) for v in values if v > 0))
  if values:
    axes.set_xscale("log")
    axes.set_xticks(values, [f"{v:.3g}{unit}" for v in values])  # 19.9997 -> 20.
    axes.minorticks_off()
    axes.set_xlim(values[0] / 1.6, values[-1] * 1.6)



