r"""A LoRA job's learning-rate multiplier, chosen on a validation split instead of assumed.

  python -m sr_jax.tools.lora_rate --config configs/lora_nafnet.py:demo --workdir W \
      --multipliers 1,3,10 --val_images 2

LoRA factors start at zero (B = 0) and train a small update, so the rate that suits them is
rarely the rate that suits full fine-tuning; the adaptation study (python -m sr_jax.study)
found its LoRA arms best at 1-3.3x the full fine-tuning rate. A job trains its adapters at
optimizer.learning_rate x lora.learning_rate_multiplier. This tool runs the job once per
candidate multiplier with the last `--val_images` training images held out
(data.val_images) and scored instead of the test images (data.eval_split='val'), chooses the
multiplier of the best validation score (PSNR; LPIPS-alex, lower, for a GAN objective that
scores it) and writes W/choice.json and W/choice.md. The test images take no part. A job that
pre-trains its base does so once, in the first candidate's workdir; the others start from that
export. Each candidate is an ordinary run in W/m<multiplier>, so the tool resumes. Then run the
job itself with --config.lora.learning_rate_multiplier=<chosen> (the reported numbers).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from sr_jax import objectives
from sr_jax.config import config_cli
from sr_jax.util import errors, jsonfile, layout, paths, runtime

FLAGS = flags.FLAGS
Trainer = Callable[[ml_collections.ConfigDict, str], dict[str, dict[str, Any]]]


def _define_flags() -> None:
  flags.DEFINE_string("workdir", None, "Directory of the candidates' runs and the choice.")
  flags.DEFINE_string("multipliers", "1,3,10", "Candidate lora.learning_rate_multiplier values.")
  flags.DEFINE_integer("val_images", 2, "Training images held out to choose on.")
  config_flags.DEFINE_config_file("config", None, "A LoRA job's config (lora.enabled or a "
                                  "CoLoRA job).", lock_config=True)
  flags.mark_flags_as_required(["config", "workdir"])


def parse_multipliers(text: str) -> list[float]:
  """'1,3,10' -> [1.0, 3.0, 10.0]; an empty, non-numeric or non-positive entry names the flag."""
  try:
    values = [float(v) for v in text.split(",") if v.strip()]
  except ValueError as e:
    raise ValueError(f"--multipliers={text!r}: give positive numbers, e.g. 1,3,10.") from e
  if not values or min(values) <= 0:
    raise ValueError(f"--multipliers={text!r}: give positive numbers, e.g. 1,3,10.")
  return values


def candidate_config(config: ml_collections.ConfigDict, multiplier: float, val_images: int,
                     base_checkpoint: str = "") -> ml_collections.ConfigDict:
  """The job at one multiplier, scored on its validation split (and from a given base)."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.lora.learning_rate_multiplier = multiplier
  c.data.val_images, c.data.eval_split = val_images, "val"
  c.eval.general_set = ""  # The choice reads the validation split alone.
  if base_checkpoint:
    c.base.checkpoint = base_checkpoint
  return c


def choose(config: ml_collections.ConfigDict, workdir: str, multipliers: Sequence[float],
           val_images: int, trainer: Trainer) -> dict[str, Any]:
  """Runs every candidate and returns (and writes) the choice record."""
  # After runtime.setup(): the study's choice imports the trainer (TensorFlow).
  from sr_jax.study import select  # pylint: disable=g-import-not-at-top
  if not (config.lora.enabled or config.colora.enabled):
    raise ValueError("The config trains no adapters (lora.enabled and colora.enabled are "
                     "False): the multiplier applies to LoRA jobs only.")
  if val_images < 1:
    raise ValueError(f"--val_images={val_images}: hold out at least one training image.")
  workdir = paths.absolute(workdir)
  base, rows = "", {}
  for i, m in enumerate(multipliers):
    run_dir = os.path.join(workdir, f"m{m:g}")
    rows[m] = select.tuned_row(trainer(candidate_config(config, m, val_images, base), run_dir))
    logging.info("lora.learning_rate_multiplier %g: validation PSNR %.3f dB (%d of %d).", m,
                 rows[m]["psnr"], i + 1, len(multipliers))
    pretrained = layout.Workdir(run_dir).base.export_params
    if not base and not config.base.checkpoint and paths.exists(pretrained):
      base = pretrained
  metric = select.objective_metric(config.objective, next(iter(rows.values())))
  chosen = select.choose_by(rows, metric)
  record = {"job": config.job, "learning_rate": float(config.optimizer.learning_rate),
            "val_images": val_images, "metric": metric, "chosen": chosen,
            "validation": {f"{m:g}": {k: float(r[k]) for k in ("psnr", "ssim", "lpips_alex")
                                      if k in r} for m, r in rows.items()}}
  jsonfile.write(os.path.join(workdir, "choice.json"), record)
  paths.write_text(os.path.join(workdir, "choice.md"), markdown(record) + "\n")
  return record


def markdown(record: dict[str, Any]) -> str:
  """The choice as a table: each multiplier's LoRA rate and validation scores."""
  keys = [k for k in ("psnr", "ssim", "lpips_alex")
          if all(k in v for v in record["validation"].values())]
  lines = [f"`{record['job']}`: LoRA rate = {record['learning_rate']:g} x multiplier; "
           f"{record['val_images']} training image(s) held out for validation; chosen by "
           f"{record['metric'].lstrip('-')} ({'lower' if record['metric'][0] == '-' else 'higher'}"
           " is better).", "",
           "| multiplier | LoRA rate | " + " | ".join(f"validation {k}" for k in keys)
           + " | chosen |", "|---|---|" + "---|" * len(keys) + "---|"]
  # In increasing order, whatever order they ran in (a list widened later appends its new
  # candidates, so the first run's pre-trained base serves them all).
  for m, scores in sorted(record["validation"].items(), key=lambda item: float(item[0])):
    cells = [f"{scores[k]:.4f}" if k != "psnr" else f"{scores[k]:.2f}" for k in keys]
    mark = "yes" if float(m) == record["chosen"] else ""
    lines.append(f"| {m} | {float(m) * record['learning_rate']:g} | " + " | ".join(cells)
                 + f" | {mark} |")
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if config_cli.shown(sections=objectives.sections()):
    return
  multipliers = parse_multipliers(FLAGS.multipliers)
  runtime.setup()
  from sr_jax.jobs import colora_job, train  # pylint: disable=g-import-not-at-top
  trainer = colora_job.run if FLAGS.config.colora.enabled else train.train_and_evaluate
  record = choose(FLAGS.config, FLAGS.workdir, multipliers, FLAGS.val_images, trainer)
  print(markdown(record), flush=True)


if __name__ == "__main__":
  _define_flags()
  config_cli.define_show_config()
  app.run(errors.guarded(main), flags_parser=config_cli.parse_flags)
