r"""SRGAN vs ESRGAN vs MESRGAN (seed 002): forward runtime, FLOPs and held-out quality.

  python -m sr_jax.tools.gan_compare                   # x4, batches 1,2,4,8,16, LR 32 -> 128
  python -m sr_jax.tools.gan_compare --batches 1,2,4 --repeats 3 --output /tmp/gan_compare.md
  python -m sr_jax.tools.gan_compare --conv_impl xla,shifted --batches 1,4 \
      --models esrgan,mesrgan                         # XLA's grouped conv vs shifted sums
  python -m sr_jax.tools.gan_compare --skip_runtime --skip_breakdown --eval_max_size 192 \
      --runs srgan=/tmp/srgan_demo,esrgan=/tmp/esrgan_demo,mesrgan=/tmp/mesrgan_demo
  python -m sr_jax.tools.gan_compare --skip_runtime --skip_breakdown --runs esrgan=W \
      --eval_dir /data/Set14/GTmod12

The seed's question: MESRGAN replaces every ESRGAN dense-block conv with a MobileNetV2 inverted
residual block (1x1 expand x6, 3x3 depthwise, 1x1 project) expecting fewer multiplications,
but ran ~4.5x slower than ESRGAN in PyTorch, blamed on slow depthwise convs. This command
answers it for sr_jax under XLA on whatever device it runs on:

- Runtime (unless --skip_runtime): each generator at its preset (--preset, or per model
  --presets srgan=x4,...) on random LR inputs of --lr_size (32: 128x128 outputs at x4) at each
  of --batches; jitted, compiled ahead (compile time reported apart), one untimed warm-up, then
  the median of --repeats calls each ending in block_until_ready (sr_jax.tools.step_timing).
  Parameters, GFLOPs per forward (XLA's cost analysis), ms and ms per image; then MESRGAN /
  ESRGAN ratios of time and FLOPs per batch. --conv_impl xla,shifted measures each formulation
  of the 1x1 and depthwise convs (sr_jax.models.layers; 'auto' = 'shifted' on CPU, 'xla'
  elsewhere); a model whose program is identical under two formulations (SRGAN and ESRGAN have
  no 1x1 or depthwise convs) is measured once.
- Breakdown (unless --skip_breakdown): where MESRGAN's time goes. The five convs of one ESRGAN
  residual dense block (cin = nf + (k-1) gc channels in) against the inverted residual blocks
  replacing them at the same input, (--breakdown_batch, lr_size, lr_size, cin), with the
  block's pieces (expand, depthwise, project) timed alone; GFLOP/s per piece shows whether the
  depthwise conv or the 6x expansion is the cost.
- Quality (with --runs srgan=W1,esrgan=W2,mesrgan=W3): each run's W/export/params (or a
  params directory itself), rebuilt from the architecture in its meta.json, on the held-out
  set (--eval_dir folder of HR images, else the embedded photos; --eval_max_size centre-crops)
  with MATLAB-bicubic x--scale LR (uint8-rounded), scored with the SR protocol: PSNR/SSIM on the
  Y channel with crop = scale (--rgb for RGB), LPIPS (--lpips, AlexNet by default) and RMSE,
  beside a 'bicubic' row (MATLAB bicubic upsampling of the same LR, sr_jax.data.resize).

The report (stdout, and --output FILE.md) starts with the device, backend, jax version and the
command line. The seed's own table (their GPU, PyTorch) follows as a separate, labelled
reference (--noreference to drop it): compare ratios with it, not milliseconds. On the 2-core
CPU VMs timings move with other processes: note the load when quoting them.

Measured (2-core CPU VM shared with other jobs, load ~3.5, jax 0.10.2, x4, LR 32, conv_impl
auto = shifted): ESRGAN 293 ms per image, SRGAN 43, MESRGAN 1,095 (batch 1) to 1,670
(batch 16); MESRGAN / ESRGAN = 3.7x (batch 1) to 5.0x (batch 16) the time for 3.15x the
FLOPs. The seed's "half the multiplications" does not hold for t = 6: the 1x1 expand and
project alone are 3.1x the replaced 3x3 convs' FLOPs, so the expansion is the main cost;
within the blocks expand takes ~50% of the time, the depthwise conv ~35% for 4.5% of the
FLOPs (~9 GFLOP/s against ~110 for the matrix products), project ~10%. With XLA's grouped
conv (--conv_impl xla) the depthwise conv runs at 0.5 GFLOP/s, takes 87% of the block and
MESRGAN is 34x slower than ESRGAN: the seed's observation, amplified. Large temporaries (the
6x-expanded tensors) can also cost page faults on this VM (the breakdown's 'other' share,
which varies from run to run); GLIBC_TUNABLES=glibc.malloc.hugetlb=1 removes most of it.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sr_jax import adapters, checkpoint, config_base, evaluate, lora, runtime
from sr_jax.data import pipeline
from sr_jax.models import layers, mesrgan, registry
from sr_jax.tools import step_timing

PyTree = Any

# Seed 002's names -> registry generators.
GENERATORS = {"srgan": "srresnet", "esrgan": "rrdbnet", "mesrgan": "mesrgan"}
DISPLAY = {"srgan": "SRGAN", "esrgan": "ESRGAN", "mesrgan": "MESRGAN", "bicubic": "bicubic"}
BLOCK_PIECES = ("expand", "depthwise", "project")

# Seed 002, Table 1 (DIV2K-90, x4; forward pass averaged over 100 runs on their GPU, PyTorch).
# The extracted text lists five lines of three numbers under "Batch size 1 2 4 8 16". Read as
# the first three lines being SRGAN, ESRGAN, MESRGAN at batches 1, 2, 4 and the last two lines
# batches 8 and 16 of the three models, every model's time roughly doubles with the batch; the
# other reading (every line a batch size, as REFERENCE.md section 6 takes it) makes ESRGAN's
# and MESRGAN's times fall from batch 1 to 2 or 4 to 8. Ambiguous either way: reference only.
SEED_BATCHES = (1, 2, 4, 8, 16)
SEED_FORWARD_MS = {"srgan": (26, 50, 134, 279, 561), "esrgan": (33, 62, 126, 266, 534),
                   "mesrgan": (155, 299, 596, 1204, 2402)}
SEED_QUALITY = {"srgan": (25.40, 0.96, 3.57, 13.61), "esrgan": (24.52, 0.95, 3.11, 15.82),
                "mesrgan": (24.39, 0.95, 3.13, 15.86)}  # PSNR, SSIM, PI, RMSE.


def progress(message: str) -> None:
  """A progress line on stderr (the tables go to stdout)."""
  print(f"[gan_compare] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------
# Flag values.


def parse_models(models: Sequence[str]) -> list[str]:
  """Seed-002 model names in the given order; unknown or repeated names name --models."""
  models = [m.strip().lower() for m in models if m.strip()]
  unknown = [m for m in models if m not in GENERATORS]
  if unknown or not models or len(set(models)) != len(models):
    raise ValueError(f"--models={','.join(models)}: choose distinct names among "
                     f"{sorted(GENERATORS)}.")
  return models


def parse_assignments(items: Sequence[str], flag: str) -> dict[str, str]:
  """'name=value' items (e.g. --runs srgan=W1,esrgan=W2) keyed by seed-002 model name."""
  out = {}
  for item in (i.strip() for i in items):
    if not item:
      continue
    name, sep, value = item.partition("=")
    name = name.strip().lower()
    if not sep or not value.strip():
      raise ValueError(f"{flag}: {item!r} is not name=value (e.g. {flag}=esrgan=x4).")
    if name not in GENERATORS or name in out:
      raise ValueError(f"{flag}: {name!r} is not a model name or repeats one; use "
                       f"{sorted(GENERATORS)}.")
    out[name] = value.strip()
  return out


def resolve_presets(models: Sequence[str], preset: str,
                    overrides: dict[str, str]) -> dict[str, str]:
  """The preset of each model: --presets entry, else --preset; checked against the registry."""
  extra = sorted(set(overrides) - set(models))
  if extra:
    raise ValueError(f"--presets names {extra}, which --models does not compare.")
  out = {}
  for m in models:
    chosen, flag = (overrides[m], "--presets") if m in overrides else (preset, "--preset")
    available = registry.entry(GENERATORS[m]).presets
    if chosen not in available:
      raise ValueError(f"{flag}: {DISPLAY[m]} ({GENERATORS[m]}) has no preset {chosen!r}; "
                       f"presets: {sorted(available)} (per model: --presets {m}=...).")
    out[m] = chosen
  return out


def parse_positive_ints(values: Sequence[str], flag: str) -> list[int]:
  """Positive integers from a list flag (e.g. --batches 1,2,4)."""
  try:
    out = [int(v) for v in values if str(v).strip()]
  except ValueError:
    out = []
  if not out or min(out) < 1:
    raise ValueError(f"{flag}={','.join(map(str, values))}: give positive integers, e.g. "
                     f"{flag}=1,2,4.")
  return out


def resolve_impls(impls: Sequence[str]) -> list[str]:
  """Concrete conv formulations ('auto' resolved for this backend), duplicates dropped."""
  out = []
  for impl in impls:
    if impl not in layers.IMPLS:
      raise ValueError(f"--conv_impl={impl}: choose among {layers.IMPLS}.")
    concrete = layers.resolve_impl(impl)
    if concrete not in out:
      out.append(concrete)
  if not out:
    raise ValueError(f"--conv_impl is empty: choose among {layers.IMPLS}.")
  return out


# ------------------------------------------------------------------------------------------
# Runtime.


def model_config(name: str, preset: str, impl: str) -> ml_collections.ConfigDict:
  """The config.model of seed-002 model `name` (e.g. 'esrgan') at a preset and formulation."""
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
  for candidate in (os.path.join(run_dir, "export", "params"), run_dir):
    if os.path.isfile(os.path.join(candidate, "meta.json")):
      return candidate
  if not os.path.isdir(run_dir):
    raise FileNotFoundError(f"--runs {name}={run_dir}: no such directory.")
  raise FileNotFoundError(f"--runs {name}={run_dir}: neither {run_dir}/export/params nor "
                          f"{run_dir} holds exported parameters (meta.json); train it first "
                          "or pass a params directory.")


def check_run(name: str, run_dir: str, scale: int) -> str:
  """The params directory of `--runs name=run_dir`, after checking its recorded architecture
  (meta.json only: no tensors read) is seed-002 model `name` upscaling by `scale`."""
  directory = params_dir(run_dir, name)
  arch = checkpoint.read_params_meta(directory).get("model") or {}
  if arch.get("name") not in GENERATORS.values():
    raise ValueError(f"--runs {name}={run_dir}: holds a {arch.get('name')!r} model, not one of "
                     f"the seed-002 generators {sorted(GENERATORS.values())}.")
  if arch["name"] != GENERATORS[name]:
    raise ValueError(f"--runs {name}={run_dir}: holds a {arch['name']} model; {DISPLAY[name]} "
                     f"is {GENERATORS[name]}. Check the name=directory pairs.")
  model_scale = adapters.model_from_architecture(arch).scale
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
  """Mean PSNR/SSIM/LPIPS/RMSE with the SR protocol (crop = scale) via sr_jax.evaluate."""
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


# ------------------------------------------------------------------------------------------
# Report.


def header(argv: Sequence[str]) -> list[str]:
  """Title, device/backend/versions and the exact command line."""
  dev = jax.devices()[0]
  command = " ".join(["python -m sr_jax.tools.gan_compare"] + [shlex.quote(a) for a in argv])
  return ["# SRGAN vs ESRGAN vs MESRGAN (seed 002), sr_jax", "",
          f"Device: {jax.device_count()} x {dev.device_kind} (backend {jax.default_backend()}, "
          f"{os.cpu_count()} CPU cores visible); jax {jax.__version__}, flax "
          f"{flax.__version__}; float32.", f"Command: `{command}`"]


def _num(x: float) -> str:
  """Whole numbers from 100 up, three significant digits below."""
  return f"{x:,.0f}" if abs(x) >= 100 else f"{x:#.3g}"


def runtime_section(rows: Sequence[dict[str, Any]], repeats: int) -> list[str]:
  """Markdown runtime table, one row per model, formulation and batch."""
  lines = [f"## Forward runtime (jitted, warmed, median of {repeats}, block_until_ready)", "",
           "| model | preset | conv impl | batch | LR -> HR | params | GFLOP/forward | ms | "
           "ms/image | compile s |", "|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    impl = r["impl"] + (f" (= {r['same_as']})" if r["same_as"] else "")
    lines.append(f"| {DISPLAY[r['model']]} | {r['preset']} | {impl} | {r['batch']} | "
                 f"{r['lr_size']} -> {r['hr_size']} | {r['params']:,} | {_num(r['gflops'])} | "
                 f"{_num(r['ms'])} | {_num(r['ms_per_image'])} | {r['compile_s']:.1f} |")
  return lines


def ratio_section(ratios: Sequence[dict[str, Any]]) -> list[str]:
  """Markdown MESRGAN / ESRGAN ratios, with the seed's PyTorch time ratio where it has one."""
  seed = dict(zip(SEED_BATCHES, (m / e for m, e in zip(SEED_FORWARD_MS["mesrgan"],
                                                      SEED_FORWARD_MS["esrgan"]))))
  lines = ["## MESRGAN / ESRGAN", "",
           "| conv impl | batch | time ratio | FLOP ratio | params ratio | seed's time ratio "
           "(their GPU) |", "|---|---|---|---|---|---|"]
  for r in ratios:
    ref = f"{seed[r['batch']]:.2f}" if r["batch"] in seed else "-"
    lines.append(f"| {r['impl']} | {r['batch']} | {r['time_ratio']:.2f} | "
                 f"{r['flop_ratio']:.2f} | {r['params_ratio']:.2f} | {ref} |")
  return lines


def breakdown_section(rows: Sequence[dict[str, Any]], preset: str, lr_size: int) -> list[str]:
  """Markdown per-layer breakdown (ms / GFLOP per part), totals and the verdict."""
  parts = ("dense 3x3", "block") + BLOCK_PIECES
  lines = [f"## Where MESRGAN's time goes: one residual dense block ({preset} widths, batch "
           f"{rows[0]['batch']}, {lr_size}x{lr_size}, impl={rows[0]['impl']})", "",
           "ms / GFLOP per layer: ESRGAN's 3x3 conv ('dense 3x3') vs the inverted residual "
           "block replacing it ('block': expand 1x1 -> LeakyReLU -> depthwise 3x3 -> LeakyReLU "
           "-> project 1x1 [+ input]) and its convs timed alone.", "",
           "| layer | cin -> cout | " + " | ".join(parts) + " |", "|---|---|" + "---|" * len(parts)]
  table = [(f"conv{r['k']}", f"{r['cin']} -> {r['cout']}", r) for r in rows]
  table.append(("all five", "-", breakdown_totals(rows)))
  for label, io, r in table:
    cells = [f"{_num(r[p]['ms'])} / {_num(r[p]['gflops'])}" for p in parts]
    lines.append(f"| {label} | {io} | " + " | ".join(cells) + " |")
  return lines + ["", breakdown_verdict(rows)]


def quality_section(rows: dict[str, dict[str, Any]], protocol_text: str, scale: int,
                    eval_dir: str, max_size: int, count: int) -> list[str]:
  """Markdown quality table with the protocol and the held-out set stated."""
  where = eval_dir or "the embedded held-out photos"
  crop = f", centre-cropped to {max_size}" if max_size > 0 else ""
  lpips_keys = sorted(k for k in next(iter(rows.values())) if k.startswith("lpips_"))
  head = ["model", "run", "params", "PSNR (dB)", "SSIM"] + [
      f"LPIPS-{k[6:]}" for k in lpips_keys] + ["RMSE"]
  lines = ["## Quality on held-out images", "",
           f"Set: {where} ({count} images{crop}); LR = MATLAB bicubic x1/{scale}, uint8-rounded.",
           f"Protocol: {protocol_text}; LPIPS on the rounded RGB images with the same crop; RMSE "
           "on PSNR's protocol (0..255).", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name, r in rows.items():
    cells = [DISPLAY[name], r["run"], f"{r['params']:,}", f"{r['psnr']:.3f}", f"{r['ssim']:.4f}"]
    cells += [f"{r[k]:.4f}" for k in lpips_keys] + [f"{r['rmse']:.2f}"]
    lines.append("| " + " | ".join(cells) + " |")
  return lines


def reference_section() -> list[str]:
  """The seed's published numbers, labelled as not comparable with the measurements above."""
  lines = ["## Reference only: seed 002's published numbers (their GPU, PyTorch; NOT this run)",
           "", "Forward runtime in ms, averaged over 100 runs (the extracted table is ambiguous; "
           "read so that each model's time grows with the batch, see gan_compare's source):", "",
           "| model | " + " | ".join(f"batch {b}" for b in SEED_BATCHES) + " |",
           "|---|" + "---|" * len(SEED_BATCHES)]
  lines += [f"| {DISPLAY[m]} | " + " | ".join(str(v) for v in ms) + " |"
            for m, ms in SEED_FORWARD_MS.items()]
  lines += ["", "DIV2K-90, x4 (their protocol; PI = perceptual index, lower is better):", "",
            "| model | PSNR | SSIM | PI | RMSE |", "|---|---|---|---|---|"]
  lines += [f"| {DISPLAY[m]} | {p:.2f} | {s:.2f} | {pi:.2f} | {e:.2f} |"
            for m, (p, s, pi, e) in SEED_QUALITY.items()]
  return lines


# ------------------------------------------------------------------------------------------
# Options and the whole comparison.


@dataclasses.dataclass
class Options:
  """Validated flag values (`make_options`); one field per flag."""
  presets: dict[str, str]  # Seed-002 name -> preset, in --models order.
  batches: list[int]
  lr_size: int
  repeats: int
  impls: list[str]
  runtime: bool = True
  breakdown: bool = True
  breakdown_batch: int = 4
  breakdown_repeats: int = 20
  runs: dict[str, str] = dataclasses.field(default_factory=dict)
  eval_dir: str = ""
  eval_max_size: int = 0
  scale: int = 4
  y_channel: bool = True
  lpips: tuple[str, ...] = ("alex",)
  reference: bool = True


def check_lr_size(presets: dict[str, str], lr_size: int) -> None:
  """Every model must accept (lr_size, lr_size) inputs (x2/x1 RRDBNets pixel-unshuffle them)."""
  if lr_size < 1:
    raise ValueError(f"--lr_size={lr_size}: give a positive LR side, e.g. 32.")
  for name, preset in presets.items():
    multiple = registry.build_model(model_config(name, preset, "xla")).size_multiple
    if lr_size % multiple:
      raise ValueError(f"--lr_size={lr_size}: {DISPLAY[name]} {preset} needs a multiple of "
                       f"{multiple}.")


_REST_FLAGS = ("skip_runtime", "skip_breakdown", "breakdown_batch", "breakdown_repeats",
               "eval_dir", "eval_max_size", "scale", "rgb", "reference")


def make_options(models: Sequence[str] = ("srgan", "esrgan", "mesrgan"), preset: str = "x4",
                 presets: Sequence[str] = (), batches: Sequence[Any] = (1, 2, 4, 8, 16),
                 lr_size: int = 32, repeats: int = 5, conv_impl: Sequence[str] = ("auto",),
                 runs: Sequence[str] = (), lpips: Sequence[str] = ("alex",),
                 **rest: Any) -> Options:
  """Options from flag values, each checked with an error naming its flag.

  `rest`: the remaining Options fields as flags spell them (skip_runtime, skip_breakdown,
  breakdown_batch, breakdown_repeats, eval_dir, eval_max_size, scale, rgb, reference).
  """
  unknown_fields = set(rest) - set(_REST_FLAGS)
  if unknown_fields:
    raise TypeError(f"make_options: unknown options {sorted(unknown_fields)}.")
  chosen = resolve_presets(parse_models(models), preset, parse_assignments(presets, "--presets"))
  check_lr_size(chosen, lr_size)
  if repeats < 1 or rest.get("breakdown_repeats", 20) < 1:
    raise ValueError("--repeats and --breakdown_repeats must be at least 1.")
  unknown = [n for n in lpips if n not in ("alex", "vgg")]
  if unknown:
    raise ValueError(f"--lpips={','.join(lpips)}: choose among 'alex', 'vgg' (or none).")
  run_dirs = parse_assignments(runs, "--runs")
  scale = rest.get("scale", 4)
  for name, directory in run_dirs.items():
    check_run(name, directory, scale)
  return Options(
      presets=chosen, batches=parse_positive_ints(batches, "--batches"), lr_size=lr_size,
      repeats=repeats, impls=resolve_impls(conv_impl), runtime=not rest.get("skip_runtime"),
      breakdown=not rest.get("skip_breakdown"),
      breakdown_batch=parse_positive_ints([rest.get("breakdown_batch", 4)],
                                          "--breakdown_batch")[0],
      breakdown_repeats=rest.get("breakdown_repeats", 20), runs=run_dirs,
      eval_dir=rest.get("eval_dir", ""), eval_max_size=rest.get("eval_max_size", 0),
      scale=scale, y_channel=not rest.get("rgb", False), lpips=tuple(lpips),
      reference=rest.get("reference", True))


def runtime_report(opts: Options) -> list[str]:
  """Runtime, ratio and breakdown sections (as the options ask)."""
  lines: list[str] = []
  if opts.runtime:
    rows = measure_runtime(opts.presets, opts.batches, opts.lr_size, opts.repeats, opts.impls)
    lines += [""] + runtime_section(rows, opts.repeats)
    ratios = mesrgan_vs_esrgan(rows)
    if ratios:
      lines += [""] + ratio_section(ratios)
  if opts.breakdown and "mesrgan" in opts.presets:
    for impl in opts.impls:
      rows = measure_breakdown(opts.presets["mesrgan"], opts.lr_size, opts.breakdown_batch,
                               impl, opts.breakdown_repeats)
      lines += [""] + breakdown_section(rows, opts.presets["mesrgan"], opts.lr_size)
  return lines


def quality_report(opts: Options) -> list[str]:
  """The quality section for --runs (empty without runs)."""
  if not opts.runs:
    return []
  eval_set = make_eval_set(opts.eval_dir, opts.eval_max_size, opts.scale)
  rows = evaluate_runs(opts.runs, eval_set, opts.scale, opts.y_channel, opts.lpips,
                       opts.impls[0])
  text = evaluate.protocol(opts.scale, opts.y_channel)
  progress(f"quality protocol: {text}")
  return [""] + quality_section(rows, text, opts.scale, opts.eval_dir, opts.eval_max_size,
                                len(eval_set))


def compare(opts: Options, argv: Sequence[str] = ()) -> str:
  """The whole markdown report: header, runtime, breakdown, quality, the seed's reference."""
  t0 = time.perf_counter()
  lines = header(argv) + runtime_report(opts) + quality_report(opts)
  if opts.reference:
    lines += [""] + reference_section()
  progress(f"done in {time.perf_counter() - t0:.0f} s")
  return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# Command line.


def _define_flags() -> None:
  """Flags, defined only when run as a program (tests import this module beside others)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_list("models", ["srgan", "esrgan", "mesrgan"], "Models to compare.")
  flags.DEFINE_string("preset", "x4", "Preset of every model (x4, small, micro; x2/x3: not "
                      "MESRGAN).")
  flags.DEFINE_list("presets", [], "Per-model presets, e.g. srgan=x4,esrgan=small.")
  flags.DEFINE_list("batches", ["1", "2", "4", "8", "16"], "Forward batch sizes.")
  flags.DEFINE_integer("lr_size", 32, "LR input side (x4: 32 -> 128x128 outputs).")
  flags.DEFINE_integer("repeats", 5, "Timed forward calls per measurement (median).")
  flags.DEFINE_list("conv_impl", ["auto"], "Conv formulations: auto, xla, shifted (several to "
                    "compare them).")
  flags.DEFINE_bool("skip_runtime", False, "Do not time whole models.")
  flags.DEFINE_bool("skip_breakdown", False, "Do not time the dense-block breakdown.")
  flags.DEFINE_integer("breakdown_batch", 4, "Batch of the breakdown's layer timings.")
  flags.DEFINE_integer("breakdown_repeats", 20, "Timed calls per breakdown layer (median).")
  flags.DEFINE_list("runs", [], "Trained runs to score: srgan=W1,esrgan=W2,mesrgan=W3 "
                    "(W/export/params, or a params directory).")
  flags.DEFINE_string("eval_dir", "", "Folder of held-out HR images (default: embedded photos).")
  flags.DEFINE_integer("eval_max_size", 0, "Centre-crop held-out images to this side (0: whole).")
  flags.DEFINE_integer("scale", 4, "Upscaling factor of the held-out LR (bicubic) and the crop.")
  flags.DEFINE_bool("rgb", False, "PSNR/SSIM on RGB instead of the Y channel.")
  flags.DEFINE_list("lpips", ["alex"], "LPIPS networks (alex, vgg; empty for none).")
  flags.DEFINE_bool("reference", True, "Append the seed's published numbers (labelled).")
  flags.DEFINE_string("output", "", "Also write the markdown report to this file.")


_OPTION_FLAGS = ("models", "preset", "presets", "batches", "lr_size", "repeats", "conv_impl",
                 "runs", "lpips") + _REST_FLAGS


def main(argv: Sequence[str]) -> None:
  """Command-line entry: flag errors exit 2 with one line naming the flag."""
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  runtime.setup()
  args = flags.FLAGS
  try:
    opts = make_options(**{name: args[name].value for name in _OPTION_FLAGS})
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  text = compare(opts, sys.argv[1:])
  print(text, flush=True)
  if args.output:
    with open(args.output, "w") as f:
      f.write(text + "\n")
    progress(f"wrote {args.output}")


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  _define_flags()
  app.run(main)
