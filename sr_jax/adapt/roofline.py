"""A machine's roofline: how fast it multiplies and how fast it moves memory, measured once.

The LoRA formulation chooser (sr_jax.adapt.lora_branch) predicts each layout's extra time per step
as macs / mac_rate + bytes / bandwidth: the multiply-adds it adds at the rate of a large
float32 matrix product, plus the bytes it moves at the rate of a large elementwise add (read
and write). The two terms are added, not maxed: the thin rank-r passes are too small to
overlap arithmetic with memory traffic. Counting FLOPs alone (the old chooser) says a rank-r
branch is cheap wherever r is small, but on a CPU the branch's extra full-width reads and
writes (the layer's input read again, its output and input gradient accumulated) cost more
than the weight gradient it removes (docs/speed.md); on an accelerator, where a matrix unit
outruns memory far less than a CPU core does, the FLOP saving shows.

The constants are measured once per device kind (about a second) and cached in
$SR_JAX_CACHE/roofline.json (default ~/.cache/sr_jax); delete the file, or call `measure`, to
measure again (e.g. after a measurement taken beside another job). On another machine they are
obtained the same way, at the first LoRA run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import time

import jax
import jax.numpy as jnp

_MATMUL_N = 1024  # The matrix product: N x N by N x N, N^3 multiply-adds.
_STREAM_ELEMENTS = 1 << 24  # The add: 16M float32 read and written (128 MiB moved).


@dataclasses.dataclass(frozen=True)
class Machine:
  """Measured rates: multiply-adds per second and bytes moved per second."""
  kind: str
  macs_per_s: float
  bytes_per_s: float

  def seconds(self, macs: float, num_bytes: float) -> float:
    """The roofline's time for `macs` multiply-adds and `num_bytes` moved (added, not maxed)."""
    return macs / self.macs_per_s + num_bytes / self.bytes_per_s


# Multiply-adds only (bytes free): the chooser's former rule, whatever the machine.
FLOPS_ONLY = Machine("multiply-adds only", 1.0, math.inf)


def device_kind(device: jax.Device | None = None) -> str:
  """What the cache is keyed by: platform, device kind and (on a CPU) the usable cores."""
  device = device or jax.devices()[0]
  cores = f" x{len(os.sched_getaffinity(0))}" if device.platform == "cpu" else ""
  return f"{device.platform}: {device.device_kind}{cores}"


def _median_seconds(fn, *args, repeats: int = 5) -> float:
  jax.block_until_ready(fn(*args))  # Compiled and warm.
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def measure(device: jax.Device | None = None) -> Machine:
  """The device's rates, from a large float32 matrix product and a large elementwise add."""
  device = device or jax.devices()[0]
  a = jax.device_put(jnp.ones((_MATMUL_N, _MATMUL_N), jnp.float32), device)
  matmul = _median_seconds(jax.jit(lambda x: x @ x), a)
  v = jax.device_put(jnp.ones((_STREAM_ELEMENTS,), jnp.float32), device)
  stream = _median_seconds(jax.jit(lambda x: x + 1.0), v)
  return Machine(device_kind(device), _MATMUL_N ** 3 / matmul,
                 2 * 4 * _STREAM_ELEMENTS / stream)


def cache_path() -> str:
  root = os.environ.get("SR_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                         "sr_jax")
  return os.path.join(root, "roofline.json")


def current(device: jax.Device | None = None) -> Machine:
  """The device's rates from the cache, measured (and cached) when absent."""
  kind, path = device_kind(device), cache_path()
  cached = {}
  try:
    with open(path, encoding="utf-8") as f:
      cached = json.load(f)
  except (OSError, ValueError):
    pass
  if kind in cached:
    return Machine(kind, float(cached[kind]["macs_per_s"]), float(cached[kind]["bytes_per_s"]))
  machine = measure(device)
  cached[kind] = {"macs_per_s": machine.macs_per_s, "bytes_per_s": machine.bytes_per_s}
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      json.dump(cached, f, indent=1)
    os.replace(path + ".tmp", path)
  except OSError:
    pass  # A read-only home: measure again next time.
  return machine
