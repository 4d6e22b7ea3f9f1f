"""Synthetic degradation ops for PROD-style pre-training (random subsets in random order).

Each op is a pair of functions: `draw(rng, ranges)` picks concrete parameters from `OpRanges`, and
`apply(img, rng, **params)` degrades an image with them. Keeping the two apart lets a pipeline log
or replay the exact parameters of a sample, and lets tests call `apply` with chosen values.

Like degradations.py this runs inside grain worker processes, so it uses numpy and Pillow only (no
JAX, OpenCV or scipy), and all randomness comes from the caller's `np.random.Generator`: an
output is a pure function of (image, rng state, params).

Images are float32 HWC RGB in [0, 1]. Every op returns a new float32 array of the input's shape,
clipped to [0, 1] (8-bit photographs never leave that range); inputs are never written to.

Angles are in degrees. Blur and motion angles are counter-clockwise from the +x (column) axis as
the image is displayed (rows grow downwards); rain angles are from vertical, positive leaning the
bottom of a streak to the right.

The kernels and filters live in sr_jax.data.kernels, the parameter ranges in
sr_jax.data.op_ranges; `downscale` (super-resolution inputs) in sr_jax.data.resize.
"""

from __future__ import annotations

import dataclasses
import io
import math
from typing import Any, Callable, NamedTuple

import numpy as np
from PIL import Image

from sr_jax.data.kernels import (add_gaussian_noise, anisotropic_gaussian_kernel, correlate2d,
                                 gaussian_blur, motion_kernel, rain_streak_kernel)
from sr_jax.data.op_ranges import OpRanges

# Haze depth: weight of the top-to-bottom gradient (the rest is smooth random variation), and
# the size of the random grid that is upsampled into that variation.
_HAZE_GRADIENT_WEIGHT = 0.7
_HAZE_GRID = 4


def _as_hwc(img: np.ndarray) -> np.ndarray:
  """The image as float32 HWC (no copy when it already is; callers never write into it)."""
  img = np.asarray(img, np.float32)
  if img.ndim != 3:
    raise ValueError(f"Expected an HWC image, got shape {img.shape}.")
  return img


# ---------------------------------------------------------------------------------------------
# Ops: apply(img, rng, **params) and draw(rng, ranges) -> params.

def _uniform(rng: np.random.Generator, value_range: tuple[float, float]) -> float:
  """Draws uniformly from [lo, hi) (exactly lo when lo == hi)."""
  lo, hi = value_range
  return float(rng.uniform(lo, hi))


def _bernoulli(rng: np.random.Generator, prob: float) -> bool:
  """True with probability `prob`; always consumes one draw so streams do not shift."""
  return bool(rng.random() < prob)


def apply_gaussian_blur(img: np.ndarray, rng: np.random.Generator, *, sigma_x: float,
                        sigma_y: float, theta: float, kernel_size: int) -> np.ndarray:
  """Gaussian blur: separable when sigma_x == sigma_y, else a rotated 2D kernel (FFT)."""
  del rng  # Deterministic.
  img = _as_hwc(img)
  if sigma_x == sigma_y:
    return np.clip(gaussian_blur(img, sigma_x, kernel_size), 0.0, 1.0)
  kernel = anisotropic_gaussian_kernel(sigma_x, sigma_y, theta, kernel_size)
  return np.clip(correlate2d(img, kernel), 0.0, 1.0)


def draw_gaussian_blur(rng: np.random.Generator, ranges: OpRanges) -> dict[str, Any]:
  """Isotropic (theta 0) or, with blur_anisotropic_prob, two sigmas and a theta in [0, 180)."""
  if _bernoulli(rng, ranges.blur_anisotropic_prob):
    sigma_x, sigma_y = _uniform(rng, ranges.blur_sigma), _uniform(rng, ranges.blur_sigma)
    theta = _uniform(rng, (0.0, 180.0))
  else:
    sigma_x = sigma_y = _uniform(rng, ranges.blur_sigma)
    theta = 0.0
  return dict(sigma_x=sigma_x, sigma_y=sigma_y, theta=theta,
              kernel_size=int(ranges.blur_kernel_size))


def apply_motion_blur(img: np.ndarray, rng: np.random.Generator, *, length: float,
                      angle: float, kernel_size: int) -> np.ndarray:
  """Linear motion blur along `angle` over `length` pixels (see `motion_kernel`)."""
  del rng  # Deterministic.
  img = _as_hwc(img)
  kernel = motion_kernel(length, angle, kernel_size)
  if length <= 1 or kernel_size == 1:
    return np.clip(img, 0.0, 1.0)  # The identity kernel; skip the FFT round-off.
  return np.clip(correlate2d(img, kernel), 0.0, 1.0)


def draw_motion_blur(rng: np.random.Generator, ranges: OpRanges) -> dict[str, Any]:
  return dict(length=_uniform(rng, ranges.motion_length),
              angle=_uniform(rng, ranges.motion_angle),
              kernel_size=int(ranges.blur_kernel_size))


def apply_gaussian_noise(img: np.ndarray, rng: np.random.Generator, *, sigma: float,
                         gray: bool) -> np.ndarray:
  """White Gaussian noise of std `sigma` (0..255 scale); `gray` shares it across channels."""
  img = _as_hwc(img)
  if not gray:
    return add_gaussian_noise(img, sigma, rng)
  if sigma <= 0:
    return np.clip(img, 0.0, 1.0)
  noise = rng.standard_normal((*img.shape[:2], 1), dtype=np.float32)
  return np.clip(img + noise * np.float32(sigma / 255.0), 0.0, 1.0)


def draw_gaussian_noise(rng: np.random.Generator, ranges: OpRanges) -> dict[str, Any]:
  return dict(sigma=_uniform(rng, ranges.noise_sigma),
              gray=_bernoulli(rng, ranges.noise_gray_prob))


def apply_poisson_noise(img: np.ndarray, rng: np.random.Generator, *,
                        peak: float) -> np.ndarray:
  """Shot noise: Poisson(img * peak) / peak, i.e. `peak` photons are counted at white."""
  img = _as_hwc(img)
  if not peak > 0:
    raise ValueError(f"Poisson peak must be positive, got {peak}.")
  photons = rng.poisson(np.clip(img, 0.0, 1.0).astype(np.float64) * peak)
  return np.clip(photons / peak, 0.0, 1.0).astype(np.float32)


def draw_poisson_noise(rng: np.random.Generator, ranges: OpRanges) -> dict[str, Any]:
  """Log-uniform peak: shot noise matters on a log scale (std ~ 1 / sqrt(peak))."""
  lo, hi = ranges.poisson_peak
  peak = math.exp(rng.uniform(math.log(lo), math.log(hi)))
  return dict(peak=float(min(max(peak, lo), hi)))


def apply_jpeg(img: np.ndarray, rng: np.random.Generator, *, quality: int) -> np.ndarray:
  """Pillow JPEG round trip at `quality` (default chroma subsampling) of the 8-bit image."""
  del rng  # Deterministic.
  img = _as_hwc(img)
  if img.shape[2] not in (1, 3):
    raise ValueError(f"JPEG needs 1 or 3 channels, got shape {img.shape}.")
  pixels = np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels[:, :, 0] if img.shape[2] == 1 else pixels).save(
      buffer, format="JPEG", quality=int(quality))
  with Image.open(io.BytesIO(buffer.getvalue())) as decoded:
    out = np.asarray(decoded).astype(np.float32) / 255.0
  return out.reshape(img.shape)


def draw_jpeg(rng: np.random.Generator, ranges: OpRanges) -> dict[str, Any]:
  lo, hi = ranges.jpeg_quality
  return dict(quality=int(rng.integers(lo, hi, endpoint=True)))


def _rain_layer(shape: tuple[int, int], kernel: np.ndarray, density: float,
                rng: np.random.Generator) -> np.ndarray:
  """Sum of streak kernels centred on Bernoulli(density) seeds, as an (H, W) float64 map.

  Seeds are drawn over the image grown by the kernel radius, so streaks that start outside it
  still cross it and every pixel sees the same expected amount of rain.
  """
  h, w = shape
  r = kernel.shape[0] // 2
  seeds = np.flatnonzero(rng.random((h + 2 * r) * (w + 2 * r)) < density)
  seed_rows, seed_cols = np.divmod(seeds, w + 2 * r)
  tap_rows, tap_cols = np.nonzero(kernel)
  # A seed at grown (y, x) is image (y - r, x - r); tap (i, j) is offset (i - r, j - r).
  rows = seed_rows[:, None] + tap_rows[None, :] - 2 * r
  cols = seed_cols[:, None] + tap_cols[None, :] - 2 * r
  values = np.broadcast_to(kernel[tap_rows, tap_cols], rows.shape)
  inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
  flat = rows[inside] * w + cols[inside]
  return np.bincount(flat, weights=values[inside], minlength=h * w).reshape(h, w)


def apply_rain(img: np.ndarray, rng: np.random.Generator, *, density: float, length: float,
               angle: float, intensity: float) -> np.ndarray:
  """Grey rain streaks screen-blended onto the image (brightness only increases).

  Streaks (`rain_streak_kernel`) of peak `intensity` are centred on random seeds, `density`
  per pixel; overlaps add up to at most 1. Screen blending, 1 - (1 - img)(1 - rain), keeps the
  result in [0, 1] without clipping highlights flat.
  """
  img = _as_hwc(img)
  if not 0.0 <= density <= 1.0:
    raise ValueError(f"Rain density must be in [0, 1], got {density}.")
  kernel = rain_streak_kernel(length, angle)
  layer = _rain_layer(img.shape[:2], kernel, density, rng)
  rain = np.minimum(layer * intensity, 1.0).astype(np.float32)[:, :, None]
  return np.clip(img + rain * (1.0 - img), 0.0, 1.0)


def draw_rain(rng: np.random.Generator, ranges: OpRanges) -> dict[str, Any]:
  return dict(density=_uniform(rng, ranges.rain_density),
              length=_uniform(rng, ranges.rain_length),
              angle=_uniform(rng, ranges.rain_angle),
              intensity=_uniform(rng, ranges.rain_intensity))


class Window(NamedTuple):
  """Where an image lies in its scene, in the image's own pixels: the crop's top-left corner
  and the scene's (the uncropped photograph's) height and width. Ops whose look depends on
  the whole scene (haze: far at the top of the photograph) read it, so a 64-pixel training
  crop and a 256-pixel evaluation crop of one photograph see the same haze where they meet."""
  top: int
  left: int
  height: int
  width: int

  def scaled(self, factor: int) -> "Window":
    """The same window on a grid `factor` times coarser (an SR model's LR input)."""
    return Window(self.top // factor, self.left // factor, max(1, self.height // factor),
                  max(1, self.width // factor))


def _smooth_interpolate(grid: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
  """A small 2D grid spread over the unit square, evaluated at normalised positions
  (rows x cols, each in [0, 1]) with smoothstep-weighted interpolation (C1 smooth)."""
  out = grid
  for axis, pos01 in ((0, rows), (1, cols)):
    g = out.shape[axis]
    pos = np.clip(pos01, 0.0, 1.0) * (g - 1.0)
    i0 = np.clip(np.floor(pos), 0, g - 2).astype(np.int64)
    f = pos - i0
    f = f * f * (3.0 - 2.0 * f)
    shape = (-1, 1) if axis == 0 else (1, -1)
    out = (np.take(out, i0, axis=axis) * (1.0 - f).reshape(shape)
           + np.take(out, i0 + 1, axis=axis) * f.reshape(shape))
  return out


def haze_depth(shape: tuple[int, int], rng: np.random.Generator,
               window: Window | None = None) -> np.ndarray:
  """A smooth synthetic depth map in [0, 1] (float64): far at the top, near at the bottom.

  Outdoor photographs usually show sky and distant scenery at the top; the random
  low-frequency part makes the haze uneven, as real scene depth is. Depth is a property of
  the scene, not of the crop: it is laid over `window`'s scene (None: the image is the whole
  scene) and read at the image's pixels, so its range over an image grows with the image's
  share of the scene and does not depend on the crop size.
  """
  h, w = shape
  window = Window(0, 0, h, w) if window is None else window
  rows = (window.top + np.arange(h)) / max(window.height - 1, 1)
  cols = (window.left + np.arange(w)) / max(window.width - 1, 1)
  variation = _smooth_interpolate(rng.random((_HAZE_GRID, _HAZE_GRID)), rows, cols)
  gradient = (1.0 - np.clip(rows, 0.0, 1.0))[:, None]
  depth = _HAZE_GRADIENT_WEIGHT * gradient + (1.0 - _HAZE_GRADIENT_WEIGHT) * variation
  return np.clip(depth, 0.0, 1.0)


def apply_haze(img: np.ndarray, rng: np.random.Generator, *, beta: float,
               airlight: float, window: Window | None = None) -> np.ndarray:
  """Atmospheric scattering model: J t + A (1 - t), t = exp(-beta * depth) (`haze_depth`)."""
  img = _as_hwc(img)
  depth = haze_depth(img.shape[:2], rng, window)
  transmission = np.exp(-beta * depth).astype(np.float32)[:, :, None]
  return np.clip(img * transmission + np.float32(airlight) * (1.0 - transmission), 0.0, 1.0)


def draw_haze(rng: np.random.Generator, ranges: OpRanges) -> dict[str, Any]:
  return dict(beta=_uniform(rng, ranges.haze_beta),
              airlight=_uniform(rng, ranges.haze_airlight))


def apply_low_light(img: np.ndarray, rng: np.random.Generator, *, exposure: float,
                    gamma: float, noise: float) -> np.ndarray:
  """Under-exposure: exposure * img ** gamma, plus Gaussian read noise of std noise / 255."""
  img = _as_hwc(img)
  dark = np.float32(exposure) * np.clip(img, 0.0, 1.0) ** np.float32(gamma)
  return add_gaussian_noise(dark, noise, rng)


def draw_low_light(rng: np.random.Generator, ranges: OpRanges) -> dict[str, Any]:
  return dict(exposure=_uniform(rng, ranges.lowlight_exposure),
              gamma=_uniform(rng, ranges.lowlight_gamma),
              noise=_uniform(rng, ranges.lowlight_noise))


@dataclasses.dataclass(frozen=True)
class Op:
  """A named degradation: `draw(rng, ranges)` -> params, then `apply(img, rng, **params)`."""
  name: str
  draw: Callable[[np.random.Generator, OpRanges], dict[str, Any]]
  apply: Callable[..., np.ndarray]
  scene_aware: bool = False  # `apply` takes the image's Window in its scene.


OPS: dict[str, Op] = {op.name: op for op in (
    Op("gaussian_blur", draw_gaussian_blur, apply_gaussian_blur),
    Op("motion_blur", draw_motion_blur, apply_motion_blur),
    Op("gaussian_noise", draw_gaussian_noise, apply_gaussian_noise),
    Op("poisson_noise", draw_poisson_noise, apply_poisson_noise),
    Op("jpeg", draw_jpeg, apply_jpeg),
    Op("rain", draw_rain, apply_rain),
    Op("haze", draw_haze, apply_haze, scene_aware=True),
    Op("low_light", draw_low_light, apply_low_light),
)}


def apply_op(name: str, img: np.ndarray, rng: np.random.Generator,
             params: dict[str, Any], window: Window | None = None) -> np.ndarray:
  """Applies the op called `name` with concrete `params` (from its `draw`); `window` places
  the image in its scene for scene-aware ops (None: the image is the whole scene)."""
  if name not in OPS:
    raise ValueError(f"Unknown degradation op {name!r}; valid ops: {list(OPS)}.")
  op = OPS[name]
  if op.scene_aware:
    return op.apply(img, rng, window=window, **params)
  return op.apply(img, rng, **params)

