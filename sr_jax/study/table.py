"""The study's outputs: study.md (mean +- std over seeds per task and arm) and study.png
(test PSNR against trainable share: the LoRA arms' budget curves, full fine-tuning a line)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np

from sr_jax import plots

Row = dict[str, Any]
_COLOURS = {"uniform": (66, 110, 180), "colora": (200, 90, 40), "full": (60, 60, 60)}
_LABELS = {"uniform": "uniform LoRA", "colora": "CoLoRA"}


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


def _points(by_arm: dict[str, list[Row]], family: str) -> list[tuple[float, float, float]]:
  """(trainable %, mean test PSNR, std over seeds or 0) of one family's budget points."""
  pts = []
  for arm, runs in by_arm.items():
    if arm.split("@")[0] == family:
      psnr = [r["psnr"] for r in runs]
      pts.append((runs[0]["trainable_pct"], statistics.mean(psnr),
                  statistics.stdev(psnr) if len(psnr) > 1 else 0.0))
  return sorted(pts)


def budget_plot(results: dict[str, dict[str, list[Row]]]) -> np.ndarray:
  """Test PSNR against trainable share (log x), one panel per task: the uniform LoRA and
  CoLoRA budget curves with error bars (std over seeds) where a point has several seeds, full
  fine-tuning a horizontal line with its std as a band."""
  figure, panels = plots.panel_grid(len(results))
  for axes, (task, by_arm) in zip(panels, results.items()):
    shares = []
    for family in ("uniform", "colora"):
      pts = _points(by_arm, family)
      if not pts:
        continue
      x, y, err = zip(*pts)
      shares += x
      axes.errorbar(x, y, yerr=err, marker="o", capsize=3, label=_LABELS[family],
                    color=plots.rgb(_COLOURS[family]))
    for arm, runs in by_arm.items():
      if arm == "full":
        psnr = [r["psnr"] for r in runs]
        mean, std = statistics.mean(psnr), statistics.stdev(psnr) if len(psnr) > 1 else 0.0
        axes.axhline(mean, color=plots.rgb(_COLOURS["full"]), linestyle="--",
                     label="full fine-tuning (100%)")
        if std:
          axes.axhspan(mean - std, mean + std, color=plots.rgb(_COLOURS["full"]), alpha=0.12)
    plots.log_ticks(axes, shares)
    axes.set_title(task, fontsize=10)
    axes.set_xlabel("trainable parameters (% of the base, log scale)", fontsize=8)
    axes.set_ylabel("test PSNR (dB)", fontsize=8)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="lower right")
  figure.suptitle("Mean +- std over seeds (points without bars: one seed)", fontsize=8)
  figure.tight_layout()
  return plots.to_array(figure)
