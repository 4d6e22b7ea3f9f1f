"""PSNR and SSIM exactly as the SR community reports them (BasicSR / MATLAB protocol).

Published numbers are only comparable when computed the same way, so these functions follow
BasicSR's `calculate_psnr` / `calculate_ssim` (which match MATLAB to the printed digits):

1. both images are clamped to [0, 1], scaled by 255 and *rounded* to the uint8 grid;
2. `crop_border` pixels are removed on every side (SR convention: crop = scale);
3. optionally only the Y channel of MATLAB's `rgb2ycbcr` is kept (float, not rounded);
4. PSNR = 10 log10(255^2 / MSE) (inf when MSE is 0); SSIM uses an 11x11 Gaussian window
   (sigma 1.5), C1 = (0.01 * 255)^2, C2 = (0.03 * 255)^2, 'valid' filtering, the mean of the SSIM
   map, averaged over channels for RGB.

BasicSR computes in float64; JAX runs in float32 unless x64 is enabled globally, so the float32
code is arranged to lose nothing that matters (agreement with a float64 reference: ~1e-6 dB and
~1e-7 SSIM, see tests/test_metrics.py):

* PSNR squares integer differences (exact); the Y channel of a difference is taken as a linear
  combination of integer RGB differences, so nothing cancels.
* SSIM's variances are computed as window sums of squared deviations from the local mean, not as
  E[x^2] - E[x]^2, which cancels catastrophically in float32 on flat bright regions (errors of
  3e-5 on a flat 250-valued patch). Filtering is shift-and-add, not `lax.conv`, so GPUs cannot
  silently use TF32.

Also a CLI: `python -m sr_jax.quality.metrics --pred DIR --gt DIR [--crop_border N] [--y_channel]`.
"""

import argparse
import functools
import pathlib
import sys
import warnings

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

# MATLAB rgb2ycbcr (ITU-R BT.601), for RGB in [0, 1]: Y = 16 + 65.481 R + 128.553 G + 24.966 B.
_Y_COEFFS = (65.481, 128.553, 24.966)
_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5
_C1 = (0.01 * 255.0) ** 2
_C2 = (0.03 * 255.0) ** 2
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _gaussian_1d() -> np.ndarray:
  """The normalised 1-D Gaussian whose outer product is SSIM's 11x11 window (float64)."""
  x = np.arange(_SSIM_WINDOW, dtype=np.float64) - (_SSIM_WINDOW - 1) / 2
  g = np.exp(-(x * x) / (2.0 * _SSIM_SIGMA ** 2))
  return g / g.sum()


_GAUSS = tuple(float(v) for v in _gaussian_1d())


def to_uint8_grid(x: jax.Array) -> jax.Array:
  """Clamps [0, 1] images, scales by 255 and rounds: uint8 values, kept as floats for jit.

  The rounding is that of the exact product x * 255 (as float64 computes it), half to even.
  A plain float32 `x * 255` can round onto or off a .5 tie and so move a pixel by one level
  (about 1 pixel in 1e5 for random inputs; enough to shift PSNR by 1e-4 dB on small images).
  The exact remainder comes from an error-free transformation: x * 256 is exact, and
  x * 255 = x * 256 - x, whose rounding error Fast2Sum recovers exactly.
  """
  x = jnp.clip(jnp.asarray(x, jnp.float32), 0.0, 1.0)
  a = x * 256.0  # Exact (power of two).
  p = a - x  # fl(x * 255).
  err = (a - p) - x  # Exact: x * 255 - p.
  down, up = jnp.floor(p), jnp.ceil(p)
  tie = p - down == 0.5  # Only here can the exact value round differently from p.
  fixed = jnp.where(err > 0, up, jnp.where(err < 0, down, jnp.round(p)))
  return jnp.where(tie, fixed, jnp.round(p))


def _y_linear(x255: jax.Array) -> jax.Array:
  """The linear part of MATLAB's Y (no +16 offset), keeping a trailing channel axis of 1.

  Linear, so applied to a difference of RGB images it gives the difference of their Y channels
  without the cancellation of subtracting two ~16..235 values.
  """
  r, g, b = x255[..., 0:1], x255[..., 1:2], x255[..., 2:3]
  return (r * _Y_COEFFS[0] + g * _Y_COEFFS[1] + b * _Y_COEFFS[2]) / 255.0


def rgb_to_y(x255: jax.Array) -> jax.Array:
  """MATLAB `rgb2ycbcr` luma from RGB on the 0..255 scale: (..., 3) -> (..., 1), float, unrounded.

  Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255, i.e. BasicSR's `bgr2ycbcr(y_only=True)` of
  the RGB image in [0, 1], times 255.
  """
  x255 = jnp.asarray(x255, jnp.float32)
  if x255.shape[-1] != 3:
    raise ValueError(f"rgb_to_y needs 3 channels (RGB) last, got shape {x255.shape}.")
  return 16.0 + _y_linear(x255)


def _prepare(pred: jax.Array, gt: jax.Array, crop_border: int,
             y_channel: bool) -> tuple[jax.Array, jax.Array, bool]:
  """Validates, puts both images on the uint8 grid, batches to (N, H, W, C) and crops.

  Float inputs are taken as [0, 1]; integer inputs (e.g. uint8 images) as already on 0..255.
  Returns (pred, gt, batched).
  """
  pred, gt = jnp.asarray(pred), jnp.asarray(gt)
  if pred.shape != gt.shape:
    raise ValueError(f"pred and gt shapes differ: {pred.shape} vs {gt.shape}.")
  if pred.ndim not in (3, 4):
    raise ValueError(f"Expected (H, W, C) or (N, H, W, C) images, got shape {pred.shape}.")
  if y_channel and pred.shape[-1] != 3:
    raise ValueError(f"y_channel=True needs RGB input (C = 3), got shape {pred.shape}.")
  if crop_border < 0:
    raise ValueError(f"crop_border must be >= 0, got {crop_border}.")
  batched = pred.ndim == 4
  pred, gt = (_on_grid(v) for v in (pred, gt))
  if not batched:
    pred, gt = pred[None], gt[None]
  if crop_border:
    c = crop_border
    pred, gt = pred[:, c:-c, c:-c, :], gt[:, c:-c, c:-c, :]
  if pred.shape[1] < 1 or pred.shape[2] < 1:
    raise ValueError(f"crop_border={crop_border} leaves nothing of shape {gt.shape}.")
  return pred, gt, batched


def _on_grid(x: jax.Array) -> jax.Array:
  """to_uint8_grid for float images; integer images are only clipped to 0..255 and cast."""
  if jnp.issubdtype(x.dtype, jnp.integer):
    return jnp.clip(x, 0, 255).astype(jnp.float32)
  return to_uint8_grid(x)


def _mse(pred: jax.Array, gt: jax.Array, crop_border: int,
         y_channel: bool) -> tuple[jax.Array, bool]:
  """Per-image mean squared error on the uint8 grid (0..255 scale) and whether input was
  batched: PSNR's and RMSE's common core."""
  pred, gt, batched = _prepare(pred, gt, crop_border, y_channel)
  diff = pred - gt  # Integer-valued: exact in float32.
  if y_channel:
    diff = _y_linear(diff)
  return jnp.mean(diff * diff, axis=(1, 2, 3)), batched


@functools.partial(jax.jit, static_argnames=("crop_border", "y_channel"))
def psnr(pred: jax.Array, gt: jax.Array, crop_border: int = 0,
         y_channel: bool = False) -> jax.Array:
  """PSNR in dB under the BasicSR protocol; +inf for identical (uint8-rounded) images.

  Args:
    pred, gt: float images in [0, 1] (integers: already 0..255), (H, W, C) or (N, H, W, C).
    crop_border: pixels removed on every side (static).
    y_channel: measure MATLAB's Y channel only (static; needs RGB).

  Returns:
    A scalar for one image, shape (N,) for a batch.
  """
  mse, batched = _mse(pred, gt, crop_border, y_channel)
  safe = jnp.where(mse == 0, 1.0, mse)
  value = jnp.where(mse == 0, jnp.inf, 10.0 * jnp.log10(255.0 ** 2 / safe))
  return value if batched else value[0]


@functools.partial(jax.jit, static_argnames=("crop_border", "y_channel"))
def rmse(pred: jax.Array, gt: jax.Array, crop_border: int = 0,
         y_channel: bool = False) -> jax.Array:
  """Root-mean-square error on the 0..255 scale under the same protocol as `psnr`.

  Per image, RMSE = 255 * 10^(-PSNR / 20); averaged over images the two differ, which is why
  the MESRGAN report (Eriksson and Löf) tabulates both.
  """
  mse, batched = _mse(pred, gt, crop_border, y_channel)
  value = jnp.sqrt(mse)
  return value if batched else value[0]


def _filter_valid(x: jax.Array) -> jax.Array:
  """Separable 11x11 Gaussian 'valid' filtering over axes 1 and 2 of (N, H, W, C)."""
  k = _SSIM_WINDOW
  h, w = x.shape[1] - k + 1, x.shape[2] - k + 1
  rows = sum(_GAUSS[j] * x[:, :, j:j + w] for j in range(k))
  return sum(_GAUSS[i] * rows[:, i:i + h] for i in range(k))


def _local_moments(x: jax.Array, y: jax.Array, mx: jax.Array,
                   my: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Windowed variances and covariance as sums of w * (x - mu_x)(y - mu_y) over the 121 taps.

  Deviations from the local mean are small where images are flat, so float32 keeps their
  relative accuracy; a loop over window rows keeps the compiled program small.
  """
  k = _SSIM_WINDOW
  h, w = mx.shape[1], mx.shape[2]
  gauss = jnp.asarray(_GAUSS, jnp.float32)

  def add_row(i, acc):
    """Adds the 11 taps of window row i to the three accumulators."""
    xr = lax.dynamic_slice_in_dim(x, i, h, axis=1)
    yr = lax.dynamic_slice_in_dim(y, i, h, axis=1)
    sxx, syy, sxy = acc
    for j in range(k):
      wt = gauss[i] * _GAUSS[j]
      dx, dy = xr[:, :, j:j + w] - mx, yr[:, :, j:j + w] - my
      sxx, syy, sxy = sxx + wt * dx * dx, syy + wt * dy * dy, sxy + wt * dx * dy
    return sxx, syy, sxy

  zeros = jnp.zeros_like(mx)
  return lax.fori_loop(0, k, add_row, (zeros, zeros, zeros))


@functools.partial(jax.jit, static_argnames=("crop_border", "y_channel"))
def ssim(pred: jax.Array, gt: jax.Array, crop_border: int = 0,
         y_channel: bool = False) -> jax.Array:
  """SSIM (Wang et al. 2004) under the BasicSR protocol; 1 for identical images.

  Args and returns as for `psnr`. The cropped images must be at least 11x11.
  """
  x, y, batched = _prepare(pred, gt, crop_border, y_channel)
  if y_channel:
    x, y = 16.0 + _y_linear(x), 16.0 + _y_linear(y)
  if min(x.shape[1], x.shape[2]) < _SSIM_WINDOW:
    raise ValueError(f"SSIM needs at least {_SSIM_WINDOW}x{_SSIM_WINDOW} pixels after "
                     f"crop_border={crop_border}; got {x.shape[1]}x{x.shape[2]}.")
  mx, my = _filter_valid(x), _filter_valid(y)
  sxx, syy, sxy = _local_moments(x, y, mx, my)
  num = (2.0 * mx * my + _C1) * (2.0 * sxy + _C2)
  den = (mx * mx + my * my + _C1) * (sxx + syy + _C2)
  value = jnp.mean(num / den, axis=(1, 2)).mean(axis=-1)  # Per channel, then over channels.
  return value if batched else value[0]


def protocol_description(crop_border: int, y_channel: bool) -> str:
  """One line stating how numbers were measured, to print next to them."""
  channels = "Y channel" if y_channel else "RGB channels"
  return f"PSNR/SSIM on {channels}, crop border {crop_border}, uint8-rounded (BasicSR protocol)"


# ----------------------------------------------------------------------------------------------
# Command line.


class UsageError(ValueError):
  """A problem with the user's input (folders, files, flags): reported without a traceback."""
  exit_code = 2


def _list_images(folder: pathlib.Path, flag: str) -> dict[str, pathlib.Path]:
  """Maps file stem -> path for the image files directly inside `folder`."""
  if not folder.is_dir():
    raise UsageError(f"{flag} {folder} is not a directory.")
  images: dict[str, pathlib.Path] = {}
  for path in sorted(folder.iterdir()):
    if not path.is_file() or path.suffix.lower() not in _IMAGE_SUFFIXES:
      continue
    if path.stem in images:
      raise UsageError(f"Two images named {path.stem!r} in {flag} {folder}: "
                       f"{images[path.stem].name} and {path.name}.")
    images[path.stem] = path
  if not images:
    raise UsageError(f"No images ({', '.join(_IMAGE_SUFFIXES)}) in {flag} {folder}.")
  return images


def _match(pred: dict[str, pathlib.Path], gt: dict[str, pathlib.Path]) -> list[str]:
  """Names present in both folders; any name present in only one is an error listing them all."""
  only_pred, only_gt = sorted(set(pred) - set(gt)), sorted(set(gt) - set(pred))
  if only_pred or only_gt:
    lines = ["Images must match by name (file stem) across --pred and --gt."]
    if only_pred:
      lines.append(f"  only in --pred ({len(only_pred)}): {', '.join(only_pred)}")
    if only_gt:
      lines.append(f"  only in --gt ({len(only_gt)}): {', '.join(only_gt)}")
    raise UsageError("\n".join(lines))
  return sorted(pred)


def read_rgb(path: pathlib.Path) -> np.ndarray:
  """Reads an 8-bit image as uint8 (H, W, 3): grayscale/palette expanded, alpha dropped."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as im:
      im.load()
      if im.mode not in ("RGB", "RGBA", "L", "LA", "P", "PA", "1", "CMYK", "YCbCr"):
        raise UsageError(f"{path}: unsupported image mode {im.mode!r} (only 8-bit images are "
                         "measured, as in the uint8 protocol).")
      return np.asarray(im.convert("RGB"), dtype=np.uint8)
  except UsageError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # Pillow raises many kinds.
    raise UsageError(f"Cannot read image {path}: {type(e).__name__}: {e}") from e


_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def is_grayscale(path: pathlib.Path) -> bool:
  """Whether an image file stores one channel (read from its header, not decoded)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as im:
      return im.mode in _GRAY_MODES
  except Exception:  # pylint: disable=broad-except  # read_rgb reports unreadable files.
    return False


def warn_channel_mismatch(name: str, pred: pathlib.Path, gt: pathlib.Path) -> None:
  """Warns when one image of a pair is grayscale and the other colour: both are scored as RGB
  (the gray channel repeated), so the scores mix a colour error into the comparison."""
  pred_gray, gt_gray = is_grayscale(pred), is_grayscale(gt)
  if pred_gray != gt_gray:
    gray, colour = ("--pred", "--gt") if pred_gray else ("--gt", "--pred")
    warnings.warn(f"{name!r}: {gray} {(pred if pred_gray else gt).name} is grayscale but "
                  f"{colour} {(gt if pred_gray else pred).name} is colour; the gray channel is "
                  "repeated to RGB, so PSNR/SSIM also count the missing colour as error.",
                  stacklevel=2)


def _score_all(names: list[str], pred: dict[str, pathlib.Path], gt: dict[str, pathlib.Path],
               crop_border: int, y_channel: bool) -> list[tuple[str, float, float]]:
  """(name, PSNR, SSIM) per matched pair; a size mismatch is an error naming the pair."""
  rows = []
  for name in names:
    warn_channel_mismatch(name, pred[name], gt[name])
    p, g = read_rgb(pred[name]), read_rgb(gt[name])
    if p.shape != g.shape:
      raise UsageError(f"Size mismatch for {name!r}: --pred {pred[name].name} is "
                       f"{p.shape[1]}x{p.shape[0]}, --gt {gt[name].name} is "
                       f"{g.shape[1]}x{g.shape[0]} (WxH).")
    try:
      kw = dict(crop_border=crop_border, y_channel=y_channel)
      rows.append((name, float(psnr(p, g, **kw)), float(ssim(p, g, **kw))))
    except ValueError as e:
      raise UsageError(f"{name!r}: {e}") from e
  return rows


def _format_table(rows: list[tuple[str, float, float]], description: str) -> str:
  """The per-image table followed by the mean row and the protocol line."""
  width = max(len("mean"), *(len(name) for name, _, _ in rows))
  lines = [description, f"{'image':<{width}}  {'PSNR (dB)':>10}  {'SSIM':>8}"]
  for name, p, s in rows:
    lines.append(f"{name:<{width}}  {p:>10.4f}  {s:>8.6f}")
  mean_p = float(np.mean([r[1] for r in rows]))
  mean_s = float(np.mean([r[2] for r in rows]))
  lines.append(f"{'mean':<{width}}  {mean_p:>10.4f}  {mean_s:>8.6f}")
  lines.append(f"({len(rows)} images; {description})")
  return "\n".join(lines)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
  """Command-line flags."""
  parser = argparse.ArgumentParser(
      prog="python -m sr_jax.quality.metrics",
      description="PSNR/SSIM of a folder of results against a folder of ground truths, "
                  "matched by file name, under the BasicSR protocol.")
  parser.add_argument("--pred", required=True, type=pathlib.Path, help="Folder of outputs.")
  parser.add_argument("--gt", required=True, type=pathlib.Path, help="Folder of ground truths.")
  parser.add_argument("--crop_border", "--crop-border", type=int, default=0,
                      help="Pixels removed on every side (SR convention: the scale).")
  parser.add_argument("--y_channel", "--y-channel", action="store_true",
                      help="Measure the Y channel of MATLAB's rgb2ycbcr (SR papers' tables).")
  parser.add_argument("--traceback", action="store_true",
                      help="Show the stack of an error too (for a bug report).")
  args = parser.parse_args(argv)
  for old in OLD_SPELLINGS:
    if any(a == old or a.startswith(old + "=") for a in (sys.argv[1:] if argv is None else argv)):
      print(f"note: {old} is now spelled --{old[2:].replace('-', '_')} (as every sr_jax tool spells "
            "its flags); the old spelling still works.", file=sys.stderr)
  return args


# Hyphenated flags of earlier versions, still accepted (sr_jax's tools spell flags with '_').
OLD_SPELLINGS = ("--crop-border", "--y-channel")


def main(argv: list[str] | None = None) -> int:
  """CLI entry point; returns the exit code (0 ok, 2 for a user error, printed to stderr)."""
  args = _parse_args(argv)
  try:
    if args.crop_border < 0:
      raise UsageError(f"--crop_border must be >= 0, got {args.crop_border}.")
    pred = _list_images(args.pred, "--pred")
    gt = _list_images(args.gt, "--gt")
    rows = _score_all(_match(pred, gt), pred, gt, args.crop_border, args.y_channel)
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(_format_table(rows, protocol_description(args.crop_border, args.y_channel)))
  return 0


def command() -> None:
  """The `sr-jax-metrics` console command (the same as python -m sr_jax.quality.metrics)."""
  from sr_jax.util import errors  # pylint: disable=g-import-not-at-top
  sys.exit(errors.guarded(main)())


if __name__ == "__main__":
  command()
