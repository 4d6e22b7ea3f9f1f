"""The run stage every job ends in: build one run, train it (or restore it), evaluate it.

`run_stage(config, workdir, base)` builds the run (sr_jax.train.run_setup), trains it from its
latest checkpoint (sr_jax.train.loop) and exports it, or with config.mode='eval' restores a
checkpoint; then scores it on held-out images and writes the results table
(sr_jax.train.report). A base pre-training stage is a run stage too, in workdir/base.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
from etils import epath

from sr_jax.train import checkpoint, loop, report, resume, run_setup
from sr_jax.util import console, layout, paths

PyTree = Any


def has_checkpoint(workdir: str) -> bool:
  """Whether workdir/checkpoints holds at least one saved step."""
  directory = layout.Workdir(workdir).checkpoints
  return paths.exists(directory) and any(
      p.name.isdigit() for p in epath.Path(directory).iterdir())


def write_config(config: ml_collections.ConfigDict, workdir: str, writer) -> None:
  """The whole config, to workdir/config.yaml and TensorBoard's text tab (the console gets
  sr_jax.config.config_doc.summary)."""
  text = str(config)
  if jax.process_index() == 0:
    paths.makedirs(workdir)
    paths.write_text(layout.Workdir(workdir).config_yaml, text)
  writer.write_texts(0, {"config": f"```\n{text}\n```"})


def run_stage(config: ml_collections.ConfigDict, workdir: str, base: PyTree | None, *,
              label: str | None = None, title: str = "final results",
              echo: bool = True) -> dict[str, Any]:
  """Builds, trains (or restores) and evaluates one run in `workdir`; returns its rows.

  `label` names the tuned model's row, `title` the printed table; `echo=False` prints none.
  """
  # A host copy: restored arrays may already carry the mesh's sharding, and the training state
  # built from them is donated to the step, which would delete the base evaluated at the end.
  base = None if base is None else jax.device_get(base)
  run = run_setup.build_run(config, workdir, base)
  writer = console.tensorboard_writer(workdir)
  write_config(config, workdir, writer)
  mgr = checkpoint.manager(workdir, config.keep_checkpoints)
  trainable, pct = run_setup.report_trainable(run)
  try:
    if config.mode == "train":
      writer.write_hparams(scalar_hparams(config))
      loop.train(run, mgr, writer)
      loop.export(run)
    else:
      resume.restore_for_eval(run, mgr)
  finally:
    mgr.close()  # Finishes queued saves of good states even when training stopped on an error.
  rows = report.evaluate_run(run, base, writer, trainable, pct, label)
  report.write_table(workdir, rows, writer, config, title=title, echo=echo)
  writer.flush()
  return rows


def scalar_hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config's scalar values, flattened to 'a.b.c' keys (TensorBoard's hparams)."""
  flat = {}

  def walk(prefix, node):
    for k, v in node.items():
      key = f"{prefix}{k}"
      if isinstance(v, (dict, ml_collections.ConfigDict)):
        walk(key + ".", v)
      elif isinstance(v, (int, float, str, bool)):
        flat[key] = v
  walk("", config)
  return flat
