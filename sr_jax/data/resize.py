"""MATLAB-compatible bicubic `imresize` in plain numpy.

SR test sets and training pairs are made with MATLAB's `imresize(hr, 1/scale, 'bicubic')`, and
published numbers are only comparable when the LR images are made the same way. OpenCV's and
Pillow's bicubic resizers differ from MATLAB at the borders (and OpenCV does not antialias), so
this module reproduces MATLAB's algorithm (`imresize.m`, `contributions`):

* Keys' cubic kernel with a = -0.5, support [-2, 2];
* antialiasing when downscaling: the kernel is stretched by 1/scale (and scaled by `scale`);
* output pixel x (1-based) samples input coordinate u = x / scale + 0.5 * (1 - 1 / scale);
* symmetric (mirror, edge pixel repeated) extension outside the image;
* weights normalised to sum to 1 for every output pixel;
* separable, resizing the dimension with the smaller scale first.

Only numpy is used because this runs inside data-loader worker processes (no JAX there).
"""

import math

import numpy as np

# Keys' kernel has support [-2, 2]: four taps per output pixel when not stretched.
_KERNEL_WIDTH = 4.0


def cubic(x: np.ndarray) -> np.ndarray:
  """Keys' cubic convolution kernel with a = -0.5 (MATLAB's 'bicubic' kernel)."""
  ax = np.abs(x)
  ax2, ax3 = ax * ax, ax * ax * ax
  inner = 1.5 * ax3 - 2.5 * ax2 + 1.0
  outer = -0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0
  return np.where(ax <= 1.0, inner, np.where(ax <= 2.0, outer, 0.0))


def _mirror(indices: np.ndarray, length: int) -> np.ndarray:
  """Maps any integer index into [0, length) by symmetric extension (MATLAB's aux indexing).

  The extended signal is x[0..n-1], x[n-1..0], repeated with period 2n, i.e. the edge pixel is
  repeated ('symmetric' padding, not 'reflect').
  """
  m = np.mod(indices, 2 * length)
  return np.where(m < length, m, 2 * length - 1 - m)


def contributions(in_length: int, out_length: int, scale: float,
                  antialiasing: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Per-output-pixel weights and (0-based, mirrored) source indices along one axis.

  Returns `(weights, indices)`, both of shape (out_length, P) with P = ceil(kernel width) + 2 as
  in MATLAB; weights are float64 and every row sums to 1.
  """
  stretch = antialiasing and scale < 1.0
  kernel_width = _KERNEL_WIDTH / scale if stretch else _KERNEL_WIDTH
  x = np.arange(1, out_length + 1, dtype=np.float64)
  u = x / scale + 0.5 * (1.0 - 1.0 / scale)  # 1-based input coordinate of each output pixel.
  left = np.floor(u - kernel_width / 2.0)
  taps = int(math.ceil(kernel_width)) + 2
  indices = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]  # 1-based.
  distance = u[:, None] - indices
  weights = scale * cubic(scale * distance) if stretch else cubic(distance)
  weights /= weights.sum(axis=1, keepdims=True)
  return weights, _mirror(indices.astype(np.int64) - 1, in_length)


def resize_matrix(in_length: int, out_length: int, scale: float,
                  antialiasing: bool = True) -> np.ndarray:
  """The (out_length, in_length) float64 matrix of MATLAB's resize along one axis.

  `matrix @ signal` equals `imresize` along that axis (mirrored taps folded onto the pixels
  they read), so a jitted model can resize with two matrix products instead of gathers.
  """
  weights, indices = contributions(in_length, out_length, scale, antialiasing)
  matrix = np.zeros((out_length, in_length), np.float64)
  rows = np.repeat(np.arange(out_length), weights.shape[1])
  np.add.at(matrix, (rows, indices.reshape(-1)), weights.reshape(-1))
  return matrix


def _resize_axis(img: np.ndarray, axis: int, out_length: int, scale: float,
                 antialiasing: bool) -> np.ndarray:
  """Resizes `img` along `axis` with MATLAB's weights, one kernel tap at a time.

  Looping over the P taps (not over pixels) keeps memory at one output-sized temporary, which
  matters for full-size images in worker processes; each tap is a vectorised take + multiply-add.
  """
  weights, indices = contributions(img.shape[axis], out_length, scale, antialiasing)
  bshape = [1] * img.ndim
  bshape[axis] = out_length
  out = None
  for p in range(weights.shape[1]):
    w = weights[:, p]
    if not np.any(w):
      continue  # MATLAB drops all-zero tap columns; skipping them is equivalent.
    term = np.take(img, indices[:, p], axis=axis) * w.astype(img.dtype).reshape(bshape)
    out = term if out is None else out + term
  return out


def output_size(in_shape: tuple[int, int], scale: float | None,
                output_shape: tuple[int, int] | None) -> tuple[tuple[int, int],
                                                                 tuple[float, float]]:
  """MATLAB's size rules: returns ((out_h, out_w), (scale_h, scale_w)).

  With `scale`, out = ceil(in * scale) and both axes use `scale` itself for the coordinate
  mapping; with `output_shape`, each axis uses out / in. The ceil ignores a 1e-10 relative excess
  so that float noise (e.g. 30 * 0.1 = 3.0000000000000004) does not add a row.
  """
  if (scale is None) == (output_shape is None):
    raise ValueError("Give exactly one of `scale` or `output_shape`.")
  if scale is not None:
    if scale <= 0:
      raise ValueError(f"scale must be positive, got {scale}.")
    out = tuple(int(math.ceil(n * scale * (1.0 - 1e-10))) for n in in_shape)
    return out, (float(scale), float(scale))
  out = tuple(int(n) for n in output_shape)
  if len(out) != 2 or min(out) <= 0:
    raise ValueError(f"output_shape must be two positive ints, got {output_shape}.")
  return out, (out[0] / in_shape[0], out[1] / in_shape[1])


def imresize(img: np.ndarray, scale: float | None = None,
             output_shape: tuple[int, int] | None = None, *,
             antialiasing: bool = True) -> np.ndarray:
  """Bicubic resize of a float (H, W) or (H, W, C) image exactly as MATLAB's `imresize`.

  Values are not clipped or rounded (MATLAB does that only for integer inputs); callers that need
  uint8 LR images round themselves. float16/float32 inputs are computed and returned in float32,
  float64 in float64. Integer images are rejected so that a 0..255 vs 0..1 mix-up cannot pass
  silently.
  """
  img = np.asarray(img)
  if not np.issubdtype(img.dtype, np.floating):
    raise TypeError(f"imresize expects a floating-point image, got {img.dtype}; "
                    "convert first, e.g. img.astype(np.float32) / 255.")
  if img.ndim not in (2, 3):
    raise ValueError(f"Expected an (H, W) or (H, W, C) image, got shape {img.shape}.")
  img = img.astype(np.result_type(img.dtype, np.float32), copy=False)
  out_shape, scales = output_size(img.shape[:2], scale, output_shape)
  # MATLAB resizes the dimension with the smaller scale first (stable order on ties).
  for axis in sorted((0, 1), key=lambda a: scales[a]):
    if out_shape[axis] == img.shape[axis] and scales[axis] == 1.0:
      continue  # Identity: Keys' kernel is 1 at 0 and 0 at other integers.
    img = _resize_axis(img, axis, out_shape[axis], scales[axis], antialiasing)
  return img


def modcrop(img: np.ndarray, multiple: int) -> np.ndarray:
  """Crops H and W down to multiples of `multiple`, keeping the top-left corner (BasicSR's rule).

  Test-set HR images are cropped this way ("GTmod12") so that HR and LR sizes divide exactly.
  """
  if multiple < 1:
    raise ValueError(f"multiple must be >= 1, got {multiple}.")
  h, w = img.shape[0], img.shape[1]
  return img[:h - h % multiple, :w - w % multiple]


# ---------------------------------------------------------------------------------------------
# Integer downscaling for super-resolution inputs (the data's LR images).

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
  if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
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
