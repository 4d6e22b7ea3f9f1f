"""The performance report on micro models: rows, table, SR3's diffusion step, MFU and errors."""

import jax
import numpy as np
import pytest

from sr_jax.models import registry
from sr_jax.objectives import diffusion, pixel
from sr_jax.tools import peaks, perf_report, step_timing
from sr_jax.train import run_setup

BATCH = 2
# (model, target size, arms, dtypes, initialise here): one model with both arms (the ratios),
# one in bfloat16, SR3 through the diffusion objective. RRDBNet's and SR3's parameters come
# from the report's own initialisation; NAFNet's are random (a compile of model.init saved).
CASES = (("rrdbnet", 16, ["full", "lora"], ["float32"], True),
         ("nafnet", 16, ["lora"], ["bfloat16"], False),
         ("sr3_tiny", 16, ["lora"], ["float32"], True))
COLUMNS = len(perf_report.COLUMNS)


def micro_job(name, size, batch=BATCH, devices=1):
  """`name`'s job at its micro preset; one device keeps batch 2 unsharded."""
  job, = perf_report.plan([name], "cpu", {name: "micro"}, batch, size, devices)
  return job


def param_shapes(config, size):
  model = registry.build_model(config.model)
  return jax.eval_shape(model.init, jax.random.PRNGKey(0),
                        *registry.example_inputs(model, size))["params"]


def random_params(config, size):
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda s: rng.normal(0, 0.1, s.shape).astype(s.dtype),
                      param_shapes(config, size))


def num_params(config, size):
  return sum(int(np.prod(s.shape)) for s in jax.tree.leaves(param_shapes(config, size)))


def table_rows(text):
  """The table's body rows, split into cells."""
  lines = [l for l in text.splitlines() if l.startswith("| ")][1:]  # Without the header.
  return [[c.strip() for c in l.strip("|").split("|")] for l in lines]


@pytest.fixture(scope="module")
def measured():
  """Rows of every case, the objective type of each step built, and the report's text."""
  built = []
  with pytest.MonkeyPatch.context() as mp:
    mp.setitem(step_timing.PYTORCH_STEP_MS, ("rrdbnet", "micro", BATCH, 16), 1000.0)
    real_build_run = run_setup.build_run

    def spy(config, *args, **kwargs):
      run = real_build_run(config, *args, **kwargs)
      built.append((config.model.name, type(run.objective)))
      return run

    mp.setattr(step_timing.run_setup, "build_run", spy)
    rows = []
    for name, size, arms, dtypes, init in CASES:
      job = micro_job(name, size)
      params = None if init else random_params(job.config, size)
      rows += perf_report.measure_job(job, arms, dtypes, steps=1, params=params)
  return rows, built, perf_report.report(rows, "cpu", steps=1)


def test_one_row_per_model_arm_dtype(measured):
  rows, _, text = measured
  expected = [(n, a, d) for n, _, arms, dtypes, _ in CASES for d in dtypes for a in arms]
  assert [(r["model"], r["arm"], r["dtype"]) for r in rows] == expected
  assert all(r["error"] is None for r in rows), [r["error"] for r in rows]
  cells = table_rows(text)
  assert len(cells) == len(expected) and all(len(c) == COLUMNS for c in cells)
  assert [c[:6] for c in cells] == [
      ["RRDBNet", "micro", "4x4 -> 16x16", "2", "float32", "full fine-tuning"],
      ["RRDBNet", "micro", "4x4 -> 16x16", "2", "float32", "LoRA r=4"],
      ["NAFNet", "micro", "16x16 -> 16x16", "2", "bfloat16", "LoRA r=8"],
      ["SR3", "micro", "2x2 -> 16x16", "2", "float32", "LoRA r=4"]]  # 16 -> 128 is x8.


def test_numbers_are_plausible(measured):
  rows, _, text = measured
  by_key = {(r["model"], r["arm"]): r for r in rows}
  for (name, arm), r in by_key.items():
    size = next(c[1] for c in CASES if c[0] == name)
    base = num_params(micro_job(name, size).config, size)
    assert r["gflops_step"] == r["gflops"] * r["devices"] > 0 and r["devices"] == 1
    assert r["ms"] > 0 and r["img_s"] == pytest.approx(1000 * BATCH / r["ms"])
    assert r["mem_mb"] == pytest.approx(r["temp_mb"] + r["arg_mb"])
    assert r["pct"] == pytest.approx(100 * r["trainable"] / base)
    # The step's arguments hold every float32 base parameter (trained or frozen); a full
    # fine-tune's state adds AdamW's two moments of each.
    assert r["arg_mb"] * 2**20 >= 4 * base * (3 if arm == "full" else 1)
    if arm == "full":
      assert r["trainable"] == base
    else:
      assert 0 < r["trainable"] < base
    assert r["mfu"] is None  # No peak for a CPU.
  full, low = by_key["rrdbnet", "full"], by_key["rrdbnet", "lora"]
  assert low["trainable"] < full["trainable"]
  cells = table_rows(text)
  assert cells[0][6] == f"{num_params(micro_job('rrdbnet', 16).config, 16):,} (100.00%)"
  assert [c[11] for c in cells] == ["n/a"] * len(cells)  # MFU.
  assert cells[0][12] == "1,000" and cells[0][13] == f"{full['ms'] / 1000:.2f}"
  assert cells[2][12] == "n/a" and cells[2][13] == "n/a"  # No NAFNet micro reference.
  assert (f"- RRDBNet micro, float32: LoRA r=4 / full: time {low['ms'] / full['ms']:.2f}, "
          f"memory {low['mem_mb'] / full['mem_mb']:.2f}, FLOPs "
          f"{low['gflops_step'] / full['gflops_step']:.2f};") in text
  assert "no peak known for 'cpu': n/a" in text


def test_sr3_steps_through_the_diffusion_objective(measured):
  rows, built, _ = measured
  assert built == [("rrdbnet", pixel.PixelObjective)] * 2 + [
      ("nafnet", pixel.PixelObjective), ("sr3", diffusion.DiffusionObjective)]
  sr3_row = rows[-1]
  assert sr3_row["label"] == "LoRA r=4" and sr3_row["gflops_step"] > 0


def test_sr3_batch_and_scales():
  """SR3's random batch: LR at size / data scale, HR at size; arm configs keep its scale."""
  sr3_config = micro_job("sr3_tiny", 32).config
  c = step_timing.arm_config(sr3_config, "full", BATCH, 32)
  assert c.data.degradation.scale == 8 and not c.lora.enabled
  batch = step_timing.random_batch(c)
  assert batch["lq"].shape == (BATCH, 4, 4, 3) and batch["gt"].shape == (BATCH, 32, 32, 3)
  rrdb = step_timing.arm_config(micro_job("rrdbnet", 16).config, "lora", BATCH, 16)
  assert rrdb.data.degradation.scale == 4 and rrdb.lora.enabled
  c.data.crop_size = 36
  with pytest.raises(ValueError, match="crop_size=36 is not a multiple"):
    step_timing.lq_size(c)


def test_mfu_by_hand():
  # 1.2 TFLOP per step (300 GFLOP on each of 4 devices) in 250 ms on 4 x 989 TFLOP/s.
  assert peaks.mfu(1.2e12, 250.0, 4, 989.0) == pytest.approx(4.8e12 / 3.956e15)
  assert peaks.mfu(1e9, 5.0, 1, None) is None
  result = dict(ms=250.0, gflops=300.0, devices=4, temp_mb=10.0, arg_mb=2.0, trainable=10,
                pct=1.0, compile_s=1.0, pytorch_ms=None, time_ratio=None)
  h100 = "NVIDIA H100 80GB HBM3"
  r = perf_report.derived(result, 16, "bfloat16", h100)
  assert r["gflops_step"] == 1200.0 and r["img_s"] == 64.0 and r["mem_mb"] == 12.0
  assert r["mfu"] == pytest.approx(0.0012133468)
  # float32 at the default precision runs on TF32 tensor cores (494); 'highest' on FP32 (67).
  assert perf_report.derived(result, 16, "float32", h100)["mfu"] == pytest.approx(
      4.8e12 / (4 * 494e12))
  assert perf_report.derived(result, 16, "float32", h100, "highest")["mfu"] == pytest.approx(
      4.8e12 / (4 * 67e12))
  assert perf_report.derived(result, 16, "float32", "cpu")["mfu"] is None
  row = dict(r, model="nafnet", backbone="NAFNet", preset="sidd_w32", sizes="256x256 -> 256x256",
             batch=16, size=256, dtype="bfloat16", arm="full", label="full fine-tuning",
             error=None)
  text = perf_report.report([row], "gpu", 5, device_kind=h100)
  assert table_rows(text)[0][11] == "0.121%"
  assert "bfloat16 989, float32 494 TFLOP/s dense per device" in text


@pytest.mark.parametrize("kind,bf16,f32", [
    ("NVIDIA H100 80GB HBM3", 989, 494), ("nvidia h100 80gb hbm3", 989, 494),
    ("NVIDIA H100 PCIe", 756, 378), ("NVIDIA H200", 989, 494),
    ("NVIDIA A100-SXM4-80GB", 312, 156), ("TPU v4", 275, 275), ("TPU v5 lite", 197, 197),
    ("TPU v5p", 459, 459), ("TPU v6 lite", 918, 918), ("cpu", None, None),
    ("Tesla V100-SXM2-16GB", None, None)])
def test_peak_lookup(kind, bf16, f32):
  assert peaks.peak_tflops(kind, "bfloat16") == bf16
  assert peaks.peak_tflops(kind, "float32") == f32


def test_peak_precision_and_dtypes():
  assert peaks.peak_tflops("NVIDIA A100-SXM4-40GB", "float32", "highest") == 19.5
  assert peaks.peak_tflops("TPU v4", "float32", "highest") is None
  assert peaks.peak_tflops("NVIDIA H200", "float32", "bfloat16_3x") is None
  assert peaks.peak_tflops("TPU v5 lite", "float16") is None
  assert peaks.peak_tflops("NVIDIA H100 80GB HBM3", "float16") == 989


def test_failing_rows_become_error_cells(monkeypatch):
  """A failing row is reported and the others still run; a failed init fails its model's rows."""
  job = micro_job("nafnet", 16)
  real = step_timing.measure_step

  def oom_for_lora(config, steps, base=None):
    if config.lora.enabled:
      raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory | allocating 81.0GiB\nmore")
    return dict(arm="full fine-tuning", ms=10.0, compile_s=0.1, trainable=5, devices=1,
                pct=100.0, gflops=2.0, temp_mb=1.0, arg_mb=1.0)

  monkeypatch.setattr(step_timing, "measure_step", oom_for_lora)
  rows = perf_report.measure_job(job, ["full", "lora"], ["float32"], 1, params={})
  monkeypatch.setattr(step_timing, "measure_step", real)
  assert rows[0]["error"] is None and rows[0]["img_s"] == 200.0
  assert rows[1]["error"] == "RuntimeError: RESOURCE_EXHAUSTED: Out of memory / allocating 81.0GiB"
  # A real failure: batch 3 does not split over 2 devices (no compile happens).
  bad = micro_job("nafnet", 16, batch=3, devices=2)
  rows += perf_report.measure_job(bad, ["lora"], ["float32"], 1,
                                  params=random_params(bad.config, 16))
  assert "batch_size=3 must be divisible" in rows[2]["error"]
  # A size the RRDBNet x4 input cannot take: every row fails, initialisation included.
  rows += perf_report.measure_job(micro_job("rrdbnet", 18), ["full", "lora"], ["float32"], 1)
  assert all("not a multiple" in r["error"] for r in rows[3:]) and len(rows) == 5
  cells = table_rows(perf_report.report(rows, "cpu", 1))
  assert len(cells) == 5 and all(len(c) == COLUMNS for c in cells)
  assert cells[0][7] == "10.0" and cells[1][5] == "LoRA r=8"
  assert cells[1][6].startswith("**error**: RuntimeError: RESOURCE_EXHAUSTED")
  assert cells[1][7:] == ["-"] * (COLUMNS - 7) and cells[4][2] == "?"


def test_unknown_names_are_clear_errors():
  with pytest.raises(ValueError, match=r"--models=nafnet,swinir: unknown \['swinir'\]; valid "
                     r"names: nafnet, restormer, rrdbnet, sr3_tiny, sr3_paper"):
    perf_report.plan(["nafnet", "swinir"], "cpu")
  with pytest.raises(ValueError, match="--setting=tpu"):
    perf_report.plan(["nafnet"], "tpu")
  with pytest.raises(ValueError, match="'model=preset'"):
    perf_report.parse_presets(["nafnet"])
  with pytest.raises(ValueError, match="--presets=swinir"):
    perf_report.parse_presets(["swinir=micro"])
  with pytest.raises(ValueError, match="Unknown config.model.preset 'nano'"):
    perf_report.plan(["nafnet"], "cpu", {"nafnet": "nano"})
  assert perf_report.parse_presets(["sr3_tiny=micro"]) == {"sr3_tiny": "micro"}
  jobs = perf_report.plan(list(perf_report.MODELS), "gpu")
  assert [(j.config.model.name, j.config.model.preset, j.batch, j.size) for j in jobs] == [
      ("nafnet", "sidd_w32", 16, 256), ("restormer", "default", 8, 128),
      ("rrdbnet", "x4", 16, 128), ("sr3", "tiny", 16, 128), ("sr3", "paper_16_128", 16, 128)]


def test_interleaved_timing_takes_the_arms_in_turn_and_reports_each_median():
  """Rounds give every arm in turn one untimed call and its share of the timed ones; each
  arm's median is over its own calls: a slow arm does not leak into a fast one's figure."""
  order, clock = [], [0.0]
  cost = {"full": 0.010, "lora": 0.004}

  def arm(name):
    def call():
      order.append(name)
      clock[0] += cost[name]
      return 0
    return call

  full_ms, lora_ms = step_timing.interleaved_ms([arm("full"), arm("lora")], repeats=5,
                                                clock=lambda: clock[0])
  # Round 1: 1 untimed + 3 timed each; round 2: 1 untimed + 2 timed each.
  assert order == ["full"] * 4 + ["lora"] * 4 + ["full"] * 3 + ["lora"] * 3
  assert (full_ms, lora_ms) == pytest.approx((10.0, 4.0))
  with pytest.raises(ValueError, match="at least one"):
    step_timing.interleaved_ms([arm("full")], repeats=0)
