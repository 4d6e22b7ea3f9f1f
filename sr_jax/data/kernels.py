"""Blur, motion and rain kernels and the filtering that applies them (numpy only).

Runs inside grain worker processes like the ops that use it (sr_jax.data.ops): numpy only.
Angles are in degrees: blur and motion angles counter-clockwise from the +x (column) axis as the
image is displayed (rows grow downwards), rain angles from vertical, positive leaning the bottom
of a streak to the right.
"""

from __future__ import annotations

import math

import numpy as np

# Samples per pixel of length when a line is splatted into a kernel.
_LINE_SAMPLES_PER_PIXEL = 8
# Fraction of a rain streak's half-length over which its brightness ramps from 0 to full.
_RAIN_TAPER = 0.3
# Rain kernel taps below this fraction of the peak are dropped (invisible, and they cost time).
_RAIN_MIN_TAP = 1e-3
# An anisotropic blur treats a sigma below this as "no spread along that axis".
_MIN_SIGMA = 1e-3


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

