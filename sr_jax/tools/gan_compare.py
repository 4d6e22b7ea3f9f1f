r"""SRGAN vs ESRGAN vs MESRGAN: forward runtime, FLOPs and held-out quality.

  python -m sr_jax.tools.gan_compare                   # x4, batches 1,2,4,8,16, LR 32 -> 128
  python -m sr_jax.tools.gan_compare --batches 1,2,4 --repeats 3 --output /tmp/gan_compare.md
  python -m sr_jax.tools.gan_compare --conv_impl xla,shifted --batches 1,4 \
      --models esrgan,mesrgan                         # XLA's grouped conv vs shifted sums
  python -m sr_jax.tools.gan_compare --skip_runtime --skip_breakdown --eval_max_size 192 \
      --runs srgan=/tmp/srgan_demo,esrgan=/tmp/esrgan_demo,mesrgan=/tmp/mesrgan_demo
  python -m sr_jax.tools.gan_compare --skip_runtime --skip_breakdown --runs esrgan=W \
      --eval_dir /data/Set14/GTmod12

The question of the MESRGAN report (Eriksson and Löf, "Lightweight Super-Resolution"): MESRGAN
replaces every ESRGAN dense-block conv with a MobileNetV2 inverted
residual block (1x1 expand x6, 3x3 depthwise, 1x1 project) expecting fewer multiplications,
but ran ~4.5x slower than ESRGAN in PyTorch, blamed on slow depthwise convs. This command
answers it for sr_jax under XLA on whatever device it runs on:

- Runtime (unless --skip_runtime): each generator at its preset (--preset, or per model
  --presets srgan=x4,...) on random LR inputs of --lr_size (32: 128x128 outputs at x4) at each
  of --batches; jitted, compiled ahead (compile time reported apart), one untimed warm-up, then
  the median of --repeats calls each ending in block_until_ready (sr_jax.tools.step_timing).
  Parameters, GFLOPs per forward (XLA's cost analysis), ms and ms per image; then MESRGAN /
  ESRGAN ratios of time and FLOPs per batch. --conv_impl xla,shifted measures each formulation
  of the 1x1 and depthwise convs (sr_jax.models.layers; 'auto' = 'shifted' on CPU, 'xla'
  elsewhere); a model whose program is identical under two formulations (SRGAN and ESRGAN have
  no 1x1 or depthwise convs) is measured once.
- Breakdown (unless --skip_breakdown): where MESRGAN's time goes. The five convs of one ESRGAN
  residual dense block (cin = nf + (k-1) gc channels in) against the inverted residual blocks
  replacing them at the same input, (--breakdown_batch, lr_size, lr_size, cin), with the
  block's pieces (expand, depthwise, project) timed alone; GFLOP/s per piece shows whether the
  depthwise conv or the 6x expansion is the cost.
- Quality (with --runs srgan=W1,esrgan=W2,mesrgan=W3): each run's W/export/params (or a
  params directory itself), rebuilt from the architecture in its meta.json, on the held-out
  set (--eval_dir folder of HR images, else the embedded photos; --eval_max_size centre-crops)
  with MATLAB-bicubic x--scale LR (uint8-rounded), scored with the SR protocol: PSNR/SSIM on the
  Y channel with crop = scale (--rgb for RGB), LPIPS (--lpips, AlexNet by default) and RMSE,
  beside a 'bicubic' row (MATLAB bicubic upsampling of the same LR, sr_jax.data.resize).

The report (stdout, and --output FILE.md) starts with the device, backend, jax version and the
command line. The MESRGAN report's own table (their GPU, PyTorch) follows as a separate, labelled
reference (--noreference to drop it): compare ratios with it, not milliseconds. On the 2-core
CPU VMs timings move with other processes: note the load when quoting them.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
import time
from collections.abc import Sequence
from typing import Any

import flax
import jax

from sr_jax.models import layers, registry
from sr_jax.quality import evaluate
from sr_jax.util import errors, runtime
from sr_jax.tools.gan_study import (BLOCK_PIECES, DISPLAY, GENERATORS, REPORT_BATCHES,
                                    REPORT_FORWARD_MS, REPORT_QUALITY, breakdown_totals,
                                    breakdown_verdict, check_run, evaluate_runs, make_eval_set,
                                    measure_breakdown, measure_runtime, mesrgan_vs_esrgan,
                                    model_config, progress)

# ------------------------------------------------------------------------------------------
# Flag values.


def parse_models(models: Sequence[str]) -> list[str]:
  """Model names (srgan, esrgan, mesrgan) in the given order; unknown or repeated names name --models."""
  models = [m.strip().lower() for m in models if m.strip()]
  unknown = [m for m in models if m not in GENERATORS]
  if unknown or not models or len(set(models)) != len(models):
    raise ValueError(f"--models={','.join(models)}: choose distinct names among "
                     f"{sorted(GENERATORS)}.")
  return models


def parse_assignments(items: Sequence[str], flag: str) -> dict[str, str]:
  """'name=value' items (e.g. --runs srgan=W1,esrgan=W2) keyed by model name (srgan, esrgan, mesrgan)."""
  out = {}
  for item in (i.strip() for i in items):
    if not item:
      continue
    name, sep, value = item.partition("=")
    name = name.strip().lower()
    if not sep or not value.strip():
      raise ValueError(f"{flag}: {item!r} is not name=value (e.g. {flag}=esrgan=x4).")
    if name not in GENERATORS or name in out:
      raise ValueError(f"{flag}: {name!r} is not a model name or repeats one; use "
                       f"{sorted(GENERATORS)}.")
    out[name] = value.strip()
  return out


def resolve_presets(models: Sequence[str], preset: str,
                    overrides: dict[str, str]) -> dict[str, str]:
  """The preset of each model: --presets entry, else --preset; checked against the registry."""
  extra = sorted(set(overrides) - set(models))
  if extra:
    raise ValueError(f"--presets names {extra}, which --models does not compare.")
  out = {}
  for m in models:
    chosen, flag = (overrides[m], "--presets") if m in overrides else (preset, "--preset")
    available = registry.entry(GENERATORS[m]).presets
    if chosen not in available:
      raise ValueError(f"{flag}: {DISPLAY[m]} ({GENERATORS[m]}) has no preset {chosen!r}; "
                       f"presets: {sorted(available)} (per model: --presets {m}=...).")
    out[m] = chosen
  return out


def parse_positive_ints(values: Sequence[str], flag: str) -> list[int]:
  """Positive integers from a list flag (e.g. --batches 1,2,4)."""
  try:
    out = [int(v) for v in values if str(v).strip()]
  except ValueError:
    out = []
  if not out or min(out) < 1:
    raise ValueError(f"{flag}={','.join(map(str, values))}: give positive integers, e.g. "
                     f"{flag}=1,2,4.")
  return out


def resolve_impls(impls: Sequence[str]) -> list[str]:
  """Concrete conv formulations ('auto' resolved for this backend), duplicates dropped."""
  out = []
  for impl in impls:
    if impl not in layers.IMPLS:
      raise ValueError(f"--conv_impl={impl}: choose among {layers.IMPLS}.")
    concrete = layers.resolve_impl(impl)
    if concrete not in out:
      out.append(concrete)
  if not out:
    raise ValueError(f"--conv_impl is empty: choose among {layers.IMPLS}.")
  return out


# ------------------------------------------------------------------------------------------
# Report.


def header(argv: Sequence[str]) -> list[str]:
  """Title, device/backend/versions and the exact command line."""
  dev = jax.devices()[0]
  command = " ".join(["python -m sr_jax.tools.gan_compare"] + [shlex.quote(a) for a in argv])
  return ["# SRGAN vs ESRGAN vs MESRGAN (Eriksson and Löf's question), sr_jax", "",
          f"Device: {jax.device_count()} x {dev.device_kind} (backend {jax.default_backend()}, "
          f"{os.cpu_count()} CPU cores visible); jax {jax.__version__}, flax "
          f"{flax.__version__}; float32.", f"Command: `{command}`"]


def _num(x: float) -> str:
  """Whole numbers from 100 up, three significant digits below."""
  return f"{x:,.0f}" if abs(x) >= 100 else f"{x:#.3g}"


def runtime_section(rows: Sequence[dict[str, Any]], repeats: int) -> list[str]:
  """Markdown runtime table, one row per model, formulation and batch."""
  lines = [f"## Forward runtime (jitted, warmed, median of {repeats}, block_until_ready)", "",
           "| model | preset | conv impl | batch | LR -> HR | params | GFLOP/forward | ms | "
           "ms/image | compile s |", "|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    impl = r["impl"] + (f" (= {r['same_as']})" if r["same_as"] else "")
    lines.append(f"| {DISPLAY[r['model']]} | {r['preset']} | {impl} | {r['batch']} | "
                 f"{r['lr_size']} -> {r['hr_size']} | {r['params']:,} | {_num(r['gflops'])} | "
                 f"{_num(r['ms'])} | {_num(r['ms_per_image'])} | {r['compile_s']:.1f} |")
  return lines


def ratio_section(ratios: Sequence[dict[str, Any]]) -> list[str]:
  """Markdown MESRGAN / ESRGAN ratios, with the MESRGAN report's PyTorch time ratio where it has one."""
  reported = dict(zip(REPORT_BATCHES, (m / e for m, e in zip(REPORT_FORWARD_MS["mesrgan"],
                                                      REPORT_FORWARD_MS["esrgan"]))))
  lines = ["## MESRGAN / ESRGAN", "",
           "| conv impl | batch | time ratio | FLOP ratio | params ratio | report's time ratio "
           "(their GPU) |", "|---|---|---|---|---|---|"]
  for r in ratios:
    ref = f"{reported[r['batch']]:.2f}" if r["batch"] in reported else "-"
    lines.append(f"| {r['impl']} | {r['batch']} | {r['time_ratio']:.2f} | "
                 f"{r['flop_ratio']:.2f} | {r['params_ratio']:.2f} | {ref} |")
  return lines


def breakdown_section(rows: Sequence[dict[str, Any]], preset: str, lr_size: int) -> list[str]:
  """Markdown per-layer breakdown (ms / GFLOP per part), totals and the verdict."""
  parts = ("dense 3x3", "block") + BLOCK_PIECES
  lines = [f"## Where MESRGAN's time goes: one residual dense block ({preset} widths, batch "
           f"{rows[0]['batch']}, {lr_size}x{lr_size}, impl={rows[0]['impl']})", "",
           "ms / GFLOP per layer: ESRGAN's 3x3 conv ('dense 3x3') vs the inverted residual "
           "block replacing it ('block': expand 1x1 -> LeakyReLU -> depthwise 3x3 -> LeakyReLU "
           "-> project 1x1 [+ input]) and its convs timed alone.", "",
           "| layer | cin -> cout | " + " | ".join(parts) + " |", "|---|---|" + "---|" * len(parts)]
  table = [(f"conv{r['k']}", f"{r['cin']} -> {r['cout']}", r) for r in rows]
  table.append(("all five", "-", breakdown_totals(rows)))
  for label, io, r in table:
    cells = [f"{_num(r[p]['ms'])} / {_num(r[p]['gflops'])}" for p in parts]
    lines.append(f"| {label} | {io} | " + " | ".join(cells) + " |")
  return lines + ["", breakdown_verdict(rows)]


def quality_section(rows: dict[str, dict[str, Any]], protocol_text: str, scale: int,
                    eval_dir: str, max_size: int, count: int) -> list[str]:
  """Markdown quality table with the protocol and the held-out set stated."""
  where = eval_dir or "the embedded held-out photos"
  crop = f", centre-cropped to {max_size}" if max_size > 0 else ""
  lpips_keys = sorted(k for k in next(iter(rows.values())) if k.startswith("lpips_"))
  head = ["model", "run", "params", "PSNR (dB)", "SSIM"] + [
      f"LPIPS-{k[6:]}" for k in lpips_keys] + ["RMSE"]
  lines = ["## Quality on held-out images", "",
           f"Set: {where} ({count} images{crop}); LR = MATLAB bicubic x1/{scale}, uint8-rounded.",
           f"Protocol: {protocol_text}; LPIPS on the rounded RGB images with the same crop; RMSE "
           "on PSNR's protocol (0..255).", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name, r in rows.items():
    cells = [DISPLAY[name], r["run"], f"{r['params']:,}", f"{r['psnr']:.3f}", f"{r['ssim']:.4f}"]
    cells += [f"{r[k]:.4f}" for k in lpips_keys] + [f"{r['rmse']:.2f}"]
    lines.append("| " + " | ".join(cells) + " |")
  return lines


def reference_section() -> list[str]:
  """The MESRGAN report's published numbers, labelled as not comparable with the measurements above."""
  lines = ["## Reference only: the MESRGAN report's published numbers (their GPU, PyTorch; NOT this run)",
           "", "Forward runtime in ms, averaged over 100 runs (the extracted table is ambiguous; "
           "read so that each model's time grows with the batch, see gan_compare's source):", "",
           "| model | " + " | ".join(f"batch {b}" for b in REPORT_BATCHES) + " |",
           "|---|" + "---|" * len(REPORT_BATCHES)]
  lines += [f"| {DISPLAY[m]} | " + " | ".join(str(v) for v in ms) + " |"
            for m, ms in REPORT_FORWARD_MS.items()]
  lines += ["", "DIV2K-90, x4 (their protocol; PI = perceptual index, lower is better):", "",
            "| model | PSNR | SSIM | PI | RMSE |", "|---|---|---|---|---|"]
  lines += [f"| {DISPLAY[m]} | {p:.2f} | {s:.2f} | {pi:.2f} | {e:.2f} |"
            for m, (p, s, pi, e) in REPORT_QUALITY.items()]
  return lines


# ------------------------------------------------------------------------------------------
# Options and the whole comparison.


@dataclasses.dataclass
class Options:
  """Validated flag values (`make_options`); one field per flag."""
  presets: dict[str, str]  # Model name -> preset, in --models order.
  batches: list[int]
  lr_size: int
  repeats: int
  impls: list[str]
  runtime: bool = True
  breakdown: bool = True
  breakdown_batch: int = 4
  breakdown_repeats: int = 20
  runs: dict[str, str] = dataclasses.field(default_factory=dict)
  eval_dir: str = ""
  eval_max_size: int = 0
  scale: int = 4
  y_channel: bool = True
  lpips: tuple[str, ...] = ("alex",)
  reference: bool = True


def check_lr_size(presets: dict[str, str], lr_size: int) -> None:
  """Every model must accept (lr_size, lr_size) inputs (x2/x1 RRDBNets pixel-unshuffle them)."""
  if lr_size < 1:
    raise ValueError(f"--lr_size={lr_size}: give a positive LR side, e.g. 32.")
  for name, preset in presets.items():
    multiple = registry.build_model(model_config(name, preset, "xla")).size_multiple
    if lr_size % multiple:
      raise ValueError(f"--lr_size={lr_size}: {DISPLAY[name]} {preset} needs a multiple of "
                       f"{multiple}.")


_REST_FLAGS = ("skip_runtime", "skip_breakdown", "breakdown_batch", "breakdown_repeats",
               "eval_dir", "eval_max_size", "scale", "rgb", "reference")


def make_options(models: Sequence[str] = ("srgan", "esrgan", "mesrgan"), preset: str = "x4",
                 presets: Sequence[str] = (), batches: Sequence[Any] = (1, 2, 4, 8, 16),
                 lr_size: int = 32, repeats: int = 5, conv_impl: Sequence[str] = ("auto",),
                 runs: Sequence[str] = (), lpips: Sequence[str] = ("alex",),
                 **rest: Any) -> Options:
  """Options from flag values, each checked with an error naming its flag.

  `rest`: the remaining Options fields as flags spell them (skip_runtime, skip_breakdown,
  breakdown_batch, breakdown_repeats, eval_dir, eval_max_size, scale, rgb, reference).
  """
  unknown_fields = set(rest) - set(_REST_FLAGS)
  if unknown_fields:
    raise TypeError(f"make_options: unknown options {sorted(unknown_fields)}.")
  chosen = resolve_presets(parse_models(models), preset, parse_assignments(presets, "--presets"))
  check_lr_size(chosen, lr_size)
  if repeats < 1 or rest.get("breakdown_repeats", 20) < 1:
    raise ValueError("--repeats and --breakdown_repeats must be at least 1.")
  unknown = [n for n in lpips if n not in ("alex", "vgg")]
  if unknown:
    raise ValueError(f"--lpips={','.join(lpips)}: choose among 'alex', 'vgg' (or none).")
  run_dirs = parse_assignments(runs, "--runs")
  scale = rest.get("scale", 4)
  for name, directory in run_dirs.items():
    check_run(name, directory, scale)
  return Options(
      presets=chosen, batches=parse_positive_ints(batches, "--batches"), lr_size=lr_size,
      repeats=repeats, impls=resolve_impls(conv_impl), runtime=not rest.get("skip_runtime"),
      breakdown=not rest.get("skip_breakdown"),
      breakdown_batch=parse_positive_ints([rest.get("breakdown_batch", 4)],
                                          "--breakdown_batch")[0],
      breakdown_repeats=rest.get("breakdown_repeats", 20), runs=run_dirs,
      eval_dir=rest.get("eval_dir", ""), eval_max_size=rest.get("eval_max_size", 0),
      scale=scale, y_channel=not rest.get("rgb", False), lpips=tuple(lpips),
      reference=rest.get("reference", True))


def runtime_report(opts: Options) -> list[str]:
  """Runtime, ratio and breakdown sections (as the options ask)."""
  lines: list[str] = []
  if opts.runtime:
    rows = measure_runtime(opts.presets, opts.batches, opts.lr_size, opts.repeats, opts.impls)
    lines += [""] + runtime_section(rows, opts.repeats)
    ratios = mesrgan_vs_esrgan(rows)
    if ratios:
      lines += [""] + ratio_section(ratios)
  if opts.breakdown and "mesrgan" in opts.presets:
    for impl in opts.impls:
      rows = measure_breakdown(opts.presets["mesrgan"], opts.lr_size, opts.breakdown_batch,
                               impl, opts.breakdown_repeats)
      lines += [""] + breakdown_section(rows, opts.presets["mesrgan"], opts.lr_size)
  return lines


def quality_report(opts: Options) -> list[str]:
  """The quality section for --runs (empty without runs)."""
  if not opts.runs:
    return []
  eval_set = make_eval_set(opts.eval_dir, opts.eval_max_size, opts.scale)
  rows = evaluate_runs(opts.runs, eval_set, opts.scale, opts.y_channel, opts.lpips,
                       opts.impls[0])
  text = evaluate.protocol(opts.scale, opts.y_channel)
  progress(f"quality protocol: {text}")
  return [""] + quality_section(rows, text, opts.scale, opts.eval_dir, opts.eval_max_size,
                                len(eval_set))


def compare(opts: Options, argv: Sequence[str] = ()) -> str:
  """The whole markdown report: header, runtime, breakdown, quality, the report's reference."""
  t0 = time.perf_counter()
  lines = header(argv) + runtime_report(opts) + quality_report(opts)
  if opts.reference:
    lines += [""] + reference_section()
  progress(f"done in {time.perf_counter() - t0:.0f} s")
  return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# Command line.


def _define_flags() -> None:
  """Flags, defined only when run as a program (tests import this module beside others)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_list("models", ["srgan", "esrgan", "mesrgan"], "Models to compare.")
  flags.DEFINE_string("preset", "x4", "Preset of every model (x4, small, micro; x2/x3: not "
                      "MESRGAN).")
  flags.DEFINE_list("presets", [], "Per-model presets, e.g. srgan=x4,esrgan=small.")
  flags.DEFINE_list("batches", ["1", "2", "4", "8", "16"], "Forward batch sizes.")
  flags.DEFINE_integer("lr_size", 32, "LR input side (x4: 32 -> 128x128 outputs).")
  flags.DEFINE_integer("repeats", 5, "Timed forward calls per measurement (median).")
  flags.DEFINE_list("conv_impl", ["auto"], "Conv formulations: auto, xla, shifted (several to "
                    "compare them).")
  flags.DEFINE_bool("skip_runtime", False, "Do not time whole models.")
  flags.DEFINE_bool("skip_breakdown", False, "Do not time the dense-block breakdown.")
  flags.DEFINE_integer("breakdown_batch", 4, "Batch of the breakdown's layer timings.")
  flags.DEFINE_integer("breakdown_repeats", 20, "Timed calls per breakdown layer (median).")
  flags.DEFINE_list("runs", [], "Trained runs to score: srgan=W1,esrgan=W2,mesrgan=W3 "
                    "(W/export/params, or a params directory).")
  flags.DEFINE_string("eval_dir", "", "Folder of held-out HR images (default: embedded photos).")
  flags.DEFINE_integer("eval_max_size", 0, "Centre-crop held-out images to this side (0: whole).")
  flags.DEFINE_integer("scale", 4, "Upscaling factor of the held-out LR (bicubic) and the crop.")
  flags.DEFINE_bool("rgb", False, "PSNR/SSIM on RGB instead of the Y channel.")
  flags.DEFINE_list("lpips", ["alex"], "LPIPS networks (alex, vgg; empty for none).")
  flags.DEFINE_bool("reference", True, "Append the MESRGAN report's published numbers (labelled).")
  flags.DEFINE_string("output", "", "Also write the markdown report to this file.")


_OPTION_FLAGS = ("models", "preset", "presets", "batches", "lr_size", "repeats", "conv_impl",
                 "runs", "lpips") + _REST_FLAGS


def main(argv: Sequence[str]) -> None:
  """Command-line entry: flag errors exit 2 with one line naming the flag."""
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  runtime.setup()
  args = flags.FLAGS
  try:
    opts = make_options(**{name: args[name].value for name in _OPTION_FLAGS})
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  text = compare(opts, sys.argv[1:])
  print(text, flush=True)
  if args.output:
    with open(args.output, "w") as f:
      f.write(text + "\n")
    progress(f"wrote {args.output}")


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  _define_flags()
  app.run(errors.guarded(main))
