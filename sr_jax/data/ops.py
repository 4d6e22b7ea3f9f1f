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

`downscale` makes super-resolution inputs with one of `RESIZE_METHODS`.
"""

from __future__ import annotations

import dataclasses
import io
import math
from typing import Any, Callable

import numpy as np
from PIL import Image

from sr_jax.data.resize import imresize

# Samples per pixel of length when a line is splatted into a kernel.
_LINE_SAMPLES_PER_PIXEL = 8
# Fraction of a rain streak's half-length over which its brightness ramps from 0 to full.
_RAIN_TAPER = 0.3
# Rain kernel taps below this fraction of the peak are dropped (invisible, and they cost time).
_RAIN_MIN_TAP = 1e-3
# Haze depth: weight of the top-to-bottom gradient (the rest is smooth random variation), and
# the size of the random grid that is upsampled into that variation.
_HAZE_GRADIENT_WEIGHT = 0.7
_HAZE_GRID = 4
# An anisotropic blur treats a sigma below this as "no spread along that axis".
_MIN_SIGMA = 1e-3


# ---------------------------------------------------------------------------------------------
# Parameter ranges.

# Field -> (smallest allowed lo, whether lo may equal it, largest allowed hi); None = unbounded.
_RANGE_DOMAINS: dict[str, tuple[float | None, bool, float | None]] = {
    "blur_sigma": (0.0, True, None),
    "motion_length": (0.0, True, None),  # hi <= blur_kernel_size: OpRanges.check_motion_fits.
    "motion_angle": (None, True, None),
    "noise_sigma": (0.0, True, None),
    "poisson_peak": (0.0, False, None),
    "jpeg_quality": (1, True, 100),
    "rain_density": (0.0, True, 1.0),
    "rain_length": (1.0, True, None),
    "rain_angle": (-90.0, True, 90.0),
    "rain_intensity": (0.0, True, 1.0),
    "haze_beta": (0.0, True, None),
    "haze_airlight": (0.0, True, 1.0),
    "lowlight_exposure": (0.0, True, 1.0),
    "lowlight_gamma": (0.0, False, None),
    "lowlight_noise": (0.0, True, None),
}
_PROBABILITIES = ("blur_anisotropic_prob", "noise_gray_prob")


@dataclasses.dataclass(frozen=True)
class OpRanges:
  """Parameter ranges for every op; (lo, hi) tuples are drawn uniformly unless noted.

  A validated, picklable value: build it once when the pipeline is made (`ranges_from_config`)
  so that a bad config fails there, with the config key in the message, not inside a worker.
  """
  blur_sigma: tuple[float, float] = (0.2, 3.0)  # Gaussian blur std in pixels.
  blur_kernel_size: int = 21  # Odd; kernel support of gaussian and motion blur.
  blur_anisotropic_prob: float = 0.0  # Probability that a gaussian blur is anisotropic.
  motion_length: tuple[float, float] = (5.0, 21.0)  # Streak length in pixels.
  motion_angle: tuple[float, float] = (0.0, 180.0)  # Degrees.
  noise_sigma: tuple[float, float] = (1.0, 30.0)  # Gaussian noise std, 0..255 scale.
  noise_gray_prob: float = 0.0  # Probability that the noise is the same in all channels.
  poisson_peak: tuple[float, float] = (30.0, 3000.0)  # Photons at white; drawn log-uniformly.
  jpeg_quality: tuple[int, int] = (30, 95)  # Integer quality, both ends inclusive.
  rain_density: tuple[float, float] = (0.002, 0.01)  # Streak seeds per pixel.
  rain_length: tuple[float, float] = (10.0, 30.0)  # Pixels.
  rain_angle: tuple[float, float] = (-20.0, 20.0)  # Degrees from vertical.
  rain_intensity: tuple[float, float] = (0.4, 0.9)  # Peak brightness added by a streak.
  haze_beta: tuple[float, float] = (0.5, 2.5)  # Transmission t = exp(-beta * depth).
  haze_airlight: tuple[float, float] = (0.7, 1.0)  # Atmospheric light A (grey).
  lowlight_exposure: tuple[float, float] = (0.1, 0.5)  # Multiplicative exposure.
  lowlight_gamma: tuple[float, float] = (1.2, 2.0)  # Applied before exposure: img ** gamma.
  lowlight_noise: tuple[float, float] = (2.0, 10.0)  # Read-noise std after darkening, 0..255.

  def __post_init__(self):
    for name, domain in _RANGE_DOMAINS.items():
      _check_range(name, getattr(self, name), *domain, integer=name == "jpeg_quality")
    for name in _PROBABILITIES:
      value = getattr(self, name)
      if not _is_real(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"degradation.{name} must be a probability in [0, 1], got {value!r}.")
    size = self.blur_kernel_size
    if not _is_int(size) or size < 1 or size % 2 == 0:
      raise ValueError(f"degradation.blur_kernel_size must be an odd positive integer, got "
                       f"{size!r}.")

  def check_motion_fits(self) -> None:
    """Motion streaks must fit the kernel; checked only when motion blur can be drawn."""
    if self.motion_length[1] > self.blur_kernel_size:
      raise ValueError(
          f"degradation.motion_length must be a range (lo, hi) with hi <= "
          f"degradation.blur_kernel_size ({self.blur_kernel_size}), got {self.motion_length}.")


def _is_int(value: Any) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
  return (isinstance(value, (int, float, np.integer, np.floating))
          and not isinstance(value, (bool, np.bool_)) and math.isfinite(value))


def _check_range(name: str, value: Any, lo_min: float | None, lo_min_allowed: bool,
                 hi_max: float | None, integer: bool = False) -> None:
  """Raises a ValueError naming `degradation.<name>` unless `value` is a valid (lo, hi) range."""
  lower = "" if lo_min is None else f"{lo_min} {'<=' if lo_min_allowed else '<'} "
  upper = "" if hi_max is None else f" <= {hi_max}"
  kind = "integers " if integer else ""
  message = (f"degradation.{name} must be a range (lo, hi) of {kind}with "
             f"{lower}lo <= hi{upper}, got {value!r}.")
  if not isinstance(value, tuple) or len(value) != 2:
    raise ValueError(message)
  lo, hi = value
  if not all(_is_int(v) if integer else _is_real(v) for v in value) or lo > hi:
    raise ValueError(message)
  if lo_min is not None and (lo < lo_min or (lo == lo_min and not lo_min_allowed)):
    raise ValueError(message)
  if hi_max is not None and hi > hi_max:
    raise ValueError(message)


def _convert(name: str, value: Any, default: Any) -> Any:
  """Converts a config value to the type of the field's default (tuples element-wise)."""
  def scalar(v, like):
    if isinstance(like, int):
      if isinstance(v, (float, np.floating)) and not float(v).is_integer():
        raise ValueError(f"degradation.{name} must hold integers, got {value!r}.")
      return int(v)
    return float(v)
  if isinstance(default, tuple):
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
      raise ValueError(f"degradation.{name} must be a range (lo, hi), got {value!r}.")
    return tuple(scalar(v, default[0]) for v in value)
  return scalar(value, default)


def ranges_from_config(cfg: Any) -> OpRanges:
  """Builds OpRanges from any object with its attribute names (e.g. `data.degradation`).

  Missing attributes keep the defaults; other attributes (kind, ops, ...) are ignored. Ranges
  become tuples of float (of int for jpeg_quality), so ConfigDict lists or numpy scalars work.
  """
  if isinstance(cfg, OpRanges):
    return cfg
  values = {}
  for field in dataclasses.fields(OpRanges):
    if hasattr(cfg, field.name):
      values[field.name] = _convert(field.name, getattr(cfg, field.name), field.default)
  return OpRanges(**values)


# ---------------------------------------------------------------------------------------------
# Kernels and filtering.

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

  sigma <= 0 returns the image unchanged (as float32). Identical to degradations.gaussian_blur.
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


def _fft_length(n: int) -> int:
  """The smallest 5-smooth integer >= n: FFT lengths with only factors 2, 3, 5 are fastest."""
  while True:
    m = n
    for p in (2, 3, 5):
      while m % p == 0:
        m //= p
    if m == 1:
      return n
    n += 1


def correlate2d(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
  """Correlates every channel of an HWC image with a 2D kernel of odd sides; reflect borders.

  Computed with real FFTs: the reflect padding is at least as wide as the kernel radius, so the
  circular wrap-around of the FFT only touches outputs outside the returned window.
  """
  img = np.asarray(img, np.float32)
  kh, kw = kernel.shape
  h, w = img.shape[:2]
  padded = np.pad(img, ((kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)), mode="reflect")
  shape = (_fft_length(padded.shape[0]), _fft_length(padded.shape[1]))
  # Correlating with `kernel` is convolving with it flipped.
  flipped = np.asarray(kernel[::-1, ::-1], np.float32)
  spectrum = np.fft.rfft2(padded, s=shape, axes=(0, 1))
  spectrum *= np.fft.rfft2(flipped, s=shape)[:, :, None]
  full = np.fft.irfft2(spectrum, s=shape, axes=(0, 1))
  return np.ascontiguousarray(full[kh - 1:kh - 1 + h, kw - 1:kw - 1 + w], np.float32)


def anisotropic_gaussian_kernel(sigma_x: float, sigma_y: float, theta: float,
                                size: int) -> np.ndarray:
  """A size x size rotated Gaussian, normalised to sum 1 (float64).

  Its covariance is R diag(sigma_x^2, sigma_y^2) R^T, with R the rotation by `theta` degrees
  counter-clockwise as displayed: the sigma_x axis points along (cos theta, sin theta) in (x
  right, y up) coordinates. Sigmas below 1e-3 px mean no spread along that axis.
  """
  radius = size // 2
  offsets = np.arange(-radius, radius + 1, dtype=np.float64)
  x = offsets[None, :]  # Column offset (right).
  y = -offsets[:, None]  # Row offset flipped: up.
  c, s = math.cos(math.radians(theta)), math.sin(math.radians(theta))
  along = x * c + y * s
  across = -x * s + y * c
  sx, sy = max(sigma_x, _MIN_SIGMA), max(sigma_y, _MIN_SIGMA)
  kernel = np.exp(-0.5 * ((along / sx) ** 2 + (across / sy) ** 2))
  return kernel / kernel.sum()


def _line_kernel(length: float, direction: tuple[float, float], size: int,
                 taper: float = 0.0) -> np.ndarray:
  """Splats a centred segment into a size x size grid (unnormalised float64).

  The segment has length `length - 1` (it joins the centres of its end pixels, so a length L
  streak covers L pixels), `direction` is (d_col, d_row). Dense samples are spread bilinearly
  over their four neighbours, which anti-aliases the line. With `taper` > 0 the sample weights
  ramp linearly from 0 at the ends to 1 over that fraction of the half-length.
  """
  radius = size // 2
  half = min(max(length - 1.0, 0.0) / 2.0, float(radius))
  t = np.linspace(-half, half, int(math.ceil(2 * half * _LINE_SAMPLES_PER_PIXEL)) + 1)
  weights = np.ones_like(t)
  if taper > 0 and half > 0:
    weights = np.clip((half - np.abs(t)) / (taper * half), 0.0, 1.0)
  cols = np.clip(radius + t * direction[0], 0.0, size - 1.0)
  rows = np.clip(radius + t * direction[1], 0.0, size - 1.0)
  c0 = np.clip(np.floor(cols), 0, size - 2).astype(np.int64)
  r0 = np.clip(np.floor(rows), 0, size - 2).astype(np.int64)
  fc, fr = cols - c0, rows - r0
  kernel = np.zeros((size, size))
  for dr, dc, share in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc),
                        (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
    np.add.at(kernel, (r0 + dr, c0 + dc), weights * share)
  return kernel


def motion_kernel(length: float, angle: float, size: int) -> np.ndarray:
  """Normalised anti-aliased line kernel (float64, sums to 1) of a linear motion streak.

  `length` (<= size) is the streak length in pixels, `angle` its direction in degrees
  counter-clockwise from the x axis as displayed. Lengths <= 1 give the identity kernel.
  """
  if size < 1 or size % 2 == 0:
    raise ValueError(f"Motion kernel size must be odd and positive, got {size}.")
  if length > size:
    raise ValueError(f"Motion length {length} does not fit the {size}x{size} kernel.")
  if size == 1:
    return np.ones((1, 1))
  rad = math.radians(angle)
  kernel = _line_kernel(length, (math.cos(rad), -math.sin(rad)), size)
  return kernel / kernel.sum()


def rain_streak_kernel(length: float, angle: float) -> np.ndarray:
  """The brightness profile of one rain streak (float64, peak 1, negligible taps set to 0).

  A line of `length` pixels at `angle` degrees from vertical, its brightness ramping up and
  down at the ends (a streak blurred along its own direction). The kernel is the smallest odd
  square that holds it.
  """
  size = 2 * int(math.ceil(max(length - 1.0, 0.0) / 2.0)) + 1
  if size == 1:
    return np.ones((1, 1))
  rad = math.radians(angle)
  kernel = _line_kernel(length, (math.sin(rad), math.cos(rad)), size, taper=_RAIN_TAPER)
  kernel /= kernel.max()
  kernel[kernel < _RAIN_MIN_TAP] = 0.0
  return kernel


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


def _smooth_upsample(grid: np.ndarray, h: int, w: int) -> np.ndarray:
  """Upsamples a small 2D grid to (h, w) with smoothstep-weighted interpolation (C1 smooth)."""
  out = grid
  for axis, n in ((0, h), (1, w)):
    g = out.shape[axis]
    pos = np.linspace(0.0, g - 1.0, n)
    i0 = np.clip(np.floor(pos), 0, g - 2).astype(np.int64)
    f = pos - i0
    f = f * f * (3.0 - 2.0 * f)
    shape = (n, 1) if axis == 0 else (1, n)
    out = (np.take(out, i0, axis=axis) * (1.0 - f).reshape(shape)
           + np.take(out, i0 + 1, axis=axis) * f.reshape(shape))
  return out


def haze_depth(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
  """A smooth synthetic depth map in [0, 1] (float64): far at the top, near at the bottom.

  Outdoor photographs usually show sky and distant scenery at the top; the random
  low-frequency part makes the haze uneven, as real scene depth is.
  """
  h, w = shape
  variation = _smooth_upsample(rng.random((_HAZE_GRID, _HAZE_GRID)), h, w)
  gradient = np.linspace(1.0, 0.0, h)[:, None]
  depth = _HAZE_GRADIENT_WEIGHT * gradient + (1.0 - _HAZE_GRADIENT_WEIGHT) * variation
  return np.clip(depth, 0.0, 1.0)


def apply_haze(img: np.ndarray, rng: np.random.Generator, *, beta: float,
               airlight: float) -> np.ndarray:
  """Atmospheric scattering model: J t + A (1 - t), t = exp(-beta * depth) (`haze_depth`)."""
  img = _as_hwc(img)
  transmission = np.exp(-beta * haze_depth(img.shape[:2], rng)).astype(np.float32)[:, :, None]
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


OPS: dict[str, Op] = {op.name: op for op in (
    Op("gaussian_blur", draw_gaussian_blur, apply_gaussian_blur),
    Op("motion_blur", draw_motion_blur, apply_motion_blur),
    Op("gaussian_noise", draw_gaussian_noise, apply_gaussian_noise),
    Op("poisson_noise", draw_poisson_noise, apply_poisson_noise),
    Op("jpeg", draw_jpeg, apply_jpeg),
    Op("rain", draw_rain, apply_rain),
    Op("haze", draw_haze, apply_haze),
    Op("low_light", draw_low_light, apply_low_light),
)}


def apply_op(name: str, img: np.ndarray, rng: np.random.Generator,
             params: dict[str, Any]) -> np.ndarray:
  """Applies the op called `name` with concrete `params` (from its `draw`)."""
  if name not in OPS:
    raise ValueError(f"Unknown degradation op {name!r}; valid ops: {list(OPS)}.")
  return OPS[name].apply(img, rng, **params)


# ---------------------------------------------------------------------------------------------
# Downscaling for super-resolution inputs.

RESIZE_METHODS = ("bicubic", "bilinear", "area", "nearest")


def _symmetric_index(indices: np.ndarray, length: int) -> np.ndarray:
  """Maps indices into [0, length) by mirroring with the edge pixel repeated (MATLAB's rule)."""
  m = np.mod(indices, 2 * length)
  return np.where(m < length, m, 2 * length - 1 - m)


def _triangle_downscale_axis(img: np.ndarray, scale: int, axis: int) -> np.ndarray:
  """MATLAB imresize(..., 1/scale, 'bilinear') along one axis (antialiased, symmetric edges).

  Output pixel i is centred on input coordinate i * scale + (scale - 1) / 2 (0-based); the
  triangle kernel is stretched to half-width `scale`, so each tap's weight is the same for every
  output pixel and a tap loop suffices.
  """
  n_out = img.shape[axis] // scale
  offsets = np.arange(-scale, 2 * scale)
  weights = np.maximum(0.0, 1.0 - np.abs(offsets - (scale - 1) / 2.0) / scale)
  keep = weights > 0
  offsets, weights = offsets[keep], weights[keep] / weights[keep].sum()
  starts = np.arange(n_out) * scale
  out = None
  for offset, weight in zip(offsets, weights):
    taps = _symmetric_index(starts + offset, img.shape[axis])
    term = np.take(img, taps, axis=axis) * np.float32(weight)
    out = term if out is None else out + term
  return out


def downscale(img: np.ndarray, scale: int, method: str = "bicubic") -> np.ndarray:
  """Downscales an (H, W[, C]) image by an integer factor; H and W must be multiples of it.

  * 'bicubic': `resize.imresize(img, scale=1/scale)` (MATLAB's antialiased bicubic).
  * 'bilinear': MATLAB's antialiased bilinear (triangle kernel stretched by `scale`).
  * 'area': the mean of each scale x scale block.
  * 'nearest': MATLAB's nearest neighbour, pixel (floor((i + 0.5) * scale), ...) =
    (i * scale + scale // 2, ...): the block centre, or for even scales the pixel just below and
    right of it (MATLAB's box kernel is half-open, [-0.5, 0.5)).

  Returns float32, not rounded to 8 bits; bicubic and bilinear results are clipped to [0, 1]
  (bicubic overshoots at edges), area and nearest cannot leave the input's range.
  """
  img = np.asarray(img, np.float32)
  if method not in RESIZE_METHODS:
    raise ValueError(f"Unknown resize method {method!r}; valid methods: {list(RESIZE_METHODS)}.")
  if not _is_int(scale) or scale < 1:
    raise ValueError(f"scale must be a positive integer, got {scale!r}.")
  if img.ndim not in (2, 3):
    raise ValueError(f"Expected an (H, W) or (H, W, C) image, got shape {img.shape}.")
  h, w = img.shape[:2]
  if h % scale or w % scale:
    raise ValueError(f"Cannot downscale an image of shape {img.shape} by {scale}: H and W must "
                     f"be multiples of the scale (modcrop it first).")
  if method == "bicubic":
    return np.clip(imresize(img, scale=1.0 / scale), 0.0, 1.0).astype(np.float32)
  if method == "bilinear":
    out = _triangle_downscale_axis(_triangle_downscale_axis(img, scale, 0), scale, 1)
    return np.clip(out, 0.0, 1.0).astype(np.float32)
  if method == "area":
    blocks = img.reshape(h // scale, scale, w // scale, scale, *img.shape[2:])
    return blocks.mean(axis=(1, 3), dtype=np.float64).astype(np.float32)
  return np.ascontiguousarray(img[scale // 2::scale, scale // 2::scale])
