"""sr_jax.tools.gan_compare on micro presets, LR 8x8, batches 1 and 2, one timed call.

Runtime rows against closed-form parameter counts and FLOPs that grow linearly with the batch;
the breakdown's FLOPs against the layers' multiply counts; quality rows against PSNR computed
here in NumPy from the saved run and from MATLAB-bicubic upsampling; every bad flag value
named in its error. Also the train-step benchmark on an SR model (LR = crop / scale).
"""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from configs import esrgan as esrgan_config
from sr_jax.data import resize
from sr_jax.models import mesrgan, registry, rrdbnet, srresnet
from sr_jax.quality import evaluate
from sr_jax.tools import benchmark, gan_compare, gan_study, step_timing
from sr_jax.util import exports

LR, BATCHES, SCALE = 8, (1, 2), 4
MODELS = ("srgan", "esrgan", "mesrgan")


def conv(k, cin, cout):
  """Parameters of a k x k conv with bias."""
  return k * k * cin * cout + cout


def trunk(p, upsampling):
  """conv_first, conv_hr and conv_last plus the given upsampling convs (3x3, with bias)."""
  nf = p["num_feat"]
  return conv(3, 3, nf) + upsampling + conv(3, nf, nf) + conv(3, nf, 3)


def srresnet_count(p):
  nf = p["num_feat"]
  body = p["num_block"] * 2 * conv(3, nf, nf)
  return trunk(p, 2 * conv(3, nf, 4 * nf)) + body


def rdb_layers(p):
  nf, gc = p["num_feat"], p["num_grow_ch"]
  return [(nf + (k - 1) * gc, gc if k < 5 else nf) for k in range(1, 6)]


def rrdb_count(p, layer_count):
  """RRDBNet x4 with `layer_count(cin, cout)` parameters per dense-block layer."""
  nf = p["num_feat"]
  body = p["num_block"] * 3 * sum(layer_count(cin, cout) for cin, cout in rdb_layers(p))
  return trunk(p, 2 * conv(3, nf, nf)) + conv(3, nf, nf) + body


def inverted_residual(t):
  return lambda cin, cout: conv(1, cin, t * cin) + conv(3, 1, t * cin) + conv(1, t * cin, cout)


def test_closed_forms_match_published_counts():
  """The closed forms used below reproduce the published x4 parameter counts."""
  assert srresnet_count(srresnet.PRESETS["x4"]) == 1_517_571
  assert rrdb_count(rrdbnet.PRESETS["x4"], lambda cin, cout: conv(3, cin, cout)) == 16_697_987


@pytest.fixture(scope="module")
def runtime_rows():
  opts = gan_compare.make_options(preset="micro", batches=[str(b) for b in BATCHES],
                                  lr_size=LR, repeats=1)
  return gan_study.measure_runtime(opts.presets, opts.batches, LR, 1, opts.impls)


def test_runtime_rows_counts_and_linear_flops(runtime_rows):
  """A row per model and batch, positive times, exact parameter counts, FLOPs ~ batch."""
  rows = {(r["model"], r["batch"]): r for r in runtime_rows}
  assert sorted(rows) == sorted((m, b) for m in MODELS for b in BATCHES)
  expected = {"srgan": srresnet_count(srresnet.PRESETS["micro"]),
              "esrgan": rrdb_count(rrdbnet.PRESETS["micro"], lambda i, o: conv(3, i, o)),
              "mesrgan": rrdb_count(mesrgan.PRESETS["micro"], inverted_residual(6))}
  for (model, batch), r in rows.items():
    assert r["ms"] > 0 and r["ms_per_image"] == pytest.approx(r["ms"] / batch)
    assert r["params"] == expected[model]
    assert (r["lr_size"], r["hr_size"]) == (LR, LR * SCALE)
    assert r["gflops"] == pytest.approx(batch * rows[(model, 1)]["gflops"], rel=1e-3)


def test_mesrgan_costs_more_than_esrgan_by_the_block_arithmetic(runtime_rows):
  """t = 6 blocks cost more than the 3x3 convs they replace: params and FLOPs go up, and the
  FLOP difference is the dense blocks' multiply-adds (plus their element-wise ops)."""
  rows = {(r["model"], r["batch"]): r for r in runtime_rows}
  p = mesrgan.PRESETS["micro"]
  per_pixel = sum(6 * cin * (cin + 9 + cout) - 9 * cin * cout for cin, cout in rdb_layers(p))
  macs = per_pixel * LR * LR * 3 * p["num_block"]
  for b in BATCHES:
    m, e = rows[("mesrgan", b)], rows[("esrgan", b)]
    assert m["params"] > e["params"] and m["gflops"] > e["gflops"]
    assert 1.0 <= (m["gflops"] - e["gflops"]) * 1e9 / (2 * macs * b) <= 1.35
  ratios = gan_study.mesrgan_vs_esrgan(runtime_rows)
  assert [r["batch"] for r in ratios] == list(BATCHES)
  for r in ratios:
    m, e = rows[("mesrgan", r["batch"])], rows[("esrgan", r["batch"])]
    assert r["time_ratio"] == pytest.approx(m["ms"] / e["ms"])
    assert r["flop_ratio"] == pytest.approx(m["gflops"] / e["gflops"]) and r["flop_ratio"] > 1


def test_report_sections(runtime_rows):
  text = "\n".join(gan_compare.header(["--preset", "micro"]) +
                   gan_compare.runtime_section(runtime_rows, 1) +
                   gan_compare.ratio_section(gan_study.mesrgan_vs_esrgan(runtime_rows)) +
                   gan_compare.reference_section())
  assert jax.__version__ in text and jax.default_backend() in text
  assert "`python -m sr_jax.tools.gan_compare --preset micro`" in text
  assert sum(line.startswith("| MESRGAN | micro |") for line in text.splitlines()) == 2
  assert "Reference only" in text and "| ESRGAN | 33 | 62 | 126 | 266 | 534 |" in text


def test_identical_programs_are_measured_once():
  """SRGAN/ESRGAN have no 1x1 or depthwise convs: 'shifted' lowers to the 'xla' program."""
  for name, same in (("esrgan", True), ("mesrgan", False)):
    module = registry.build_model(gan_study.model_config(name, "micro", "xla"))
    params = gan_study.random_params(module, (1, LR, LR, 3))
    impls = gan_study.distinct_impls(name, "micro", ["xla", "shifted"], LR, params)
    assert impls == {"xla": "xla", "shifted": "xla" if same else "shifted"}


def test_breakdown_flops_match_layer_arithmetic():
  """Per dense-block layer: the 3x3 conv, expand and project cost 2 x their multiply-adds
  (+ bias adds); the block costs more than its three convs (activations, residual)."""
  rows = gan_study.measure_breakdown("micro", LR, 1, "shifted", repeats=1)
  pixels = LR * LR
  taps = (3 * LR - 2) ** 2  # XLA counts the (pixel, tap) pairs inside the zero padding only.
  assert [(r["cin"], r["cout"]) for r in rows] == rdb_layers(mesrgan.PRESETS["micro"])
  for r in rows:
    cin, cout, hidden = r["cin"], r["cout"], 6 * r["cin"]
    expect = {"dense 3x3": 2 * taps * cin * cout + pixels * cout,
              "expand": pixels * (2 * cin * hidden + hidden),
              "project": pixels * (2 * hidden * cout + cout)}
    for part, flops in expect.items():
      assert r[part]["gflops"] * 1e9 == pytest.approx(flops, rel=1e-3), part
    pieces = sum(r[p]["gflops"] for p in gan_study.BLOCK_PIECES)
    assert pieces < r["block"]["gflops"] and r["depthwise"]["gflops"] > 0
    assert r["block"]["params"] == inverted_residual(6)(cin, cout)
    assert all(r[p]["ms"] > 0 for p in ("dense 3x3", "block") + gan_study.BLOCK_PIECES)
  verdict = gan_study.breakdown_verdict(rows)
  assert "impl=shifted" in verdict and "the largest is" in verdict


def numpy_psnr_y(pred, gt, crop):
  """BasicSR's PSNR on MATLAB's Y channel, in float64 NumPy (independent of
  sr_jax.quality.metrics)."""
  to8 = lambda x: np.round(np.clip(np.asarray(x, np.float64), 0, 1) * 255)
  y = lambda x: x @ np.array([65.481, 128.553, 24.966]) / 255 + 16
  diff = (y(to8(pred)) - y(to8(gt)))[crop:-crop, crop:-crop]
  return 10 * np.log10(255.0 ** 2 / np.mean(diff ** 2))


def save_run(root, name, preset="micro"):
  """An untrained generator saved as a run's export/params, as training writes it."""
  config = gan_study.model_config(name, preset, "auto")
  module = registry.build_model(config)
  params = gan_study.random_params(module, (1, LR, LR, 3), seed=3)
  exports.save_params(os.path.join(root, "export", "params"), params,
                      {"model": registry.architecture(config)})
  return module, params


def test_quality_rows_match_independent_metrics(tmp_path):
  """The ESRGAN row equals NumPy PSNR of the saved model's outputs and evaluate.evaluate;
  the bicubic row equals NumPy PSNR of MATLAB-bicubic upsampling; LR is MATLAB bicubic."""
  module, params = save_run(str(tmp_path / "esrgan"), "esrgan")
  opts = gan_compare.make_options(preset="micro", runs=[f"esrgan={tmp_path / 'esrgan'}"],
                                  eval_max_size=48, skip_runtime=True, skip_breakdown=True)
  eval_set = gan_study.make_eval_set("", 48, SCALE)
  rows = gan_study.evaluate_runs(opts.runs, eval_set, SCALE, True, ("alex",))
  assert list(rows) == ["bicubic", "esrgan"] and len(eval_set) == 3
  apply = jax.jit(lambda x: module.apply({"params": params}, x))
  for item in eval_set:
    lr = resize.imresize(item["gt"].astype(np.float64), 1 / SCALE)
    np.testing.assert_allclose(item["lq"], np.round(np.clip(lr, 0, 1) * 255) / 255, atol=1e-6)
  bicubic = [numpy_psnr_y(resize.imresize(i["lq"], SCALE), i["gt"], SCALE) for i in eval_set]
  model = [numpy_psnr_y(apply(i["lq"][None])[0], i["gt"], SCALE) for i in eval_set]
  assert rows["bicubic"]["psnr"] == pytest.approx(np.mean(bicubic), abs=1e-4)
  assert rows["esrgan"]["psnr"] == pytest.approx(np.mean(model), abs=1e-4)
  assert rows["bicubic"]["psnr"] > rows["esrgan"]["psnr"]  # An untrained net is no upscaler.
  direct = evaluate.evaluate(lambda p, x: module.apply({"params": p}, x), params, eval_set,
                             crop_border=SCALE, y_channel=True, lpips_nets=("alex",), rmse=True)
  for key in ("psnr", "ssim", "rmse", "lpips_alex"):
    assert rows["esrgan"][key] == pytest.approx(direct[key], rel=1e-5), key
  assert rows["esrgan"]["params"] == rrdb_count(rrdbnet.PRESETS["micro"],
                                                lambda i, o: conv(3, i, o))
  text = gan_compare.compare(opts, ["--runs", "esrgan=W"])  # The whole report, quality only.
  assert "Y channel" in text and "crop border 4" in text and "LPIPS-alex" in text
  assert f"| bicubic | - | 0 | {rows['bicubic']['psnr']:.3f} |" in text
  assert f"| ESRGAN | {tmp_path / 'esrgan'} | {rows['esrgan']['params']:,} | " in text
  assert "## Forward runtime" not in text and "## Where" not in text and "Reference only" in text


def write_meta(directory, model_config):
  """A params directory's meta.json alone (the checks read nothing else)."""
  os.makedirs(directory)
  with open(os.path.join(directory, "meta.json"), "w") as f:
    json.dump({"model": registry.architecture(model_config)}, f)
  return str(directory)


def test_errors_name_the_flag(tmp_path):
  bad = {"--models": dict(models=["srgan", "vdsr"]), "--preset": dict(preset="x9"),
         "--presets": dict(presets=["mesrgan=x2"]), "--batches": dict(batches=["0"]),
         "--conv_impl": dict(conv_impl=["cudnn"]), "--lpips": dict(lpips=["squeeze"]),
         "--presets names": dict(models=["esrgan"], presets=["srgan=micro"]),
         "--lr_size": dict(presets=["esrgan=x2", "mesrgan=micro", "srgan=micro"],
                           lr_size=7)}
  for flag, kwargs in bad.items():
    with pytest.raises(ValueError, match=flag):
      gan_compare.make_options(**kwargs)
  with pytest.raises(ValueError, match="--preset.*MESRGAN"):  # MESRGAN has no x2 preset.
    gan_compare.make_options(preset="x2")
  with pytest.raises(ValueError, match="--runs"):
    gan_compare.make_options(preset="micro", runs=["vdsr=/tmp"])
  with pytest.raises(FileNotFoundError, match="--runs esrgan="):
    gan_compare.make_options(preset="micro", runs=[f"esrgan={tmp_path / 'missing'}"])
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match="--runs esrgan=.*export/params"):
    gan_compare.make_options(preset="micro", runs=[f"esrgan={empty}"])
  nafnet = ml_collections.ConfigDict(dict(name="nafnet", preset="micro", width=0,
                                          dtype="float32", conv_impl="auto"))
  other = write_meta(tmp_path / "nafnet", nafnet)
  with pytest.raises(ValueError, match="--runs esrgan=.*'nafnet'.*not one of"):
    gan_compare.make_options(preset="micro", runs=[f"esrgan={other}"])
  write_meta(tmp_path / "rrdb" / "export" / "params",
             gan_study.model_config("esrgan", "micro", "auto"))
  with pytest.raises(ValueError, match="--runs srgan=.*rrdbnet"):
    gan_compare.make_options(preset="micro", runs=[f"srgan={tmp_path / 'rrdb'}"])
  x2 = write_meta(tmp_path / "x2", gan_study.model_config("esrgan", "x2", "auto"))
  with pytest.raises(ValueError, match="--scale"):
    gan_compare.make_options(preset="micro", runs=[f"esrgan={x2}"])


def test_sr_train_step_benchmark(monkeypatch):
  """benchmark.py on RRDBNet: the step gets LR crop/scale inputs and HR targets; the s12 keys
  use the HR side."""
  c = esrgan_config.get_config("demo")
  c.model.preset, c.objective, c.mesh.data = "micro", "pixel", 1
  c.data.degradation.scale = 1  # arm_config must set the model's own scale.
  arm = benchmark.arm_config(c, "full", 2, 32)
  assert arm.data.degradation.scale == 4
  batch = step_timing.random_batch(arm)
  assert batch["lq"].shape == (2, 8, 8, 3) and batch["gt"].shape == (2, 32, 32, 3)
  monkeypatch.setitem(benchmark.PYTORCH_STEP_MS, ("rrdbnet", "micro", 2, 32), 1000.0)
  params = gan_study.random_params(registry.build_model(c.model), (1, 8, 8, 3))
  (row,) = benchmark.measure_steps(c, params, ["full"], 2, 32, steps=1)
  assert row["ms"] > 0 and row["pytorch_ms"] == 1000.0
  assert "RRDBNet micro, LR 8x8 -> 32x32" in benchmark.report(c, 32, None, [row], 0, 1)
  x4 = ml_collections.ConfigDict(dict(c.model.to_dict(), preset="x4"))
  assert benchmark.with_reference({"ms": 1323.5}, benchmark.PYTORCH_STEP_MS, x4, 4,
                                  128)["speedup"] == pytest.approx(2.0)
  assert benchmark.PYTORCH_FORWARD_MS[("rrdbnet", "x4", 4, 128)] == 821.0
