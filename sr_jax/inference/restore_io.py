"""What every restorer shares: a model's size multiple and output scale, the output file of each
input (checked before any work), and PNG writing.

Used by sr_jax.infer (one adapter) and sr_jax.inference.bank_infer (an adapter bank); kept apart so
that neither imports the other.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from sr_jax.models import registry
from sr_jax.quality import metrics
from sr_jax.util.errors import UsageError

PyTree = Any


def downsampling(model: nn.Module) -> int:
  """The factor input sizes should be multiples of (the model's size multiple).

  NAFNet and Restormer pad other sizes internally, but padding at every tile's edge would show.
  """
  return registry.facts(registry.name_of(model), model).size_multiple


def output_scale(model: nn.Module, params: PyTree, channels: int = 3) -> int:
  """Output pixels per input pixel, from abstract shapes (nothing is compiled or run)."""
  size = 4 * downsampling(model)
  x = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)
  out = jax.eval_shape(lambda p, v: model.apply({"params": p}, v), params, x)
  if out.shape[1] % size:
    raise ValueError(f"Model output {out.shape} is not an integer multiple of its input {x.shape}.")
  return out.shape[1] // size


def write_png(path: pathlib.Path, image: np.ndarray) -> None:
  """Writes an HWC float image as 8-bit PNG: clamped, *255 and rounded as the metrics round."""
  pixels = np.asarray(metrics.to_uint8_grid(image)).astype(np.uint8)
  if pixels.ndim == 3 and pixels.shape[-1] == 1:
    pixels = pixels[..., 0]  # A grayscale model's output: an 'L' PNG.
  Image.fromarray(pixels).save(path, format="PNG")


def folder_outputs(paths: Sequence[pathlib.Path], out_dir: pathlib.Path, *,
                   overwrite: bool = True) -> list[tuple[pathlib.Path, pathlib.Path]]:
  """(input, out_dir/<stem>.png) pairs; two inputs with one stem, writing over an input, or
  (without `overwrite`) an existing output is an error."""
  pairs, seen = [], {}
  for src in paths:
    dst = out_dir / f"{src.stem}.png"
    if dst in seen:
      raise UsageError(f"{seen[dst].name} and {src.name} would both be written to {dst}.")
    if dst.exists() and dst.resolve() == src.resolve():
      raise UsageError(f"Writing {dst} would overwrite the input {src}; choose another --output.")
    seen[dst] = src
    pairs.append((src, dst))
  check_overwrite([dst for _, dst in pairs], overwrite)
  return pairs


def check_overwrite(outputs: Sequence[pathlib.Path], overwrite: bool) -> None:
  """Refuses outputs that already exist unless `overwrite`, naming a few of them."""
  existing = [p for p in outputs if p.exists()]
  if existing and not overwrite:
    names = ", ".join(p.name for p in existing[:5]) + (" ..." if len(existing) > 5 else "")
    raise UsageError(f"{len(existing)} output(s) already exist in {existing[0].parent} "
                     f"({names}); pass --overwrite to replace them, or choose another --output.")
