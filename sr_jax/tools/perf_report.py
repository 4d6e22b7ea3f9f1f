r"""One markdown table of train-step performance: each backbone in use, full vs LoRA fine-tuning.

  python -m sr_jax.tools.perf_report                    # --setting cpu: the PyTorch reference
                                                        # batch and sizes, float32, all models
  python -m sr_jax.tools.perf_report --setting gpu --output /tmp/perf.md  # float32 + bfloat16
  python -m sr_jax.tools.perf_report --models nafnet,sr3_tiny --arms lora --dtypes bfloat16
  python -m sr_jax.tools.perf_report --models nafnet,rrdbnet,sr3_tiny --steps 2 --batch 2 \
      --size 32 --presets nafnet=micro,rrdbnet=micro,sr3_tiny=micro     # a smoke run (seconds)

Run it from a source checkout: the models' job configs are read from its configs/ folder.

Models (`--models`, the names of MODELS):
- nafnet: NAFNet sidd_w32, configs/lora_nafnet.py (AdamW, -PSNR loss; LoRA rank 8 on the dense
  convs, depthwise convs frozen, biases, norms and the output conv trained fully);
- restormer: Restormer default with configs/colora_restormer.py's recipe (AdamW, L1) and the
  uniform LoRA of sr_jax.tools.benchmark (rank 8; biases, norms, temperatures and the output
  conv trained fully);
- rrdbnet: RRDBNet x4, configs/esrgan.py's generator alone (GAN off, L1, AdamW: the PyTorch
  reference step), LoRA as configs/esrgan_lora.py;
- sr3_tiny, sr3_paper: SR3 tiny and paper_16_128, configs/sr3.py (16 -> 128, the diffusion
  objective's step: noise level, noisy image, epsilon loss), LoRA as configs/sr3_finetune.py's
  `lora` variant (rank 4 on every kernel).

Settings (`--setting`; `--batch` and `--size` override every model's, `--presets` a model's):
- cpu: the PyTorch reference's (batch, size) where it has one, so that column fills: NAFNet
  4 x 128x128, Restormer 2 x 128x128, RRDBNet 4 x (LR 32 -> 128); SR3 16 -> 128 at batch 4
  (tiny, 2.6M parameters) and 1 (paper, 515M). float32 by default.
- gpu: NAFNet batch 16 at 256x256 (where its images/s were asked for); the others at their job
  configs' batch and crop: Restormer 8 x 128x128, RRDBNet 16 x (32 -> 128), SR3 16 x
  (16 -> 128) (configs/sr3_finetune.py's batch). float32 and bfloat16 by default.
`--size` is the target (HR) side, as data.crop_size: SR models get LR inputs of size / scale.

Each row is one (model, compute dtype, arm): the job's own train step
(sr_jax.tools.step_timing.measure_step: its optimizer, loss and objective on one random batch),
compiled ahead of time, one warm-up step, then the median of `--steps` steps. A model's
parameters are initialised once and shared by its rows. A row that fails (out of memory, an
unusable override) becomes an error cell and the others still run. Progress is logged per row
(full-size rows take minutes on a CPU), and `--output` is rewritten after every model, so an
interrupted run keeps the rows it finished.

The report's header states the device, jax version, dtype notes and the definitions of its
columns; below the table, per backbone and dtype, LoRA / full ratios of time, memory and FLOPs.
"""

from __future__ import annotations

import dataclasses
import gc
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
from absl import logging

from sr_jax.config import config_files
from sr_jax.models import registry
from sr_jax.objectives import step as step_lib
from sr_jax.tools import peaks, step_timing
from sr_jax.util import errors, runtime

PyTree = Any
Row = dict[str, Any]

# ------------------------------------------------------------------------------------------
# Models and settings.


def nafnet_config() -> ml_collections.ConfigDict:
  """NAFNet sidd_w32 with configs/lora_nafnet.py's optimizer, loss and LoRA."""
  return config_files.load("lora_nafnet")


def restormer_config() -> ml_collections.ConfigDict:
  """Restormer default: configs/colora_restormer.py's recipe with uniform rank-8 LoRA."""
  c = config_files.load("colora_restormer")
  c.colora.enabled = False
  c.lora.rank, c.lora.alpha = 8, 8.0
  c.lora.targets = (r".*/kernel",)
  # The 3-channel output conv trains fully (as NAFNet's 'ending' in configs/lora_nafnet.py).
  c.lora.rank_overrides = ("output/kernel=0",)
  c.lora.extra_trainable = (r".*/bias", r".*/scale", r".*/temperature", r"output/kernel")
  return c


def rrdbnet_config() -> ml_collections.ConfigDict:
  """RRDBNet x4 as the PyTorch reference steps it (GAN off, L1, AdamW); LoRA of esrgan_lora."""
  c = config_files.load("esrgan")
  c.objective = "pixel"
  c.loss.kind = "l1"
  c.optimizer.name = "adamw"
  c.lora = config_files.load("esrgan_lora").lora
  return c


def sr3_config(preset: str) -> Callable[[], ml_collections.ConfigDict]:
  """SR3 `preset` 16 -> 128 (configs/sr3.py), LoRA as configs/sr3_finetune.py:lora."""

  def make() -> ml_collections.ConfigDict:
    c = config_files.load("sr3")
    c.model.preset = preset
    c.lora = config_files.load("sr3_finetune:lora").lora
    return c

  return make


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A row group: the job config to time and its (batch, target size) per setting."""
  make_config: Callable[[], ml_collections.ConfigDict]
  settings: dict[str, tuple[int, int]]


MODELS: dict[str, ModelSpec] = {
    "nafnet": ModelSpec(nafnet_config, {"cpu": (4, 128), "gpu": (16, 256)}),
    "restormer": ModelSpec(restormer_config, {"cpu": (2, 128), "gpu": (8, 128)}),
    "rrdbnet": ModelSpec(rrdbnet_config, {"cpu": (4, 128), "gpu": (16, 128)}),
    "sr3_tiny": ModelSpec(sr3_config("tiny"), {"cpu": (4, 128), "gpu": (16, 128)}),
    "sr3_paper": ModelSpec(sr3_config("paper_16_128"), {"cpu": (1, 128), "gpu": (16, 128)}),
}
SETTINGS = ("cpu", "gpu")
DEFAULT_DTYPES = {"cpu": ("float32",), "gpu": ("float32", "bfloat16")}


@dataclasses.dataclass(frozen=True)
class Job:
  """One model's rows to measure: its job config and (batch, target size)."""
  name: str
  config: ml_collections.ConfigDict
  batch: int
  size: int


def check_names(names: Sequence[str], valid: Sequence[str], flag: str) -> None:
  """Unknown or missing names are an error naming the valid ones, before any measurement."""
  unknown = [n for n in names if n not in valid]
  if unknown or not names:
    raise ValueError(f"--{flag}={','.join(names)}: unknown {unknown or 'empty list'}; valid "
                     f"names: {', '.join(valid)}.")


def parse_presets(entries: Sequence[str]) -> dict[str, str]:
  """('nafnet=micro', ...) -> {'nafnet': 'micro'}; model names checked against MODELS."""
  out = {}
  for entry in entries:
    name, sep, preset = entry.partition("=")
    if not sep or not preset:
      raise ValueError(f"--presets entry {entry!r} must be 'model=preset', e.g. nafnet=micro.")
    check_names([name], list(MODELS), "presets")
    out[name] = preset
  return out


def plan(models: Sequence[str], setting: str, presets: dict[str, str] | None = None,
         batch: int = 0, size: int = 0, devices: int = -1, fsdp: int = 1,
         state_dtype: str = "float32") -> list[Job]:
  """The jobs for `models` at `setting` (batch/size overrides when > 0), each model checked
  buildable; `devices` is config.mesh.data (-1 = all), `fsdp` config.mesh.fsdp (parameters
  and optimizer moments split that many ways), `state_dtype` config.optimizer.state_dtype."""
  check_names(models, list(MODELS), "models")
  check_names([setting], SETTINGS, "setting")
  jobs = []
  for name in models:
    spec = MODELS[name]
    config = spec.make_config()
    if name in (presets or {}):
      config.model.preset = presets[name]
    config.mesh.data, config.mesh.fsdp = devices, fsdp
    config.optimizer.state_dtype = state_dtype
    registry.build_model(config.model)  # An unknown preset fails here, naming the valid ones.
    b, s = spec.settings[setting]
    jobs.append(Job(name, config, batch or b, size or s))
  return jobs


# ------------------------------------------------------------------------------------------
# Measuring.


def error_text(e: BaseException) -> str:
  """One table-safe line for a failed row: the exception type and its first line."""
  lines = str(e).strip().splitlines()
  text = f"{type(e).__name__}: {lines[0] if lines else ''}".replace("|", "/")
  return text if len(text) <= 160 else text[:157] + "..."


def row_base(job: Job, arm: str, dtype: str) -> Row:
  """What a row says before (or without) its measurement."""
  m = job.config.model
  row = dict(model=job.name, backbone=step_timing.DISPLAY_NAMES.get(m.name, m.name),
             preset=m.preset, batch=job.batch, size=job.size, dtype=dtype, arm=arm,
             label=arm, sizes="?", error=None)
  try:
    c = step_timing.arm_config(job.config, arm, job.batch, job.size)
    lq = step_timing.lq_size(c)
    row.update(label=step_timing.arm_label(c), sizes=f"{lq}x{lq} -> {job.size}x{job.size}")
  except Exception as e:  # pylint: disable=broad-except
    row["error"] = error_text(e)
  return row


def derived(result: dict[str, Any], batch: int, dtype: str, device_kind: str,
            precision: str | None = None) -> dict[str, Any]:
  """`result` (measure_step's, with_reference's keys) plus the report's derived columns:
  GFLOP per step over all devices, memory (temp + arguments), images/s and MFU."""
  gflops_step = result["gflops"] * result["devices"]  # XLA counts one device's partition.
  return dict(result, gflops_step=gflops_step, mem_mb=result["temp_mb"] + result["arg_mb"],
              img_s=1000 * batch / result["ms"],
              mfu=peaks.mfu(gflops_step * 1e9, result["ms"], result["devices"],
                      peaks.peak_tflops(device_kind, dtype, precision)))


def measure_job(job: Job, arms: Sequence[str], dtypes: Sequence[str], steps: int,
                params: PyTree | None = None) -> list[Row]:
  """One row per (dtype, arm) of `job`; a failure becomes that row's `error`.

  `params`: the base parameters every row starts from, or None to initialise them once here
  (a failed initialisation fails every row).
  """
  rows = [row_base(job, arm, dtype) for dtype in dtypes for arm in arms]
  device_kind = jax.devices()[0].device_kind
  precision = jax.config.jax_default_matmul_precision
  if params is None:
    try:
      t0 = time.perf_counter()
      params = step_timing.init_params(
          job.config.model, step_timing.input_size(job.config.model, job.size),
          seed=job.config.seed)
      logging.info("%s %s: parameters initialised in %.1f s.", job.name,
                   job.config.model.preset, time.perf_counter() - t0)
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("%s: initialisation failed: %s", job.name, e)
      return [dict(r, error=r["error"] or error_text(e)) for r in rows]
  for i, row in enumerate(rows):
    if row["error"]:
      continue
    logging.info("%s %s [%d/%d] %s, %s, batch %d, %s: compiling and timing %d steps...",
                 job.name, row["preset"], i + 1, len(rows), row["label"], row["dtype"],
                 job.batch, row["sizes"], steps)
    try:
      c = step_timing.arm_config(job.config, row["arm"], job.batch, job.size)
      c.model.dtype = row["dtype"]
      result = step_timing.with_reference(step_timing.measure_step(c, steps, base=params),
                                          step_timing.PYTORCH_STEP_MS, c.model, job.batch,
                                          job.size)
      row["label"] = result.pop("arm")  # The row's `arm` stays 'full' or 'lora'.
      row.update(derived(result, job.batch, row["dtype"], device_kind, precision))
      logging.info("%s %s [%d/%d]: %.1f ms/step, %.1f GFLOP, compiled in %.1f s.", job.name,
                   row["preset"], i + 1, len(rows), row["ms"], row["gflops_step"],
                   row["compile_s"])
    except Exception as e:  # pylint: disable=broad-except
      row["error"] = error_text(e)
      logging.warning("%s %s [%d/%d] failed: %s", job.name, row["preset"], i + 1, len(rows),
                      row["error"])
    gc.collect()  # Drop the row's device buffers before the next compile (a failed one's too).
  return rows


# ------------------------------------------------------------------------------------------
# The report.

COLUMNS = ("backbone", "preset", "input -> output", "batch", "dtype", "arm", "trainable (%)",
           "step ms", "img/s", "memory MiB (temp + args)", "GFLOP/step", "MFU", "PyTorch ms",
           "time ratio")
_num = step_timing.format_number


def _cells(r: Row) -> list[str]:
  """A row's table cells; a failed row keeps its identity and shows the error."""
  cells = [r["backbone"], r["preset"], r["sizes"], str(r["batch"]), r["dtype"], r["label"]]
  measured = len(COLUMNS) - len(cells)
  if r["error"]:
    return cells + [f"**error**: {r['error']}"] + ["-"] * (measured - 1)
  return cells + [
      f"{r['trainable']:,} ({r['pct']:.2f}%)", _num(r["ms"]), _num(r["img_s"]),
      f"{_num(r['mem_mb'])} ({_num(r['temp_mb'])} + {_num(r['arg_mb'])})",
      _num(r["gflops_step"]), "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.3g}%",
      "n/a" if r["pytorch_ms"] is None else _num(r["pytorch_ms"]),
      "n/a" if r["time_ratio"] is None else f"{r['time_ratio']:.2f}"]


def table(rows: Sequence[Row]) -> list[str]:
  """The markdown table, one line per row."""
  return ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)] + [
      "| " + " | ".join(_cells(r)) + " |" for r in rows]


def ratio_lines(rows: Sequence[Row]) -> list[str]:
  """Per backbone (model, preset) and dtype with both arms measured: LoRA / full ratios."""
  lines = []
  groups: dict[tuple[str, str, str], dict[str, Row]] = {}
  for r in rows:
    if not r["error"]:
      groups.setdefault((r["model"], r["preset"], r["dtype"]), {})[r["arm"]] = r
  for (_, preset, dtype), arms in groups.items():
    if {"full", "lora"} <= set(arms):
      full, low = arms["full"], arms["lora"]
      lines.append(f"- {low['backbone']} {preset}, {dtype}: {low['label']} / full: time "
                   f"{low['ms'] / full['ms']:.2f}, memory {low['mem_mb'] / full['mem_mb']:.2f}, "
                   f"FLOPs {low['gflops_step'] / full['gflops_step']:.2f}; trainable "
                   f"{low['pct']:.2f}% of {full['trainable']:,}.")
  return lines


def header(setting: str, steps: int, device_kind: str, num_devices: int,
           precision: str | None, fsdp: int = 1, state_dtype: str = "float32") -> list[str]:
  """The report's first lines: device, jax, dtype notes and the columns' definitions."""
  device_peaks = [peaks.peak_tflops(device_kind, d, precision) for d in ("bfloat16", "float32")]
  peak_text = (f"no peak known for '{device_kind}': n/a" if device_peaks[0] is None else
               "bfloat16 {}, float32 {} TFLOP/s dense per device".format(
                   *("n/a" if p is None else f"{p:g}" for p in device_peaks)))
  return [
      "# Train-step performance: full vs LoRA fine-tuning", "",
      f"{jax.device_count()} x {device_kind} ({jax.default_backend()}), the steps "
      f"data-parallel over {num_devices} of them; jax {jax.__version__}; setting `{setting}`; "
      f"step ms = median of {steps} steps after one warm-up step (compile time excluded).", "",
      "- dtype: the compute dtype (config.model.dtype) of activations, convs and matrix "
      f"products; parameters and the loss stay float32, optimizer moments are stored in "
      f"{state_dtype}. float32 convs and "
      "matrix products run at XLA's default precision (TF32 tensor cores on NVIDIA "
      "Ampere/Hopper, one bfloat16 pass on TPU) unless jax_default_matmul_precision is set "
      f"(here: {precision or 'default'}).",
      "- layout: " + (f"parameters and optimizer moments split {fsdp} ways (FSDP, "
                      "config.mesh.fsdp)." if fsdp > 1 else
                      "parameters replicated on every device."),
      "- trainable: parameters the arm updates, % of the base model's. Each model's rows "
      "start from the same initialised parameters.",
      "- memory: XLA's memory analysis of the compiled step on one device: temporaries + "
      "arguments (train state, frozen parameters, the batch's share), MiB.",
      "- GFLOP/step: XLA's cost analysis of the compiled step (one device's partition x "
      "devices; includes the backward pass and the optimizer update).",
      "- MFU (model FLOPs utilisation) = FLOPs per step / step time / (devices x per-device "
      "dense peak FLOP/s of the compute dtype); the peak (peaks.PEAKS, vendor figures) "
      f"here: {peak_text}.",
      "- PyTorch ms: the official implementations timed on a 2-core CPU VM in float32 "
      "(AdamW, L1, all parameters trained), where it has the same (model, preset, batch, "
      "size); time ratio = sr_jax ms / PyTorch ms (below 1: sr_jax faster). Compare like "
      "with like: device, dtype and arm.", ""]


def report(rows: Sequence[Row], setting: str, steps: int, device_kind: str | None = None,
           num_devices: int | None = None, precision: str | None = None, fsdp: int = 1,
           state_dtype: str = "float32") -> str:
  """The whole markdown report: header, the table, then LoRA / full ratios."""
  device_kind = device_kind or jax.devices()[0].device_kind
  num_devices = num_devices or max([r["devices"] for r in rows if not r["error"]] or [1])
  lines = header(setting, steps, device_kind, num_devices, precision, fsdp,
                 state_dtype) + table(rows)
  ratios = ratio_lines(rows)
  if ratios:
    lines += ["", "LoRA / full fine-tuning, per backbone (memory: temp + arguments):"] + ratios
  return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# Command line.


def _define_flags() -> None:
  """Flags, defined only when run as a program (tests import this module beside others)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_list("models", list(MODELS), f"Models to measure: {', '.join(MODELS)}.")
  flags.DEFINE_list("arms", list(step_timing.ARMS), "Arms: full, lora.")
  flags.DEFINE_list("dtypes", [], "Compute dtypes (float32, bfloat16); default: the "
                    "setting's (cpu: float32; gpu: float32,bfloat16).")
  flags.DEFINE_enum("setting", "cpu", SETTINGS, "Batch and sizes: cpu (the PyTorch reference's) "
                    "or gpu (NAFNet batch 16 at 256x256, the job configs' batch and crop).")
  flags.DEFINE_integer("steps", 5, "Timed steps per row (after one warm-up step).")
  flags.DEFINE_integer("batch", 0, "Global batch of every model (0: the setting's).")
  flags.DEFINE_integer("size", 0, "Target (HR) side of every model (0: the setting's).")
  flags.DEFINE_list("presets", [], "Per-model presets, e.g. nafnet=micro,sr3_tiny=micro.")
  flags.DEFINE_integer("devices", -1, "Devices on the 'data' axis (config.mesh.data); -1 = "
                       "all. The batch must divide evenly over them.")
  flags.DEFINE_integer("fsdp", 1, "Devices each parameter and its optimizer moments are split "
                       "over (config.mesh.fsdp); 1 = replicated.")
  flags.DEFINE_enum("state_dtype", "float32", tuple(step_lib.STATE_DTYPES),
                    "Optimizer moments' storage dtype (config.optimizer.state_dtype).")
  flags.DEFINE_string("output", "", "Also write the markdown report to this file.")


def main(argv: Sequence[str]) -> None:
  """Command-line entry: bad flags exit 2 with one line naming the valid values."""
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  args = flags.FLAGS
  dtypes = args.dtypes or list(DEFAULT_DTYPES[args.setting])
  try:
    step_timing.check_arms(args.arms)
    check_names(dtypes, list(registry.DTYPES), "dtypes")
    jobs = plan(args.models, args.setting, parse_presets(args.presets), args.batch, args.size,
                args.devices, args.fsdp, args.state_dtype)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  runtime.setup()
  rows: list[Row] = []
  text = ""
  for i, job in enumerate(jobs):
    logging.info("Model %d/%d: %s %s, batch %d, size %d.", i + 1, len(jobs), job.name,
                 job.config.model.preset, job.batch, job.size)
    rows += measure_job(job, args.arms, dtypes, args.steps)
    text = report(rows, args.setting, args.steps,
                  precision=jax.config.jax_default_matmul_precision, fsdp=args.fsdp,
                  state_dtype=args.state_dtype)
    if args.output:
      with open(args.output, "w") as f:
        f.write(text + "\n")
  print(text, flush=True)


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  _define_flags()
  app.run(errors.guarded(main))
