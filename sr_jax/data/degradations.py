"""Synthetic degradations that turn a clean image into a model input (PROD-style).

These run inside grain worker processes, so they use numpy only (no JAX, no OpenCV), and every
random choice is drawn from the caller's `np.random.Generator`: a degraded sample is a pure
function of (clean image, rng), which makes it reproducible from (seed, record index).

Images are float32 HWC RGB in [0, 1]. Every output is clipped to [0, 1]: real noisy or blurry
photographs reach a model as 8-bit files, so values outside that range never occur at test
time, and training on unclipped noise would teach the model a distribution it never sees.
Outputs are not quantized to the 8-bit grid, except bicubic LR images, which are rounded to
uint8 levels as benchmark LR files are.

The degradation is described by `data.degradation` of sr_jax/config_base.py (or `base.degradation`):
kind, noise_sigma (range on the 0..255 scale), blur_sigma (range in pixels), blur_kernel_size,
scale. Ranges are drawn uniformly once per image.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from sr_jax.data.resize import imresize, modcrop

KINDS = ("noise", "blur", "noise_blur", "bicubic")


@dataclasses.dataclass(frozen=True)
class DegradationSpec:
  """A validated, picklable copy of a degradation config.

  Transforms hold this instead of the ConfigDict so that spawned workers need no
  ml_collections and a bad config fails when the pipeline is built, not inside a worker.
  """
  kind: str
  noise_sigma: tuple[float, float] = (0.0, 0.0)
  blur_sigma: tuple[float, float] = (0.0, 0.0)
  blur_kernel_size: int = 15
  scale: int = 1

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"Unknown degradation kind {self.kind!r}; valid kinds: {list(KINDS)}.")
    for name in ("noise_sigma", "blur_sigma"):
      lo, hi = getattr(self, name)
      if not 0 <= lo <= hi:
        raise ValueError(f"degradation.{name} must be a range (lo, hi) with 0 <= lo <= hi, "
                         f"got {(lo, hi)}.")
    if self.blur_kernel_size < 1 or self.blur_kernel_size % 2 == 0:
      raise ValueError(
          f"degradation.blur_kernel_size must be odd and positive, got {self.blur_kernel_size}.")
    if self.scale < 1:
      raise ValueError(f"degradation.scale must be >= 1, got {self.scale}.")


def as_spec(cfg: Any) -> DegradationSpec:
  """Converts a degradation ConfigDict (or anything with its fields) to a DegradationSpec."""
  if isinstance(cfg, DegradationSpec):
    return cfg
  return DegradationSpec(
      kind=str(cfg.kind),
      noise_sigma=tuple(float(v) for v in cfg.noise_sigma),
      blur_sigma=tuple(float(v) for v in cfg.blur_sigma),
      blur_kernel_size=int(cfg.blur_kernel_size),
      scale=int(cfg.scale),
  )


def gaussian_kernel1d(sigma: float, size: int) -> np.ndarray:
  """A normalized 1D Gaussian of odd `size` taps; the isotropic 2D kernel is its outer product.

  Normalizing after truncation keeps the mean brightness of the image unchanged.
  """
  radius = size // 2
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  kernel = np.exp(-0.5 * (x / sigma) ** 2)
  return (kernel / kernel.sum()).astype(np.float32)


def _correlate_axis(img: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
  """Filters `img` along one axis with a symmetric kernel, reflect-padding the borders.

  numpy's 'reflect' mode (edge pixel not repeated) is OpenCV's default BORDER_REFLECT_101.
  """
  radius = len(kernel) // 2
  pad = [(0, 0)] * img.ndim
  pad[axis] = (radius, radius)
  padded = np.pad(img, pad, mode="reflect")
  n = img.shape[axis]
  out = np.zeros(img.shape, np.float32)
  for i, weight in enumerate(kernel):
    window = [slice(None)] * img.ndim
    window[axis] = slice(i, i + n)
    out += weight * padded[tuple(window)]
  return out


def gaussian_blur(img: np.ndarray, sigma: float, kernel_size: int) -> np.ndarray:
  """Isotropic Gaussian blur of an HWC image as two separable 1D passes (H, then W).

  sigma <= 0 returns the image unchanged (as float32).
  """
  img = np.asarray(img, np.float32)
  if sigma <= 0 or kernel_size == 1:
    return img.copy()
  kernel = gaussian_kernel1d(sigma, kernel_size)
  return _correlate_axis(_correlate_axis(img, kernel, 0), kernel, 1)


def add_gaussian_noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
  """Adds white Gaussian noise of std `sigma` on the 0..255 scale, then clips to [0, 1]."""
  img = np.asarray(img, np.float32)
  if sigma <= 0:
    return np.clip(img, 0.0, 1.0)
  noise = rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sigma / 255.0)
  return np.clip(img + noise, 0.0, 1.0)


def bicubic_downscale(hr: np.ndarray, scale: int) -> np.ndarray:
  """MATLAB-style bicubic downscaling of an HR image whose sides are multiples of `scale`.

  The LR image is rounded to uint8 levels, as benchmark LR images are stored (REFERENCE s1).
  """
  lr = imresize(np.asarray(hr, np.float32), scale=1.0 / scale)
  return (np.round(np.clip(lr, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


def _draw(rng: np.random.Generator, value_range: tuple[float, float]) -> float:
  """Draws uniformly from [lo, hi] (exactly lo when the range is a single value)."""
  lo, hi = value_range
  return float(rng.uniform(lo, hi))


def make_pair(clean: np.ndarray, rng: np.random.Generator,
              cfg: Any) -> tuple[np.ndarray, np.ndarray]:
  """Returns (lq, gt): the degraded input and the target it must be restored to.

  For 'bicubic', gt is `clean` modcropped to a multiple of `scale` and lq is gt downscaled by
  `scale` (shape H/scale x W/scale); for the other kinds gt is `clean` and lq has its shape.
  Use this rather than `degrade` whenever the pair is needed, so the two stay consistent.
  """
  spec = as_spec(cfg)
  gt = np.asarray(clean, np.float32)
  if spec.kind == "bicubic":
    gt = modcrop(gt, spec.scale)
    return bicubic_downscale(gt, spec.scale), np.ascontiguousarray(gt)
  lq = gt
  if spec.kind in ("blur", "noise_blur"):
    lq = gaussian_blur(lq, _draw(rng, spec.blur_sigma), spec.blur_kernel_size)
  if spec.kind in ("noise", "noise_blur"):
    lq = add_gaussian_noise(lq, _draw(rng, spec.noise_sigma), rng)
  return np.clip(lq, 0.0, 1.0).astype(np.float32), gt


def degrade(clean: np.ndarray, rng: np.random.Generator, cfg: Any) -> np.ndarray:
  """Returns the degraded version of `clean` (float32, in [0, 1]); see `make_pair`.

  For 'bicubic' the result is the LR image of `modcrop(clean, scale)`, i.e. the pair's target
  is `modcrop(clean, scale)`, not `clean`.
  """
  return make_pair(clean, rng, cfg)[0]
