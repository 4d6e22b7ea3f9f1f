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
the whole input) have no finite receptive field: their tiled output is an approximation, unless
they are made local (TLC, sr_jax.models.tlc) and each tile is given `context`: surrounding
pixels the model sees but whose output is dropped (sr_jax.inference.tlc_inference picks it).

`TileProgress` reports tiles as they complete (a bar on a terminal, log lines otherwise).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

import numpy as np
from absl import logging

ApplyFn = Callable[[np.ndarray], object]  # (1, h, w, C) -> (1, h*scale, w*scale, C').


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
  """Offsets of the tiles along one axis; the last is shifted inward to end at `length`."""
  if tile <= 0 or length <= tile:
    return [0]
  return list(range(0, length - tile, tile - overlap)) + [length - tile]


def check_tiling(tile: int, overlap: int, multiple: int = 1, context: int = 0) -> None:
  """Raises ValueError for a tile size, overlap or context tiled_apply cannot use (tile <= 0:
  no tiling)."""
  if multiple < 1:
    raise ValueError(f"multiple must be >= 1, got {multiple}.")
  if tile <= 0:
    return
  if context < 0 or context % multiple:
    raise ValueError(f"Tile context must be a non-negative multiple of {multiple}, got "
                     f"{context}.")
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
    self.total, self.count = None, 0  # Tiles added so far.
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
    self.count += 1

  def result(self) -> np.ndarray:
    return (self.total / self.weights).astype(np.float32)


def _with_context(start: int, size: int, context: int, length: int) -> tuple[int, int]:
  """(start, size) of a tile grown by `context` on each side, shifted inward to stay inside
  [0, length) (so all tiles keep one shape)."""
  grown = min(size + 2 * context, length)
  return min(max(start - context, 0), length - grown), grown


ProgressFn = Callable[[int, int], None]  # (tiles done, tiles in all).


def tiled_apply(fn: ApplyFn, image: np.ndarray, *, tile: int, overlap: int, scale: int = 1,
                multiple: int = 1, context: int = 0,
                progress: ProgressFn | None = None) -> np.ndarray:
  """Applies `fn` to `image` (HWC float32) tile by tile and blends; see the module docstring.

  Args:
    fn: maps a (1, h, w, C) array to (1, h*scale, w*scale, C'); e.g. a jitted model apply
      (it sees one tile shape per image, so it compiles once).
    image: HWC float32 numpy array.
    tile: tile size in input pixels; <= 0, or an image no larger than a tile, runs in one call.
    overlap: input pixels shared by neighbouring tiles, 0 <= overlap < tile / 2.
    scale: output pixels per input pixel (super-resolution factor).
    multiple: tile sizes (and `context`) must be multiples of this (models that downsample
      need it).
    context: input pixels of surrounding image each tile also sees on every side (where the
      image has them); only the tile's own part of the output is kept. A model whose output
      depends on more than its immediate surroundings (TLC's local windows) then sees at a
      tile's border what it sees there in the whole image.
    progress: called with (tiles done, tiles in all) after each tile is blended.

  Returns:
    The (H*scale, W*scale, C') float32 output.
  """
  image = np.asarray(image, np.float32)
  if image.ndim != 3:
    raise ValueError(f"tiled_apply needs an HWC image, got shape {image.shape}.")
  if scale < 1:
    raise ValueError(f"scale must be >= 1, got {scale}.")
  check_tiling(tile, overlap, multiple, context)
  h, w = image.shape[:2]
  if tile <= 0 or (h <= tile and w <= tile):
    out = np.asarray(_output(fn(image[None]), image.shape, scale), np.float32)
    if progress is not None:
      progress(1, 1)
    return out
  th, tw = min(tile, h), min(tile, w)
  blender = _Blender(h, w, (th, tw), overlap, scale)
  starts = [(y, x) for y in tile_starts(h, tile, overlap) for x in tile_starts(w, tile, overlap)]
  pending = None

  def finish(y: int, x: int, grown: tuple[int, int, int, int], result: object) -> None:
    gy, gh, gx, gw = grown
    out = _output(result, (gh, gw, image.shape[2]), scale)
    blender.add(y, x, out[(y - gy) * scale:(y - gy + th) * scale,
                          (x - gx) * scale:(x - gx + tw) * scale])
    if progress is not None:
      progress(blender.count, len(starts))

  for y, x in starts:
    grown = _with_context(y, th, context, h) + _with_context(x, tw, context, w)
    gy, gh, gx, gw = grown
    result = fn(image[None, gy:gy + gh, gx:gx + gw])  # Dispatched before the previous blends.
    if pending is not None:
      finish(*pending)
    pending = (y, x, grown, result)
  finish(*pending)
  return blender.result()


class TileProgress:
  """A `progress` callable for tiled_apply: silent below `min_tiles` tiles; otherwise a
  progress bar on `stream` when it is a terminal, else a log line about every tenth of the
  tiles (tiles done / all, tiles per second, time left)."""

  def __init__(self, what: str = "tiles", min_tiles: int = 16, stream: TextIO | None = None):
    self.what, self.min_tiles = what, min_tiles
    self.stream = sys.stderr if stream is None else stream
    self.start = time.perf_counter()
    self.logged = 0

  def line(self, done: int, total: int) -> str:
    elapsed = max(time.perf_counter() - self.start, 1e-9)
    rate = done / elapsed
    left = (total - done) / rate if rate > 0 else float("inf")
    return f"{self.what} {done}/{total}, {rate:.2f} tiles/s, {left:.0f} s left"

  def __call__(self, done: int, total: int) -> None:
    if total < self.min_tiles:
      return
    if getattr(self.stream, "isatty", lambda: False)():
      filled = 30 * done // total
      bar = "#" * filled + "." * (30 - filled)
      self.stream.write(f"\r[{bar}] {self.line(done, total)}" + ("\n" if done == total else ""))
      self.stream.flush()
    elif done == total or done - self.logged >= max(total // 10, 1):
      self.logged = done
      logging.info("%s.", self.line(done, total))
