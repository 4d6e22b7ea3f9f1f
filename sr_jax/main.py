"""Command-line entry: `python -m sr_jax.main --config configs/<job>.py[:variant] --workdir DIR`.

Kept short on purpose; the run itself is `sr_jax.train.train_and_evaluate(config, workdir)`
(or, for CoLoRA configs, `sr_jax.colora_job.run(config, workdir)`), importable from a notebook. Override any config value with `--config.a.b=value`; the config is
locked, so a misspelt key is an error listing the valid ones.

Multi-host: run the same command on every host with `--distributed` (see sr_jax/distributed.py
and launch/).
"""

from absl import app, flags, logging
from ml_collections import config_flags

from sr_jax import distributed, runtime

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard logs and results.")
config_flags.DEFINE_config_file("config", None, "Job config file, e.g. configs/lora_nafnet.py:demo.",
                                lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])
distributed.define_flags()


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  distributed.initialize_from_flags()  # Before anything touches a device.
  runtime.setup()
  # Imported after runtime.setup(): TensorFlow must not see accelerators.
  from sr_jax import colora_job, train  # pylint: disable=g-import-not-at-top
  logging.info("Config:\n%s", FLAGS.config)
  if FLAGS.config.colora.enabled:
    colora_job.run(FLAGS.config, FLAGS.workdir)
  else:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
