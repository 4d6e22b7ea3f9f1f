r"""Restores image files with a saved model, optionally through a task adapter, tile by tile.

  python -m sr_jax.infer --checkpoint W/base/export/params --adapter W/export/adapters \
      --input noisy/ --output restored/ --tile 256 --overlap 32

`--checkpoint` is a parameter directory (a run's export/params, or a converted checkpoint); the
model is rebuilt from the architecture recorded in its meta.json, so no config is needed.
`--adapter` applies a LoRA adapter (a run's export/adapters) after checking that it fits the base.
`--input` is an image file or a folder (every image in it, sorted by name); `--output` is a .png
file (or an existing folder) for one image, a folder (created) for a folder, holding the same file
names with .png. The output is checked before any work (writable; existing files are replaced only
with `--overwrite`). An image that cannot be read or restored is named and skipped; every other one
is written, and the command then lists the failures and exits 1. Outputs are clamped to [0, 1] and
rounded to 8 bits exactly as the PSNR/SSIM protocol rounds them
(sr_jax.quality.metrics.to_uint8_grid), so metrics on the files equal metrics on the arrays.
`--tile N` bounds memory for large images (see sr_jax.inference.tiling: exact away from tile
borders for models with a finite receptive field). `--tile 0` runs whole images; many tiles show a
progress bar (log lines when stderr is not a terminal).

NAFNet and Restormer gather statistics over their whole input; `--tlc auto` (the default) makes
them local at test time (TLC, windows of 1.5x the training crop, sr_jax.inference.tlc_inference)
when the training crop size is known: from `--train_size`, else the checkpoint's meta.json. Tiles
then also see `--context` pixels around them (-1: half the window), so they join without seams.
`--tlc off` restores with the trained global statistics.

Diffusion checkpoints are sampled instead (whole images, no tiles). SR3: `--sampler
ddim|ddpm|dpmpp_2m`, `--steps` (0 = every step of the noise schedule), `--eta`, `--seed`. A
run's export records its noise schedule and scale; a converted checkpoint of the common
implementation needs `--scale` (its schedule is that implementation's: linear 1e-6 -> 1e-2
over 2000 steps). ResShift (an export whose meta.json holds a 'resshift' record) always runs
its recorded T-step chain (15 by default) from the upsampled input; only `--seed` applies. An
adapter tuned on part of either chain (t_min/t_max) samples the other steps with the base, as
the run evaluated it.

The library entry points are `load_model` and `restore_images` / `restore_files`.
"""

from __future__ import annotations

import os
import pathlib
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
from absl import logging

from sr_jax import objectives
from sr_jax.data import sources
from sr_jax.diffusion.restorers import ResShiftRestorer, diffusion_restorer  # noqa: F401
from sr_jax.inference import bank_infer, tlc_inference
from sr_jax.inference import restorer as restorer_lib
from sr_jax.inference.restore_io import check_overwrite, folder_outputs, write_png
from sr_jax.inference.restorer import Restorer
from sr_jax.util import console, errors, runtime
from sr_jax.util.errors import UsageError

PyTree = Any


class ImageErrors(ValueError):
  """Some images could not be restored; every other one was written. Lists each failure."""

  def __init__(self, failures: Sequence[tuple[pathlib.Path, str]], total: int):
    self.failures = list(failures)
    listing = "\n  ".join(f"{src}: {reason}" for src, reason in self.failures)
    super().__init__(f"{len(self.failures)} of {total} image(s) could not be restored (every "
                     f"other one was written):\n  {listing}")


def restore_files(restorer: Restorer, pairs: Sequence[tuple[pathlib.Path, pathlib.Path]]
                  ) -> list[dict[str, Any]]:
  """Restores each (input, output .png) pair, logging one line per image; returns the lines.

  An image that cannot be read, restored or written is named in the log and skipped; once
  every other image is written, ImageErrors lists them all.
  """
  report, failures = [], []
  for i, (src, dst) in enumerate(pairs):
    start = time.perf_counter()
    try:
      image = sources.read_image(src)  # ValueError naming the file when it cannot be decoded.
      out = restorer(image)
      write_png(dst, out)
    except Exception as e:  # pylint: disable=broad-except
      reason = str(e) if isinstance(e, (ValueError, OSError)) else f"{type(e).__name__}: {e}"
      logging.error("[%d/%d] %s: skipped: %s", i + 1, len(pairs), src.name, reason)
      failures.append((src, reason))
      continue
    h, w = image.shape[:2]
    row = dict(input=str(src), output=str(dst), size=(h, w), output_size=out.shape[:2],
               tiles=restorer.num_tiles(h, w), seconds=time.perf_counter() - start)
    logging.info("[%d/%d] %s: %dx%d -> %dx%d (WxH), %d tile(s), %.2f s -> %s", i + 1,
                 len(pairs), src.name, w, h, out.shape[1], out.shape[0], row["tiles"],
                 row["seconds"], dst)
    report.append(row)
  if failures:
    raise ImageErrors(failures, len(pairs))
  return report


def check_writable(directory: pathlib.Path, flag: str = "--output") -> None:
  """Creates `directory` if needed and writes (then deletes) a file there; one-line UsageError
  when either fails, before any model is loaded or image restored."""
  try:
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".sr_jax_write_test"):
      pass
  except OSError as e:
    raise UsageError(f"Cannot write to {flag} {directory}: {e.strerror or e}.") from e


def restore_images(params: PyTree, model: nn.Module, paths: Sequence[str | os.PathLike],
                   out_dir: str | os.PathLike, *, tile: int = 0,
                   overlap: int = 0) -> list[dict[str, Any]]:
  """Restores image files into `out_dir` (created) as <stem>.png, replacing files of the same
  name; see restore_files."""
  out_dir = pathlib.Path(out_dir)
  check_writable(out_dir)
  pairs = folder_outputs([pathlib.Path(p) for p in paths], out_dir)
  return restore_files(Restorer(model, params, tile, overlap), pairs)


def plan_outputs(input_path: str, output_path: str, *,
                 overwrite: bool = True) -> list[tuple[pathlib.Path, pathlib.Path]]:
  """The CLI's (input, output) pairs for --input/--output; creates the output folder and checks
  that it is writable (and, without `overwrite`, that no output exists yet)."""
  src, dst = pathlib.Path(input_path).expanduser(), pathlib.Path(output_path).expanduser()
  if not src.exists():
    raise UsageError(f"--input {src} does not exist.")
  if src.is_dir():
    if dst.exists() and not dst.is_dir():
      raise UsageError(f"--output {dst} is a file; a folder --input needs a folder --output.")
    if not dst.exists() and dst.suffix.lower() in sources.IMAGE_EXTENSIONS:
      raise UsageError(f"--output {dst} looks like an image file; a folder --input needs a "
                       "folder --output.")
    paths = sources.list_image_files(src)
    check_writable(dst)
    return folder_outputs(paths, dst, overwrite=overwrite)
  if dst.is_dir():
    check_writable(dst)
    return folder_outputs([src], dst, overwrite=overwrite)
  if dst.suffix.lower() != ".png":
    raise UsageError(f"--output {dst} must be a .png file (or an existing folder) for a "
                     "single --input image.")
  if dst.exists() and dst.resolve() == src.resolve():
    raise UsageError(f"--output {dst} is the --input; choose another file.")
  check_writable(dst.parent)
  check_overwrite([dst], overwrite)
  return [(src, dst)]


def run(checkpoint: str, adapter: str | None, input_path: str, output_path: str, *,
        tile: int = 0, overlap: int = 0, dtype: str = "float32", scale: int = 0,
        sampling: dict[str, Any] | None = None, tlc: str = "auto", train_size: int = 0,
        context: int = -1, overwrite: bool = False) -> list[dict[str, Any]]:
  """The whole CLI as a function: check the paths, load, restore every input, write PNGs.

  The outputs are checked first (writable; existing ones only replaced with `overwrite`), so
  a bad --output costs no model loading.
  """
  pairs = plan_outputs(input_path, output_path, overwrite=overwrite)
  options = restorer_lib.RestoreOptions(tile=tile, overlap=overlap, dtype=dtype, scale=scale,
                                        sampling=dict(sampling or {}), tlc=tlc,
                                        train_size=train_size, context=context)
  spec = objectives.for_export(checkpoint)
  restorer = spec.restorer(checkpoint, adapter, options)
  logging.info("Restoring %d image(s) with %s%s, %s.", len(pairs), checkpoint,
               f" + adapter {adapter}" if adapter else "",
               f"tiles {tile} overlapping by {overlap}" if tile > 0 else "whole images")
  return restore_files(restorer, pairs)


def main(argv: Sequence[str]) -> None:
  """Command-line entry (flags in _define_flags); user errors exit 2 with one line; images
  that could not be restored are listed at the end (every other one is written), exit 1."""
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  args = flags.FLAGS
  logging.set_verbosity(logging.INFO)
  runtime.quiet_libraries()  # Orbax's INFO lines would drown the progress.
  console.short_console()
  try:
    named = bank_infer.named_adapters(args.adapter or [])
    if named:  # Several adapters: one bank, images routed to them.
      bank_infer.run(args.checkpoint, named, args.input, args.output, route=args.route,
                     batch=args.batch, tile=args.tile, overlap=args.overlap, dtype=args.dtype,
                     tlc=args.tlc, train_size=args.train_size, context=args.context,
                     overwrite=args.overwrite)
      return
    run(args.checkpoint, (args.adapter or [None])[0], args.input, args.output, tile=args.tile,
        overlap=args.overlap, dtype=args.dtype, scale=args.scale,
        sampling=dict(sampler=args.sampler, steps=args.steps, eta=args.eta, seed=args.seed),
        tlc=args.tlc, train_size=args.train_size, context=args.context,
        overwrite=args.overwrite)
  except ImageErrors as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  except (UsageError, FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def _define_flags() -> None:
  """Command-line flags, defined only when run as a program (other modules import this one)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("checkpoint", None, "Parameter directory (export/params or converted).")
  flags.DEFINE_multi_string("adapter", None, "Adapter directory (a run's export/adapters); "
                            "repeated as NAME=DIR, an adapter bank (see --route).")
  flags.DEFINE_string("route", "folder", "With several adapters: 'folder' (each image's "
                      "sub-folder of --input names its adapter), a CSV of 'file,adapter', or "
                      "one adapter's NAME for every image.")
  flags.DEFINE_integer("batch", 8, "With several adapters: images of equal size restored "
                       "together (across adapters).")
  flags.DEFINE_string("input", None, "Image file, or folder of images.")
  flags.DEFINE_string("output", None, "PNG file (one input) or folder (created).")
  flags.DEFINE_bool("overwrite", False, "Replace output files that already exist.")
  flags.DEFINE_integer("tile", 0, "Tile size in input pixels; 0 = whole images.")
  flags.DEFINE_integer("overlap", 32, "Pixels shared by neighbouring tiles (< tile / 2).")
  flags.DEFINE_string("dtype", "float32", "Compute dtype: float32, bfloat16 or float16.")
  flags.DEFINE_enum("tlc", "auto", tlc_inference.MODES, "NAFNet/Restormer: local statistics "
                    "for large inputs (TLC); auto = on when the training crop size is known.")
  flags.DEFINE_integer("train_size", 0, "Training crop size for TLC; 0 = from meta.json.")
  flags.DEFINE_integer("context", -1, "Pixels each tile also sees around it; -1 = half the "
                       "TLC window (0 without TLC).")
  flags.DEFINE_string("sampler", "ddim", "SR3 only: 'ddim', 'ddpm' or 'dpmpp_2m' "
                      "(DPM-Solver++(2M): ~20 steps).")
  flags.DEFINE_integer("steps", 50, "SR3 only: sampling steps (0 = the whole noise schedule).")
  flags.DEFINE_float("eta", 0.0, "SR3 only: DDIM stochasticity (0 = deterministic).")
  flags.DEFINE_integer("seed", 0, "SR3 only: sampling seed.")
  flags.DEFINE_integer("scale", 0, "SR3 only: upscaling factor when the checkpoint records none.")
  flags.mark_flags_as_required(["checkpoint", "input", "output"])


def command() -> None:
  """The `sr-jax-infer` console command (the same as python -m sr_jax.infer)."""
  from absl import app  # pylint: disable=g-import-not-at-top
  _define_flags()
  app.run(errors.guarded(main))


if __name__ == "__main__":
  command()
