"""Command-line entry: `python -m sr_jax.main --config configs/<job>.py[:variant] --workdir DIR`.

Kept short on purpose; the run itself is `sr_jax.jobs.train.train_and_evaluate(config, workdir)`
(or, for CoLoRA configs, `sr_jax.jobs.colora_job.run(config, workdir)`), importable from a notebook.
Override any config value with `--config.a.b=value` (tuples as `a,b,c`); a misspelt key is a short
error naming the closest valid key (sr_jax.config.config_cli). `--show_config` lists every key of
the config with its value and meaning, and exits.

Multi-host: run the same command on every host with `--distributed` (see sr_jax/util/distributed.py
and launch/).
"""

from absl import app, flags, logging
from ml_collections import config_flags

from sr_jax import objectives
from sr_jax.config import config_cli, config_doc
from sr_jax.util import console, distributed, errors, runtime

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard logs and results.")
config_cli.define_show_config()
config_flags.DEFINE_config_file("config", None, "Job config file, e.g. configs/lora_nafnet.py:demo.",
                                lock_config=True)
flags.mark_flags_as_required(["config"])
distributed.define_flags()


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if config_cli.shown(sections=objectives.sections()):
    return
  if not FLAGS.workdir:
    config_cli.fail("--workdir is required: the directory for checkpoints, logs and results "
                    "(re-running with the same one resumes).")
  distributed.initialize_from_flags()  # Before anything touches a device.
  runtime.setup()
  console.log_to_file(FLAGS.workdir)
  # Imported after runtime.setup(): TensorFlow must not see accelerators.
  from sr_jax.jobs import colora_job, train  # pylint: disable=g-import-not-at-top
  logging.info("Config (the whole of it: %s/config.yaml; every key: --show_config):\n%s",
               FLAGS.workdir.rstrip("/"), config_doc.summary(FLAGS.config))
  if FLAGS.config.colora.enabled:
    colora_job.run(FLAGS.config, FLAGS.workdir)
  else:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


def command() -> None:
  """The `sr-jax` console command (the same as python -m sr_jax.main)."""
  app.run(errors.guarded(main), flags_parser=config_cli.parse_flags)


if __name__ == "__main__":
  command()
