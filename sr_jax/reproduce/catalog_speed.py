"""The speed tables: training steps against PyTorch, LoRA against full fine-tuning, the input
pipeline, and mixed precision on the LoRA demo."""

from __future__ import annotations

import os
import re

from sr_jax.reproduce import render
from sr_jax.reproduce.table import Region, Step, Table, main_job

_BENCH = "sr_jax.tools.benchmark"
_RANDOM_INPUTS = "nothing (random inputs); PyTorch (torch==2.13.0, CPU) for its column"
_RRDBNET = ("--config", "configs/esrgan_lora.py", "--config.objective=pixel",
            "--config.optimizer.name=adamw", "--batch", "4", "--size", "128")
_H100 = ("--skip_forward", "--skip_step", "--layers", "--roofline_rates", "247000,3350")
_STEPS = (
    Step(_BENCH, ("--skip_forward", "--arms", "full,lora", "--steps", "5", "--layers",
                  "--output", "{workdir}/nafnet.md")),
    Step(_BENCH, ("--config.model.preset=tiny", "--config.lora.rank=3",
                  "--config.lora.alpha=3.0", "--skip_forward", "--arms", "full,lora", "--steps",
                  "10", "--torch=false", "--layers", "--output", "{workdir}/nafnet_tiny.md")),
    Step(_BENCH, _RRDBNET + ("--arms", "full,lora", "--skip_forward", "--steps", "3",
                             "--layers", "--output", "{workdir}/rrdbnet.md")),
    Step("sr_jax.tools.perf_report", ("--models", "sr3_tiny,restormer", "--steps", "2",
                                      "--output", "{workdir}/perf_report.md")),
    Step(_BENCH, _H100 + ("--output", "{workdir}/nafnet_h100.md")),
    Step(_BENCH, _RRDBNET + _H100 + ("--output", "{workdir}/rrdbnet_h100.md")),
)
_REPORTS = (("NAFNet-w32, r=8", "nafnet.md"),
            ("NAFNet tiny, r=3 (the CoLoRA demo's share)", "nafnet_tiny.md"),
            ("RRDBNet x4, r=4", "rrdbnet.md"), ("SR3 tiny and Restormer", "perf_report.md"))
_BENCH_RATIO = re.compile(r"^(?P<arm>.+?) / full fine-tuning: time (?P<time>[\d.]+), FLOPs "
                          r"(?P<flops>[\d.]+), temp memory [\d.]+, total memory \(temp \+ "
                          r"args\) (?P<total>[\d.]+)\.", re.MULTILINE)
_REPORT_RATIO = re.compile(r"^- (?P<model>.+?), float32: (?P<arm>.+?) / full: time "
                           r"(?P<time>[\d.]+), memory (?P<total>[\d.]+), FLOPs "
                           r"(?P<flops>[\d.]+)", re.MULTILINE)
_LAYOUTS = re.compile(r"^Layouts: (?P<counts>[^;.]+)", re.MULTILINE)


def _ratios(reports: dict[str, str]) -> str:
  """LoRA / full fine-tuning per backbone, read from the reports' own ratio lines."""
  rows = ["| backbone | time | FLOPs | total memory (temp + args) | layouts |",
          "|---|---|---|---|---|"]
  for title, text in reports.items():
    layouts = _LAYOUTS.search(text)
    for m in _BENCH_RATIO.finditer(text):
      rows.append(f"| {title} | {m['time']} | {m['flops']} | {m['total']} | "
                  f"{layouts['counts'] if layouts else '-'} |")
    for m in _REPORT_RATIO.finditer(text):
      rows.append(f"| {m['model']}, {m['arm']} | {m['time']} | {m['flops']} | {m['total']} | "
                  "- |")
  return "\n".join(rows)


def _speed(workdir: str) -> str:
  reports = {title: render.report_section(os.path.join(workdir, name))
             for title, name in _REPORTS}
  parts = ["LoRA / full fine-tuning in the same process:", _ratios(reports)]
  for title, name in _REPORTS:
    parts.append(f"**{title}** (`{name[:-3]}`):\n\n" + _without_layer_list(reports[title]))
  for title, name in (("NAFNet-w32", "nafnet_h100.md"), ("RRDBNet x4", "rrdbnet_h100.md")):
    layouts = _LAYOUTS.search(render.report_section(os.path.join(workdir, name)))
    parts.append(f"Predicted for an H100 (247 TMAC/s, 3.35 TB/s), {title}: "
                 f"{layouts['counts'] if layouts else 'n/a'}.")
  return "\n\n".join(parts)


def _without_layer_list(text: str) -> str:
  """The report without its per-layer table (long; `--layers` prints it for who wants it)."""
  tables = render.tables_in(text)
  for table in tables:
    if table.startswith("| layer |"):
      text = text.replace(table, "(per-layer layouts: run the command)")
  return text


SPEED = Table(
    name="speed_current",
    what="docs/speed.md: training-step time, FLOPs and memory, full vs LoRA, beside PyTorch.",
    steps=_STEPS,
    regions=(Region("docs/speed.md", _speed),),
    needs=_RANDOM_INPUTS,
    wall_time="8m48s (measured 2026-12-08 alone)",
    packages=("torch",),
)

RESTORMER_SPEED = Table(
    name="restormer_speed",
    what="docs/speed.md: the official Restormer's training step and forward pass.",
    steps=(Step(_BENCH, ("--config.model.name=restormer", "--config.model.preset=default",
                         "--config.loss.kind=l1", "--batch", "2", "--forward_batch", "1",
                         "--arms", "full", "--output", "{workdir}/restormer.md")),),
    regions=(Region("docs/speed.md", render.tool_report("restormer.md")),),
    needs=_RANDOM_INPUTS,
    wall_time="not yet measured alone",
    packages=("torch",),
)

DATA_SPEED = Table(
    name="data_speed",
    what="docs/data.md: PROD patches/s of the grain pipeline against the step's consumption.",
    steps=(Step("sr_jax.tools.data_benchmark", ("--step_steps", "2", "--output",
                                                "{workdir}/embedded.md")),
           Step("sr_jax.tools.data_benchmark", (
               "--config.data.source=folder", "--config.data.train_dir={datasets}/CSun_Hays80",
               "--output", "{workdir}/folder.md"))),
    regions=(Region("docs/data.md", lambda w: "\n\n".join(
        render.report_section(os.path.join(w, f)) for f in ("embedded.md", "folder.md"))),),
    needs="embedded photos; Sun-Hays 80 JPEGs for the folder rows",
    datasets=("CSun_Hays80",),
    wall_time="not yet measured alone",
)

_PRECISIONS = (("float32 / float32", ()),
               ("bfloat16 / float32", ("model.dtype=bfloat16",)),
               ("bfloat16 / bfloat16", ("model.dtype=bfloat16",
                                        "optimizer.state_dtype=bfloat16")))


def _precision(workdir: str) -> str:
  rows = []
  for i, (label, _) in enumerate(_PRECISIONS):
    run = os.path.join(workdir, f"p{i}")
    base, lora = render.results(os.path.join(run, "base")), render.results(run)
    for stage, row in (("base, deblurring", base["trained"]), ("base on denoising",
                                                                 lora["base"]),
                       ("LoRA on denoising", lora["lora"])):
      rows.append((f"{label}: {stage}", row))
  return ("Compute / optimizer-state dtypes, applied to both stages; PSNR/SSIM on RGB of the "
          "held-out crops.\n\n" + render.rows_table(rows, ("psnr", "ssim", "step_ms"),
                                                    first_header="dtypes: stage"))


MIXED_PRECISION = Table(
    name="mixed_precision",
    what="docs/scale_out.md: bfloat16 compute and optimizer state on the LoRA demo.",
    steps=tuple(main_job("configs/lora_nafnet.py:demo", f"{{workdir}}/p{i}", *o)
                for i, (_, o) in enumerate(_PRECISIONS)),
    regions=(Region("docs/scale_out.md", _precision),),
    wall_time="not measured alone yet (estimate: about 8 minutes (3 runs of 2.5))",
)

TABLES = (SPEED, RESTORMER_SPEED, DATA_SPEED, MIXED_PRECISION)
