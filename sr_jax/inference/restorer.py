"""An image restoration or GAN super-resolution export as a restorer: tiles, TLC, one jit.

`image_restorer(checkpoint, adapter, options)` loads an export (and an adapter on it) and
returns a `Restorer`: the model with its parameters merged, applied tile by tile when images
are large (sr_jax.inference.tiling) and with TLC's local statistics for NAFNet and Restormer
(sr_jax.inference.tlc_inference). It is the restorer of the pixel and GAN objectives
(ObjectiveSpec.restorer); `python -m sr_jax.infer` asks an export's objective for its restorer.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from absl import logging

from sr_jax.adapt import adapters
from sr_jax.inference import tiling, tlc_inference
from sr_jax.inference.restore_io import downsampling, output_scale
from sr_jax.models import registry

PyTree = Any


@dataclasses.dataclass(frozen=True)
class RestoreOptions:
  """What `python -m sr_jax.infer` lets a user choose; each objective's restorer takes what
  applies to it (a diffusion objective refuses tiles, an image model ignores the sampler)."""
  tile: int = 0  # Tile side (0 = whole images).
  overlap: int = 0  # Overlap between tiles.
  dtype: str = "float32"  # Compute dtype.
  scale: int = 0  # SR scale for an export that records none (a converted SR3).
  sampling: dict[str, Any] = dataclasses.field(default_factory=dict)  # Sampler, steps, ...
  tlc: str = "auto"  # TLC mode (sr_jax.inference.tlc_inference).
  train_size: int = 0  # TLC's training crop size (0 = the export's own record).
  context: int = -1  # Pixels each tile also sees (-1: half the TLC window).


def load_model(checkpoint_dir: str, adapter_dir: str | None = None, *, dtype: str = "float32",
               impl: str = "auto") -> tuple[nn.Module, PyTree]:
  """(module, plain params) from a parameter directory and, optionally, an adapter on it."""
  params, meta = adapters.load_base(checkpoint_dir)
  if adapter_dir:
    adapter = adapters.load_adapter(adapter_dir)
    adapters.check_compatible(meta, adapter, params)
    params = adapters.apply_adapter(params, adapter)
  return adapters.model_from_architecture(meta["model"], dtype=dtype, impl=impl), params


class Restorer:
  """A model and its parameters with one jitted apply (compiled once per tile shape)."""

  def __init__(self, model: nn.Module, params: PyTree, tile: int = 0, overlap: int = 0,
               context: int = 0,
               planner: Callable[[int], tlc_inference.LocalPlan] | None = None):
    """`planner` (image short side -> TLC plan) converts the model per image size, for TLC
    windows that grow with the image; without it `model` and `context` serve every image."""
    self.model, self.params, self.tile, self.overlap = model, params, tile, overlap
    self.multiple, self.context, self.planner = downsampling(model), context, planner
    self._local: dict[int, tuple[Callable, int]] = {}  # TLC window -> (apply, context).
    # Flag errors before any image is read.
    tiling.check_tiling(tile, overlap, self.multiple, context)
    self.channels = registry.facts(registry.name_of(model), model).in_channels
    if self.channels not in (1, 3):
      raise ValueError(f"The model takes {self.channels}-channel inputs (e.g. Restormer's "
                       "dual-pixel pairs); sr_jax.infer reads single RGB or grayscale images.")
    self.scale = output_scale(model, params, self.channels)
    apply = jax.jit(model.apply)
    self._fn = lambda x: apply({"params": params}, x)

  def __call__(self, image: np.ndarray) -> np.ndarray:
    """HWC float32 in [0, 1] -> the model's HWC float32 output (not clamped).

    A grayscale model (1 input channel, e.g. Restormer 'gaussian_gray') gets the RGB image's
    luma (ITU-R 601, as Pillow's 'L' conversion).
    """
    if self.channels == 1 and image.shape[-1] == 3:
      image = (image @ np.asarray([0.299, 0.587, 0.114], np.float32))[..., None]
    fn, context = self._fn, self.context
    if self.planner is not None:
      fn, context = self.for_image(*image.shape[:2])
    return tiling.tiled_apply(fn, image, tile=self.tile, overlap=self.overlap,
                              scale=self.scale, multiple=self.multiple, context=context,
                              progress=tiling.TileProgress())

  def for_image(self, height: int, width: int) -> tuple[Callable, int]:
    """The apply and tile context of the TLC plan for an image of this size (cached)."""
    local = self.planner(min(height, width))
    if local.window not in self._local:
      tiling.check_tiling(self.tile, self.overlap, self.multiple, local.context)
      logging.info("TLC for %dx%d (WxH) images: %s.", width, height, local.describe())
      apply = jax.jit(tlc_inference.convert(self.model, local).apply)
      params = self.params
      self._local[local.window] = (lambda x: apply({"params": params}, x), local.context)
    return self._local[local.window]

  def num_tiles(self, height: int, width: int) -> int:
    if self.tile <= 0 or (height <= self.tile and width <= self.tile):
      return 1
    return (len(tiling.tile_starts(height, self.tile, self.overlap)) *
            len(tiling.tile_starts(width, self.tile, self.overlap)))


def image_restorer(checkpoint: str, adapter: str | None, options: RestoreOptions) -> Restorer:
  """The export (and adapter) as a Restorer, with TLC windows sized from its training record."""
  model, params = load_model(checkpoint, adapter, dtype=options.dtype)
  # --train_size sets the window by hand; otherwise it grows with each image when the export
  # records its training images' size.
  image_ref = 0 if options.train_size else tlc_inference.train_image_side_of(checkpoint, adapter)
  size = options.train_size or tlc_inference.train_size_of(checkpoint, adapter)
  planner = functools.partial(tlc_inference.plan, model, options.tlc, size,
                              context=options.context, multiple=downsampling(model),
                              name=checkpoint, train_image_side=image_ref)
  local = planner()  # Errors (mode, crop size) before any image is read.
  if local.window and image_ref:
    restorer = Restorer(model, params, options.tile, options.overlap, local.context,
                        planner=lambda side: planner(image_side=side))
    logging.info("Large images: TLC windows of %d px for images up to the training images' "
                 "%d px, growing with larger ones.", local.window, image_ref)
  else:
    restorer = Restorer(tlc_inference.convert(model, local), params, options.tile,
                        options.overlap, local.context)
    logging.info("Large images: %s.", local.describe())
  return restorer
