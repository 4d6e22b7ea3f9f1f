"""The study's outputs: study.md (mean +- std over seeds per task and arm) and study.png
(test PSNR against trainable share: the LoRA arms' budget curves, full fine-tuning a line)."""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np

from sr_jax.util import plots

Row = dict[str, Any]
_COLOURS = {"uniform": (66, 110, 180), "colora": (200, 90, 40), "full": (60, 60, 60)}
_LABELS = {"uniform": "uniform LoRA", "colora": "CoLoRA"}


def mean_std(values: Sequence[float], digits: int = 2, sign: str = "") -> str:
  """'m +- s' (sample std over seeds), or just 'm' for one value; sign='+' signs the mean."""
  if len(values) == 1:
    return f"{values[0]:{sign}.{digits}f}"
  return (f"{statistics.mean(values):{sign}.{digits}f} +- "
          f"{statistics.stdev(values):.{digits}f}")


def _cell(runs: Sequence[Row], key: str, digits: int = 2, general: bool = False) -> str:
  """Mean +- std of `key` over the runs (of their general-set rows with `general`)."""
  rows = [r.get("general", {}) if general else r for r in runs]
  values = [float(r[key]) for r in rows if key in r]
  if len(values) != len(runs) or not values:
    return "-"
  return mean_std(values, digits)


# Columns shown only when some arm's runs score them: (header, row key, digits, general set?).
_OPTIONAL = (("test LPIPS-alex", "lpips_alex", 4, False), ("test NIQE", "niqe", 2, False),
             ("general PSNR (dB)", "psnr", 2, True), ("general SSIM", "ssim", 4, True),
             ("general LPIPS-alex", "lpips_alex", 4, True), ("general NIQE", "niqe", 2, True))


def _optional_columns(results: dict[str, dict[str, list[Row]]]) -> list[tuple]:
  runs = [r for by_arm in results.values() for rs in by_arm.values() for r in rs]
  return [c for c in _OPTIONAL
          if any(c[1] in (r.get("general", {}) if c[3] else r) for r in runs)]


def summary_rows(results: dict[str, dict[str, list[Row]]],
                 chosen: dict[str, dict[str, float]]) -> list[list[str]]:
  """One markdown row per (task, arm): PSNR, SSIM, the optional scores (LPIPS, NIQE, the
  general set's) where measured, share, adapter MiB, ms/step, steps, rate, seeds. An arm not
  in `chosen` (bicubic, the untouched base) is a reference row: no rate, no steps."""
  lines = []
  optional = _optional_columns(results)
  for task, by_arm in results.items():
    for arm, runs in by_arm.items():
      first = runs[0]
      rate = chosen[task].get(arm)
      share = first.get("trainable_pct")
      lines.append([task, arm, _cell(runs, "psnr"), _cell(runs, "ssim", 4)]
                   + [_cell(runs, key, digits, general) for _, key, digits, general in optional]
                   + [f"{share:.2f}%" if share is not None else "-",
                      f"{first['export_mb']:.3f}" if "export_mb" in first else "-",
                      f"{first['step_ms']:.0f}" if "step_ms" in first else "-",
                      str(first["steps"]) if "steps" in first else "-",
                      f"{rate:g}" if rate is not None else "-", str(len(runs))])
  return lines


def markdown(results: dict[str, dict[str, list[Row]]], chosen: dict[str, dict[str, float]],
             splits: dict[str, list[str]], header: Sequence[str]) -> str:
  """The whole study.md: the command and settings, the table, the splits."""
  cols = (["task", "arm", "test PSNR (dB)", "test SSIM"]
          + [c[0] for c in _optional_columns(results)]
          + ["trainable", "export MiB", "ms/step", "steps",
             "learning rate (chosen on validation)", "seeds"])
  lines = list(header) + ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  lines += ["| " + " | ".join(r) + " |" for r in summary_rows(results, chosen)]
  gains = gain_rows(results)
  if gains:
    lines += ["", "Gains (mean +- std over seeds of the per-seed differences; LPIPS lower is "
              "better, so a negative change is a gain):", "",
              "| task | arm | vs | PSNR change (dB) | LPIPS-alex change | general PSNR change "
              "(dB) |", "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in gains]
  lines += ["", "Splits (fixed; learning rates chosen on 'val', numbers above on 'test'):", ""]
  for name, files in splits.items():
    lines.append(f"- {name} ({len(files)}): {', '.join(files) if files else '-'}")
  return "\n".join(lines) + "\n"


def curve_of(label: str) -> str:
  """The budget curve an arm's label belongs to: 'uniform@7%-adapters+gan' -> 'uniform+gan'."""
  return re.sub(r"@[^%]*%(-adapters)?", "", label)


def _change(runs: Sequence[Row], against: Sequence[Row], key: str, general: bool = False,
            digits: int = 2) -> str:
  """Mean +- std of run - reference over seeds (a one-run reference is every seed's)."""
  refs = list(against) if len(against) == len(runs) else [against[0]] * len(runs)
  pairs = [(r.get("general", {}), a.get("general", {})) if general else (r, a)
           for r, a in zip(runs, refs)]
  diffs = [float(r[key]) - float(a[key]) for r, a in pairs if key in r and key in a]
  if len(diffs) != len(runs):
    return "-"
  return mean_std(diffs, digits, sign="+")


def gain_rows(results: dict[str, dict[str, list[Row]]]) -> list[list[str]]:
  """Each tuned arm against the untouched base, and each LoRA arm against full fine-tuning with
  the same objective (seed by seed), where the study scored the base (a transfer)."""
  lines = []
  for task, by_arm in results.items():
    if "base" not in by_arm:
      continue
    for arm, runs in by_arm.items():
      if arm in ("base", "bicubic", "degraded input"):
        continue
      objective = curve_of(arm).partition("+")[2]
      full = "full" + (f"+{objective}" if objective else "")
      pairs = [("base", by_arm["base"])] + (
          [(full, by_arm[full])] if arm != full and full in by_arm else [])
      for name, against in pairs:
        lines.append([task, arm, name, _change(runs, against, "psnr"),
                      _change(runs, against, "lpips_alex", digits=4),
                      _change(runs, against, "psnr", general=True)])
  return lines


def _points(by_arm: dict[str, list[Row]], curve: str) -> list[tuple[float, float, float]]:
  """(trainable %, mean test PSNR, std over seeds or 0) of one curve's budget points."""
  pts = []
  for arm, runs in by_arm.items():
    if curve_of(arm) == curve and "trainable_pct" in runs[0]:
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
    curves = dict.fromkeys(curve_of(a) for a in by_arm if a.split("@")[0] in _LABELS)
    for curve in curves:
      pts = _points(by_arm, curve)
      family, _, objective = curve.partition("+")
      x, y, err = zip(*pts)
      shares += x
      axes.errorbar(x, y, yerr=err, marker="o" if not objective else "s", capsize=3,
                    label=_LABELS[family] + (f" ({objective})" if objective else ""),
                    color=plots.rgb(_COLOURS[family]), linestyle="-" if not objective else ":")
    for arm, runs in by_arm.items():
      if curve_of(arm).split("+")[0] == "full":
        psnr = [r["psnr"] for r in runs]
        mean, std = statistics.mean(psnr), statistics.stdev(psnr) if len(psnr) > 1 else 0.0
        axes.axhline(mean, color=plots.rgb(_COLOURS["full"]),
                     linestyle=":" if arm.endswith("+gan") else "--",
                     label="full fine-tuning (100%)" + (f" ({arm[5:]})" if arm != "full" else ""))
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
