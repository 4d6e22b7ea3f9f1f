r"""Does fine-tuning forget? Scores a fine-tuned run and its base on the new and original domains.

  python -m sr_jax.forgetting --config configs/sr3_finetune.py:demo,lora --workdir W \
      [--original embedded|DIR] [--new DIR]

`--config` and `--workdir` are the fine-tuning run's own (any job: SR3, LoRA ESRGAN,
NAFNet...). The run's latest checkpoint and its base (config.base.checkpoint, or the one
pre-trained in W/base) are evaluated with the run's protocol on the new domain (the run's
held-out set, or the clean images in --new) and on the original domain (--original, else
config.eval.general_set, else the embedded photos). The full table goes to W/results.md as a
training run's does; the change of each metric against the base on both domains is printed
and written to W/forgetting.md: a transfer that gains on the new domain and loses nothing on
the original shows ~0 there.
"""

from __future__ import annotations

import os
from typing import Any

from absl import app, flags, logging
from ml_collections import config_flags

from sr_jax import objectives
from sr_jax.util import console, errors, runtime

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """Command-line flags, defined only when run as a program (tests import this module)."""
  flags.DEFINE_string("workdir", None, "The fine-tuning run's workdir.")
  flags.DEFINE_string("original", "", "Original domain: 'embedded' (the photos) or a folder of "
                      "clean images; default config.eval.general_set, else 'embedded'.")
  flags.DEFINE_string("new", "", "New domain: a folder of clean images; default the run's "
                      "held-out set.")
  config_flags.DEFINE_config_file("config", None, "The fine-tuning run's config.",
                                  lock_config=True)
  flags.mark_flags_as_required(["config"])


# (metric, label, higher is better)
METRICS = (("psnr", "PSNR (dB)", True), ("ssim", "SSIM", True),
           ("lpips_alex", "LPIPS-alex", False), ("lpips_vgg", "LPIPS-vgg", False),
           ("consistency", "consistency (1e-5)", False))


def split_rows(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
  """{'base', 'tuned', 'base @ original', 'tuned @ original'} from a results table's rows."""
  general = [k for k in rows if k.endswith("@ general set")]
  tuned = [k for k in rows if k not in general and k not in ("base", "bicubic",
                                                              "degraded input")]
  if "base" not in rows or len(tuned) != 1 or len(general) != 2:
    raise ValueError(f"The run's results have rows {list(rows)}; forgetting needs a base "
                     "(config.base.checkpoint or base.num_steps), one tuned model and the "
                     "original-domain rows (config.eval.general_set or --original).")
  return {"base": rows["base"], "tuned": rows[tuned[0]], "name": tuned[0],
          "base @ original": rows["base @ general set"],
          "tuned @ original": next(rows[k] for k in general if not k.startswith("base"))}


def change_table(rows: dict[str, dict[str, Any]]) -> str:
  """Markdown: each metric on both domains for the base and the tuned model, and the change."""
  parts = split_rows(rows)
  lines = [f"Forgetting of {parts['name']} against its base", "",
           "| metric | new: base | new: tuned | new: change | original: base | "
           "original: tuned | original: change |", "|---|---|---|---|---|---|---|"]
  for key, label, higher in METRICS:
    if key not in parts["base"]:
      continue
    values = [parts[k][key] for k in ("base", "tuned", "base @ original", "tuned @ original")]
    arrow = "higher is better" if higher else "lower is better"
    lines.append(f"| {label} ({arrow}) | {values[0]:.4f} | {values[1]:.4f} | "
                 f"{values[1] - values[0]:+.4f} | {values[2]:.4f} | {values[3]:.4f} | "
                 f"{values[3] - values[2]:+.4f} |")
  return "\n".join(lines)


def evaluate_config(config, original: str, new: str):
  """The run's config in eval mode with the two domains set."""
  config.mode = "eval"
  config.eval.general_set = original or config.eval.general_set or "embedded"
  if new:
    config.data.source, config.data.eval_dir = "folder", new
  return config


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from sr_jax.config import config_cli  # pylint: disable=g-import-not-at-top
  if config_cli.shown(sections=objectives.sections()):
    return
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required: the fine-tuning run to score.")
  runtime.setup()
  console.log_to_file(FLAGS.workdir)
  from sr_jax.jobs import train  # pylint: disable=g-import-not-at-top
  config = evaluate_config(FLAGS.config, FLAGS.original, FLAGS.new)
  logging.info("Scoring %s and its base on the new domain and on %s.", FLAGS.workdir,
               config.eval.general_set)
  rows = train.train_and_evaluate(config, FLAGS.workdir)
  table = change_table(rows)
  print(table, flush=True)
  path = os.path.join(os.path.abspath(FLAGS.workdir), "forgetting.md")
  with open(path, "w") as f:
    f.write(table + "\n")


if __name__ == "__main__":
  from sr_jax.config import config_cli  # pylint: disable=g-import-not-at-top
  _define_flags()
  config_cli.define_show_config()
  app.run(errors.guarded(main), flags_parser=config_cli.parse_flags)
