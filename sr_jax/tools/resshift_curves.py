r"""Where a ResShift model stands against bicubic, timestep by timestep, along its sampled chain.

  python -m sr_jax.tools.resshift_curves --config configs/resshift.py:demo \
      --checkpoint W1/export/params,W2/export/params --output curves.md

For each ResShift export (or adapter-applied checkpoint) and each timestep t of its chain, the
held-out images of `--config` (data section: source, eval_max_size, eval_crops, degradation)
are put through the forward process (x_t = x0 + eta_t (y - x0) + kappa sqrt(eta_t) z, a fixed
draw per t) and the network's one-step x0 prediction is scored with the config's eval
protocol (PSNR / SSIM on the Y channel with crop = scale, LPIPS), and so is the prediction at
step t of the sampled chain (the export's T steps from x_T, as evaluation draws them; its
t = 1 prediction is the chain's output). Beside them: bicubic (y itself) and the mean of
`--samples` chains.

Why these rows: the prediction at t = T sees no more than y (x_T carries 0.1% of x0 under noise
of std kappa), so it estimates the posterior mean E[x0 | y], the best any method can do in
PSNR; a sample of the posterior, which is what a diffusion sampler draws, has on average
twice the posterior mean's squared error (E|s - x0|^2 = E|m - x0|^2 + Var, and Var = E|m -
x0|^2 for a perfect sampler), so it scores up to 3 dB below it. Whether a sampler can beat
bicubic in PSNR at all is read off the t = T row; the mean of several chains shows how much of
the gap is the sampler's variance.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from sr_jax import objectives
from sr_jax.config import config_cli
from sr_jax.util import errors, paths, runtime

FLAGS = flags.FLAGS
_METRICS = (("psnr", "PSNR", "{:.2f}"), ("lpips_alex", "LPIPS", "{:.3f}"))


def _define_flags() -> None:
  """Command-line flags, defined only when run as a program (tests import this module)."""
  flags.DEFINE_string("checkpoint", None, "Comma-separated ResShift exports (W/export/params).")
  flags.DEFINE_integer("samples", 4, "Chains averaged for the 'mean of samples' row (0: skip).")
  flags.DEFINE_integer("seed", 0, "Seed of the forward draws and the sampling noise.")
  flags.DEFINE_string("output", "", "Also write the markdown table here.")
  flags.DEFINE_string("picture", "", "Also write a PNG of held-out images, one per row: "
                      "bicubic | the first checkpoint's sample | the HR image.")
  flags.DEFINE_list("picture_images", ["0", "4", "8"], "Held-out image indices in --picture.")
  config_flags.DEFINE_config_file("config", None, "Config whose data/eval sections to use.",
                                  lock_config=True)
  flags.mark_flags_as_required(["config"])


@functools.lru_cache(maxsize=4)
def _one_step_network(restorer):
  """restorer's x0 prediction from a forward draw, jitted once for every t (t is an argument)."""
  from sr_jax.diffusion import resshift  # pylint: disable=g-import-not-at-top
  sr, schedule = restorer.sr, restorer.sr.schedule

  @jax.jit
  def predict(params, lq, gt, key, t):
    y = sr.condition(lq)
    x0 = gt * 2.0 - 1.0
    steps = jnp.full(x0.shape[:1], t, jnp.int32)
    x_t = resshift.q_sample(schedule, x0, y, steps, jax.random.normal(key, x0.shape))
    x_in, level = resshift.network_input(schedule, x_t, steps)
    x0_hat = sr.sampling_network(params, y, x_in, level, steps)
    return (jnp.clip(x0_hat, -1.0, 1.0) + 1.0) / 2.0

  return predict


def one_step_predictions(restorer, eval_set: Sequence[dict[str, Any]], t: int,
                         seed: int = 0) -> list[np.ndarray]:
  """x0_hat in [0, 1] for each image from a forward draw of x_t (image i: fold_in(seed, i)
  of key(t)), the network called as sampling calls it."""
  predict = _one_step_network(restorer)
  base_key = jax.random.fold_in(jax.random.PRNGKey(seed), t)
  return [np.asarray(predict(restorer.params, jnp.asarray(item["lq"], jnp.float32)[None],
                             jnp.asarray(item["gt"], jnp.float32)[None],
                             jax.random.fold_in(base_key, i), jnp.int32(t))[0])
          for i, item in enumerate(eval_set)]


def chain_predictions(restorer, eval_set: Sequence[dict[str, Any]], seed: int = 0
                      ) -> dict[int, list[np.ndarray]]:
  """t -> x0_hat in [0, 1] for each image at step t of the sampled chain: the steps of
  resshift.sample one by one (the same noise as evaluation's draw with `seed`), recording what
  the network predicts from the chain's own states rather than from forward draws."""
  from sr_jax.diffusion import resshift  # pylint: disable=g-import-not-at-top
  sr = restorer.sr
  ts, table = resshift.step_table(sr.schedule)

  @jax.jit
  def run(params, lq):
    y = sr.condition(lq)
    keys = resshift.image_keys(jax.random.PRNGKey(seed), y.shape[0])
    x = resshift.prior_sample(sr.schedule, y, keys)
    predictions = []
    for k, t in enumerate(ts):
      c = resshift.ShiftStep(*(v[k] for v in table))
      steps = jnp.full(y.shape[:1], t, jnp.int32)
      x0_hat = sr.sampling_network(params, y, x * c.input_scale,
                                   jnp.full(y.shape[:1], c.level), steps)
      predictions.append((jnp.clip(x0_hat, -1.0, 1.0) + 1.0) / 2.0)
      x = resshift.reverse_step(x, x0_hat, c, resshift.image_noise(keys, t, x.shape),
                                sr.clip_x0)
    return predictions

  found: dict[int, list[np.ndarray]] = {int(t): [] for t in ts}
  for item in eval_set:
    for t, x0_hat in zip(ts, run(restorer.params, jnp.asarray(item["lq"], jnp.float32)[None])):
      found[int(t)].append(np.asarray(x0_hat[0]))
  return found


def mean_of_chains(restorer, eval_set: Sequence[dict[str, Any]], seeds: Sequence[int]
                   ) -> list[np.ndarray]:
  """Per image, the mean of the chains sampled with each of `seeds`."""
  apply = jax.jit(lambda params, lq, seed: restorer.sr.sample(params, lq, seed=seed))
  return [np.mean([np.asarray(apply(restorer.params, jnp.asarray(item["lq"], jnp.float32)[None],
                                    jnp.int32(seed))[0]) for seed in seeds], axis=0)
          for item in eval_set]


def picture(eval_set: Sequence[dict[str, Any]], outputs: Sequence[np.ndarray],
            indices: Sequence[int], zoom: int = 2, gap: int = 4) -> np.ndarray:
  """uint8 rows of bicubic | output | HR for the images `indices`, each shown `zoom`x with
  nearest-neighbour pixels and white gaps."""
  from sr_jax.data import resize  # pylint: disable=g-import-not-at-top
  rows = []
  for i in indices:
    item = eval_set[int(i)]
    bicubic = resize.imresize(np.asarray(item["lq"], np.float64), item["gt"].shape[0] //
                              item["lq"].shape[0])
    cells = [np.clip(np.asarray(x, np.float64), 0, 1) for x in (bicubic, outputs[int(i)],
                                                                   item["gt"])]
    cells = [np.kron(c, np.ones((zoom, zoom, 1))) for c in cells]
    white = np.ones((cells[0].shape[0], gap, 3))
    rows.append(np.concatenate([cells[0], white, cells[1], white, cells[2]], axis=1))
    rows.append(np.ones((gap, rows[-1].shape[1], 3)))
  return np.round(np.concatenate(rows[:-1], axis=0) * 255).astype(np.uint8)


def curves(checkpoints: Sequence[str], config, samples: int = 4, seed: int = 0,
           picture_path: str = "", picture_images: Sequence[int] = (0,)
           ) -> tuple[list[str], list[dict[str, Any]], int]:
  """(checkpoint labels, rows, number of held-out images): per row a 'label' and, per
  checkpoint i, the scores 'i:psnr', 'i:lpips_alex' (and 'i:chain_...' along the chain)."""
  from sr_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from sr_jax.diffusion import restorers  # pylint: disable=g-import-not-at-top
  from sr_jax.tools import sr3_sampling  # pylint: disable=g-import-not-at-top
  from sr_jax.quality import evaluate  # pylint: disable=g-import-not-at-top
  eval_set = pipeline.make_eval_set(config.data, seed=config.seed)
  scale = int(config.data.degradation.scale)
  options = evaluate.options(config.eval, scale)
  score = lambda outputs: sr3_sampling.score(outputs, eval_set, options)  # pylint: disable=unnecessary-lambda-assignment
  bicubic = score(None)
  rows: dict[str, dict[str, Any]] = {}
  for i, checkpoint in enumerate(checkpoints):
    restorer = restorers.diffusion_restorer(checkpoint, None, seed=seed)
    if not isinstance(restorer, restorers.ResShiftRestorer):
      raise errors.UsageError(f"{checkpoint} is not a ResShift export (its meta.json has no "
                              "'resshift' record); this tool reads ResShift's chain.")
    if restorer.scale != scale:
      raise errors.UsageError(f"{checkpoint} upscales by {restorer.scale} but --config's "
                              f"data.degradation.scale is {scale}.")
    schedule = restorer.sr.schedule
    along = chain_predictions(restorer, eval_set, seed)
    for t in range(schedule.num_steps, 0, -1):
      row = rows.setdefault(f"t={t}", {"label": f"t = {t}"})
      found = score(one_step_predictions(restorer, eval_set, t, seed))
      row.update({f"{i}:{k}": found[k] for k, _, _ in _METRICS if k in found})
      found = score(along[t])
      row.update({f"{i}:chain_{k}": found[k] for k, _, _ in _METRICS if k in found})
      logging.info("%s t=%d: PSNR %.2f dB from a forward draw, %.2f dB along the chain.",
                   checkpoint, t, row[f"{i}:psnr"], found["psnr"])
    output = along[1]  # The chain's last prediction is its output (the posterior at t = 1).
    if picture_path and not i:
      from sr_jax.util import plots  # pylint: disable=g-import-not-at-top
      plots.save_png(picture_path, picture(eval_set, output, picture_images))
    chain = rows.setdefault("chain", {"label": f"the sampled chain ({schedule.num_steps} "
                                               "steps, evaluation's draw)"})
    chain.update({f"{i}:{k}": v for k, v in score(output).items()})
    if samples > 1:
      mean = mean_of_chains(restorer, eval_set, range(seed, seed + samples))
      averaged = rows.setdefault("mean", {"label": f"mean of {samples} sampled chains"})
      averaged.update({f"{i}:{k}": v for k, v in score(mean).items()})
  out = [dict({"label": "bicubic (y)"}, **{f"{i}:{k}": v for i in range(len(checkpoints))
                                           for k, v in bicubic.items()})]
  return short_labels(checkpoints), out + list(rows.values()), len(eval_set)


def short_labels(checkpoints: Sequence[str]) -> list[str]:
  """The checkpoints without their common leading folders (a lone one: its run's folder)."""
  parts = [os.path.normpath(c).split(os.sep) for c in checkpoints]
  common = len(os.path.commonprefix(parts)) if len(parts) > 1 else len(parts[0]) - 3
  return [os.path.join(*p[max(common, 0):]) for p in parts]


def table(labels: Sequence[str], rows: Sequence[dict[str, Any]], num_images: int) -> str:
  """Markdown: per checkpoint, PSNR and LPIPS of x0_hat at every t from a forward draw of x_t
  ('draw') and from the sampled chain's own x_t ('chain'), then bicubic, the chain's output and
  the mean of chains."""
  lines = [f"{num_images} held-out image(s). Rows t: the network's x0 prediction at step t of "
           "the chain, from a forward draw of x_t given the HR image ('draw', what training "
           "sees) and from the sampled chain's own x_t ('chain')."]
  metrics = [(k, name, fmt) for k, name, fmt in _METRICS if any(f"0:{k}" in r for r in rows)]
  for i, label in enumerate(labels):
    header = ["row"] + [f"{name} ({where})" for _, name, _ in metrics
                        for where in ("draw", "chain")]
    lines += ["", f"`{label}`:", "", "| " + " | ".join(header) + " |",
              "|" + "---|" * len(header)]
    for row in rows:
      cells = [row["label"]]
      for key, _, fmt in metrics:
        for prefix in ("", "chain_"):
          found = row.get(f"{i}:{prefix}{key}")
          cells.append("-" if found is None else fmt.format(found))
      lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if config_cli.shown(sections=objectives.sections()):
    return
  if not FLAGS.checkpoint:
    raise app.UsageError("--checkpoint is required: ResShift exports (W/export/params).")
  runtime.setup()
  checkpoints = [c for c in FLAGS.checkpoint.split(",") if c]
  text = table(*curves(checkpoints, FLAGS.config, FLAGS.samples, FLAGS.seed, FLAGS.picture,
                       [int(i) for i in FLAGS.picture_images]))
  print(text, flush=True)
  if FLAGS.output:
    paths.write_text(FLAGS.output, text + "\n")


if __name__ == "__main__":
  _define_flags()
  config_cli.define_show_config()
  app.run(errors.guarded(main), flags_parser=config_cli.parse_flags)
