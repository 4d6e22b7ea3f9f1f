"""Test-time local converter (TLC; Chu et al. 2022, 'Improving Image Restoration by Revisiting
Global Information Aggregation'), as megvii-research's NAFNet uses it for large images.

NAFNet's simplified channel attention averages each feature map over the whole image, and
Restormer's transposed attention builds its channel-to-channel matrix from sums over the whole
image. Trained on crops, both see statistics of a crop; at test time on a large image the same
operations average over far more (and far more varied) content, and restoring a large image tile
by tile gives each tile its own statistics, which shows as tiles of different tone.

TLC makes these statistics local at test time: each is gathered over a window of
`TLC_RATIO` (1.5) times the feature map a layer saw at the training crop size. In input pixels
the window is the same at every level of the U-Net (`window_for(train_size)`, e.g. 384 for
256-pixel training crops), i.e. `window >> level` feature pixels at a level downsampled
2**level times. A window covering the whole map is exactly the global operation, so inputs up
to the window size (and training) are unchanged.

Where the windows go:

  NAFNet     `local_mean`: the mean over the window centred on each position (the valid sliding
             positions, replicate-padded back to the map's size, as TLC does), computed with
             cumulative sums in O(1) per value whatever the window. Translation-equivariant
             away from the image border.
  Restormer  `local_channel_attention`: the map is covered by a grid of windows (as few as
             cover it, evenly spaced, the first and last at the borders, as TLC's grids); each
             window runs the transposed attention on its own pixels, and a pixel covered by
             several windows gets the average of their outputs.

The models take the window as a field (`NAFNet.tlc_window`, `Restormer.tlc_window`; 0 = global,
the training behaviour): it is not part of the parameter tree or the recorded architecture, so
`model.clone(tlc_window=window_for(train_size))` converts a loaded model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

TLC_RATIO = 1.5


def window_for(train_size: int) -> int:
  """TLC's window in input pixels for a model trained on `train_size`-pixel crops."""
  if train_size <= 0:
    raise ValueError(f'The training crop size must be positive, got {train_size}.')
  return int(train_size * TLC_RATIO)


def level_window(window: int, level: int) -> int:
  """The window in feature pixels at a level downsampled 2**level times (0 stays 0: global)."""
  return max(window >> level, 1) if window > 0 else 0


def covers(window: int, height: int, width: int) -> bool:
  """Whether a window (0 = global) makes the local operation the global one on this map."""
  return window <= 0 or (window >= height and window >= width)


def _sliding_mean(x: Array, window: int, axis: int) -> Array:
  """Mean over `window` consecutive values along `axis`, replicate-padded back to its length;
  a window of the whole length gives the plain mean (length 1 along the axis)."""
  n = x.shape[axis]
  if window >= n:
    return jnp.mean(x, axis=axis, keepdims=True)
  sums = jnp.cumsum(x, axis=axis)
  zero = jnp.zeros_like(jax.lax.slice_in_dim(sums, 0, 1, axis=axis))
  sums = jnp.concatenate([zero, sums], axis=axis)  # sums[i] = x[:i].sum().
  upper = jax.lax.slice_in_dim(sums, window, n + 1, axis=axis)
  lower = jax.lax.slice_in_dim(sums, 0, n + 1 - window, axis=axis)
  mean = (upper - lower) / window  # Position i: x[i:i + window].mean(), n - window + 1 of them.
  pad = [(0, 0)] * x.ndim
  pad[axis] = ((window - 1) // 2, window // 2)
  return jnp.pad(mean, pad, mode='edge')


def local_mean(x: Array, window: int) -> Array:
  """TLC's local average pooling of NHWC `x` over window x window positions (float32).

  Each position gets the mean of the window centred on it (the window is clamped to the map's
  sides, and positions too close to the border take the nearest full window's mean). A
  window covering the map returns the global mean, shape (N, 1, 1, C), bit for bit as
  `jnp.mean(x, axis=(1, 2), keepdims=True)`; otherwise the result has x's shape (an axis the
  window covers has length 1) and broadcasts against x.
  """
  x = jnp.asarray(x, jnp.float32)
  if covers(window, x.shape[1], x.shape[2]):
    return jnp.mean(x, axis=(1, 2), keepdims=True)
  return _sliding_mean(_sliding_mean(x, window, 1), window, 2)


def grid_starts(length: int, window: int) -> np.ndarray:
  """Starts of the fewest `window`-long windows covering `length`, evenly spaced from 0 to
  length - window (one window at 0 when it covers the length)."""
  if window >= length:
    return np.zeros(1, np.int64)
  count = -(-length // window)
  return np.round(np.linspace(0, length - window, count)).astype(np.int64)


def local_channel_attention(attend, q: Array, k: Array, v: Array, window: int) -> Array:
  """Runs `attend(q, k, v)` (each (N, H, W, heads, c) -> output of v's shape) in TLC's grid of
  windows (`grid_starts` along each side) and averages the outputs where windows overlap.

  A window covering the map is one call on the whole map, i.e. the global attention.
  """
  n, height, width = q.shape[:3]
  if covers(window, height, width):
    return attend(q, k, v)
  kh, kw = min(window, height), min(window, width)
  rows = grid_starts(height, kh)[:, None] + np.arange(kh)  # (windows down, kh)
  cols = grid_starts(width, kw)[:, None] + np.arange(kw)  # (windows across, kw)
  nr, nc = len(rows), len(cols)

  def windows(t: Array) -> Array:  # (N, H, W, ...) -> (N * nr * nc, kh, kw, ...)
    t = t[:, rows][:, :, :, cols]  # (N, nr, kh, nc, kw, ...)
    t = jnp.moveaxis(t, 3, 2)  # (N, nr, nc, kh, kw, ...)
    return t.reshape((n * nr * nc, kh, kw) + t.shape[5:])

  out = attend(windows(q), windows(k), windows(v)).astype(jnp.float32)
  out = out.reshape((n, nr, nc, kh, kw) + out.shape[3:])
  total = jnp.zeros((n, height, width) + out.shape[5:], jnp.float32)
  total = total.at[:, rows[:, None, :, None], cols[None, :, None, :]].add(out)
  counts = np.zeros((height, width), np.float32)
  for r in rows:
    for c in cols:
      counts[r[0]:r[-1] + 1, c[0]:c[-1] + 1] += 1
  counts = counts.reshape((1, height, width) + (1,) * (total.ndim - 3))
  return (total / counts).astype(v.dtype)
