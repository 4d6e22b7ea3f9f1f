"""The study's outputs: study.md (mean +- std over seeds per task and arm) and study.png
(test PSNR against trainable share: the LoRA arms' budget curves, full fine-tuning a line)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

Row = dict[str, Any]
_COLOURS = {"uniform": (66, 110, 180), "colora": (200, 90, 40), "full": (60, 60, 60)}


def mean_std(values: Sequence[float]) -> str:
  """'m +- s' (sample std over seeds), or just 'm' for one value."""
  if len(values) == 1:
    return f"{values[0]:.2f}"
  return f"{statistics.mean(values):.2f} +- {statistics.stdev(values):.2f}"


def _mean_std3(values: Sequence[float]) -> str:
  if len(values) == 1:
    return f"{values[0]:.4f}"
  return f"{statistics.mean(values):.4f} +- {statistics.stdev(values):.4f}"


def summary_rows(results: dict[str, dict[str, list[Row]]],
                 chosen: dict[str, dict[str, float]]) -> list[list[str]]:
  """One markdown row per (task, arm): PSNR, SSIM, share, adapter MiB, steps, rate, seeds."""
  lines = []
  for task, by_arm in results.items():
    for arm, runs in by_arm.items():
      first = runs[0]
      lines.append([task, arm, mean_std([r["psnr"] for r in runs]),
                    _mean_std3([r["ssim"] for r in runs]), f"{first['trainable_pct']:.2f}%",
                    f"{first.get('export_mb', float('nan')):.3f}", str(first["steps"]),
                    f"{chosen[task][arm]:g}", str(len(runs))])
  return lines


def markdown(results: dict[str, dict[str, list[Row]]], chosen: dict[str, dict[str, float]],
             splits: dict[str, list[str]], header: Sequence[str]) -> str:
  """The whole study.md: the command and settings, the table, the splits."""
  cols = ["task", "arm", "test PSNR (dB)", "test SSIM", "trainable", "export MiB", "steps",
          "learning rate (chosen on validation)", "seeds"]
  lines = list(header) + ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  lines += ["| " + " | ".join(r) + " |" for r in summary_rows(results, chosen)]
  lines += ["", "Splits (fixed; learning rates chosen on 'val', numbers above on 'test'):", ""]
  for name, files in splits.items():
    lines.append(f"- {name} ({len(files)}): {', '.join(files) if files else '-'}")
  return "\n".join(lines) + "\n"


def _points(by_arm: dict[str, list[Row]], family: str) -> list[tuple[float, float]]:
  pts = [(runs[0]["trainable_pct"], statistics.mean(r["psnr"] for r in runs))
         for arm, runs in by_arm.items() if arm.split("@")[0] == family]
  return sorted(pts)


def budget_plot(results: dict[str, dict[str, list[Row]]], width: int = 560,
                height: int = 360) -> np.ndarray:
  """PSNR against trainable share (log x), one panel per task: uniform and CoLoRA curves,
  full fine-tuning a horizontal line."""
  font = ImageFont.load_default()
  panels = [(t, a) for t, a in results.items()]
  image = Image.new("RGB", (width, height * len(panels)), (255, 255, 255))
  draw = ImageDraw.Draw(image)
  for i, (task, by_arm) in enumerate(panels):
    top = i * height
    series = {f: _points(by_arm, f) for f in ("uniform", "colora")}
    full = [statistics.mean(r["psnr"] for r in runs) for a, runs in by_arm.items()
            if a == "full"]
    ys = [y for pts in series.values() for _, y in pts] + full
    xs = [x for pts in series.values() for x, _ in pts] or [1.0]
    lo_y, hi_y = min(ys) - 0.2, max(ys) + 0.2
    lo_x, hi_x = np.log10(min(xs) / 1.5), np.log10(max(xs) * 1.5)
    box = (60, top + 30, width - 20, top + height - 40)

    def to_xy(x, y, box=box, lo_x=lo_x, hi_x=hi_x, lo_y=lo_y, hi_y=hi_y):
      px = box[0] + (np.log10(x) - lo_x) / (hi_x - lo_x) * (box[2] - box[0])
      py = box[3] - (y - lo_y) / (hi_y - lo_y) * (box[3] - box[1])
      return float(px), float(py)

    draw.rectangle(box, outline=(0, 0, 0))
    draw.text((box[0], top + 8), f"{task}: test PSNR vs trainable share (log)", fill=(0, 0, 0),
              font=font)
    draw.text((4, box[1]), f"{hi_y:.1f}", fill=(0, 0, 0), font=font)
    draw.text((4, box[3] - 10), f"{lo_y:.1f}", fill=(0, 0, 0), font=font)
    for x in sorted(set(xs)):
      draw.text((to_xy(x, lo_y)[0] - 10, box[3] + 4), f"{x:.1f}%", fill=(0, 0, 0), font=font)
    for value in full:
      y = to_xy(1.0, value)[1]
      draw.line([(box[0], y), (box[2], y)], fill=_COLOURS["full"], width=1)
      draw.text((box[2] - 90, y - 12), "full fine-tuning", fill=_COLOURS["full"], font=font)
    for k, (family, pts) in enumerate(series.items()):
      xy = [to_xy(x, y) for x, y in pts]
      if len(xy) > 1:
        draw.line(xy, fill=_COLOURS[family], width=2)
      for px, py in xy:
        draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=_COLOURS[family])
      draw.text((box[0] + 8, box[1] + 6 + 12 * k), "uniform LoRA" if family == "uniform"
                else "CoLoRA", fill=_COLOURS[family], font=font)
  return np.asarray(image)
