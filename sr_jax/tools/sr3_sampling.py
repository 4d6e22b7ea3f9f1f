r"""SR3 samplers side by side: time per image and quality of each on a config's held-out images.

  python -m sr_jax.tools.sr3_sampling --checkpoint W/export/params \
      --config configs/sr3.py:demo --samplers ddim:50,ddpm:0 --output sampling.md

Each `kind:steps` entry (steps 0 = every step of the noise schedule, i.e. the paper's ancestral
sampler over all T steps) super-resolves the held-out images of `--config` (its data section:
source, eval_max_size, degradation) with the checkpoint (and `--adapter`), from the same seed.
Each image shape is compiled before its timed run; the reported time is the mean wall time of
sampling one image. Scores follow the config's eval section (PSNR /
SSIM protocol, LPIPS networks) plus SR3's consistency.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from sr_jax import runtime

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """Command-line flags, defined only when run as a program (tests import this module)."""
  flags.DEFINE_string("checkpoint", None, "SR3 parameter directory (export/params or converted).")
  flags.DEFINE_string("adapter", None, "Optional adapter directory (a run's export/adapters).")
  flags.DEFINE_string("samplers", "ddim:50,ddpm:0", "Comma-separated kind:steps entries.")
  flags.DEFINE_float("eta", 0.0, "DDIM stochasticity.")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")
  flags.DEFINE_string("output", "", "Also write the markdown table here.")
  config_flags.DEFINE_config_file("config", None, "Config whose data/eval sections to use.",
                                  lock_config=True)
  flags.mark_flags_as_required(["checkpoint", "config"])


_COLUMNS = (("psnr", "PSNR (dB)", "{:.3f}"), ("ssim", "SSIM", "{:.4f}"),
            ("lpips_alex", "LPIPS-alex", "{:.4f}"), ("lpips_vgg", "LPIPS-vgg", "{:.4f}"),
            ("consistency", "consistency (1e-5)", "{:.2f}"))


def parse_samplers(text: str) -> list[tuple[str, int]]:
  """'ddim:50,ddpm:0' -> [('ddim', 50), ('ddpm', 0)]; a malformed entry names the flag."""
  out = []
  for entry in (e.strip() for e in text.split(",") if e.strip()):
    kind, _, steps = entry.partition(":")
    if kind not in ("ddim", "ddpm") or not steps.isdigit():
      raise ValueError(f"--samplers entry {entry!r} must be 'ddim:STEPS' or 'ddpm:STEPS' "
                       "(STEPS 0 = the whole schedule).")
    out.append((kind, int(steps)))
  if not out:
    raise ValueError("--samplers lists no sampler.")
  return out


def sample_timed(restorer, eval_set) -> tuple[list[np.ndarray], float]:
  """Each image's sample and the mean seconds per image (compilation excluded: each shape
  is compiled ahead of its timed run)."""
  apply = jax.jit(restorer.sr3.sample)
  compiled, outputs, seconds = {}, [], []
  for item in eval_set:
    lq = jnp.asarray(item["lq"], jnp.float32)[None]
    if lq.shape not in compiled:
      compiled[lq.shape] = apply.lower(restorer.params, lq).compile()
    start = time.perf_counter()
    out = jax.block_until_ready(compiled[lq.shape](restorer.params, lq))
    seconds.append(time.perf_counter() - start)
    outputs.append(np.asarray(out[0]))
  return outputs, float(np.mean(seconds))


def compare(checkpoint: str, adapter: str | None, config, entries: Sequence[tuple[str, int]],
            eta: float = 0.0, seed: int = 0) -> list[dict[str, Any]]:
  """One row per sampler: its label, seconds per image and mean scores."""
  from sr_jax import evaluate, infer  # pylint: disable=g-import-not-at-top
  from sr_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  eval_set = pipeline.make_eval_set(config.data, seed=config.seed)
  rows = []
  for kind, steps in entries:
    restorer = infer.diffusion_restorer(checkpoint, adapter, scale=0, sampler=kind,
                                        steps=steps, eta=eta, seed=seed)
    options = evaluate.options(config.eval, restorer.scale)
    options["consistency_scale"] = restorer.scale
    outputs, seconds = sample_timed(restorer, eval_set)
    # Scored as a baseline row is: the outputs stand in for the inputs of an identity model.
    scored = [dict(item, lq=out, lr=item["lq"]) for item, out in zip(eval_set, outputs)]
    result = evaluate.evaluate(lambda params, lq: lq, None, scored, **options)
    label = restorer.sr3.sampler_label
    logging.info("%s: %.2f s per image, PSNR %.3f dB.", label, seconds, result["psnr"])
    rows.append(dict({k: v for k, v in result.items() if isinstance(v, float)},
                     sampler=label, seconds=seconds, steps=restorer.steps))
  return rows


def table(rows: Sequence[dict[str, Any]], num_images: int) -> str:
  columns = [c for c in _COLUMNS if any(c[0] in r for r in rows)]
  header = ["sampler", "s / image"] + [c[1] for c in columns]
  lines = [f"SR3 samplers on {num_images} held-out image(s)", "",
           "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for r in rows:
    cells = [r["sampler"], f"{r['seconds']:.2f}"]
    cells += [fmt.format(r[k]) if k in r else "-" for k, _, fmt in columns]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  runtime.setup()
  from sr_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  config = FLAGS.config
  rows = compare(FLAGS.checkpoint, FLAGS.adapter, config, parse_samplers(FLAGS.samplers),
                 FLAGS.eta, FLAGS.seed)
  text = table(rows, len(pipeline.make_eval_set(config.data, seed=config.seed)))
  print(text, flush=True)
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
