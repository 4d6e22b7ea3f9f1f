"""The PyTorch reference, timed in the benchmark's own process: the same network in PyTorch (a
transcription of the official architecture, sr_jax.tools.torch_models) on the same machine.

A train step is the recipe the official code trains with, as the benchmarks compare it:
AdamW (lr 1e-3), an L1 loss, every parameter trained, float32, on uniform random inputs of the
same shapes; a forward pass is `model(x)` under `torch.no_grad()`. Like the JAX measurements:
one untimed warm-up, then the median of the timed calls. PyTorch uses as many threads as the
machine has cores (its default on Linux), and the timing is skipped, with a reason, when
PyTorch is not installed or the model has no transcription.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from sr_jax.models import registry

SUPPORTED = ("nafnet", "restormer", "rrdbnet")


def available() -> str:
  """'' when PyTorch can be imported, else why not."""
  if importlib.util.find_spec("torch") is None:
    return "PyTorch is not installed (pip install torch==2.13.0 for the CPU build)"
  return ""


def build(arch: dict[str, Any]):
  """The PyTorch module of a recorded sr_jax architecture (registry.architecture)."""
  name = arch["name"]
  if name == "nafnet":
    from sr_jax.tools.torch_models import nafnet  # pylint: disable=g-import-not-at-top
    return nafnet.NAFNet(arch["img_channel"], arch["width"], arch["middle_blk_num"],
                         arch["enc_blk_nums"], arch["dec_blk_nums"])
  if name == "restormer":
    from sr_jax.tools.torch_models import restormer  # pylint: disable=g-import-not-at-top
    return restormer.Restormer(
        inp_channels=arch["inp_channels"], out_channels=arch["out_channels"], dim=arch["dim"],
        num_blocks=arch["num_blocks"], num_refinement_blocks=arch["num_refinement_blocks"],
        heads=arch["heads"], ffn_expansion_factor=arch["ffn_expansion_factor"],
        bias=arch["bias"], LayerNorm_type=arch["layernorm_type"],
        dual_pixel_task=arch["dual_pixel_task"])
  if name == "rrdbnet":
    from sr_jax.tools.torch_models import rrdbnet  # pylint: disable=g-import-not-at-top
    return rrdbnet.RRDBNet(arch["num_in_ch"], arch["num_out_ch"], arch["scale"],
                           arch["num_feat"], arch["num_block"], arch["num_grow_ch"])
  raise ValueError(f"No PyTorch transcription of {name!r}; available: {SUPPORTED}.")


def _median_ms(fn: Callable[[], Any], repeats: int) -> float:
  fn()  # Warm-up: one-off allocations and oneDNN kernel selection.
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(1000 * (time.perf_counter() - start))
  return statistics.median(times)


def measure(model_config, batch: int, size: int, steps: int, forward_batch: int = 0,
            repeats: int = 0, seed: int = 0) -> dict[str, Any]:
  """{'step_ms', 'forward_ms', 'threads'} of the PyTorch model of `model_config` (None where not
  measured), or {'skipped': why}. `size` is the target side; SR inputs are size / scale."""
  why = available() or ("" if model_config.name in SUPPORTED
                        else f"no PyTorch transcription of {model_config.name}")
  if why:
    return {"skipped": why}
  import torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  model = build(registry.architecture(model_config))
  facts = registry.model_facts(model_config)
  lr_side = size // facts.scale
  result = {"step_ms": None, "forward_ms": None, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "cores": os.cpu_count()}
  if steps:
    x = torch.rand(batch, facts.in_channels, lr_side, lr_side)
    y = torch.rand(batch, facts.out_channels, size, size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step():
      opt.zero_grad(set_to_none=True)
      loss = torch.nn.functional.l1_loss(model(x), y)
      loss.backward()
      opt.step()

    result["step_ms"] = _median_ms(step, steps)
  if forward_batch and repeats:
    x = torch.rand(forward_batch, facts.in_channels, lr_side, lr_side)
    with torch.no_grad():
      result["forward_ms"] = _median_ms(lambda: model(x), repeats)
  return result
