"""Step time, compiled memory and FLOPs of full vs LoRA fine-tuning, side by side.

  python -m sr_jax.tools.benchmark          # configs/lora_nafnet.py: NAFNet-w32 SIDD, batch 4, 128x128
  python -m sr_jax.tools.benchmark --config configs/lora_nafnet.py --config.model.preset=tiny \
      --config.model.dtype=bfloat16 --steps 3

Both arms are the job config's own training step (`PixelObjective.update` jitted by
`step.build_train_step`): the LoRA arm as configured, the full arm with `lora.enabled=False`,
on the same random batch. Memory and FLOPs come from XLA's analysis of the compiled step;
times are the median of `--steps` timed steps after one warm-up step. The PyTorch reference
(REFERENCE.md section 12: official NAFNet, AdamW, same machine class) is printed beside them.
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
config_flags.DEFINE_config_file("config", "configs/lora_nafnet.py", "Job config to benchmark.",
                                lock_config=True)
flags.DEFINE_integer("batch", 4, "Global batch size.")
flags.DEFINE_integer("size", 128, "Crop size.")
flags.DEFINE_integer("steps", 5, "Timed steps per arm (after one warm-up step).")

# Official PyTorch NAFNet-w32 SIDD, batch 4, 128x128, AdamW, 2 CPU cores (REFERENCE.md s12).
PYTORCH_REFERENCE_MS = {("sidd_w32", 4, 128): 1661.0}


def arm_config(lora_enabled: bool) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(FLAGS.config.to_dict())
  c.data.crop_size, c.batch_size = FLAGS.size, FLAGS.batch
  c.lora.enabled = lora_enabled
  return c


def measure(lora_enabled: bool) -> dict[str, Any]:
  """Builds one arm's run and step; returns its timings and compiled analyses."""
  return step_timing.measure_step(arm_config(lora_enabled), FLAGS.steps)


def report(rows: list[dict[str, Any]]) -> str:
  model = FLAGS.config.model
  ref = PYTORCH_REFERENCE_MS.get((model.preset, FLAGS.batch, FLAGS.size))
  lines = [f"NAFNet {model.preset}, batch {FLAGS.batch}, {FLAGS.size}x{FLAGS.size}, {model.dtype}, "
           f"{jax.device_count()} x {jax.devices()[0].device_kind}, conv_impl={model.conv_impl}",
           "", "| arm | trainable | step ms | speed-up vs PyTorch | img/s | GFLOP/step | temp MiB | "
           "args MiB | compile s |", "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    vs = f"{ref / r['ms']:.2f}x" if ref else "n/a"
    lines.append(f"| {r['arm']} | {r['trainable']:,} ({r['pct']:.2f}%) | {r['ms']:.0f} | {vs} | "
                 f"{1000 * FLAGS.batch / r['ms']:.2f} | {r['gflops']:.1f} | {r['temp_mb']:.0f} | "
                 f"{r['arg_mb']:.0f} | {r['compile_s']:.1f} |")
  if ref:
    lines.append(f"\nPyTorch reference (official NAFNet, same machine class): {ref:.0f} ms/step; "
                 "speed-up = PyTorch ms / sr_jax ms (above 1 means sr_jax is faster).")
  if len(rows) == 2:
    lines.append(f"LoRA / full: time {rows[1]['ms'] / rows[0]['ms']:.2f}, FLOPs "
                 f"{rows[1]['gflops'] / rows[0]['gflops']:.2f}, temp memory "
                 f"{rows[1]['temp_mb'] / rows[0]['temp_mb']:.2f}.")
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  del argv
  runtime.setup()
  print(report([measure(False), measure(True)]), flush=True)


if __name__ == "__main__":
  app.run(main)
