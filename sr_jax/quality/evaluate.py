"""Evaluation on full-resolution held-out images, and the results table.

Metrics follow the BasicSR protocol (sr_jax.quality.metrics): outputs clamped to [0, 1] and rounded
to uint8 levels before PSNR/SSIM. Restoration is measured on RGB with no border crop unless the
config says otherwise; every printed number carries its protocol.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from PIL import Image, ImageDraw, ImageFont

from sr_jax.data import resize
from sr_jax.quality import metrics

PyTree = Any


def protocol(crop_border: int, y_channel: bool) -> str:
  channel = "Y channel (MATLAB BT.601)" if y_channel else "RGB"
  return f"PSNR/SSIM on {channel}, crop border {crop_border}, uint8-rounded (BasicSR protocol)"


def options(eval_config: Any, scale: int) -> dict[str, Any]:
  """`evaluate` keyword arguments from config.eval; crop_border -1 means the SR scale."""
  crop = eval_config.crop_border
  crop = (scale if scale > 1 else 0) if crop < 0 else crop
  for net in eval_config.lpips:
    if net not in ("alex", "vgg"):
      raise ValueError(f"Unknown LPIPS network {net!r} in config.eval.lpips; use 'alex' or "
                       "'vgg'.")
  consistency_scale = scale if eval_config.get("consistency", False) else 0
  if consistency_scale == 1:
    raise ValueError("config.eval.consistency compares the LR input with the downscaled "
                     "output: it needs a super-resolution job (data.degradation.scale > 1).")
  return dict(crop_border=crop, y_channel=eval_config.y_channel,
              lpips_nets=tuple(eval_config.lpips), rmse=eval_config.rmse,
              niqe=eval_config.niqe, consistency_scale=consistency_scale)


def evaluate(apply_fn: Callable[[PyTree, jax.Array], jax.Array], params: PyTree,
             eval_set: Sequence[dict[str, Any]], *, crop_border: int = 0,
             y_channel: bool = False, lpips_nets: Sequence[str] = (), rmse: bool = False,
             niqe: bool = False, consistency_scale: int = 0,
             progress: Callable[[int], None] | None = None) -> dict[str, Any]:
  """Per-image and mean PSNR/SSIM (and the optional metrics) of `apply_fn(params, lq)`.

  Images are run one at a time at full resolution (shapes differ, so each new shape
  compiles once). RMSE uses PSNR's protocol; LPIPS (lower is better) compares the
  uint8-rounded RGB images with the same border crop; NIQE (no-reference, lower is better)
  scores the rounded output's Y channel with the same border crop, as BasicSR does.
  With `consistency_scale` s > 1, 'consistency' is SR3's: the MSE between the LR input and the
  output downscaled by 1/s with MATLAB's bicubic (how the LR images were made), on the [0, 1]
  scale and in units of 1e-5, over the whole image. 'seconds_per_image' is the median time of
  one image's forward pass (for diffusion: its whole sampling chain). `progress(images done)`
  is called after each image.
  """
  run = _jitted(apply_fn)
  kw = dict(crop_border=crop_border, y_channel=y_channel)
  score = _scorer(crop_border, y_channel)
  per_image, outputs, seconds = [], [], []
  for item in eval_set:
    start = time.perf_counter()
    pred = jax.block_until_ready(run(params, jnp.asarray(item["lq"])[None]))
    seconds.append(time.perf_counter() - start)
    gt = jnp.asarray(item["gt"])[None]
    psnr, ssim = score(pred, gt)
    row = {"name": item["name"], "psnr": float(psnr[0]), "ssim": float(ssim[0])}
    if rmse:
      row["rmse"] = float(metrics.rmse(pred, gt, **kw)[0])
    row.update(_perceptual_scores(pred, gt, crop_border, lpips_nets, niqe))
    if consistency_scale:
      lr = item.get("lr", item["lq"])  # bicubic_set keeps the LR input there.
      row["consistency"] = consistency(np.asarray(pred[0]), lr, consistency_scale)
    per_image.append(row)
    outputs.append(np.asarray(jnp.clip(pred[0], 0.0, 1.0)))
    if progress is not None:
      progress(len(per_image))
  keys = [k for k in per_image[0] if k != "name"] if per_image else ["psnr", "ssim"]
  means = {k: float(np.nanmean([r[k] for r in per_image])) for k in keys}
  if seconds:  # The median: the first image of each size also compiles.
    means["seconds_per_image"] = float(np.median(seconds))
  return dict(means, per_image=per_image, outputs=outputs)


def _jitted(apply_fn: Callable[[PyTree, jax.Array], jax.Array]) -> Callable:
  """One jitted apply per function, so that periodic evaluations (config.eval_every) compile
  once per image shape rather than at every evaluation; a bound method is the same key each
  time it is looked up on the same object. An unhashable callable is jitted afresh."""
  try:
    return _jitted_cached(apply_fn)
  except TypeError:
    return jax.jit(apply_fn)


_jitted_cached = functools.lru_cache(maxsize=16)(jax.jit)


@functools.lru_cache(maxsize=8)
def _scorer(crop_border: int, y_channel: bool) -> Callable:
  """PSNR and SSIM of a batch under one protocol, jitted once per protocol."""
  kw = dict(crop_border=crop_border, y_channel=y_channel)
  return jax.jit(lambda p, g: (metrics.psnr(p, g, **kw), metrics.ssim(p, g, **kw)))


def _perceptual_scores(pred: jax.Array, gt: jax.Array, crop_border: int,
                       lpips_nets: Sequence[str], niqe: bool) -> dict[str, float]:
  """LPIPS per network and NIQE of one (1, H, W, 3) prediction, on the uint8 grid."""
  if not lpips_nets and not niqe:
    return {}
  c = crop_border
  pred8 = np.asarray(metrics.to_uint8_grid(pred))[0]
  gt8 = np.asarray(metrics.to_uint8_grid(gt))[0]
  if c:
    pred8, gt8 = pred8[c:-c, c:-c], gt8[c:-c, c:-c]
  out = {}
  for net in lpips_nets:
    from sr_jax.quality import lpips  # pylint: disable=g-import-not-at-top
    out[f"lpips_{net}"] = float(lpips.lpips(pred8[None] / 255.0, gt8[None] / 255.0, net=net)[0])
  if niqe:
    from sr_jax.quality import niqe as niqe_lib  # pylint: disable=g-import-not-at-top
    try:
      out["niqe"] = float(niqe_lib.niqe(pred8.astype(np.uint8), crop_border=0))
    except ValueError as e:  # Smaller than two 96-pixel blocks: NIQE is undefined there.
      logging.warning("NIQE skipped for an image: %s", e)
      out["niqe"] = float("nan")
  return out


def consistency(output: np.ndarray, lq: np.ndarray, scale: int) -> float:
  """SR3's consistency of one (H, W, C) output with its LR input: MSE x 1e5 (see `evaluate`)."""
  down = resize.imresize(np.clip(np.asarray(output, np.float64), 0.0, 1.0), 1.0 / scale)
  lq = np.asarray(lq, np.float64)
  if down.shape != lq.shape:
    raise ValueError(f"The output downscaled by {scale} has shape {down.shape}, the LR input "
                     f"{lq.shape}: the model's scale and data.degradation.scale differ.")
  return float(np.mean(np.square(down - lq)) * 1e5)


def bicubic_set(eval_set: Sequence[dict[str, Any]], scale: int) -> list[dict[str, Any]]:
  """The eval set with each LR input replaced by its MATLAB-bicubic upscaling by `scale`: the
  baseline row of an SR table (evaluate it with an identity `apply_fn`)."""
  return [dict(item, lq=resize.imresize(np.asarray(item["lq"], np.float32), scale),
               lr=item["lq"]) for item in eval_set]


GRID_LABELS = ("input", "output", "target")
_CAPTION_PX = 14


def image_grid(lq: np.ndarray, output: np.ndarray, gt: np.ndarray,
               labels: Sequence[str] = GRID_LABELS) -> np.ndarray:
  """input | output | target side by side under a caption strip naming each panel (input
  resized by repetition when smaller); float RGB in [0, 1]."""
  if lq.shape[0] != gt.shape[0]:
    factor = gt.shape[0] // lq.shape[0]
    lq = np.repeat(np.repeat(lq, factor, axis=0), factor, axis=1)
  panels = [np.clip(lq, 0, 1), np.clip(output, 0, 1), np.clip(gt, 0, 1)]
  panels = [np.repeat(p, 3, axis=-1) if p.shape[-1] == 1 else p for p in panels]
  strip = Image.new("RGB", (sum(p.shape[1] for p in panels), _CAPTION_PX), (255, 255, 255))
  draw, font, left = ImageDraw.Draw(strip), ImageFont.load_default(), 0
  for panel, label in zip(panels, labels):
    draw.text((left + 2, 1), label, fill=(0, 0, 0), font=font)
    left += panel.shape[1]
  caption = np.asarray(strip, np.float32) / 255.0
  return np.concatenate([caption, np.concatenate(panels, axis=1)], axis=0)


# Optional results-table columns: (row key, header, format).
_METRIC_COLUMNS = (("lpips_alex", "LPIPS-alex", "{:.4f}"), ("lpips_vgg", "LPIPS-vgg", "{:.4f}"),
                   ("rmse", "RMSE", "{:.2f}"), ("niqe", "NIQE", "{:.3f}"),
                   ("consistency", "consistency (1e-5)", "{:.2f}"))
_EXTRA_COLUMNS = (("export_mb", "export MiB", "{:.2f}"), ("step_ms", "ms/step", "{:.0f}"),
                  ("step_memory_mb", "step memory MiB", "{:.0f}"))


def results_table(rows: dict[str, dict[str, Any]], protocol_text: str) -> str:
  """Markdown table: one row per arm (e.g. base, lora), with trainable-parameter share.

  Columns for LPIPS, RMSE and NIQE (when evaluated), the size of what an arm exports
  (adapters, or the whole model), its step time and its compiled step's memory appear when
  some row has them ('-' where a row has not).
  """
  metric = [c for c in _METRIC_COLUMNS if any(c[0] in r for r in rows.values())]
  extra = [c for c in _EXTRA_COLUMNS if any(c[0] in r for r in rows.values())]
  header = (["arm", "PSNR (dB)", "SSIM"] + [c[1] for c in metric] +
            ["trainable params", "% of base"] + [c[1] for c in extra])
  lines = [f"Protocol: {protocol_text}", "", "| " + " | ".join(header) + " |",
           "|" + "---|" * len(header)]
  for arm, r in rows.items():
    cells = [arm, f"{r['psnr']:.3f}", f"{r['ssim']:.4f}"]
    cells += [fmt.format(r[key]) if key in r else "-" for key, _, fmt in metric]
    cells += [f"{r.get('trainable', 0):,}", f"{r.get('trainable_pct', 0.0):.2f}"]
    cells += [fmt.format(r[key]) if key in r else "-" for key, _, fmt in extra]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)
