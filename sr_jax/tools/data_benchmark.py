r"""Input-pipeline throughput: PROD patches per second by number of grain workers.

  python -m sr_jax.tools.data_benchmark                       # PROD, 256x256, 0/1/2 workers
  python -m sr_jax.tools.data_benchmark --step_steps 2        # also time the NAFNet-w32 step

Runs the job config's real training pipeline (`pipeline.make_train_dataset`: source, crop,
degradation chain, augmentation, batching, `mp_prefetch` workers) and counts the patches it
delivers in `--seconds` after warming up (worker start-up excluded). With `--step_steps`, the
config's own NAFNet train step is timed on a random batch of the same crop size, giving the
patches/second the model consumes; the ratio says how far the pipeline is from starving it.
"""

from __future__ import annotations

import time
from typing import Any

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from sr_jax import objectives
from sr_jax.config import config_cli, config_files
from sr_jax.data import pipeline
from sr_jax.util import errors, paths, runtime

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", str(config_files.config_path("prod_nafnet")),
                                "Job config whose data "
                                "pipeline is measured.", lock_config=True)
flags.DEFINE_integer("crop", 256, "Training crop size.")
flags.DEFINE_integer("batch", 8, "Patches per batch.")
flags.DEFINE_list("workers", ["0", "1", "2"], "grain worker counts to measure.")
flags.DEFINE_float("seconds", 20.0, "Measuring window per worker count (after warm-up).")
flags.DEFINE_integer("step_steps", 0, "If > 0, also time this many train steps of the "
                     "config's model at --step_batch (0 = skip).")
flags.DEFINE_string("output", "", "Also write the markdown report to this file.")
flags.DEFINE_integer("step_batch", 4, "Batch of the timed train step.")
config_cli.define_show_config()


def data_config(workers: int) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(FLAGS.config.data.to_dict())
  c.crop_size, c.num_workers = FLAGS.crop, workers
  return c


def patches_per_second(workers: int) -> dict[str, Any]:
  """Throughput of the pipeline with `workers` grain processes (0 = in-process)."""
  ds = pipeline.make_train_dataset(data_config(workers), seed=0, batch_size=FLAGS.batch)
  it = iter(ds)
  t0 = time.perf_counter()
  for _ in range(2):  # Worker start-up and the first batches are not steady state.
    next(it)
  warmup = time.perf_counter() - t0
  count, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < FLAGS.seconds:
    count += len(next(it)["gt"])
  elapsed = time.perf_counter() - t0
  del it, ds
  return dict(workers=workers, rate=count / elapsed, patches=count, warmup=warmup)


def step_rate() -> tuple[float, str]:
  """Patches per second the config's train step consumes at --crop, and a description."""
  from sr_jax.tools import step_timing  # pylint: disable=g-import-not-at-top
  c = ml_collections.ConfigDict(FLAGS.config.to_dict())
  c.data.crop_size, c.batch_size, c.lora.enabled = FLAGS.crop, FLAGS.step_batch, False
  result = step_timing.measure_step(c, FLAGS.step_steps)
  return (1000 * FLAGS.step_batch / result["ms"],
          f"{c.model.name} {c.model.preset} full training step, batch {FLAGS.step_batch}: "
          f"{result['ms']:.0f} ms")


def main(argv: list[str]) -> None:
  del argv
  if config_cli.shown(sections=objectives.sections()):
    return
  runtime.setup()
  pipeline.allow_absl_flags_outside_app()
  deg = FLAGS.config.data.degradation
  rows = [patches_per_second(int(w)) for w in FLAGS.workers]
  consumed, step_note = step_rate() if FLAGS.step_steps > 0 else (None, "")
  lines = [f"Data pipeline: source={FLAGS.config.data.source}, degradation={deg.kind} "
           f"({', '.join(deg.ops) if deg.kind in ('prod', 'fixed', 'single', 'chain') else ''}), "
           f"{FLAGS.crop}x{FLAGS.crop} crops, batch {FLAGS.batch}", "",
           "| workers | patches/s | ms/patch | warm-up s |" +
           (" x step consumption |" if consumed else ""),
           "|---|---|---|---|" + ("---|" if consumed else "")]
  for r in rows:
    line = (f"| {r['workers']} | {r['rate']:.1f} | {1000 / r['rate']:.1f} | "
            f"{r['warmup']:.1f} |")
    lines.append(line + (f" {r['rate'] / consumed:.1f}x |" if consumed else ""))
  if consumed:
    lines.append(f"\nThe {step_note} consumes {consumed:.2f} patches/s.")
  print("\n".join(lines), flush=True)
  if FLAGS.output:
    paths.write_text(FLAGS.output, "\n".join(lines) + "\n")


if __name__ == "__main__":
  app.run(errors.guarded(main), flags_parser=config_cli.parse_flags)
