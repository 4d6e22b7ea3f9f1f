"""The results of a run: evaluations on held-out images, one row each, and the table.

`evaluate_run(run, base)` scores, in this order: the baseline (the degraded input itself, or
for super-resolution its MATLAB-bicubic upscaling), the base alone (no adapters, no tuned
leaves) when the run started from one, and the tuned model, with the run's trainable share,
step time and memory and export size; then, with config.eval.general_set, the base and the
tuned model on that second set (what a domain transfer forgets). `write_table` writes the rows
to workdir/results.md (and the rows to workdir/results.json), stdout and TensorBoard.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections

from sr_jax.data import pipeline
from sr_jax.quality import evaluate
from sr_jax.train.run_setup import Run
from sr_jax.util import console, exports, jsonfile, layout, paths, sharding

PyTree = Any
Row = dict[str, Any]


def eval_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return evaluate.options(config.eval, int(config.data.degradation.scale))


def tuned_params(run: Run) -> PyTree:
  """The parameters the objective evaluates (a GAN generator's EMA when it keeps one)."""
  return sharding.gather(run.objective.eval_params(run.state, run.frozen), run.mesh)


def counter(what: str, eval_set: list[dict[str, Any]]) -> console.Counter | None:
  """Per-image progress for evaluations long enough to need it (16 images or more)."""
  return console.Counter(what, "images", len(eval_set)) if len(eval_set) >= 16 else None


def evaluate_tuned(run: Run, writer, step: int) -> dict[str, Any]:
  """Evaluates the current parameters on the held-out set and writes metrics and images."""
  config, eval_set = run.config, run.eval_set
  result = evaluate.evaluate(run.objective.apply, tuned_params(run), eval_set,
                             **eval_options(config), progress=counter("evaluating", eval_set))
  writer.write_scalars(step, {f"eval/{k}": v for k, v in result.items()
                              if isinstance(v, float)})
  for i, (item, out) in enumerate(zip(eval_set, result["outputs"])):
    if i >= config.num_image_summaries:
      break
    grid = evaluate.image_grid(item["lq"], out, item["gt"])
    writer.write_images(step, {f"eval/{item['name']}": grid[None]})
  return result


def row(result: dict[str, Any], trainable: int = 0, pct: float = 0.0) -> Row:
  """One results-table row from an evaluation."""
  values = {k: v for k, v in result.items() if isinstance(v, float)}
  return dict(values, trainable=trainable, trainable_pct=pct, per_image=result["per_image"])


def evaluate_input(run: Run) -> dict[str, Row]:
  """The baseline row: the degraded input itself, or for SR its MATLAB-bicubic upscaling."""
  scale = int(run.config.data.degradation.scale)
  eval_set, name = run.eval_set, "degraded input"
  if scale > 1:
    eval_set, name = evaluate.bicubic_set(eval_set, scale), "bicubic"
  if any(item["lq"].shape != item["gt"].shape for item in eval_set):
    return {}
  return {name: row(evaluate.evaluate(lambda params, lq: lq, None, eval_set,
                                      **eval_options(run.config)))}


def evaluate_base(run: Run, base: PyTree, eval_set: list[dict[str, Any]] | None = None) -> Row:
  """The base alone (no adapters, no tuned leaves) on `eval_set` (default: the task's)."""
  plain = run.objective.without_adapters()
  return row(evaluate.evaluate(plain.apply, {"base": base, "lora": {}},
                               run.eval_set if eval_set is None else eval_set,
                               **eval_options(run.config)))


def general_eval_set(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
  """config.eval.general_set's images, degraded as the task's ('embedded': the photos)."""
  data = ml_collections.ConfigDict(config.data.to_dict())
  if config.eval.general_set == "embedded":
    data.source, data.embedded_set = "embedded", "photos"
  else:
    data.source, data.eval_dir = "folder", config.eval.general_set
  return pipeline.make_eval_set(data, seed=config.seed)


def evaluate_general(run: Run, base: PyTree | None, arm: str, trainable: int,
                     pct: float) -> dict[str, Row]:
  """Rows for the base and the tuned model on the general set (what a transfer forgets)."""
  if not run.config.eval.general_set:
    return {}
  eval_set = general_eval_set(run.config)
  rows = {}
  if base is not None:
    rows["base @ general set"] = evaluate_base(run, base, eval_set)
  rows[f"{arm} @ general set"] = row(evaluate.evaluate(
      run.objective.apply, tuned_params(run), eval_set, **eval_options(run.config)),
      trainable, pct)
  return rows


def run_costs(run: Run) -> dict[str, float]:
  """Step time and memory (this run's, or timing.json's) and the size of what it exports."""
  costs = {}
  path = layout.Workdir(run.workdir).timing
  if paths.exists(path):
    costs = jsonfile.read(path)
  costs.update(run.timing)
  run_dir = layout.Workdir(run.workdir)
  exported = run_dir.export_adapters if run.plan else run_dir.export_params
  if paths.exists(exported):
    costs["export_mb"] = exports.directory_size(exported) / 2**20
  return costs


def arm_name(run: Run, started_from_base: bool, label: str | None = None) -> str:
  """The tuned model's row name: `label` when the job names its arms (CoLoRA's 'uniform LoRA'),
  else the objective's label of 'lora', 'fine-tuned' or 'trained'."""
  if label:
    return label
  default = "lora" if run.plan else ("fine-tuned" if started_from_base else "trained")
  return run.objective.arm_label(default)


def evaluate_run(run: Run, base: PyTree | None, writer, trainable: int,
                 pct: float, label: str | None = None) -> dict[str, Row]:
  """Every row of the run's table (see the module docstring); `label` names the tuned row."""
  arm = arm_name(run, base is not None, label)
  with console.phase(f"evaluating {arm} on {len(run.eval_set)} held-out image(s)"):
    rows = evaluate_input(run)
    if base is not None:
      rows["base"] = evaluate_base(run, base)
    rows[arm] = row(evaluate_tuned(run, writer, int(run.state.step)), trainable, pct)
    rows[arm].update(run_costs(run))
    rows.update(evaluate_general(run, base, arm, trainable, pct))
  return rows


def write_table(workdir: str, rows: dict[str, Row], writer,
                config: ml_collections.ConfigDict | None = None, *, title: str = "results",
                echo: bool = True) -> None:
  """Writes the results table to workdir/results.md and TensorBoard, and with `echo` prints it
  under `title` (a job whose final table repeats a stage's rows prints only the final one)."""
  opts = eval_options(config) if config is not None else {"crop_border": 0, "y_channel": False}
  table = evaluate.results_table(rows, evaluate.protocol(opts["crop_border"], opts["y_channel"]))
  if jax.process_index() == 0:
    paths.write_text(layout.Workdir(workdir).results, table + "\n")
    # The same rows for programs (sr_jax.reproduce renders published tables from them).
    jsonfile.write(layout.Workdir(workdir).results_json,
                   {arm: {k: v for k, v in r.items() if k != "per_image"}
                    for arm, r in rows.items()}, default=float)
    if echo:
      print(f"\n=== {title} ({workdir}) ===\n{table}\n", flush=True)
  writer.write_texts(0, {"results": table})
