r"""TLC on a large photograph: whole-image against tiled inference, with and without TLC.

  python -m sr_jax.tools.tlc_report --photo Sun_Hays80/abbey_sun_asztnlqhlrvirneh.jpg \
      --run W --workdir /tmp/tlc --output /tmp/tlc.md

`--run` is a CoLoRA job's workdir (its base in W/base/export/params, the adapter in
W/colora/export/adapters). The photo is upscaled 4x with MATLAB's bicubic (a scene at four times
the scale of the ~500-pixel training photos) and hazed once (`sr_jax.data.ops.apply_haze`,
beta 1.2, airlight 0.85, seed 0); then `python -m sr_jax.infer` restores it four ways, each in
its own process so that its wall time and peak memory (the process's maximum resident set) are
its own: whole and in 512-pixel tiles, TLC off and TLC with the window the export chooses.
The report: PSNR/SSIM against the clean photo, the tiles against the whole image of the same
mode (seams), the time and the memory of each.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
from absl import app, flags
from PIL import Image

from sr_jax.data import ops, resize, sources
from sr_jax.quality import metrics
from sr_jax.util import errors, layout, paths, runtime

FLAGS = flags.FLAGS
flags.DEFINE_string("photo", None, "The photograph to upscale, haze and restore.")
flags.DEFINE_string("run", None, "A CoLoRA job's workdir (base and colora adapter exports).")
flags.DEFINE_string("workdir", None, "Folder for the prepared images and the outputs.")
flags.DEFINE_string("output", "", "Also write the markdown report to this file.")
flags.DEFINE_integer("upscale", 4, "Bicubic upscaling of the photo before hazing.")
flags.DEFINE_integer("tile", 512, "Tile size of the tiled rows.")
flags.DEFINE_integer("overlap", 32, "Tile overlap of the tiled rows.")
flags.mark_flags_as_required(["photo", "run", "workdir"])

MODES = (("whole image, as trained (--tlc off)", "whole_off", ["--tlc", "off"]),
         ("tiles, as trained (--tlc off)", "tiles_off", ["--tlc", "off", "--tile"]),
         ("whole image, TLC (window chosen by the export)", "whole_tlc", []),
         ("tiles, TLC (window chosen by the export)", "tiles_tlc", ["--tile"]))


def prepare(photo: str, folder: str, upscale: int) -> tuple[str, np.ndarray]:
  """Writes folder/hazy/<name>.png; returns its path and the clean upscaled photo."""
  clean = resize.imresize(sources.read_image(photo), scale=upscale)
  clean = np.clip(clean, 0.0, 1.0).astype(np.float32)
  hazy = ops.apply_haze(clean, np.random.default_rng(0), beta=1.2, airlight=0.85)
  os.makedirs(os.path.join(folder, "hazy"), exist_ok=True)
  path = os.path.join(folder, "hazy", "photo.png")
  Image.fromarray(np.asarray(metrics.to_uint8_grid(hazy)).astype(np.uint8)).save(path)
  return path, np.asarray(metrics.to_uint8_grid(clean)).astype(np.uint8)


def restore(hazy: str, out: str, extra: list[str]) -> tuple[float, float]:
  """Runs sr_jax.infer in a process of its own; (seconds, peak resident GiB)."""
  run = layout.Workdir(FLAGS.run)
  base, adapter = run.base.export_params, run.sub("colora").export_adapters
  argv = [sys.executable, "-m", "sr_jax.infer", "--checkpoint", base, "--adapter", adapter,
          "--input", hazy, "--output", out, "--overwrite"]
  argv += [a if a != "--tile" else f"--tile={FLAGS.tile}" for a in extra]
  if "--tile" in extra:
    argv.append(f"--overlap={FLAGS.overlap}")
  start = time.perf_counter()
  proc = subprocess.Popen(argv)
  _, status, usage = os.wait4(proc.pid, 0)
  seconds = time.perf_counter() - start
  if os.waitstatus_to_exitcode(status) != 0:
    raise RuntimeError(f"`{' '.join(argv)}` failed; its output is above.")
  return seconds, usage.ru_maxrss / 2**20  # Linux reports KiB.


def _read(path: str) -> np.ndarray:
  return np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8)


def _psnr_ssim(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
  """PSNR / SSIM of two uint8 images (BasicSR protocol, RGB, no crop)."""
  return float(metrics.psnr(a, b)), float(metrics.ssim(a, b))


def report(clean: np.ndarray, rows: dict[str, dict]) -> str:
  lines = ["| inference | tiles vs whole, same mode (PSNR dB) | vs clean (PSNR / SSIM) | "
           "peak memory GiB | time s |", "|---|---|---|---|---|"]
  for label, key, _ in MODES:
    r = rows[key]
    seams = ""
    if key.startswith("tiles"):
      whole = rows[key.replace("tiles", "whole")]["image"]
      seams = f"{_psnr_ssim(r['image'], whole)[0]:.2f}"
    psnr, ssim = _psnr_ssim(r["image"], clean)
    lines.append(f"| {label} | {seams} | {psnr:.2f} / {ssim:.3f} | {r['gib']:.1f} | "
                 f"{r['seconds']:.0f} |")
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  del argv
  runtime.setup()
  hazy, clean = prepare(FLAGS.photo, FLAGS.workdir, FLAGS.upscale)
  rows = {}
  for _, key, extra in MODES:
    out = os.path.join(FLAGS.workdir, key)
    os.makedirs(out, exist_ok=True)  # A folder --output for the one input image.
    seconds, gib = restore(hazy, out, extra)
    rows[key] = {"image": _read(os.path.join(out, "photo.png")), "seconds": seconds, "gib": gib}
  h, w = clean.shape[:2]
  hazy_psnr, hazy_ssim = _psnr_ssim(_read(hazy), clean)
  text = (f"A {w}x{h} photograph ({os.path.basename(FLAGS.photo)} upscaled {FLAGS.upscale}x, "
          f"hazed: PSNR/SSIM {hazy_psnr:.2f} / {hazy_ssim:.3f} against the clean one), tiles "
          f"of {FLAGS.tile} overlapping by {FLAGS.overlap}; PSNR/SSIM on RGB, no border crop.\n\n"
          + report(clean, rows))
  print(text, flush=True)
  if FLAGS.output:
    paths.write_text(FLAGS.output, text + "\n")


if __name__ == "__main__":
  app.run(errors.guarded(main))
