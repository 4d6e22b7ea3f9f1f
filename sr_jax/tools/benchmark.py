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
passes or `--steps` steps, each blocked on with `jax.block_until_ready`. GFLOPs and
temp/argument memory come from XLA's analyses of the compiled function. Where a PyTorch reference
time exists for the same (model, preset, batch, size) it is printed beside
ours, as speed-up = PyTorch ms / sr_jax ms (above 1: sr_jax faster) and time ratio = sr_jax ms /
PyTorch ms. The references are the official PyTorch implementations on 2 CPU cores in float32
with AdamW and an L1 loss, training all parameters; compare like with like (device, dtype, arm)
when reading them.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from sr_jax import runtime
from sr_jax.tools import step_timing

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/lora_nafnet.py", "Job config to benchmark; "
                                "pick another model with --config.model.name/preset.",
                                lock_config=True)
flags.DEFINE_integer("batch", 4, "Global batch size of the train step.")
flags.DEFINE_integer("forward_batch", 1, "Batch size of the forward pass.")
flags.DEFINE_integer("size", 128, "Target crop height and width: the input of restoration "
                     "models; the HR output of SR models, whose input is size / scale.")
flags.DEFINE_integer("steps", 5, "Timed steps per arm (after one warm-up step).")
flags.DEFINE_integer("repeats", 5, "Timed forward passes (after one warm-up pass).")
flags.DEFINE_list("arms", ["full", "lora"], "Train-step arms to measure: 'full', 'lora'.")
flags.DEFINE_bool("skip_forward", False, "Do not measure the forward pass.")
flags.DEFINE_bool("skip_step", False, "Do not measure the train step.")
flags.DEFINE_string("output", "", "Also write the markdown report to this file.")

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
                    repeats: int) -> dict[str, Any]:
  """The forward-pass timing of the config's model (inputs of size / scale), with its PyTorch
  reference if any."""
  result = step_timing.measure_forward(config.model, batch,
                                       step_timing.input_size(config.model, size), repeats,
                                       params=params, seed=config.seed)
  return with_reference(result, PYTORCH_FORWARD_MS, config.model, batch, size)


def measure_steps(config: ml_collections.ConfigDict, params: Any, arms: list[str], batch: int,
                  size: int, steps: int) -> list[dict[str, Any]]:
  """One train-step timing per arm, each with the PyTorch (full training) reference if any."""
  return [with_reference(
      step_timing.measure_step(arm_config(config, arm, batch, size), steps, base=params),
      PYTORCH_STEP_MS, config.model, batch, size) for arm in arms]


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
                 f"{b['temp_mb'] / max(a['temp_mb'], 1e-9):.2f}.")
  return lines


def report(config: ml_collections.ConfigDict, size: int, forward: dict[str, Any] | None,
           steps: list[dict[str, Any]], repeats: int = 0, num_steps: int = 0) -> str:
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
    lines.append("\nPyTorch: official implementation on the same machine class, 2 CPU cores, "
                 "float32; train steps with AdamW, L1, all parameters trained "
                 "(step_timing.PYTORCH_*_MS). speed-up = PyTorch ms / sr_jax ms "
                 "(above 1: sr_jax faster); time ratio = sr_jax ms / PyTorch ms.")
    if model.dtype != "float32":
      lines.append(f"Note: sr_jax ran in {model.dtype}, the reference in float32.")
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  del argv
  runtime.setup()
  config = FLAGS.config
  if FLAGS.skip_forward and FLAGS.skip_step:
    raise app.UsageError("--skip_forward and --skip_step together leave nothing to measure.")
  if not FLAGS.skip_step:
    check_arms(FLAGS.arms)
  params = init_params(config, FLAGS.size)
  forward = None if FLAGS.skip_forward else measure_forward(
      config, params, FLAGS.forward_batch, FLAGS.size, FLAGS.repeats)
  steps = [] if FLAGS.skip_step else measure_steps(config, params, FLAGS.arms, FLAGS.batch,
                                                   FLAGS.size, FLAGS.steps)
  text = report(config, FLAGS.size, forward, steps, FLAGS.repeats, FLAGS.steps)
  print(text, flush=True)
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  app.run(main)
