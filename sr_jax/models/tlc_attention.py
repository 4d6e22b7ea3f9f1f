"""TLC for Restormer's transposed attention (MDTA): attention statistics from local windows.

Globally, per head, MDTA L2-normalises q and k over all pixels and applies
softmax(temperature * q^T k) (c x c) to every pixel's v. Locally (TLC, sr_jax.models.tlc), each
pixel should use those statistics over a window around it. One window per pixel would cost a
c x c matrix per pixel; instead:

  cells    the map is cut into cells of `window // CELLS_PER_WINDOW` pixels per side (the last
           ones partial), anchored at the map's top-left corner; per cell the sums of q k^T,
           q^2 and k^2 (one batched matrix product, nothing per pixel);
  windows  `span` consecutive cells (an even count, span * cell <= window) per side: their sums
           give one attention matrix per window position, at every cell offset;
  pixels   a window's centre lies on a cell corner; each pixel's matrix is the bilinear blend of
           the (up to) four window matrices whose centres surround it, clamped at the border
           (as the pooled NAFNet replicates its border values); a cell's pixels share those
           four matrices, so the blend costs four c x c products per pixel.

An axis the window covers is one cell with one window (global along it); a window covering the
map is the global attention itself (Restormer's Attention dispatches on `tlc.covers`).
Like the sliding windows of NAFNet's pooling this is translation-equivariant, for shifts by
whole cells.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sr_jax.models import tlc

Array = jax.Array
CELLS_PER_WINDOW = 8


@dataclasses.dataclass(frozen=True)
class CellAxis:
  """The cell layout along one axis: `cells` cells of `cell` pixels, windows of `span` cells."""
  cell: int
  cells: int
  span: int

  @property
  def windows(self) -> int:
    return self.cells - self.span + 1

  def centres(self) -> np.ndarray:
    """Each window's centre in pixels (window a covers cells a .. a + span - 1)."""
    return (np.arange(self.windows) + self.span / 2) * self.cell


def cell_axis(length: int, window: int) -> CellAxis:
  """The layout of a `length`-pixel axis for a `window`-pixel window (see the module doc)."""
  if window >= length:
    return CellAxis(length, 1, 1)
  cell = max(window // CELLS_PER_WINDOW, 1)
  span = max(2, 2 * (window // (2 * cell)))
  cells = -(-length // cell)
  if span >= cells:
    return CellAxis(length, 1, 1)
  return CellAxis(cell, cells, span)


def _blend(axis: CellAxis) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(lower window per cell, upper window per cell, upper weight per pixel of a cell)."""
  lower = np.arange(axis.cells) - axis.span // 2
  clip = lambda i: np.clip(i, 0, axis.windows - 1)
  return clip(lower), clip(lower + 1), (np.arange(axis.cell) + 0.5) / axis.cell


def _window_attention(q: Array, k: Array, temperature: Array, rows: CellAxis,
                      cols: CellAxis) -> Array:
  """softmax(temperature * normalised q^T k) per window: (N, windows down, across, h, c, c)."""
  gram = jnp.einsum('naibjhc,naibjhd->nabhcd', q, k)
  q_sq, k_sq = jnp.sum(q * q, axis=(2, 4)), jnp.sum(k * k, axis=(2, 4))
  windowed = lambda t: tlc.window_sums(tlc.window_sums(t, rows.span, 1), cols.span, 2)
  gram, q_sq, k_sq = windowed(gram), windowed(q_sq), windowed(k_sq)
  norm = lambda t: jnp.maximum(jnp.sqrt(t), 1e-12)  # As torch's normalize: ||x|| >= 1e-12.
  logits = gram / (norm(q_sq)[..., :, None] * norm(k_sq)[..., None, :])
  return jax.nn.softmax(logits * temperature[:, None, None], axis=-1)


def local_transposed_attention(q: Array, k: Array, v: Array, temperature: Array, window: int,
                               dtype: Any = jnp.float32) -> Array:
  """MDTA's core with windowed statistics (module doc) on (N, H, W, heads, c) q, k, v."""
  n, height, width, heads, c = q.shape
  rows, cols = cell_axis(height, window), cell_axis(width, window)

  def cells(t: Array, as_dtype: Any) -> Array:  # Zero-padded (adds nothing to the sums).
    t = jnp.pad(jnp.asarray(t, as_dtype), ((0, 0), (0, rows.cells * rows.cell - height),
                                           (0, cols.cells * cols.cell - width), (0, 0), (0, 0)))
    return t.reshape(n, rows.cells, rows.cell, cols.cells, cols.cell, heads, c)

  attn = _window_attention(cells(q, jnp.float32), cells(k, jnp.float32),
                           jnp.asarray(temperature, jnp.float32), rows, cols).astype(dtype)
  v = cells(v, dtype)
  (row_lo, row_hi, row_w), (col_lo, col_hi, col_w) = _blend(rows), _blend(cols)
  out = jnp.zeros(v.shape, jnp.float32)
  for row_index, row_weight in ((row_lo, 1 - row_w), (row_hi, row_w)):
    for col_index, col_weight in ((col_lo, 1 - col_w), (col_hi, col_w)):
      corner = attn[:, row_index][:, :, col_index]  # (N, cells down, across, h, c, c)
      weight = np.outer(row_weight, col_weight)[None, None, :, None, :, None, None]
      out = out + jnp.einsum('nabhcd,naibjhd->naibjhc', corner, v) * weight
  out = out.reshape(n, rows.cells * rows.cell, cols.cells * cols.cell, heads, c)
  return out[:, :height, :width].astype(dtype)
