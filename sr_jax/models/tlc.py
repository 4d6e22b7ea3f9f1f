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
             positions, replicate-padded back to the map's size, as TLC does), separably along
             each axis with window sums built by doubling (O(log window) per value; TLC uses a
             summed-area table, which computes the same means). Translation-equivariant away
             from the image border.
  Restormer  sr_jax.models.tlc_attention: the transposed attention's statistics (q k^T and the
             norms of q and k) summed over windows laid on a grid of cells (an eighth of the
             window), one attention matrix per window, and every pixel's matrix interpolated
             bilinearly between the window centres around it: the sliding-window analogue of
             the pooling above at 1/64 of the cost of one window per pixel.

The models take the window as a field (`NAFNet.tlc_window`, `Restormer.tlc_window`; 0 = global,
the training behaviour): it is not part of the parameter tree or the recorded architecture, so
`model.clone(tlc_window=window_for(train_size))` converts a loaded model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

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


def window_sums(x: Array, window: int, axis: int) -> Array:
  """Sums of `window` consecutive values along `axis` (the n - window + 1 valid positions).

  Built by doubling: sums over 2, 4, 8, ... values, each from two shifted halves, then the
  powers of two in `window`'s binary expansion added side by side; about 2 log2(window)
  shifted adds per value. (A cumulative sum would need one pass, but XLA lowers cumsum to a
  reduce_window over the whole axis, quadratic in its length on CPU and GPU; and differences of
  large running sums lose float32 precision that sums over windows keep.)
  """
  n = x.shape[axis]
  count = n - window + 1
  part = lambda t, start: jax.lax.slice_in_dim(t, start, start + count, axis=axis)
  total, offset, power, width = None, 0, x, 1  # power[i] = x[i:i + width].sum().
  while True:
    if window & width:
      total = part(power, offset) if total is None else total + part(power, offset)
      offset += width
    if 2 * width > window:
      return total
    length = power.shape[axis]
    power = (jax.lax.slice_in_dim(power, 0, length - width, axis=axis)
             + jax.lax.slice_in_dim(power, width, length, axis=axis))
    width *= 2


def _sliding_mean(x: Array, window: int, axis: int) -> Array:
  """Mean over `window` consecutive values along `axis`, replicate-padded back to its length;
  a window of the whole length gives the plain mean (length 1 along the axis)."""
  if window >= x.shape[axis]:
    return jnp.mean(x, axis=axis, keepdims=True)
  mean = window_sums(x, window, axis) / window  # Position i: x[i:i + window].mean().
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
