"""ESRGAN network interpolation: blend a PSNR-oriented and a GAN-trained generator.

  python -m sr_jax.inference.interpolate --psnr W/base/export/params --gan W/export/params \
      --alpha 0.8 --dst W/interp_0.8
  python -m sr_jax.inference.interpolate --psnr P --gan G --alpha 0,0.2,0.4,0.6,0.8,1 --dst W/interp

Every tensor becomes theta = (1 - alpha) * theta_PSNR + alpha * theta_GAN (Wang et al. 2018,
section 3.4): alpha 0 is the PSNR model (smooth, high PSNR), 1 the GAN model (sharp, with
artefacts), values between trade one for the other without retraining. Both inputs must be
`save_params` directories (a run's export/params; a two-stage GAN job's first stage is its
base/export/params) of the same architecture. Several alphas write one sub-directory each
(DST/alpha_0.80). Each result is a parameter directory that `sr_jax.infer --checkpoint` and
`config.base.checkpoint` accept.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import argparse

import jax
import numpy as np

from sr_jax.models import registry
from sr_jax.util import exports

PyTree = Any

def interpolate(psnr: PyTree, gan: PyTree, alpha: float) -> PyTree:
  """(1 - alpha) * psnr + alpha * gan for every tensor; the trees must have the same layout."""
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"alpha={alpha} must lie in [0, 1] (0: the PSNR model, 1: the GAN model).")
  if jax.tree.structure(psnr) != jax.tree.structure(gan):
    raise ValueError("The PSNR and GAN parameter trees have different layouts; both must be "
                     "the same architecture.")

  def blend(a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    if a.shape != b.shape:
      raise ValueError(f"Tensor shapes differ ({a.shape} vs {b.shape}); both generators must "
                       "be the same architecture.")
    return ((1.0 - alpha) * a + alpha * b).astype(np.float32)

  return jax.tree.map(blend, psnr, gan)


def parse_alphas(text: str) -> list[float]:
  try:
    alphas = [float(a) for a in text.split(",") if a.strip()]
  except ValueError as e:
    raise ValueError(f"--alpha {text!r} must be a number or comma-separated numbers.") from e
  if not alphas:
    raise ValueError("--alpha is empty; give e.g. 0.8 or 0,0.5,1.")
  return alphas


def run(psnr_dir: str, gan_dir: str, alphas: Sequence[float], dst: str,
        overwrite: bool = False) -> list[str]:
  """Writes one interpolated parameter directory per alpha; returns their paths."""
  psnr, psnr_meta = exports.load_params(psnr_dir)
  gan, gan_meta = exports.load_params(gan_dir)
  registry.check_architecture(psnr_meta.get("model", {}), gan_meta.get("model", {}),
                              f"--psnr {psnr_dir} (against --gan {gan_dir})")
  outputs = [dst] if len(alphas) == 1 else [os.path.join(dst, f"alpha_{a:.2f}") for a in alphas]
  for out in outputs:
    if os.path.exists(out) and os.listdir(out) and not overwrite:
      raise FileExistsError(f"{out} already exists; choose another --dst or pass --overwrite.")
  for alpha, out in zip(alphas, outputs):
    meta = {"model": gan_meta["model"], "job": "interpolate", "step": 0, "alpha": alpha,
            "psnr_source": os.path.abspath(psnr_dir), "gan_source": os.path.abspath(gan_dir)}
    exports.save_params(out, interpolate(psnr, gan, alpha), meta)
  return outputs


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m sr_jax.inference.interpolate",
                                   description="ESRGAN network interpolation.")
  parser.add_argument("--psnr", required=True,
                      help="Parameter directory of the PSNR-oriented generator.")
  parser.add_argument("--gan", required=True,
                      help="Parameter directory of the GAN-trained generator.")
  parser.add_argument("--alpha", default="0.8",
                      help="The GAN model's weight in [0, 1], or a comma-separated list.")
  parser.add_argument("--dst", required=True,
                      help="Directory to write (one sub-directory per alpha if several).")
  parser.add_argument("--overwrite", action="store_true", help="Replace existing outputs.")
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  args = _parse_args(argv)
  try:
    outputs = run(args.psnr, args.gan, parse_alphas(args.alpha), args.dst, args.overwrite)
  except (FileNotFoundError, FileExistsError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for out in outputs:
    print(f"Wrote {out}; try: python -m sr_jax.infer --checkpoint {out} --input IN --output OUT")
  return 0


if __name__ == "__main__":
  sys.exit(main())
