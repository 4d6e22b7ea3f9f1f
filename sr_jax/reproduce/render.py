"""Markdown from the files jobs and tools leave in a workdir: results rows, seeds, tool reports.

Jobs write their results table as rows to `W/results.json` (sr_jax.train.report); tools write a
markdown report with `--output`. These helpers read them back, summarise seeds as mean +- std
with the range, and lay the rows out as a table.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from sr_jax.util import jsonfile

Rows = dict[str, dict[str, Any]]
# Rows every arm of an SR comparison shares: bicubic, and the untouched base on both sets.
SHARED_ROWS = ("bicubic", "base", "base @ general set")


def results(run_dir: str) -> Rows:
  """The rows of a finished job's results table ({arm: {metric: value}})."""
  path = os.path.join(run_dir, "results.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} is missing: the job in {run_dir} has not finished (re-run "
                            "the reproduction to complete it).")
  return jsonfile.read(path)


def spread(values: Sequence[float], digits: int) -> str:
  """'21.70' for one value; '21.92 +- 0.41 (21.50-22.47)' for several (mean +- std, range)."""
  v = np.asarray(values, dtype=np.float64)
  if v.size == 1:
    return f"{v[0]:.{digits}f}"
  return (f"{v.mean():.{digits}f} +- {v.std(ddof=1):.{digits}f} "
          f"({v.min():.{digits}f}-{v.max():.{digits}f})")


def seed_table(runs: Sequence[Rows], columns: Sequence[tuple[str, str, Callable[[list], str]]],
               arms: Sequence[str] | None = None) -> str:
  """One row per arm over several runs (seeds): `columns` are (key, header, format of the list
  of that key's values over the runs). Arms missing from a run, and keys missing from an arm,
  are '-'."""
  arms = list(arms) if arms is not None else list(dict.fromkeys(a for r in runs for a in r))
  lines = ["| arm | " + " | ".join(h for _, h, _ in columns) + " |",
           "|---|" + "---|" * len(columns)]
  for arm in arms:
    cells = []
    for key, _, fmt in columns:
      values = [r[arm][key] for r in runs if arm in r and key in r[arm]]
      cells.append(fmt(values) if values else "-")
    lines.append(f"| {arm} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def first(fmt: str) -> Callable[[list], str]:
  """A column that takes the first run's value (constants such as parameter counts)."""
  return lambda values: fmt.format(values[0])


def mean(fmt: str) -> Callable[[list], str]:
  """A column of the mean over runs (costs such as ms/step)."""
  return lambda values: fmt.format(float(np.mean(values)))


def tables_in(markdown: str) -> list[str]:
  """The markdown tables in a report, each as its lines (header, rule, rows)."""
  found, current = [], []
  for line in markdown.splitlines() + [""]:
    if line.startswith("|"):
      current.append(line)
    elif current:
      found.append("\n".join(current))
      current = []
  return found


def table_rows(table: str) -> list[dict[str, str]]:
  """A markdown table's rows as {header: cell} (cells stripped)."""
  lines = [l.strip().strip("|") for l in table.splitlines()]
  header = [h.strip() for h in lines[0].split("|")]
  return [dict(zip(header, (c.strip() for c in l.split("|")))) for l in lines[2:]]


def report_section(path: str, heading: str | None = None) -> str:
  """A tool's markdown report (`--output`), or the part under the first heading that starts
  with `heading` (that heading line included, without its #s) up to the next heading of the
  same or a higher level."""
  with open(path, encoding="utf-8") as f:
    text = f.read()
  if heading is None:
    return text.strip()
  match = re.search(rf"^(#+) ({re.escape(heading)}.*)$", text, re.MULTILINE)
  if not match:
    raise ValueError(f"{path} has no section '{heading}'.")
  level = len(match.group(1))
  rest = text[match.end():]
  stop = re.search(rf"^#{{1,{level}}} ", rest, re.MULTILINE)
  return f"**{match.group(2).strip()}**\n\n" + rest[:stop.start() if stop else len(rest)].strip()


METRICS = {  # key -> (header, format) for rows_table.
    "psnr": ("PSNR (dB)", "{:.2f}"), "ssim": ("SSIM", "{:.3f}"),
    "lpips_alex": ("LPIPS-alex", "{:.3f}"), "rmse": ("RMSE", "{:.2f}"),
    "niqe": ("NIQE", "{:.2f}"), "consistency": ("consistency (1e-5)", "{:.1f}"),
    "trainable": ("trainable params", "{:,.0f}"), "trainable_pct": ("% of base", "{:.2f}"),
    "export_mb": ("export MiB", "{:.2f}"), "step_ms": ("ms/step", "{:.0f}"),
    "step_memory_mb": ("step memory MiB", "{:.0f}"),
    "seconds_per_image": ("s/image", "{:.2f}"),
}


def study_report(workdir: str) -> str:
  """A study's study.md (python -m sr_jax.study) as it wrote it, without its title line."""
  text = report_section(os.path.join(workdir, "study.md"))
  return text.split("\n", 1)[1].strip() if text.startswith("#") else text


def rows_table(rows: Sequence[tuple[str, dict[str, Any]]], keys: Sequence[str],
               first_header: str = "arm") -> str:
  """A table of labelled result rows with the METRICS columns `keys` ('-' where a row lacks
  one; columns no row has are left out)."""
  keys = [k for k in keys if any(k in r for _, r in rows)]
  lines = [f"| {first_header} | " + " | ".join(METRICS[k][0] for k in keys) + " |",
           "|---|" + "---|" * len(keys)]
  for label, r in rows:
    cells = [METRICS[k][1].format(r[k]) if k in r else "-" for k in keys]
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def tool_report(name: str, *headings: str) -> Callable[[str], str]:
  """A render that takes a tool's markdown report W/NAME whole, or the named sections of it."""
  def draw(workdir: str) -> str:
    path = os.path.join(workdir, name)
    if not headings:
      return report_section(path)
    return "\n\n".join(report_section(path, h) for h in headings)
  return draw
