"""Times a job config's compiled train step and its model's forward pass: the shared core of
the benchmark commands.

Kept free of absl flags so every command (sr_jax.tools.benchmark, sr_jax.tools.data_benchmark,
sr_jax.tools.perf_report) and the tests can import it alongside their own flags; hence the
commands' shared pieces are here too: the PyTorch reference times (official implementations),
the per-arm ('full', 'lora') job configs and the number format. Both measurements compile
ahead of time (the compile time is reported apart), make one untimed warm-up call (one-off
transfers and allocations), then report the median wall time of the timed calls, each ending in
`jax.block_until_ready` so asynchronous dispatch does not hide the work.

Sizes: a train step's `config.data.crop_size` is the target (HR) crop, as in training, so a
super-resolution model (`scale` > 1) gets random LR inputs of crop_size / scale
(`input_size`); a forward pass's `size` is its input side. A diffusion model (SR3) has no
`scale`: its UNet works at the HR size on (condition, noisy, noise level), so it is initialised
at the HR side and its LR inputs are crop_size / `config.data.degradation.scale` (`data_scale`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from sr_jax.adapt import lora
from sr_jax.models import registry
from sr_jax.train import run_setup
from sr_jax.util import sharding

PyTree = Any


# -- the benchmark commands' shared tables and arm configs ------------------------------------

ARMS = ("full", "lora")
# The official PyTorch implementations (megvii-research/NAFNet, swz30/Restormer, BasicSR's
# RRDBNet) timed on a 2-core CPU VM of this class, PyTorch 2.13, float32 (steps: AdamW, L1, all
# parameters trained), by (model name, preset, batch, size) -> ms. `size` is the target (HR)
# side, as data.crop_size: an SR model's LR input is size / scale (RRDBNet x4: LR 32 -> 128).
PYTORCH_STEP_MS: dict[tuple[str, str, int, int], float] = {
    ("nafnet", "sidd_w32", 4, 128): 1661.0,
    ("restormer", "default", 2, 128): 50_000.0,  # "~50 s per step".
    ("rrdbnet", "x4", 4, 128): 2647.0,  # LR 32x32 -> HR 128x128.
}
PYTORCH_FORWARD_MS: dict[tuple[str, str, int, int], float] = {
    ("nafnet", "sidd_w32", 4, 128): 432.0,
    ("restormer", "default", 1, 128): 2300.0,
    ("rrdbnet", "x4", 4, 128): 821.0,  # LR 32x32 -> HR 128x128.
}
DISPLAY_NAMES = {"nafnet": "NAFNet", "restormer": "Restormer", "rrdbnet": "RRDBNet",
                 "srresnet": "MSRResNet", "mesrgan": "MESRGAN", "sr3": "SR3"}


def check_arms(arms: list[str]) -> None:
  """Unknown arm names are an error before any (slow) measurement starts."""
  unknown = [a for a in arms if a not in ARMS]
  if unknown or not arms:
    raise ValueError(f"--arms={','.join(arms)}: choose one or more of {ARMS}.")


def arm_config(config: ml_collections.ConfigDict, arm: str, batch: int,
               size: int) -> ml_collections.ConfigDict:
  """A copy of the job config for one arm ('full' or 'lora') at the benchmark's batch and size.

  The data's scale follows the model's (the batch is random), so any job config can time an SR
  model picked with --config.model.name/preset; a diffusion job (SR3, no model scale) keeps its
  data scale.
  """
  check_arms([arm])
  c = ml_collections.ConfigDict(config.to_dict())
  c.data.crop_size, c.batch_size = size, batch
  c.data.degradation.scale = data_scale(config)
  c.lora.enabled = arm == "lora"
  return c


def with_reference(result: dict[str, Any], table: dict[tuple[str, str, int, int], float],
                   model_config: ml_collections.ConfigDict, batch: int,
                   size: int) -> dict[str, Any]:
  """`result` plus the PyTorch time for the same (model, preset, batch, size) and both ratios.

  The three added keys are None where the table has no such entry, or where
  `config.model.width` changes the preset's architecture.
  """
  ref = None if model_config.get("width") else table.get(
      (model_config.name, model_config.preset, batch, size))
  return with_pytorch_ms(result, batch, ref)


def with_pytorch_ms(result: dict[str, Any], batch: int, ref: float | None) -> dict[str, Any]:
  """`result` plus a PyTorch time `ref` (ms, or None) and both ratios."""
  return dict(result, batch=batch, pytorch_ms=ref,
              speedup=ref / result["ms"] if ref else None,
              time_ratio=result["ms"] / ref if ref else None)


def format_number(x: float) -> str:
  """Whole numbers from 100 up, three significant digits below (micro models take ~1 ms)."""
  return f"{x:,.0f}" if abs(x) >= 100 else f"{x:#.3g}"


# -- measurements -------------------------------------------------------------------------

def median_ms(call: Callable[[], Any], repeats: int) -> float:
  """Median wall time in ms of `repeats` calls of `call`, after one untimed warm-up call.

  Each call's result is blocked on, so the time is the computation's, not its dispatch's.
  """
  if repeats < 1:
    raise ValueError(f"Need at least one timed call, got {repeats}.")
  times = []
  for i in range(repeats + 1):
    t0 = time.perf_counter()
    jax.block_until_ready(call())
    if i:  # The first call includes one-off transfers.
      times.append(1000 * (time.perf_counter() - t0))
  return statistics.median(times)


def compiled_costs(compiled) -> dict[str, float]:
  """GFLOPs and temp/argument memory (MiB) from XLA's analyses of a compiled function."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  mem = compiled.memory_analysis()
  return dict(gflops=cost["flops"] / 1e9, temp_mb=mem.temp_size_in_bytes / 2**20,
              arg_mb=mem.argument_size_in_bytes / 2**20)


def model_scale(model_config: ml_collections.ConfigDict) -> int:
  """The model's upscaling factor (1 for restoration and diffusion models)."""
  return registry.model_facts(model_config).scale


def input_size(model_config: ml_collections.ConfigDict, target_size: int) -> int:
  """The input side for a target (HR) side: target_size / scale, which must divide exactly."""
  scale = model_scale(model_config)
  if target_size % scale:
    raise ValueError(f"Target size {target_size} is not a multiple of {model_config.name} "
                     f"{model_config.preset}'s scale {scale}.")
  return target_size // scale


def is_diffusion(config: ml_collections.ConfigDict) -> bool:
  """Whether the job's model is a diffusion model (its UNet works at the HR size)."""
  return registry.model_facts(config.model).kind == "diffusion"


def data_scale(config: ml_collections.ConfigDict) -> int:
  """The LR -> HR factor of a job's data: the model's `scale`, or for a diffusion model
  (whose UNet works at the HR size, so any factor fits) `config.data.degradation.scale`."""
  if is_diffusion(config):
    return int(config.data.degradation.scale)
  return model_scale(config.model)


def lq_size(config: ml_collections.ConfigDict) -> int:
  """The side of a train step's random LR input: data.crop_size / `data_scale`."""
  if not is_diffusion(config):
    return input_size(config.model, config.data.crop_size)
  scale = data_scale(config)
  if config.data.crop_size % scale:
    raise ValueError(f"config.data.crop_size={config.data.crop_size} is not a multiple of "
                     f"config.data.degradation.scale={scale}.")
  return config.data.crop_size // scale


def random_batch(config: ml_collections.ConfigDict, seed: int = 0) -> dict[str, np.ndarray]:
  """A host batch {'lq', 'gt'} of uniform [0, 1) crops: gt data.crop_size, lq `lq_size`."""
  facts = registry.model_facts(config.model)
  gt_size = config.data.crop_size
  lq_side = lq_size(config)
  rng = np.random.default_rng(seed)
  return {"lq": rng.random((config.batch_size, lq_side, lq_side, facts.in_channels),
                           np.float32),
          "gt": rng.random((config.batch_size, gt_size, gt_size, facts.out_channels),
                           np.float32)}


def init_params(model_config: ml_collections.ConfigDict, size: int, seed: int = 0) -> PyTree:
  """Fresh parameters of the model as `run_setup.build_run` makes them, copied to the host.

  `size`: the side of the zero input `model.init` is traced on (any valid input side; the
  parameters do not depend on it, the init's cost does: pass the input side, not the HR one).
  A diffusion model is traced on its own `example_inputs` (condition, noisy image, noise
  level) of `size`, the HR side it works at; `input_size` gives that side for it too (scale 1).

  `run_setup.init_base` with the run's own key, so passing them as its `base` gives the same values
  while compiling `model.init` once for all measurements. A host copy: the train step donates
  its state, which would delete device arrays the next measurement reuses.
  """
  model = registry.build_model(model_config)
  return jax.device_get(run_setup.init_base(model, size, jax.random.PRNGKey(seed)))


def arm_label(config: ml_collections.ConfigDict) -> str:
  """How a train-step row names its arm: 'LoRA r=8' or 'full fine-tuning'."""
  return f"LoRA r={config.lora.rank}" if config.lora.enabled else "full fine-tuning"


def prepare_step(config: ml_collections.ConfigDict,
                 base: PyTree | None = None) -> tuple[Callable[[], Any], dict[str, Any]]:
  """One compiled train step of `config` on a random batch, ready to call, and its facts.

  The batch is `config.batch_size` target crops of `config.data.crop_size` (inputs divided by
  the data's scale, see `random_batch`). `base`: parameters to start from (e.g.
  `init_params`), or None to initialise them here. Works for every objective
  `run_setup.build_run` builds from the config (config.objective).

  `gflops`, `temp_mb` and `arg_mb` are XLA's figures for one device's partition of the step;
  `devices` is the size of the mesh it runs on (the batch is split over it).
  """
  run = run_setup.build_run(config, "/tmp/sr_jax_benchmark", base=base)
  batch = sharding.global_batch(random_batch(config), run.mesh)
  step_fn = run.train_step()  # The run's own layouts (replicated, or FSDP-split state).
  t0 = time.perf_counter()
  compiled = step_fn.lower(run.state, run.frozen, batch).compile()
  compile_s = time.perf_counter() - t0
  trainable = lora.count(run.state.trainable)
  state = run.state

  def one_step():
    nonlocal state  # The step donates its input state: carry the new one forward.
    state, metrics = compiled(state, run.frozen, batch)
    return metrics["loss"]

  layouts = run.objective.layouts
  return one_step, dict(arm=arm_label(config), compile_s=compile_s, trainable=trainable,
                        devices=run.mesh.size, pct=100 * trainable / run.num_base_params,
                        adapted=len(run.plan.paths) if run.plan else 0,
                        unmerged=len(layouts.unmerged), factored=len(layouts.factored),
                        **compiled_costs(compiled))


def measure_step(config: ml_collections.ConfigDict, steps: int,
                 base: PyTree | None = None) -> dict[str, Any]:
  """Times `steps` train steps of `config` (median, after a warm-up) on a random batch
  (`prepare_step` says which, and what else the result holds)."""
  one_step, facts = prepare_step(config, base)
  return dict(facts, ms=median_ms(one_step, steps))


def interleaved_ms(calls: Sequence[Callable[[], Any]], repeats: int, rounds: int = 2,
                   clock: Callable[[], float] = time.perf_counter) -> list[float]:
  """Median wall time in ms of each call over `repeats` timed calls, taken in `rounds` rounds
  that give every call in turn one untimed call and then its share of the timed ones.

  Arms compared side by side then see the same machine state (a drift between the first arm's
  steps and the last's is shared), while each arm's timed steps run back to back, as in a
  training run: timing the arms alternately, step by step, made every step pay for the other
  arm's buffers (RRDBNet's LoRA / full time 1.13 against 1.01 run one after the other)."""
  if repeats < 1:
    raise ValueError(f"Need at least one timed call, got {repeats}.")
  rounds = max(1, min(rounds, repeats))
  shares = [repeats // rounds + (r < repeats % rounds) for r in range(rounds)]
  times: list[list[float]] = [[] for _ in calls]
  for share in shares:
    for call, record in zip(calls, times):
      jax.block_until_ready(call())  # Untimed: its buffers back, one-off transfers done.
      for _ in range(share):
        t0 = clock()
        jax.block_until_ready(call())
        record.append(1000 * (clock() - t0))
  return [statistics.median(t) for t in times]


def measure_forward(model_config: ml_collections.ConfigDict, batch: int, size: int,
                    repeats: int, params: PyTree | None = None, seed: int = 0) -> dict[str, Any]:
  """Times the jitted `model.apply` of `model_config` on a random (batch, size, size, C) input.

  Plain inference of the base model (LoRA adapters merge into their kernels, so a tuned model
  costs the same). `params`: e.g. `init_params`, or None to initialise them here; the input is
  uniform in [0, 1).
  """
  model = registry.build_model(model_config)
  if params is None:
    params = init_params(model_config, size, seed)
  return time_apply(model, params, (batch, size, size, model.input_channels), repeats, seed)


def time_apply(module, params: PyTree, input_shape: tuple[int, ...], repeats: int,
               seed: int = 0) -> dict[str, Any]:
  """ms (median), compile time, parameter count, GFLOPs and memory of the jitted
  `module.apply` on a uniform [0, 1) input of `input_shape`."""
  x = np.random.default_rng(seed).random(input_shape, np.float32)
  variables, x = jax.device_put(({"params": params}, x))
  t0 = time.perf_counter()
  compiled = jax.jit(module.apply).lower(variables, x).compile()
  compile_s = time.perf_counter() - t0
  ms = median_ms(lambda: compiled(variables, x), repeats)
  return dict(ms=ms, compile_s=compile_s, params=lora.count(variables["params"]),
              **compiled_costs(compiled))
