r"""Diffusion samplers side by side: time per image and quality on a config's held-out images.

  python -m sr_jax.tools.sr3_sampling --config configs/resshift.py:demo \
      --checkpoint W_SR3/export/params,W_RESSHIFT/export/params \
      --samplers ddpm:0,ddim:50,dpmpp_2m:20 --output sampling.md

`--checkpoint` lists one or more diffusion parameter directories (exports or converted
checkpoints), of either family: each SR3 checkpoint is sampled with every `--samplers` entry
(`kind:steps` or `kind:steps:spacing`, kind ddpm, ddim or dpmpp_2m, steps 0 = every step of
the noise schedule, spacing uniform or logsnr); each ResShift checkpoint with its recorded
chain (its entry is 'ResShift T steps'). All rows super-resolve the held-out images of
`--config` (its data section: source, eval_max_size, degradation) from the same seed and are
scored with its eval section (PSNR / SSIM protocol, LPIPS networks) plus SR3's consistency;
the first row is MATLAB bicubic. Each image shape is compiled before its timed run; the time
is the mean wall time of sampling one image. `--adapter` applies to a single checkpoint.
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

from sr_jax import objectives
from sr_jax.config import config_cli
from sr_jax.util import errors, runtime

FLAGS = flags.FLAGS
KINDS = ("ddpm", "ddim", "dpmpp_2m")
SPACINGS = ("uniform", "logsnr")


def _define_flags() -> None:
  """Command-line flags, defined only when run as a program (tests import this module)."""
  flags.DEFINE_string("checkpoint", None, "Comma-separated diffusion parameter directories "
                      "(SR3 or ResShift exports, or converted SR3 checkpoints).")
  flags.DEFINE_string("adapter", None, "Optional adapter directory (one checkpoint only).")
  flags.DEFINE_string("samplers", "ddim:50,ddpm:0", "SR3's samplers: comma-separated "
                      "kind:steps[:spacing] entries, kind in ddpm, ddim, dpmpp_2m.")
  flags.DEFINE_float("eta", 0.0, "DDIM stochasticity.")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")
  flags.DEFINE_string("output", "", "Also write the markdown table here.")
  config_flags.DEFINE_config_file("config", None, "Config whose data/eval sections to use.",
                                  lock_config=True)
  flags.mark_flags_as_required(["config"])


_COLUMNS = (("psnr", "PSNR (dB)", "{:.3f}"), ("ssim", "SSIM", "{:.4f}"),
            ("lpips_alex", "LPIPS-alex", "{:.4f}"), ("lpips_vgg", "LPIPS-vgg", "{:.4f}"),
            ("consistency", "consistency (1e-5)", "{:.2f}"))


def parse_samplers(text: str) -> list[tuple[str, int, str]]:
  """'ddim:50,dpmpp_2m:20:uniform' -> [('ddim', 50, 'auto'), ('dpmpp_2m', 20, 'uniform')];
  a malformed entry names the flag."""
  out = []
  for entry in (e.strip() for e in text.split(",") if e.strip()):
    kind, _, rest = entry.partition(":")
    steps, _, spacing = rest.partition(":")
    if kind not in KINDS or not steps.isdigit() or spacing not in SPACINGS + ("",):
      raise ValueError(f"--samplers entry {entry!r} must be 'KIND:STEPS' or "
                       f"'KIND:STEPS:SPACING' with KIND in {KINDS} (STEPS 0 = the whole "
                       f"schedule) and SPACING in {SPACINGS}.")
    out.append((kind, int(steps), spacing or "auto"))
  if not out:
    raise ValueError("--samplers lists no sampler.")
  return out


def sample_timed(restorer, eval_set) -> tuple[list[np.ndarray], float]:
  """Each image's sample and the mean seconds per image (compilation excluded: each shape
  is compiled ahead of its timed run)."""
  apply = jax.jit(restorer.sample)
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


def score(outputs: Sequence[np.ndarray] | None, eval_set, options) -> dict[str, Any]:
  """Scores outputs (None: the bicubic baseline) as a baseline row is scored."""
  from sr_jax.quality import evaluate  # pylint: disable=g-import-not-at-top
  if outputs is None:
    scored = evaluate.bicubic_set(eval_set, options["consistency_scale"])
  else:  # The outputs stand in for the inputs of an identity model.
    scored = [dict(item, lq=out, lr=item["lq"]) for item, out in zip(eval_set, outputs)]
  result = evaluate.evaluate(lambda params, lq: lq, None, scored, **options)
  return {k: v for k, v in result.items() if isinstance(v, float)}


def _restorers(checkpoints: Sequence[str], adapter: str | None,
               entries: Sequence[tuple[str, int, str]], eta: float, seed: int):
  """(model family, restorer) for each row: an SR3 checkpoint per sampler, ResShift once."""
  from sr_jax import infer  # pylint: disable=g-import-not-at-top
  for checkpoint in checkpoints:
    first = infer.diffusion_restorer(checkpoint, adapter, sampler=entries[0][0],
                                     steps=entries[0][1], eta=eta, seed=seed,
                                     spacing=entries[0][2])
    if isinstance(first, infer.ResShiftRestorer):
      yield "ResShift", first
      continue
    yield "SR3", first
    for kind, steps, spacing in entries[1:]:
      yield "SR3", infer.diffusion_restorer(checkpoint, adapter, sampler=kind, steps=steps,
                                            eta=eta, seed=seed, spacing=spacing)


def compare(checkpoints: str | Sequence[str], adapter: str | None, config,
            entries: Sequence[tuple[str, int, str]], eta: float = 0.0,
            seed: int = 0) -> list[dict[str, Any]]:
  """The bicubic row, then one row per (checkpoint, sampler): model, sampler, steps, seconds
  per image and mean scores."""
  from sr_jax.quality import evaluate  # pylint: disable=g-import-not-at-top
  from sr_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  if isinstance(checkpoints, str):
    checkpoints = [c for c in checkpoints.split(",") if c]
  if adapter and len(checkpoints) != 1:
    raise ValueError("--adapter applies to one --checkpoint; list one checkpoint with it.")
  eval_set = pipeline.make_eval_set(config.data, seed=config.seed)
  scale = int(config.data.degradation.scale)
  options = dict(evaluate.options(config.eval, scale), consistency_scale=scale)
  rows = [dict(score(None, eval_set, options), model="-", sampler="bicubic", steps=0,
               seconds=float("nan"), images=len(eval_set))]
  for family, restorer in _restorers(checkpoints, adapter, entries, eta, seed):
    if restorer.scale != scale:
      raise ValueError(f"A checkpoint upscales by {restorer.scale} but --config's "
                       f"data.degradation.scale is {scale}; compare models of one scale.")
    outputs, seconds = sample_timed(restorer, eval_set)
    scores = score(outputs, eval_set, options)
    logging.info("%s %s: %.2f s per image, PSNR %.3f dB.", family, restorer.label, seconds,
                 scores["psnr"])
    rows.append(dict(scores, model=family, sampler=restorer.label, seconds=seconds,
                     steps=restorer.steps))
  return rows


def fewest_matching(rows: Sequence[dict[str, Any]], psnr_tol: float = 0.3,
                    lpips_tol: float = 0.02, prefix: str = "DPM-Solver++(2M)"
                    ) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
  """(the reference, the fewest-step `prefix` row within psnr_tol dB PSNR and lpips_tol
  LPIPS-alex of it, or None), the reference being the SR3 DDPM row with the most steps; None
  when the rows hold no such reference or no `prefix` row. Without LPIPS only PSNR counts."""
  ddpm = [r for r in rows if r["model"] == "SR3" and r["sampler"].startswith("DDPM")]
  fast = sorted((r for r in rows if r["model"] == "SR3" and r["sampler"].startswith(prefix)),
                key=lambda r: r["steps"])
  if not ddpm or not fast:
    return None
  reference = max(ddpm, key=lambda r: r["steps"])
  close = [r for r in fast if reference["psnr"] - r["psnr"] <= psnr_tol and (
      "lpips_alex" not in r or r["lpips_alex"] - reference["lpips_alex"] <= lpips_tol)]
  return reference, (close[0] if close else None)


def verdict(rows: Sequence[dict[str, Any]]) -> str:
  """One sentence: the fewest DPM-Solver++(2M) steps that come within 0.3 dB PSNR and 0.02
  LPIPS-alex of DDPM over its full chain, and the speed-up ('' when not comparable)."""
  found = fewest_matching(rows)
  if found is None:
    return ""
  reference, match = found
  if match is None:
    return (f"No DPM-Solver++(2M) row comes within 0.3 dB PSNR and 0.02 LPIPS-alex of "
            f"{reference['sampler']}.")
  return (f"The fewest DPM-Solver++(2M) steps within 0.3 dB PSNR and 0.02 LPIPS-alex of "
          f"{reference['sampler']}: {match['steps']} ({match['psnr'] - reference['psnr']:+.2f} "
          f"dB), {reference['seconds'] / match['seconds']:.0f}x faster per image.")


def table(rows: Sequence[dict[str, Any]], num_images: int) -> str:
  """The markdown table of compare's rows, with the verdict line when it applies."""
  columns = [c for c in _COLUMNS if any(c[0] in r for r in rows)]
  header = ["model", "sampler", "steps", "s / image"] + [c[1] for c in columns]
  lines = [f"Diffusion samplers on {num_images} held-out image(s)", "",
           "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for r in rows:
    seconds = "-" if np.isnan(r["seconds"]) else f"{r['seconds']:.2f}"
    cells = [r["model"], r["sampler"], str(r["steps"] or "-"), seconds]
    cells += [fmt.format(r[k]) if k in r else "-" for k, _, fmt in columns]
    lines.append("| " + " | ".join(cells) + " |")
  found = verdict(rows)
  return "\n".join(lines + (["", found] if found else []))


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if config_cli.shown(sections=objectives.sections()):
    return
  if not FLAGS.checkpoint:
    raise app.UsageError("--checkpoint is required: the SR3 export to sample (W/export/params).")
  runtime.setup()
  rows = compare(FLAGS.checkpoint, FLAGS.adapter, FLAGS.config, parse_samplers(FLAGS.samplers),
                 FLAGS.eta, FLAGS.seed)
  text = table(rows, rows[0]["images"])
  print(text, flush=True)
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  _define_flags()
  config_cli.define_show_config()
  app.run(errors.guarded(main), flags_parser=config_cli.parse_flags)
