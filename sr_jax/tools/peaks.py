"""Peak FLOP/s of accelerators and model-FLOPs utilisation (MFU) of a measured step.

Vendor figures, dense (no sparsity), per JAX device, by compute dtype; MFU is the step's
FLOPs (XLA's cost analysis) per second over the devices' peak.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Peak:
  """Dense (no sparsity) peak TFLOP/s of one JAX device, per compute dtype.

  `float32` is the figure for float32 convs and matrix products at XLA's default precision,
  which JAX uses unless `jax_default_matmul_precision` says otherwise: TF32 tensor cores on
  NVIDIA Ampere/Hopper, one bfloat16 pass of the MXU on TPU ("Matmul precision",
  docs.jax.dev). The plain-FP32 figure would put a TF32-speed step above 100%.
  `float32_highest` applies at precision 'highest'/'float32' (true float32): CUDA-core FP32 on
  GPUs; None on TPUs, which emulate it with several bfloat16 passes and publish no figure.
  `float16`: None on TPUs (their MXU has no float16 mode).
  """
  bfloat16: float
  float32: float
  float32_highest: float | None
  float16: float | None


# Keys are lower-case substrings of `jax.devices()[0].device_kind`; the longest match wins
# ('h100 pcie' over 'h100', 'tpu v5 lite' over 'tpu v5'). NVIDIA's datasheets give tensor-core
# figures with 2:4 sparsity: the dense ones here are half of those.
PEAKS: dict[str, Peak] = {
    # H100 SXM5 ('NVIDIA H100 80GB HBM3'): BF16/FP16 1,979 sparse -> 989, TF32 989 -> 494,
    # FP32 67.
    "h100": Peak(bfloat16=989.0, float32=494.0, float32_highest=67.0, float16=989.0),
    # H100 PCIe: BF16/FP16 1,513 sparse -> 756, TF32 756 -> 378, FP32 51.
    "h100 pcie": Peak(bfloat16=756.0, float32=378.0, float32_highest=51.0, float16=756.0),
    # H100 NVL (per GPU): BF16/FP16 1,671 sparse -> 835, TF32 835 -> 417, FP32 60.
    "h100 nvl": Peak(bfloat16=835.0, float32=417.0, float32_highest=60.0, float16=835.0),
    # H200 SXM ('NVIDIA H200'): the H100 SXM's compute with more, faster memory. (GH200's GPU
    # matches too, and has the same figures.)
    "h200": Peak(bfloat16=989.0, float32=494.0, float32_highest=67.0, float16=989.0),
    # H200 NVL: the H100 NVL's figures.
    "h200 nvl": Peak(bfloat16=835.0, float32=417.0, float32_highest=60.0, float16=835.0),
    # A100 SXM4 and PCIe, 40 and 80 GB: BF16/FP16 312, TF32 156, FP32 19.5.
    "a100": Peak(bfloat16=312.0, float32=156.0, float32_highest=19.5, float16=312.0),
    # Cloud TPU docs, bf16 per chip; one JAX device is one chip on each of these (v4 and v5p
    # join their two TensorCores as a megacore; v5e and v6e have one).
    "tpu v4": Peak(bfloat16=275.0, float32=275.0, float32_highest=None, float16=None),
    "tpu v5 lite": Peak(bfloat16=197.0, float32=197.0, float32_highest=None, float16=None),
    "tpu v5e": Peak(bfloat16=197.0, float32=197.0, float32_highest=None, float16=None),
    "tpu v5p": Peak(bfloat16=459.0, float32=459.0, float32_highest=None, float16=None),
    # v5p also reports itself as 'TPU v5'.
    "tpu v5": Peak(bfloat16=459.0, float32=459.0, float32_highest=None, float16=None),
    "tpu v6 lite": Peak(bfloat16=918.0, float32=918.0, float32_highest=None, float16=None),
    "tpu v6e": Peak(bfloat16=918.0, float32=918.0, float32_highest=None, float16=None),
}
_DEFAULT_PRECISIONS = (None, "default", "fastest")
_FULL_FLOAT32_PRECISIONS = ("highest", "float32")


def device_peak(device_kind: str) -> Peak | None:
  """The PEAKS entry whose key is the longest case-insensitive substring of `device_kind`."""
  kind = device_kind.lower()
  matches = [key for key in PEAKS if key in kind]
  return PEAKS[max(matches, key=len)] if matches else None


def peak_tflops(device_kind: str, dtype: str, precision: str | None = None) -> float | None:
  """Dense peak TFLOP/s of one device of `device_kind` computing in `dtype`, or None (n/a).

  `precision`: `jax_default_matmul_precision` (None: XLA's default), which decides the units
  float32 convs run on; other settings than the default and 'highest'/'float32' (e.g. 'high',
  'bfloat16_3x') have no single figure: None.
  """
  peak = device_peak(device_kind)
  if peak is None:
    return None
  if dtype in ("bfloat16", "float16"):
    return getattr(peak, dtype)
  if dtype != "float32":
    return None
  if precision in _DEFAULT_PRECISIONS:
    return peak.float32
  if precision in _FULL_FLOAT32_PRECISIONS:
    return peak.float32_highest
  return None


def mfu(flops_per_step: float, step_ms: float, devices: int,
        peak: float | None) -> float | None:
  """Model FLOPs utilisation: `flops_per_step` (all devices) / step time / (devices x `peak`
  TFLOP/s per device), a fraction; None when the peak is unknown."""
  if peak is None:
    return None
  return flops_per_step / (step_ms / 1000) / (devices * peak * 1e12)
