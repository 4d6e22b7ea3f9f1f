"""NIQE, the no-reference image quality score of Mittal et al. (2013), as BasicSR computes it.

"Making a 'Completely Blind' Image Quality Analyzer" (IEEE SPL 2013) scores an image by how far
the statistics of its local contrast-normalised (MSCN) coefficients lie from those of pristine
natural photographs. Lower is better. Perceptual SR papers report it (and PI = ((10 - Ma) +
NIQE) / 2) next to PSNR, almost always through BasicSR's `calculate_niqe`, which matches
MATLAB's `niqe` (its docstring: baboon, MATLAB R2021a 5.72957338, BasicSR 5.7295763). This
module follows that computation step by step so that numbers are comparable:

1. The RGB image (0..255) goes to MATLAB's BT.601 luma Y = 16 + (65.481 R + 128.553 G +
   24.966 B) / 255, computed through BasicSR's float32 casts, then `crop_border` pixels go and
   Y is *rounded* to integers (as BasicSR does, to agree with MATLAB).
2. The image is cut down to whole 96x96 blocks (top-left corner kept).
3. At two scales (full, then MATLAB bicubic `imresize` by 0.5 of Y / 255, times 255) the MSCN
   map (I - mu) / (sigma + 1) is taken with the 7x7 Gaussian window (MATLAB's
   `fspecial('gaussian', 7, 7/6)`) and 'nearest' (replicate) borders.
4. Per block (96x96, then 48x48 at half scale), 18 features: an asymmetric generalised
   Gaussian (AGGD) fit of the MSCN values, [alpha, mean of the two betas], and of the products
   of each coefficient with its right, lower, lower-right and lower-left neighbour (circular
   within the block), [alpha, AGGD mean, beta_left, beta_right]. The shape alpha is the point
   of the grid 0.2:0.001:10 whose moment ratio Gamma(2/a)^2 / (Gamma(1/a) Gamma(3/a)) is
   nearest to the sample's bias-corrected ratio (moment matching by table lookup).
5. The 36-feature blocks are fitted by a Gaussian (NaN-aware mean; covariance over the rows
   without NaN) and NIQE = sqrt((m_p - m)^T pinv((C_p + C) / 2) (m_p - m)) against the pristine
   model (m_p, C_p).

Precision follows BasicSR, not an idealised float64 pipeline, because the two differ by more
than rounding noise: BasicSR holds Y and the MSCN maps in float32, where the local variance
E[I^2] - mu^2 cancels on flat regions and the near-zero coefficients there steer the AGGD fits
(an all-float64 pipeline moves 'astronaut' by 1.2%). So the same float32 steps are kept, down
to the moment sums of each fit, which choose between neighbouring alphas on near-ties.

One step is deliberately *not* copied: BasicSR's half-scale `imresize` runs in float32 through
torch `mv`, i.e. MKL, whose summation order depends on the CPU's instruction set; the float32
MSCN map amplifies its one-ulp differences, so BasicSR itself moves by up to 2.3e-4 (relative;
skimage 'camera') between MKL code paths on one machine. Here the resize is exact (float64,
sr_jax.data.resize, MATLAB's algorithm) and then stored as float32. This equals BasicSR with
its resize run in float64 to ~1e-14 and stock BasicSR to ~2e-4 (tests/test_niqe.py); e.g.
skimage 'astronaut' (512x512 RGB, crop 0): 3.0646290 here, 3.0646069 stock BasicSR 1.4.2 on an
AVX-512 CPU.

`data/niqe_pris_params.npz` (pristine mean (1, 36), covariance (36, 36), the 7x7 window) is
copied unchanged from BasicSR 1.4.2 (`basicsr/metrics/niqe_pris_params.npz`,
https://github.com/XPixelGroup/BasicSR), Apache License 2.0. BasicSR describes them as the
official parameters fitted on the pristine set, i.e. those of the authors' MATLAB release
(http://live.ece.utexas.edu/research/quality/niqe_release.zip).

Numpy and scipy only: NIQE is a host-side evaluation metric (its table lookup has no useful
gradient).
"""

from __future__ import annotations

import functools
import pathlib
import warnings
from typing import NamedTuple

import numpy as np
from scipy import ndimage
from scipy import special

from sr_jax.data.resize import imresize

BLOCK_SIZE = 96
_PARAMS_PATH = (pathlib.Path(__file__).resolve().parent.parent / "data"
                / "niqe_pris_params.npz")
# MATLAB's alpha grid 0.2:0.001:10 (9801 points), each value the double nearest k / 1000.
_ALPHA_GRID = np.arange(200, 10001, dtype=np.float64) / 1000.0
# np.roll offsets (rows, columns) pairing each coefficient with a neighbour for features 3-18:
# horizontal, vertical, main diagonal, anti-diagonal. The same offsets as BasicSR, so the
# products come in the same order and their float32 sums round the same way.
_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))
# BasicSR's Y channel takes BGR weights in this order (the order fixes float rounding).
_Y_WEIGHTS_BGR = (24.966, 128.553, 65.481)


class PristineModel(NamedTuple):
  """The multivariate Gaussian of pristine-image features and the MSCN smoothing window."""
  mean: np.ndarray  # (36,) float64
  cov: np.ndarray  # (36, 36) float64
  window: np.ndarray  # (7, 7) float64, sums to 1


@functools.lru_cache(maxsize=1)
def pristine_model() -> PristineModel:
  """Loads BasicSR's (= the MATLAB release's) pristine parameters from the package data."""
  if not _PARAMS_PATH.is_file():
    raise FileNotFoundError(f"NIQE pristine parameters not found at {_PARAMS_PATH}; the file "
                            "ships with sr_jax (package data sr_jax/data/niqe_pris_params.npz).")
  with np.load(_PARAMS_PATH) as params:
    return PristineModel(mean=params["mu_pris_param"].reshape(-1).astype(np.float64),
                         cov=params["cov_pris_param"].astype(np.float64),
                         window=params["gaussian_window"].astype(np.float64))


@functools.lru_cache(maxsize=1)
def _ratio_table() -> np.ndarray:
  """Gamma(2/a)^2 / (Gamma(1/a) Gamma(3/a)) over the alpha grid; strictly increasing."""
  inv = 1.0 / _ALPHA_GRID
  return special.gamma(2.0 * inv) ** 2 / (special.gamma(inv) * special.gamma(3.0 * inv))


def luma(image: np.ndarray, input_order: str = "HWC") -> np.ndarray:
  """MATLAB BT.601 Y (0..255 scale, float32, unrounded) of an RGB image, as BasicSR casts it.

  BasicSR divides by 255 in float32, takes the weighted sum in float64, divides by 255 again and
  stores float32 before scaling back by 255. Those casts move about 1 colour in 275,000 across a
  .5 boundary relative to exact arithmetic (e.g. RGB (187, 240, 5): exact Y 185.499988, BasicSR
  185.5, which then rounds to 186), so they are kept: the result is bit-identical to BasicSR
  1.4.2's `to_y_channel` for all 2^24 colours (checked once with BasicSR). 'HW' input is taken as
  Y already; one channel (or 2-D input with another order) as grey, through the same / 255 * 255.
  """
  image = np.asarray(image)
  if input_order == "HW":
    if image.ndim != 2:
      raise ValueError(f"input_order 'HW' needs a 2-D image, got shape {image.shape}.")
    return image.astype(np.float32)
  x = _to_hwc(image, input_order).astype(np.float32) / np.float32(255.0)
  if x.shape[-1] == 1:
    return x[..., 0] * np.float32(255.0)
  b, g, r = (x[..., 2 - i].astype(np.float64) for i in range(3))
  y = b * _Y_WEIGHTS_BGR[0] + g * _Y_WEIGHTS_BGR[1] + r * _Y_WEIGHTS_BGR[2] + 16.0
  return (y / 255.0).astype(np.float32) * np.float32(255.0)


def _to_hwc(image: np.ndarray, input_order: str) -> np.ndarray:
  """Validates an 'HWC' / 'CHW' layout and returns (H, W, C) with C in {1, 3}."""
  if input_order not in ("HWC", "CHW"):
    raise ValueError(f"input_order must be 'HWC', 'CHW' or 'HW', got {input_order!r}.")
  if image.ndim == 2:
    return image[..., None]
  if image.ndim != 3:
    raise ValueError(f"Expected a 3-D {input_order} image, got shape {image.shape}.")
  if input_order == "CHW":
    image = image.transpose(1, 2, 0)
  if image.shape[-1] not in (1, 3):
    raise ValueError(f"Expected 1 (grey) or 3 (RGB) channels, got shape {image.shape} "
                     f"as {input_order}.")
  return image


def _mscn(img: np.ndarray, window: np.ndarray) -> np.ndarray:
  """Mean-subtracted contrast-normalised coefficients (I - mu) / (sigma + 1), in float32.

  scipy filters float32 input in double and stores float32, as in BasicSR; the variance
  E[I^2] - mu^2 is then formed in float32 (and its sign noise removed by abs, as in MATLAB).
  """
  img = img.astype(np.float32)
  mu = ndimage.convolve(img, window, mode="nearest")
  mean_sq = ndimage.convolve(np.square(img), window, mode="nearest")
  sigma = np.sqrt(np.abs(mean_sq - np.square(mu)))
  return (img - mu) / (sigma + np.float32(1.0))


def _split_blocks(x: np.ndarray, size: int) -> np.ndarray:
  """(H, W) with H, W multiples of `size` -> (n, size, size) blocks."""
  nh, nw = x.shape[0] // size, x.shape[1] // size
  return x.reshape(nh, size, nw, size).transpose(0, 2, 1, 3).reshape(nh * nw, size, size)


def _nearest_alpha(ratio: np.ndarray) -> np.ndarray:
  """Grid alpha whose moment ratio is nearest to each `ratio` (first one on ties; 0.2 for NaN).

  The table is increasing, so a binary search plus a comparison with the left neighbour equals
  the exhaustive argmin of MATLAB/BasicSR (whose argmin over an all-NaN column also gives 0.2).
  """
  table = _ratio_table()
  right = np.clip(np.searchsorted(table, ratio), 1, table.size - 1)
  left = right - 1
  use_left = (table[left] - ratio) ** 2 <= (table[right] - ratio) ** 2
  index = np.where(use_left, left, right)
  return _ALPHA_GRID[np.where(np.isnan(ratio), 0, index)]


def _aggd_moments(x: np.ndarray) -> tuple[np.float32, np.float32, np.float32]:
  """Left/right standard deviations and the asymmetry-corrected ratio (E|x|)^2 / E[x^2].

  All in float32 with numpy's pairwise sums over the 1-D samples, as BasicSR computes them:
  the ratio picks a point of a 0.001-step grid, and the rounding of float64 sums moves a
  near-tie to the neighbouring alpha (seen on one block of 'astronaut', 1e-5 in NIQE).
  Empty sides (no negative or no positive samples) give NaN, as in BasicSR and MATLAB.
  """
  left_std = np.sqrt(np.mean(np.square(x[x < 0])))
  right_std = np.sqrt(np.mean(np.square(x[x > 0])))
  g = left_std / right_std
  r_hat = np.mean(np.abs(x)) ** 2 / np.mean(np.square(x))
  return left_std, right_std, r_hat * (g ** 3 + 1) * (g + 1) / (g ** 2 + 1) ** 2


def aggd_fit(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Asymmetric generalised Gaussian fit (alpha, beta_left, beta_right) per row of (n, m).

  Moment matching (Lasmar et al. 2009; NIQE eq. 7): the corrected moment ratio of each row
  selects alpha from the lookup table, and beta = std * sqrt(Gamma(1/alpha) / Gamma(3/alpha))
  on each side. Returns float64 arrays of shape (n,).
  """
  samples = np.ascontiguousarray(samples, dtype=np.float32)
  with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # Mean of an empty side: NaN on purpose.
    moments = np.array([_aggd_moments(row) for row in samples], dtype=np.float64)
  left_std, right_std, ratio = moments.T
  alpha = _nearest_alpha(ratio)
  scale = np.sqrt(special.gamma(1.0 / alpha) / special.gamma(3.0 / alpha))
  return alpha, left_std * scale, right_std * scale


def block_features(blocks: np.ndarray) -> np.ndarray:
  """The 18 NIQE features of each MSCN block of (n, s, s): (n, 18) float64."""
  n = blocks.shape[0]
  alpha, beta_l, beta_r = aggd_fit(blocks.reshape(n, -1))
  columns = [alpha, (beta_l + beta_r) / 2.0]
  for shift in _SHIFTS:
    pairs = blocks * np.roll(blocks, shift, axis=(1, 2))  # Circular within each block.
    alpha, beta_l, beta_r = aggd_fit(pairs.reshape(n, -1))
    mean = (beta_r - beta_l) * (special.gamma(2.0 / alpha) / special.gamma(1.0 / alpha))
    columns += [alpha, mean, beta_l, beta_r]
  return np.stack(columns, axis=1)


def _warn_if_unit_range(image: np.ndarray) -> None:
  """Warns on a float image with max <= 1: almost surely [0, 1] data given to a 0..255 metric."""
  if np.issubdtype(image.dtype, np.floating) and image.size and float(np.max(image)) <= 1.0:
    warnings.warn("NIQE expects images on the 0..255 scale; this float image has max <= 1, "
                  "which looks like a [0, 1] image (multiply by 255 and round first).",
                  stacklevel=5)


def _prepared_y(image: np.ndarray, crop_border: int, input_order: str) -> np.ndarray:
  """Rounded float32 Y, cropped by `crop_border` and then to whole blocks (top-left kept)."""
  if crop_border < 0:
    raise ValueError(f"crop_border must be >= 0, got {crop_border}.")
  image = np.asarray(image)
  _warn_if_unit_range(image)
  y = luma(image, input_order)
  if crop_border:
    y = y[crop_border:-crop_border, crop_border:-crop_border]
  y = np.round(y)
  nh, nw = y.shape[0] // BLOCK_SIZE, y.shape[1] // BLOCK_SIZE
  if nh * nw < 2:
    raise ValueError(
        f"NIQE needs at least two {BLOCK_SIZE}x{BLOCK_SIZE} blocks (e.g. {BLOCK_SIZE}x"
        f"{2 * BLOCK_SIZE} pixels) to fit its covariance; after crop_border={crop_border} the "
        f"image is {y.shape[0]}x{y.shape[1]} (HxW), i.e. {nh}x{nw} blocks.")
  return y[:nh * BLOCK_SIZE, :nw * BLOCK_SIZE]


def niqe_features(image: np.ndarray, crop_border: int = 0, *,
                  input_order: str = "HWC") -> np.ndarray:
  """The 36 NIQE features of every 96x96 block: (n_blocks, 36) float64, may hold NaN.

  Columns 0-17 come from the full-resolution MSCN map, 18-35 from the half-resolution one
  (48x48 blocks covering the same areas). Rows are blocks in row-major order.
  """
  y = _prepared_y(image, crop_border, input_order)
  window = pristine_model().window
  per_scale = []
  for size in (BLOCK_SIZE, BLOCK_SIZE // 2):
    per_scale.append(block_features(_split_blocks(_mscn(y, window), size)))
    if size == BLOCK_SIZE:
      # Exact resize of the float32 Y / 255, stored float32 and scaled back as BasicSR does.
      half = imresize((y / np.float32(255.0)).astype(np.float64), scale=0.5)
      y = half.astype(np.float32) * np.float32(255.0)
  return np.concatenate(per_scale, axis=1)


def mvg_distance(features: np.ndarray, model: PristineModel | None = None) -> float:
  """NIQE's distance between the features' Gaussian fit and the pristine model (eq. 10).

  The mean ignores NaN per feature; the covariance uses only the rows without NaN (MATLAB's
  nancov default); the pooled covariance is pseudo-inverted. Blocks without texture (constant
  Y: all-zero MSCN) give NaN rows; fewer than two complete rows raise ValueError (BasicSR fails
  there with an SVD LinAlgError).
  """
  model = pristine_model() if model is None else model
  complete = features[~np.isnan(features).any(axis=1)]
  if complete.shape[0] < 2:
    raise ValueError(f"NIQE needs at least two blocks with texture; only {complete.shape[0]} "
                     f"of {features.shape[0]} blocks have finite features (flat image?).")
  mean = np.nanmean(features, axis=0)
  cov = np.cov(complete, rowvar=False)
  diff = model.mean - mean
  return float(np.sqrt(diff @ np.linalg.pinv((model.cov + cov) / 2.0) @ diff))


def niqe(image: np.ndarray, crop_border: int = 0, *, input_order: str = "HWC") -> float:
  """NIQE of one image (lower is better): BasicSR's `calculate_niqe` (convert_to='y').

  Equal to BasicSR run with an exact half-scale resize; stock BasicSR differs by its CPU-dependent
  float32 resize (up to ~2e-4 relative; see the module docstring).

  Args:
    image: RGB (not BGR) on the 0..255 scale. The protocol measures uint8 images (round model
      outputs first, e.g. with sr_jax.quality.metrics.to_uint8_grid); float 0..255 input is taken as
      BasicSR takes it (Y computed unrounded, then rounded). 'HW': already Y; one channel: grey.
    crop_border: pixels removed on every side before measuring (SR convention: the scale).
    input_order: 'HWC', 'CHW' or 'HW'.

  Raises:
    ValueError: bad layout, fewer than two 96x96 blocks after cropping, or fewer than two
      blocks with any texture (a flat image).
  """
  return mvg_distance(niqe_features(image, crop_border, input_order=input_order))
