r"""Forward-pass and train-step speed of any registry model, beside the PyTorch reference.

  python -m sr_jax.tools.benchmark --forward_batch 4   # configs/lora_nafnet.py: NAFNet-w32 SIDD,
                                                       # step at batch 4, 128x128, full and LoRA
  python -m sr_jax.tools.benchmark --config configs/lora_nafnet.py --config.model.preset=tiny \
      --config.model.dtype=bfloat16 --steps 3
  python -m sr_jax.tools.benchmark --config.model.name=restormer --config.model.preset=default \
      --skip_step --output /tmp/restormer_forward.md               # one part of a slow model
  python -m sr_jax.tools.benchmark --config.model.name=restormer --config.model.preset=default \
      --batch 2 --skip_forward --arms lora --steps 1 \
      "--config.lora.rank_overrides=('output/kernel=0',)" \
      "--config.lora.extra_trainable=('.*/bias','.*/scale','.*/temperature','output/kernel')"
  python -m sr_jax.tools.benchmark --config configs/esrgan.py --config.objective=pixel \
      --config.optimizer.name=adamw --arms full --batch 4 --forward_batch 4 --size 128
                                       # RRDBNet x4, LR 32x32 -> 128x128, as PyTorch's

(configs/lora_nafnet.py names NAFNet's 3-channel output conv, 'ending', to train fully instead of
carrying an adapter; Restormer's is 'output', hence the two LoRA overrides.)

Two measurements, each optional (`--skip_forward`, `--skip_step`) so that a slow model can be
measured in parts within a time limit:

- Forward: the model's jitted `model.apply` on a random (`--forward_batch`, `--size`, `--size`,
  C) input with freshly initialised parameters, i.e. plain inference (merged LoRA adapters cost
  nothing extra).

`--size` is the target (HR) side, as `data.crop_size` is in training: a super-resolution model
(`scale` > 1, e.g. RRDBNet x4) gets inputs of size / scale (`--size 128`: LR 32x32 -> 128x128),
restoration models inputs of `--size`. The PyTorch reference tables are keyed the same way.
- Train step, per arm of `--arms`: the job config's own training step (`PixelObjective.update`
  jitted by `step.build_train_step`, with its optimizer and loss) on one random batch of
  `--batch` crops of `--size`: the 'lora' arm as configured (depthwise kernels excluded by the
  model's registry entry), the 'full' arm with `lora.enabled=False`.

The parameters are initialised once, as a training run initialises them, and shared by all
measurements. Each measurement is compiled ahead of time (compile time reported apart), called
once untimed (one-off transfers), then timed as the median wall time of `--repeats` forward
passes or `--steps` steps, each blocked on with `jax.block_until_ready`; the arms' steps are
taken in rounds, each arm's back to back after an untimed one (step_timing.interleaved_ms), so
that both see the same machine state. GFLOPs and temp/argument memory come from XLA's analyses
of the compiled function. The LoRA arm trains each adapted layer merged, unmerged or factored
as config.lora.formulation decides (sr_jax.adapt.lora_layouts; `--layers` lists them with each
layout's predicted cost).

PyTorch, beside it: with PyTorch installed (and `--torch`, the default) the same network in
PyTorch (a transcription of the official architecture: NAFNet, Restormer, RRDBNet) is timed in
this process first, on the same shapes, with the official training recipe (AdamW, L1, all
parameters trained, float32); otherwise the reference table of earlier measurements is used
where it has the same (model, preset, batch, size). Both print as speed-up = PyTorch ms /
sr_jax ms (above 1: sr_jax faster) and time ratio = sr_jax ms / PyTorch ms; compare like with
like (device, dtype, arm) when reading them.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from sr_jax import objectives
from sr_jax.adapt import roofline
from sr_jax.config import config_cli, config_files
from sr_jax.tools import step_timing
from sr_jax.util import errors, runtime

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", str(config_files.config_path("lora_nafnet")),
                                "Job config to benchmark; "
                                "pick another model with --config.model.name/preset.",
                                lock_config=True)
flags.DEFINE_integer("batch", 4, "Global batch size of the train step.")
flags.DEFINE_integer("forward_batch", 1, "Batch size of the forward pass.")
flags.DEFINE_integer("size", 128, "Target crop height and width: the input of restoration "
                     "models; the HR output of SR models, whose input is size / scale.")
flags.DEFINE_integer("steps", 5, "Timed steps per arm, taken in rounds that give each arm "
                     "an untimed step and then its share of the timed ones.")
flags.DEFINE_integer("repeats", 5, "Timed forward passes (after one warm-up pass).")
flags.DEFINE_list("arms", ["full", "lora"], "Train-step arms to measure: 'full', 'lora'.")
flags.DEFINE_bool("skip_forward", False, "Do not measure the forward pass.")
flags.DEFINE_bool("skip_step", False, "Do not measure the train step.")
flags.DEFINE_bool("torch", True, "Also time the PyTorch model (a transcription of the official "
                  "architecture) in this process, when PyTorch is installed.")
flags.DEFINE_bool("layers", False, "List every adapted layer with the layout its LoRA step "
                  "trains it in (merged, unmerged or factored) and each layout's cost.")
flags.DEFINE_list("roofline_rates", [], "GMAC/s,GB/s: with --layers, predict each layer's "
                  "layout for a machine of these rates instead of this one's measured "
                  "roofline, e.g. 247000,3350 (an H100's dense TF32 peak and HBM3 bandwidth).")
flags.DEFINE_string("output", "", "Also write the markdown report to this file.")
config_cli.define_show_config()

# The flag-free pieces live in step_timing, so that other commands (sr_jax.tools.perf_report)
# can import them beside their own flags; these names keep this module's interface.
ARMS = step_timing.ARMS
PYTORCH_STEP_MS = step_timing.PYTORCH_STEP_MS
PYTORCH_FORWARD_MS = step_timing.PYTORCH_FORWARD_MS
DISPLAY_NAMES = step_timing.DISPLAY_NAMES
check_arms = step_timing.check_arms
arm_config = step_timing.arm_config
with_reference = step_timing.with_reference
_num = step_timing.format_number


def init_params(config: ml_collections.ConfigDict, size: int) -> Any:
  """The model's fresh parameters, initialised once and shared by all measurements."""
  return step_timing.init_params(config.model, step_timing.input_size(config.model, size),
                                 seed=config.seed)


def measure_forward(config: ml_collections.ConfigDict, params: Any, batch: int, size: int,
                    repeats: int, pytorch_ms: float | None = None) -> dict[str, Any]:
  """The forward-pass timing of the config's model (inputs of size / scale), beside PyTorch's
  (measured here, `pytorch_ms`, or the reference table's)."""
  result = step_timing.measure_forward(config.model, batch,
                                       step_timing.input_size(config.model, size), repeats,
                                       params=params, seed=config.seed)
  if pytorch_ms is not None:
    return step_timing.with_pytorch_ms(result, batch, pytorch_ms)
  return with_reference(result, PYTORCH_FORWARD_MS, config.model, batch, size)


def measure_steps(config: ml_collections.ConfigDict, params: Any, arms: list[str], batch: int,
                  size: int, steps: int, pytorch_ms: float | None = None) -> list[dict[str, Any]]:
  """One train-step timing per arm, the arms' steps in rounds (step_timing.interleaved_ms),
  each beside PyTorch's full-training step (measured here, `pytorch_ms`, or the reference
  table's)."""
  prepared = [step_timing.prepare_step(arm_config(config, arm, batch, size), base=params)
              for arm in arms]
  times = step_timing.interleaved_ms([call for call, _ in prepared], steps)
  rows = []
  for (_, facts), ms in zip(prepared, times):
    result = dict(facts, ms=ms)
    rows.append(step_timing.with_pytorch_ms(result, batch, pytorch_ms) if pytorch_ms is not None
                else with_reference(result, PYTORCH_STEP_MS, config.model, batch, size))
  return rows


def measure_pytorch(config: ml_collections.ConfigDict, batch: int, forward_batch: int,
                    size: int, steps: int, repeats: int) -> dict[str, Any]:
  """PyTorch's step and forward times in this process (sr_jax.tools.torch_step)."""
  from sr_jax.tools import torch_step  # pylint: disable=g-import-not-at-top
  return torch_step.measure(config.model, batch, size, steps, forward_batch, repeats,
                            seed=config.seed)


def layer_table(config: ml_collections.ConfigDict, params: Any, batch: int, size: int,
                rates: tuple[float, float] | None = None) -> list[str]:
  """Every adapted layer of the LoRA arm: the layout the step trains it in and why (each
  layout's multiply-adds, bytes and, under config.lora.cost_model='roofline', predicted time);
  with `rates` (GMAC/s, GB/s), the layouts the roofline would choose on such a machine."""
  from sr_jax.adapt import lora_layouts  # pylint: disable=g-import-not-at-top
  from sr_jax.models import registry  # pylint: disable=g-import-not-at-top
  from sr_jax.train import run_setup  # pylint: disable=g-import-not-at-top
  c = arm_config(config, "lora", batch, size)
  model = registry.build_model(c.model)
  plan = run_setup.lora_plan(c, params)
  inputs = registry.example_inputs(model, step_timing.lq_size(c), batch)
  costs = lora_layouts.layer_costs(model, params, plan, *inputs)
  machine = lora_layouts.cost_machine(c.lora.cost_model)
  if rates:
    machine = roofline.Machine("given rates, not measured here", rates[0] * 1e9,
                               rates[1] * 1e9)
  chosen = lora_layouts.choose(costs, c.lora.formulation, machine, tuple(c.lora.auto_layouts))
  timed = machine.bytes_per_s != float("inf")
  kinds = lora_layouts.LAYOUTS
  head = ["layer", "kind", "kernel", "rank", "trained"] + [f"{k} MMAC" for k in kinds] + [
      f"{k} MB" for k in kinds] + ([f"{k} us" for k in kinds] if timed else [])
  lines = [f"Cost model: {c.lora.cost_model} ({machine.kind}" + (
      f": {machine.macs_per_s / 1e9:.3g} GMAC/s, {machine.bytes_per_s / 1e9:.3g} GB/s)"
      if timed else ")"), "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
  for x in costs:
    cells = [x.path, x.layer, "x".join(map(str, x.kernel)), str(x.rank), chosen.of(x.path)]
    cells += [f"{x.macs[k] / 1e6:.1f}" for k in kinds] + [f"{x.bytes[k] / 1e6:.2f}"
                                                          for k in kinds]
    if timed:
      t = x.seconds(machine)
      cells += [f"{t[k] * 1e6:.1f}" for k in kinds]
    lines.append("| " + " | ".join(cells) + " |")
  counts = ", ".join(f"{sum(chosen.of(x.path) == k for x in costs)} {k}" for k in kinds)
  lines += ["", f"Layouts: {counts} of {len(costs)}" + (
      f"; predicted {lora_layouts.saved_seconds(costs, chosen, machine) * 1e3:.3g} ms per "
      "step saved against all merged." if timed else ".")]
  return lines


def _vs(r: dict[str, Any]) -> str:
  """The PyTorch ms, speed-up and time-ratio cells of a row."""
  if r["pytorch_ms"] is None:
    return "n/a | n/a | n/a"
  return f"{_num(r['pytorch_ms'])} | {r['speedup']:.2f}x | {r['time_ratio']:.2f}"


def forward_section(r: dict[str, Any], repeats: int) -> list[str]:
  """Markdown lines for the forward-pass measurement."""
  return [f"Forward pass (jitted model.apply), batch {r['batch']}, median of {repeats}:", "",
          "| params | ms | PyTorch ms | speed-up | time ratio | img/s | GFLOP | temp MiB | "
          "compile s |", "|---|---|---|---|---|---|---|---|---|",
          f"| {r['params']:,} | {_num(r['ms'])} | {_vs(r)} | {1000 * r['batch'] / r['ms']:.2f} | "
          f"{_num(r['gflops'])} | {_num(r['temp_mb'])} | {r['compile_s']:.1f} |"]


def step_section(rows: list[dict[str, Any]], config: ml_collections.ConfigDict,
                 steps: int) -> list[str]:
  """Markdown lines for the train-step measurements (one row per arm)."""
  lines = [f"Train step ({config.optimizer.name}, loss={config.loss.kind}), batch "
           f"{rows[0]['batch']}, median of {steps}:", "",
           "| arm | trainable | step ms | PyTorch ms | speed-up | time ratio | img/s | "
           "GFLOP/step | temp MiB | args MiB | compile s |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['arm']} | {r['trainable']:,} ({r['pct']:.2f}%) | {_num(r['ms'])} | "
                 f"{_vs(r)} | {1000 * r['batch'] / r['ms']:.2f} | {_num(r['gflops'])} | "
                 f"{_num(r['temp_mb'])} | {_num(r['arg_mb'])} | {r['compile_s']:.1f} |")
  if len(rows) == 2:
    a, b = rows
    lines.append(f"\n{b['arm']} / {a['arm']}: time {b['ms'] / a['ms']:.2f}, FLOPs "
                 f"{b['gflops'] / a['gflops']:.2f}, temp memory "
                 f"{b['temp_mb'] / max(a['temp_mb'], 1e-9):.2f}, total memory (temp + args) "
                 f"{(b['temp_mb'] + b['arg_mb']) / max(a['temp_mb'] + a['arg_mb'], 1e-9):.2f}.")
  for r in rows:
    if r.get("adapted"):
      merged = r["adapted"] - r["unmerged"] - r["factored"]
      lines.append(f"{r['arm']}: of {r['adapted']} adapted layers, {r['factored']} trained "
                   f"factored, {r['unmerged']} unmerged (neither forms a weight gradient of "
                   f"its frozen kernel), {merged} merged (config.lora.formulation="
                   f"{config.lora.formulation!r}, cost model {config.lora.cost_model!r}); "
                   "--layers lists them with each layout's predicted cost.")
  return lines


def pytorch_note(model: ml_collections.ConfigDict, torch_result: dict[str, Any] | None) -> str:
  """Where the PyTorch column comes from."""
  if torch_result and torch_result.get("step_ms") or torch_result and torch_result.get(
      "forward_ms"):
    return (f"\nPyTorch {torch_result['torch']}: measured in this process, "
            f"{torch_result['threads']} threads on {torch_result['cores']} cores, float32, a "
            "transcription of the official architecture (sr_jax.tools.torch_models); train "
            "steps with AdamW, L1, all parameters trained. speed-up = PyTorch ms / sr_jax ms "
            "(above 1: sr_jax faster); time ratio = sr_jax ms / PyTorch ms.")
  skipped = f" (not measured here: {torch_result['skipped']})" if torch_result else ""
  return ("\nPyTorch: the official implementation timed earlier on a machine of this class, 2 "
          "CPU cores, float32; train steps with AdamW, L1, all parameters trained "
          f"(step_timing.PYTORCH_*_MS){skipped}. speed-up = PyTorch ms / sr_jax ms "
          "(above 1: sr_jax faster); time ratio = sr_jax ms / PyTorch ms.")


def report(config: ml_collections.ConfigDict, size: int, forward: dict[str, Any] | None,
           steps: list[dict[str, Any]], repeats: int = 0, num_steps: int = 0,
           torch_result: dict[str, Any] | None = None, layers: list[str] = ()) -> str:
  """The markdown report: a header, the forward table, the train-step table and notes."""
  model = config.model
  name = DISPLAY_NAMES.get(model.name, model.name)
  lr = step_timing.input_size(model, size)
  sizes = f"{size}x{size}" if lr == size else f"LR {lr}x{lr} -> {size}x{size}"
  lines = [f"{name} {model.preset}, {sizes}, {model.dtype}, {jax.device_count()} x "
           f"{jax.devices()[0].device_kind}, conv_impl={model.conv_impl}"]
  if forward:
    lines += [""] + forward_section(forward, repeats)
  if steps:
    lines += [""] + step_section(steps, config, num_steps)
  if any(r["pytorch_ms"] for r in ([forward] if forward else []) + steps):
    lines.append(pytorch_note(model, torch_result))
    if model.dtype != "float32":
      lines.append(f"Note: sr_jax ran in {model.dtype}, the reference in float32.")
  if layers:
    lines += ["", "LoRA layers and the layout the step trains them in:", ""] + list(layers)
  return "\n".join(lines)


def _rates(values: list[str]) -> tuple[float, float] | None:
  """--roofline_rates as (GMAC/s, GB/s), or None; a clear error for anything else."""
  if not values:
    return None
  try:
    macs, bandwidth = (float(v) for v in values)
  except ValueError:
    raise app.UsageError(f"--roofline_rates={','.join(values)}: give two positive numbers, "
                         "GMAC/s,GB/s (e.g. 247000,3350).") from None
  if macs <= 0 or bandwidth <= 0:
    raise app.UsageError(f"--roofline_rates={','.join(values)}: both rates must be positive.")
  return macs, bandwidth


def main(argv: list[str]) -> None:
  del argv
  if config_cli.shown(sections=objectives.sections()):
    return
  runtime.setup()
  config = FLAGS.config
  if FLAGS.skip_forward and FLAGS.skip_step and not FLAGS.layers:
    raise app.UsageError("--skip_forward and --skip_step together leave nothing to measure "
                         "(add --layers for the layer table alone).")
  if not FLAGS.skip_step:
    check_arms(FLAGS.arms)
  params = init_params(config, FLAGS.size)
  torch_result = None
  if FLAGS.torch:  # First: PyTorch's threads then leave the cores to XLA's.
    torch_result = measure_pytorch(
        config, FLAGS.batch, 0 if FLAGS.skip_forward else FLAGS.forward_batch, FLAGS.size,
        0 if FLAGS.skip_step else FLAGS.steps, FLAGS.repeats)
  measured = torch_result or {}
  forward = None if FLAGS.skip_forward else measure_forward(
      config, params, FLAGS.forward_batch, FLAGS.size, FLAGS.repeats, measured.get("forward_ms"))
  steps = [] if FLAGS.skip_step else measure_steps(config, params, FLAGS.arms, FLAGS.batch,
                                                   FLAGS.size, FLAGS.steps,
                                                   measured.get("step_ms"))
  rates = _rates(FLAGS.roofline_rates)
  layers = layer_table(config, params, FLAGS.batch, FLAGS.size, rates) if FLAGS.layers else []
  text = report(config, FLAGS.size, forward, steps, FLAGS.repeats, FLAGS.steps, torch_result,
                layers)
  print(text, flush=True)
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  app.run(errors.guarded(main), flags_parser=config_cli.parse_flags)
