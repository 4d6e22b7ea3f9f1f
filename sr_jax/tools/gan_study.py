"""The measurements behind sr_jax.tools.gan_compare: SRGAN, ESRGAN and MESRGAN forward runtime,
FLOPs, where MESRGAN's time goes, and the held-out quality of trained runs.

MESRGAN (Eriksson and Loef, "Lightweight Super-Resolution") replaces every ESRGAN dense-block
conv with a MobileNetV2 inverted residual block (1x1 expand x6, 3x3 depthwise, 1x1 project),
expecting fewer multiplications. Each function here measures one part of that question; the tool
turns their rows into the report.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sr_jax.adapt import adapters, lora
from sr_jax.config import config_base
from sr_jax.data import pipeline
from sr_jax.models import layers, mesrgan, registry
from sr_jax.quality import evaluate
from sr_jax.tools import step_timing
from sr_jax.util import exports, layout

PyTree = Any

# The MESRGAN report's model names -> registry generators.
GENERATORS = {"srgan": "srresnet", "esrgan": "rrdbnet", "mesrgan": "mesrgan"}
DISPLAY = {"srgan": "SRGAN", "esrgan": "ESRGAN", "mesrgan": "MESRGAN", "bicubic": "bicubic"}
BLOCK_PIECES = ("expand", "depthwise", "project")

# The MESRGAN report, Table 1 (DIV2K-90, x4; forward pass averaged over 100 runs on their GPU, PyTorch).
# The extracted text lists five lines of three numbers under "Batch size 1 2 4 8 16". Read as
# the first three lines being SRGAN, ESRGAN, MESRGAN at batches 1, 2, 4 and the last two lines
# batches 8 and 16 of the three models, every model's time roughly doubles with the batch; the
# other reading (every line a batch size) makes ESRGAN's
# and MESRGAN's times fall from batch 1 to 2 or 4 to 8. Ambiguous either way: reference only.
REPORT_BATCHES = (1, 2, 4, 8, 16)
REPORT_FORWARD_MS = {"srgan": (26, 50, 134, 279, 561), "esrgan": (33, 62, 126, 266, 534),
                   "mesrgan": (155, 299, 596, 1204, 2402)}
REPORT_QUALITY = {"srgan": (25.40, 0.96, 3.57, 13.61), "esrgan": (24.52, 0.95, 3.11, 15.82),
                "mesrgan": (24.39, 0.95, 3.13, 15.86)}  # PSNR, SSIM, PI, RMSE.


def progress(message: str) -> None:
  """A progress line on stderr (the tables go to stdout)."""
  print(f"[gan_compare] {message}", file=sys.stderr, flush=True)



# ------------------------------------------------------------------------------------------
# Runtime.


def model_config(name: str, preset: str, impl: str) -> ml_collections.ConfigDict:
  """The config.model of model `name` (e.g. 'esrgan') at a preset and formulation."""
  return ml_collections.ConfigDict(dict(name=GENERATORS[name], preset=preset, width=0,
                                        dtype="float32", conv_impl=impl))


def random_params(module: nn.Module, input_shape: Sequence[int], seed: int = 0) -> PyTree:
  """Host parameters of the module's shapes: normal kernels of std 1/sqrt(fan_in), zero biases.

  Timing needs shapes, not trained values (no data-dependent control flow); drawing them
  skips compiling `model.init`, which for ESRGAN x4 costs as much as a forward compile.
  """
  x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)["params"]
  rng = np.random.default_rng(seed)

  def draw(path: Any, leaf: Any) -> np.ndarray:
    if jax.tree_util.keystr(path).endswith("['kernel']"):
      fan_in = int(np.prod(leaf.shape[:-1]))
      return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(leaf.dtype)
    return np.zeros(leaf.shape, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def program_text(module: nn.Module, params: PyTree, input_shape: Sequence[int]) -> str:
  """The lowered (pre-optimisation) program of `module.apply`: equal text, equal work."""
  x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
  return jax.jit(module.apply).lower({"params": params}, x).as_text()


def distinct_impls(name: str, preset: str, impls: Sequence[str], lr_size: int,
                   params: PyTree) -> dict[str, str]:
  """Maps each formulation to the first one with an identical program (itself if none)."""
  if len(impls) == 1:
    return {impls[0]: impls[0]}
  texts: dict[str, str] = {}
  out = {}
  for impl in impls:
    module = registry.build_model(model_config(name, preset, impl))
    text = program_text(module, params, (1, lr_size, lr_size, module.input_channels))
    out[impl] = next((k for k, t in texts.items() if t == text), impl)
    texts.setdefault(out[impl], text)
  return out


def measure_model(name: str, preset: str, impl: str, batches: Sequence[int], lr_size: int,
                  repeats: int, params: PyTree) -> list[dict[str, Any]]:
  """One runtime row per batch size for one model, preset and formulation."""
  config = model_config(name, preset, impl)
  scale = step_timing.model_scale(config)
  rows = []
  for batch in batches:
    progress(f"{DISPLAY[name]} {preset} impl={impl} batch {batch}: compiling and timing...")
    r = step_timing.measure_forward(config, batch, lr_size, repeats, params=params)
    rows.append(dict(model=name, preset=preset, impl=impl, batch=batch, lr_size=lr_size,
                     hr_size=lr_size * scale, params=r["params"], gflops=r["gflops"],
                     ms=r["ms"], ms_per_image=r["ms"] / batch, compile_s=r["compile_s"],
                     same_as=None))
    progress(f"  {r['ms']:.1f} ms ({r['ms'] / batch:.1f} ms/image, {r['gflops']:.2f} GFLOP, "
             f"compile {r['compile_s']:.1f} s)")
  return rows


def measure_runtime(presets: dict[str, str], batches: Sequence[int], lr_size: int,
                    repeats: int, impls: Sequence[str], seed: int = 0) -> list[dict[str, Any]]:
  """Runtime rows for every model x formulation x batch; identical programs measured once."""
  rows: list[dict[str, Any]] = []
  for name, preset in presets.items():
    module = registry.build_model(model_config(name, preset, impls[0]))
    params = random_params(module, (1, lr_size, lr_size, module.input_channels), seed)
    same = distinct_impls(name, preset, impls, lr_size, params)
    for impl in impls:
      if same[impl] != impl:
        progress(f"{DISPLAY[name]} impl={impl}: same program as impl={same[impl]}, reused.")
        rows += [dict(r, impl=impl, same_as=same[impl]) for r in rows
                 if r["model"] == name and r["impl"] == same[impl]]
      else:
        rows += measure_model(name, preset, impl, batches, lr_size, repeats, params)
  return rows


def mesrgan_vs_esrgan(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """MESRGAN / ESRGAN time and FLOP ratios per (formulation, batch) where both were run."""
  esrgan = {(r["impl"], r["batch"]): r for r in rows if r["model"] == "esrgan"}
  out = []
  for m in (r for r in rows if r["model"] == "mesrgan"):
    e = esrgan.get((m["impl"], m["batch"]))
    if e:
      out.append(dict(impl=m["impl"], batch=m["batch"], time_ratio=m["ms"] / e["ms"],
                      flop_ratio=m["gflops"] / e["gflops"], params_ratio=m["params"] /
                      e["params"]))
  return out


# ------------------------------------------------------------------------------------------
# Breakdown: one dense block's convs vs the inverted residual blocks replacing them.


def dense_block_layers(preset: str) -> list[tuple[int, int, int]]:
  """(k, cin, cout) of the five convs of a residual dense block of MESRGAN preset `preset`."""
  p = mesrgan.PRESETS[preset]
  nf, gc = p["num_feat"], p["num_grow_ch"]
  return [(k, nf + (k - 1) * gc, gc if k < 5 else nf) for k in range(1, 6)]


def time_module(module: nn.Module, input_shape: Sequence[int], repeats: int,
                seed: int = 0) -> dict[str, float]:
  """ms (median), GFLOPs and parameter count of a jitted `module.apply` on a random input."""
  params = random_params(module, input_shape, seed)
  r = step_timing.time_apply(module, params, tuple(input_shape), repeats, seed)
  return dict(ms=r["ms"], gflops=r["gflops"], params=r["params"])


def layer_modules(cin: int, cout: int, expansion: int,
                  impl: str) -> dict[str, tuple[nn.Module, int]]:
  """The modules of one dense-block layer, each with its input's channel count."""
  hidden = expansion * cin
  return {
      "dense 3x3": (layers.Conv(cout, 3, padding=1, impl=impl), cin),
      "block": (mesrgan.InvertedResidual(cout, expansion, impl=impl), cin),
      "expand": (layers.Conv1x1(hidden, impl=impl), cin),
      "depthwise": (layers.DepthwiseConv3x3(impl=impl), hidden),
      "project": (layers.Conv1x1(cout, impl=impl), hidden),
  }


def measure_breakdown(preset: str, lr_size: int, batch: int, impl: str,
                      repeats: int) -> list[dict[str, Any]]:
  """Per dense-block layer k: time and GFLOPs of ESRGAN's conv, MESRGAN's block and its pieces."""
  expansion = mesrgan.PRESETS[preset]["expansion"]
  rows = []
  for k, cin, cout in dense_block_layers(preset):
    progress(f"breakdown impl={impl} conv{k} ({cin} -> {cout}, batch {batch}, "
             f"{lr_size}x{lr_size})")
    row: dict[str, Any] = dict(impl=impl, k=k, cin=cin, cout=cout, batch=batch)
    for part, (module, channels) in layer_modules(cin, cout, expansion, impl).items():
      row[part] = time_module(module, (batch, lr_size, lr_size, channels), repeats)
    rows.append(row)
  return rows


def breakdown_totals(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
  """ms and GFLOPs of each part summed over a dense block's five layers."""
  parts = ("dense 3x3", "block") + BLOCK_PIECES
  return {p: {key: sum(r[p][key] for r in rows) for key in ("ms", "gflops", "params")}
          for p in parts}


def breakdown_verdict(rows: Sequence[dict[str, Any]]) -> str:
  """One paragraph: block vs conv time and FLOPs, and which part takes the block's time.

  'other' is the block's time beyond its three convs timed alone: the activations, the
  residual add and moving the 6x-expanded tensors between them.
  """
  t = breakdown_totals(rows)
  dense, block = t["dense 3x3"], t["block"]
  share = {p: 100 * t[p]["ms"] / block["ms"] for p in BLOCK_PIECES}
  share["other"] = max(0.0, 100 - sum(share.values()))
  rate = {p: t[p]["gflops"] / t[p]["ms"] for p in ("dense 3x3",) + BLOCK_PIECES}  # GFLOP/ms.
  top = max(share, key=share.get)
  return (f"impl={rows[0]['impl']}: the five inverted residual blocks take "
          f"{block['ms']:.2f} ms vs {dense['ms']:.2f} ms for ESRGAN's five 3x3 convs "
          f"({block['ms'] / dense['ms']:.2f}x the time, {block['gflops'] / dense['gflops']:.2f}x "
          f"the FLOPs; the 1x1 expand + project alone are "
          f"{(t['expand']['gflops'] + t['project']['gflops']) / dense['gflops']:.2f}x the "
          f"convs' FLOPs). Share of the blocks' time: expand {share['expand']:.0f}%, depthwise "
          f"{share['depthwise']:.0f}%, project {share['project']:.0f}%, other (activations, "
          f"residual, memory traffic) {share['other']:.0f}%: the largest is {top}. "
          f"Throughput (GFLOP/s): dense 3x3 {1000 * rate['dense 3x3']:.1f}, expand "
          f"{1000 * rate['expand']:.1f}, depthwise {1000 * rate['depthwise']:.1f}, project "
          f"{1000 * rate['project']:.1f}.")


# ------------------------------------------------------------------------------------------
# Quality.


def params_dir(run_dir: str, name: str) -> str:
  """A run's export/params, or `run_dir` itself when it is a params directory."""
  for candidate in (layout.Workdir(run_dir).export_params, run_dir):
    if os.path.isfile(os.path.join(candidate, "meta.json")):
      return candidate
  if not os.path.isdir(run_dir):
    raise FileNotFoundError(f"--runs {name}={run_dir}: no such directory.")
  raise FileNotFoundError(f"--runs {name}={run_dir}: neither {run_dir}/export/params nor "
                          f"{run_dir} holds exported parameters (meta.json); train it first "
                          "or pass a params directory.")


def check_run(name: str, run_dir: str, scale: int) -> str:
  """The params directory of `--runs name=run_dir`, after checking its recorded architecture
  (meta.json only: no tensors read) is model `name` (srgan, esrgan, mesrgan) upscaling by `scale`."""
  directory = params_dir(run_dir, name)
  arch = exports.read_params_meta(directory).get("model") or {}
  if arch.get("name") not in GENERATORS.values():
    raise ValueError(f"--runs {name}={run_dir}: holds a {arch.get('name')!r} model, not one of "
                     f"the compared generators {sorted(GENERATORS.values())}.")
  if arch["name"] != GENERATORS[name]:
    raise ValueError(f"--runs {name}={run_dir}: holds a {arch['name']} model; {DISPLAY[name]} "
                     f"is {GENERATORS[name]}. Check the name=directory pairs.")
  model_scale = registry.facts(arch['name'], adapters.model_from_architecture(arch)).scale
  if model_scale != scale:
    raise ValueError(f"--runs {name}={run_dir}: the model upscales x{model_scale}, the "
                     f"evaluation x{scale} (--scale).")
  return directory


def load_generator(name: str, run_dir: str, scale: int,
                   impl: str = "auto") -> tuple[nn.Module, PyTree]:
  """(module, params) of a checked run, the module rebuilt from its recorded architecture."""
  params, meta = adapters.load_base(check_run(name, run_dir, scale))
  return adapters.model_from_architecture(meta["model"], impl=impl), params


def make_eval_set(eval_dir: str, max_size: int, scale: int,
                  seed: int = 0) -> list[dict[str, Any]]:
  """Held-out {'name', 'lq', 'gt'}: HR from `eval_dir` (else the embedded photos), x`scale`
  MATLAB-bicubic LR rounded to uint8 (sr_jax.data.pipeline.make_eval_set)."""
  if eval_dir and not os.path.isdir(eval_dir):
    raise FileNotFoundError(f"--eval_dir={eval_dir}: no such directory.")
  data = config_base.base_config().data
  data.source, data.eval_dir = ("folder", eval_dir) if eval_dir else ("embedded", "")
  data.eval_max_size = max_size
  data.degradation.kind, data.degradation.scale = "bicubic", scale
  return pipeline.make_eval_set(data, seed=seed)


def score(apply_fn: Callable[[PyTree, jax.Array], jax.Array], params: PyTree,
          eval_set: Sequence[dict[str, Any]], scale: int, y_channel: bool,
          lpips_nets: Sequence[str]) -> dict[str, float]:
  """Mean PSNR/SSIM/LPIPS/RMSE with the SR protocol (crop = scale) via sr_jax.quality.evaluate."""
  result = evaluate.evaluate(apply_fn, params, eval_set, crop_border=scale, y_channel=y_channel,
                             lpips_nets=tuple(lpips_nets), rmse=True)
  return {k: v for k, v in result.items() if k not in ("per_image", "outputs")}


def evaluate_runs(runs: dict[str, str], eval_set: Sequence[dict[str, Any]], scale: int,
                  y_channel: bool, lpips_nets: Sequence[str],
                  impl: str = "auto") -> dict[str, dict[str, Any]]:
  """Quality rows: 'bicubic' first, then each run (label -> means, params, directory)."""
  loaded = {name: load_generator(name, d, scale, impl) for name, d in runs.items()}
  progress(f"quality: bicubic baseline on {len(eval_set)} image(s)")
  rows = {"bicubic": dict(score(lambda p, x: x, {}, evaluate.bicubic_set(eval_set, scale),
                                scale, y_channel, lpips_nets), params=0, run="-")}
  for name, (module, params) in loaded.items():
    progress(f"quality: {DISPLAY[name]} ({runs[name]})")
    apply_fn = lambda p, x, m=module: m.apply({"params": p}, x)
    rows[name] = dict(score(apply_fn, params, eval_set, scale, y_channel, lpips_nets),
                      params=lora.count(params), run=runs[name])
  return rows
