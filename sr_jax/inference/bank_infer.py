"""`sr_jax.infer` with many adapters: route every image to an adapter, then restore them through
one adapter bank (sr_jax.adapt.adapter_bank), images of equal size batched across adapters.

  --adapter haze=DIR --adapter rain=DIR ...   the bank (one base, loaded once)
  --route folder      an image's adapter is the name of its sub-folder of --input
                      (input/haze/x.png -> output/haze/x.png); the default
  --route FILE.csv    rows 'file name,adapter' (a header row 'file,adapter' may come first)
  --route NAME        every image of --input through adapter NAME

Routing is checked whole before any model is loaded: a sub-folder or CSV row naming no adapter
of the bank, and an image no route reaches, are errors naming them. Tiles and TLC work as with
one adapter (TLC at 1.5x the recorded training crop).
"""

from __future__ import annotations

import csv
import dataclasses
import pathlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from sr_jax.adapt import adapter_bank
from sr_jax.data import sources
from sr_jax.inference import restore_io, tiling, tlc_inference
from sr_jax.util.errors import UsageError

Route = tuple[pathlib.Path, pathlib.Path, str]  # (input, output .png, adapter name)


def named_adapters(values: Sequence[str]) -> dict[str, str]:
  """{name: dir} from --adapter NAME=DIR values; {} for one plain DIR (or none)."""
  named = [v for v in values if "=" in v]
  if not named:
    if len(values) > 1:
      raise UsageError("Several --adapter values need names: --adapter haze=DIR "
                       "--adapter rain=DIR (one bank, images routed by --route).")
    return {}
  if len(named) != len(values):
    raise UsageError("Either one --adapter DIR, or every --adapter as NAME=DIR; got "
                     f"{list(values)}.")
  out = {}
  for value in values:
    name, _, directory = value.partition("=")
    if not name or not directory or name in out:
      raise UsageError(f"--adapter {value!r}: use a unique NAME=DIR.")
    out[name] = directory
  return out


def _outputs(images: Sequence[pathlib.Path], out_dir: pathlib.Path, name: str,
             overwrite: bool) -> list[Route]:
  """Each image with its output (sr_jax.infer's checks: one output per input, none over an
  input, existing ones only with `overwrite`) and its adapter."""
  return [(src, dst, name) for src, dst in restore_io.folder_outputs(images, out_dir,
                                                                      overwrite=overwrite)]


def routes(input_dir: str, output_dir: str, names: Sequence[str], route: str, *,
           overwrite: bool = False) -> list[Route]:
  """Every image of --input with its output and adapter (see the module docstring)."""
  src, dst = pathlib.Path(input_dir).expanduser(), pathlib.Path(output_dir).expanduser()
  if not src.is_dir():
    raise UsageError(f"--input {src} must be a folder when several adapters are given.")
  known = ", ".join(names)
  if route in names:
    return _outputs(sources.list_image_files(src), dst, route, overwrite)
  if route.endswith(".csv"):
    table = _read_csv(pathlib.Path(route).expanduser(), names)
    files = {p.name: p for p in sources.list_image_files(src)}
    missing = sorted(set(files) - set(table))
    if missing:
      raise UsageError(f"--route {route} gives no adapter for {', '.join(missing[:5])} "
                       f"({len(missing)} image(s) of {src}).")
    unknown = sorted(set(table) - set(files))
    if unknown:
      raise UsageError(f"--route {route} names images not in {src}: {', '.join(unknown[:5])}.")
    return [r for name in names for r in _outputs(
        [files[f] for f in sorted(files) if table[f] == name], dst, name, overwrite)]
  if route != "folder":
    raise UsageError(f"--route {route!r}: use 'folder', a .csv file, or one of the adapters "
                     f"({known}).")
  loose = [p for p in src.iterdir() if p.is_file() and p.suffix.lower() in
           sources.IMAGE_EXTENSIONS]
  if loose:
    raise UsageError(f"{loose[0]} is not in a sub-folder named after an adapter ({known}); "
                     "move it, or route with --route FILE.csv or --route NAME.")
  out = []
  for folder in sorted(p for p in src.iterdir() if p.is_dir()):
    if folder.name not in names:
      raise UsageError(f"Sub-folder {folder} names no adapter of the bank ({known}).")
    out += _outputs(sources.list_image_files(folder), dst / folder.name, folder.name, overwrite)
  if not out:
    raise UsageError(f"{src} holds no sub-folder of images named after an adapter ({known}).")
  return out


def _read_csv(path: pathlib.Path, names: Sequence[str]) -> dict[str, str]:
  if not path.is_file():
    raise UsageError(f"--route {path} does not exist.")
  table = {}
  with open(path, newline="", encoding="utf-8") as f:
    for i, row in enumerate(csv.reader(f)):
      if not row or (i == 0 and [c.strip() for c in row[:2]] == ["file", "adapter"]):
        continue
      if len(row) < 2 or row[1].strip() not in names:
        raise UsageError(f"{path} line {i + 1}: {row!r} must be 'file name,adapter' with an "
                         f"adapter of the bank ({', '.join(names)}).")
      table[row[0].strip()] = row[1].strip()
  return table


class BankRestorer:
  """A loaded bank with its jitted apply: `restore(images, names)` for arrays (the Python API),
  `tiled(image, name)` for one large image in tiles."""

  def __init__(self, bank: adapter_bank.AdapterBank, *, tile: int = 0, overlap: int = 0,
               context: int = 0, multiple: int = 1, scale: int = 1):
    self.bank, self.tile, self.overlap, self.context = bank, tile, overlap, context
    self.multiple, self.scale = multiple, scale
    self._arrays, self._run = bank.arrays(), jax.jit(bank.apply)

  def restore(self, images: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """(N, H, W, C) float images in [0, 1], one adapter name per image -> outputs (N, ...)."""
    index = jnp.asarray([self.bank.index(n) for n in names], jnp.int32)
    return np.asarray(self._run(self._arrays, jnp.asarray(images, jnp.float32), index))

  def tiled(self, image: np.ndarray, name: str) -> np.ndarray:
    index = jnp.asarray([self.bank.index(name)], jnp.int32)
    return tiling.tiled_apply(lambda x: self._run(self._arrays, x, index), image,
                              tile=self.tile, overlap=self.overlap, scale=self.scale,
                              multiple=self.multiple, context=self.context)


def with_tlc(bank: adapter_bank.AdapterBank, mode: str, train_size: int, context: int,
             multiple: int) -> tuple[adapter_bank.AdapterBank, tlc_inference.LocalPlan]:
  """The bank with its model TLC-converted as `tlc_inference.plan` decides."""
  local = tlc_inference.plan(bank.model, mode, train_size, context=context, multiple=multiple)
  return dataclasses.replace(bank, model=tlc_inference.convert(bank.model, local)), local


def restore_routes(restorer: BankRestorer, todo: Sequence[Route], batch: int,
                   write_png) -> list[dict[str, Any]]:
  """Restores every routed image: whole images of equal size in batches across adapters (up to
  `batch`), or tile by tile with tiles; writes each output; one log line per batch."""
  groups: dict[tuple[int, int], list[Route]] = {}
  for r in todo:  # Sizes from the files' headers: images are decoded one batch at a time.
    groups.setdefault(sources.image_size(r[0]), []).append(r)
  rows = []
  for shape, group in groups.items():
    for start in range(0, len(group), 1 if restorer.tile else batch):
      chunk, began = group[start:start + (1 if restorer.tile else batch)], time.perf_counter()
      images = [sources.read_image(src) for src, _, _ in chunk]
      if restorer.tile:
        outs = [restorer.tiled(images[0], chunk[0][2])]
      else:
        outs = restorer.restore(np.stack(images), [n for _, _, n in chunk])
      for (src, dst, name), out in zip(chunk, outs):
        dst.parent.mkdir(parents=True, exist_ok=True)
        write_png(dst, out)
        rows.append(dict(input=str(src), output=str(dst), adapter=name, size=shape[:2]))
      logging.info("%d image(s) of %dx%d through %s: %.2f s", len(chunk), shape[1], shape[0],
                   ", ".join(sorted({n for _, _, n in chunk})), time.perf_counter() - began)
  return rows


def run(checkpoint: str, adapters: Mapping[str, str], input_dir: str, output_dir: str, *,
        route: str = "folder", batch: int = 8, tile: int = 0, overlap: int = 0,
        dtype: str = "float32", tlc: str = "auto", train_size: int = 0, context: int = -1,
        overwrite: bool = False) -> list[dict[str, Any]]:
  """sr_jax.infer's bank mode as a function (see the module docstring)."""
  if batch < 1:
    raise UsageError(f"--batch must be >= 1, got {batch}.")
  todo = routes(input_dir, output_dir, list(adapters), route, overwrite=overwrite)
  bank = adapter_bank.load(checkpoint, adapters, dtype=dtype)
  multiple = restore_io.downsampling(bank.model)
  size = train_size or tlc_inference.train_size_of(checkpoint, next(iter(adapters.values())))
  bank, local = with_tlc(bank, tlc, size, context, multiple)
  tiling.check_tiling(tile, overlap, multiple, local.context)
  logging.info("Adapter bank: %d adapters (rank up to %d) on %s; %d image(s); %s.",
               len(bank.names), bank.rank, checkpoint, len(todo), local.describe())
  restorer = BankRestorer(bank, tile=tile, overlap=overlap, context=local.context,
                          multiple=multiple, scale=restore_io.output_scale(bank.model, bank.base))
  return restore_routes(restorer, todo, batch, restore_io.write_png)
