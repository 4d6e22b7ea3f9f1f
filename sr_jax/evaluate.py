"""Evaluation on full-resolution held-out images, and the results table.

Metrics follow the BasicSR protocol (sr_jax.metrics): outputs clamped to [0, 1] and rounded
to uint8 levels before PSNR/SSIM. Restoration is measured on RGB with no border crop unless the
config says otherwise; every printed number carries its protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sr_jax import metrics

PyTree = Any


def protocol(crop_border: int, y_channel: bool) -> str:
  channel = "Y channel (MATLAB BT.601)" if y_channel else "RGB"
  return f"PSNR/SSIM on {channel}, crop border {crop_border}, uint8-rounded (BasicSR protocol)"


def evaluate(apply_fn: Callable[[PyTree, jax.Array], jax.Array], params: PyTree,
             eval_set: Sequence[dict[str, Any]], *, crop_border: int = 0,
             y_channel: bool = False) -> dict[str, Any]:
  """Per-image and mean PSNR/SSIM of `apply_fn(params, lq)` against gt; keeps the outputs.

  Images are run one at a time at full resolution (shapes differ, so each new shape
  compiles once).
  """
  run = jax.jit(apply_fn)
  score = jax.jit(lambda p, g: (metrics.psnr(p, g, crop_border=crop_border, y_channel=y_channel),
                                metrics.ssim(p, g, crop_border=crop_border, y_channel=y_channel)))
  per_image, outputs = [], []
  for item in eval_set:
    pred = run(params, jnp.asarray(item["lq"])[None])
    psnr, ssim = score(pred, jnp.asarray(item["gt"])[None])
    per_image.append({"name": item["name"], "psnr": float(psnr[0]), "ssim": float(ssim[0])})
    outputs.append(np.asarray(jnp.clip(pred[0], 0.0, 1.0)))
  return {"psnr": float(np.mean([r["psnr"] for r in per_image])),
          "ssim": float(np.mean([r["ssim"] for r in per_image])),
          "per_image": per_image, "outputs": outputs}


def image_grid(lq: np.ndarray, output: np.ndarray, gt: np.ndarray) -> np.ndarray:
  """input | output | target side by side (input resized by repetition when smaller)."""
  if lq.shape[0] != gt.shape[0]:
    factor = gt.shape[0] // lq.shape[0]
    lq = np.repeat(np.repeat(lq, factor, axis=0), factor, axis=1)
  return np.concatenate([np.clip(lq, 0, 1), output, gt], axis=1)


# Optional results-table columns: (row key, header, format).
_EXTRA_COLUMNS = (("export_mb", "export MiB", "{:.2f}"), ("step_ms", "ms/step", "{:.0f}"),
                  ("step_memory_mb", "step memory MiB", "{:.0f}"))


def results_table(rows: dict[str, dict[str, Any]], protocol_text: str) -> str:
  """Markdown table: one row per arm (e.g. base, lora), with trainable-parameter share.

  Columns for the size of what an arm exports (adapters, or the whole model), its step time and
  its compiled step's memory appear when some row has them ('-' where a row has not).
  """
  extra = [c for c in _EXTRA_COLUMNS if any(c[0] in r for r in rows.values())]
  header = ["arm", "PSNR (dB)", "SSIM", "trainable params", "% of base"] + [c[1] for c in extra]
  lines = [f"Protocol: {protocol_text}", "", "| " + " | ".join(header) + " |",
           "|" + "---|" * len(header)]
  for arm, r in rows.items():
    cells = [arm, f"{r['psnr']:.3f}", f"{r['ssim']:.4f}", f"{r.get('trainable', 0):,}",
             f"{r.get('trainable_pct', 0.0):.2f}"]
    cells += [fmt.format(r[key]) if key in r else "-" for key, _, fmt in extra]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)
