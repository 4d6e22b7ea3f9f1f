"""Times a job config's compiled train step: the shared core of the benchmark commands.

Kept free of absl flags so every command (sr_jax.tools.benchmark, sr_jax.tools.data_benchmark)
can import it alongside its own `--config` flag.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from sr_jax import lora, sharding
from sr_jax import step as step_lib
from sr_jax import train


def measure_step(config: ml_collections.ConfigDict, steps: int) -> dict[str, Any]:
  """Times `steps` train steps of `config` (median, after a warm-up) on a random batch."""
  run = train.build_run(config, "/tmp/sr_jax_benchmark", base=None)
  rng = np.random.default_rng(0)
  shape = (config.batch_size, config.data.crop_size, config.data.crop_size, 3)
  local = {"lq": rng.random(shape, np.float32), "gt": rng.random(shape, np.float32)}
  batch = sharding.global_batch(local, run.mesh)
  step_fn = step_lib.build_train_step(run.objective.update, run.mesh)
  t0 = time.perf_counter()
  compiled = step_fn.lower(run.state, run.frozen, batch).compile()
  compile_s = time.perf_counter() - t0
  state = run.state
  times = []
  for i in range(steps + 1):
    t0 = time.perf_counter()
    state, metrics = compiled(state, run.frozen, batch)
    jax.block_until_ready(metrics["loss"])
    if i:  # The first call includes one-off transfers.
      times.append(1000 * (time.perf_counter() - t0))
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  mem = compiled.memory_analysis()
  trainable = lora.count(run.state.trainable)
  return dict(arm=f"LoRA r={config.lora.rank}" if config.lora.enabled else "full fine-tuning",
              ms=statistics.median(times), compile_s=compile_s, gflops=cost["flops"] / 1e9,
              temp_mb=mem.temp_size_in_bytes / 2**20, arg_mb=mem.argument_size_in_bytes / 2**20,
              trainable=trainable, pct=100 * trainable / run.num_base_params)
