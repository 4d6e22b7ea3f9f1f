"""Tiled inference: images larger than device memory allows, restored tile by tile.

The image is covered by equal tiles overlapping by `overlap` pixels (the last row and column of
tiles shifted inward, so every tile has the same shape and a jitted model compiles once). Tile
outputs are blended with a separable window that is 1 in a tile's interior and ramps down
linearly across the overlap toward the tile's inner borders (never to 0, and not at all along
the image's own borders), normalised by the summed weights.

For a model whose receptive field reaches r pixels, a tile's output is exact wherever it lies at
least r pixels from the tile's inner borders (along the image border the tile sees the same
zero padding as the whole image), so the blended result equals the whole-image result away from
tile borders. Models with global operations (NAFNet's simplified channel attention averages over
the whole input) have no finite receptive field: their tiled output is an approximation.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

ApplyFn = Callable[[np.ndarray], object]  # (1, h, w, C) -> (1, h*scale, w*scale, C').


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
  """Offsets of the tiles along one axis; the last is shifted inward to end at `length`."""
  if tile <= 0 or length <= tile:
    return [0]
  return list(range(0, length - tile, tile - overlap)) + [length - tile]


def check_tiling(tile: int, overlap: int, multiple: int = 1) -> None:
  """Raises ValueError for a tile size or overlap tiled_apply cannot use (tile <= 0: no tiling)."""
  if multiple < 1:
    raise ValueError(f"multiple must be >= 1, got {multiple}.")
  if tile <= 0:
    return
  if tile % multiple:
    lower, upper = tile // multiple * multiple, -(-tile // multiple) * multiple
    raise ValueError(f"Tile size {tile} is not a multiple of {multiple}, which the model needs "
                     f"(it downsamples by {multiple}); use e.g. {max(lower, multiple)} or {upper}.")
  if overlap < 0 or 2 * overlap >= tile:
    raise ValueError(f"Tile overlap must be >= 0 and less than half the tile size "
                     f"(overlap < {tile}/2), got overlap={overlap} for tile={tile}.")


def _window(size: int, ramp: int, at_start: bool, at_end: bool) -> np.ndarray:
  """1-D weights: 1 inside, rising linearly over `ramp` samples at inner borders, never 0."""
  weights = np.ones(size, np.float64)
  ramp = min(ramp, size)
  if ramp > 0:
    rise = np.arange(1, ramp + 1, dtype=np.float64) / (ramp + 1)
    if at_start:
      weights[:ramp] = np.minimum(weights[:ramp], rise)
    if at_end:
      weights[size - ramp:] = np.minimum(weights[size - ramp:], rise[::-1])
  return weights


def _output(result: object, in_shape: tuple[int, ...], scale: int) -> np.ndarray:
  """fn's (1, h*scale, w*scale, C') result as an HWC array, checking its shape."""
  out = np.asarray(result)
  want = (in_shape[0] * scale, in_shape[1] * scale)
  if out.ndim != 4 or out.shape[0] != 1 or out.shape[1:3] != want:
    raise ValueError(f"The model returned shape {out.shape} for an input of shape "
                     f"(1, {in_shape[0]}, {in_shape[1]}, {in_shape[2]}); expected "
                     f"(1, {want[0]}, {want[1]}, C) for scale={scale}.")
  return out[0]


class _Blender:
  """Accumulates weighted tile outputs (float64) and their weights on the output grid."""

  def __init__(self, height: int, width: int, tile_hw: tuple[int, int], overlap: int,
               scale: int):
    self.size, self.tile_hw = (height, width), tile_hw
    self.overlap, self.scale = overlap, scale
    self.total = None
    self.weights = np.zeros((height * scale, width * scale, 1), np.float64)

  def add(self, y: int, x: int, out: np.ndarray) -> None:
    (th, tw), (h, w), s = self.tile_hw, self.size, self.scale
    wy = _window(th * s, self.overlap * s, y > 0, y + th < h)
    wx = _window(tw * s, self.overlap * s, x > 0, x + tw < w)
    weight = wy[:, None, None] * wx[None, :, None]
    if self.total is None:
      self.total = np.zeros(self.weights.shape[:2] + out.shape[-1:], np.float64)
    rows, cols = slice(y * s, (y + th) * s), slice(x * s, (x + tw) * s)
    self.total[rows, cols] += out * weight
    self.weights[rows, cols] += weight

  def result(self) -> np.ndarray:
    return (self.total / self.weights).astype(np.float32)


def tiled_apply(fn: ApplyFn, image: np.ndarray, *, tile: int, overlap: int, scale: int = 1,
                multiple: int = 1) -> np.ndarray:
  """Applies `fn` to `image` (HWC float32) tile by tile and blends; see the module docstring.

  Args:
    fn: maps a (1, h, w, C) array to (1, h*scale, w*scale, C'); e.g. a jitted model apply
      (it sees one tile shape per image, so it compiles once).
    image: HWC float32 numpy array.
    tile: tile size in input pixels; <= 0, or an image no larger than a tile, runs in one call.
    overlap: input pixels shared by neighbouring tiles, 0 <= overlap < tile / 2.
    scale: output pixels per input pixel (super-resolution factor).
    multiple: tile sizes must be multiples of this (models that downsample need it).

  Returns:
    The (H*scale, W*scale, C') float32 output.
  """
  image = np.asarray(image, np.float32)
  if image.ndim != 3:
    raise ValueError(f"tiled_apply needs an HWC image, got shape {image.shape}.")
  if scale < 1:
    raise ValueError(f"scale must be >= 1, got {scale}.")
  check_tiling(tile, overlap, multiple)
  h, w = image.shape[:2]
  if tile <= 0 or (h <= tile and w <= tile):
    return np.asarray(_output(fn(image[None]), image.shape, scale), np.float32)
  th, tw = min(tile, h), min(tile, w)
  blender = _Blender(h, w, (th, tw), overlap, scale)
  pending = None
  for y in tile_starts(h, tile, overlap):
    for x in tile_starts(w, tile, overlap):
      result = fn(image[None, y:y + th, x:x + tw])  # Dispatched before the previous blends.
      if pending is not None:
        blender.add(pending[0], pending[1], _output(pending[2], (th, tw, image.shape[2]), scale))
      pending = (y, x, result)
  blender.add(pending[0], pending[1], _output(pending[2], (th, tw, image.shape[2]), scale))
  return blender.result()
