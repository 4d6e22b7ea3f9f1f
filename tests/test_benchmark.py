"""The benchmark's forward and train-step measurements on micro NAFNet and Restormer, 32x32."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import lora_nafnet
from sr_jax.adapt import lora
from sr_jax.models import registry
from sr_jax.tools import benchmark
from sr_jax.train import run_setup

SIZE, BATCH = 32, 2
# Config overrides per model: the job config names NAFNet's output conv ('ending'), Restormer's
# is 'output'. Restormer measures only the LoRA arm: each step compile costs ~10 s on 2 cores,
# and the full arm's path is the same as NAFNet's.
MODELS = {
    "nafnet": ({}, ["full", "lora"]),
    "restormer": ({"lora.rank_overrides": (),
                   "lora.extra_trainable": (r".*/bias", r".*/scale", r".*/temperature",
                                            r"output/kernel")}, ["lora"]),
}


def micro_config(name):
  c = lora_nafnet.get_config("demo")
  c.model.name, c.model.preset = name, "micro"
  c.lora.rank, c.lora.alpha = 2, 2.0  # Restormer micro's down-sampling convs have 4 outputs.
  c.mesh.data = 1  # The tests simulate 8 devices; one keeps batch 2 unsharded.
  c.update_from_flattened_dict(MODELS[name][0])
  return c


def param_shapes(config):
  model = registry.build_model(config.model)
  x = jax.ShapeDtypeStruct((1, SIZE, SIZE, 3), jnp.float32)
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), x)["params"]


def random_params(config):
  """Host parameters of the right shapes, without compiling `model.init` (~5 s per model on 2
  cores): the measurements take any parameters, and their values do not matter here."""
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda s: rng.normal(0, 0.1, s.shape).astype(s.dtype),
                      param_shapes(config))


def expected_trainable(config):
  """(trainable, base) parameter counts of a run of `config`, from shapes alone."""
  base = param_shapes(config)
  adapters = {}
  if config.lora.enabled:
    plan = run_setup.lora_plan(config, base)
    adapters = jax.eval_shape(functools.partial(lora.init_adapters, plan=plan),
                              jax.random.PRNGKey(1), base)
  params = {"base": base, "lora": adapters}
  labels = lora.labels(params, config.lora.extra_trainable,
                       full_finetune=not config.lora.enabled)
  return lora.count(lora.split(params, labels)[0]), lora.count(base)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_and_steps_report(name, monkeypatch):
  """Counts match a run's, LoRA trains less, costs are positive, ratios come from the table."""
  c, arms = micro_config(name), MODELS[name][1]
  monkeypatch.setitem(benchmark.PYTORCH_STEP_MS, (name, "micro", BATCH, SIZE), 1000.0)
  params = random_params(c)
  fwd = benchmark.measure_forward(c, params, 1, SIZE, repeats=1)
  rows = benchmark.measure_steps(c, params, arms, BATCH, SIZE, steps=1)
  num_base = expected_trainable(c)[1]
  assert fwd["params"] == num_base
  assert fwd["ms"] > 0 and fwd["gflops"] > 0 and fwd["compile_s"] > 0
  assert fwd["pytorch_ms"] is None and fwd["speedup"] is None  # No micro forward reference.
  for r, arm in zip(rows, arms):
    trainable, _ = expected_trainable(benchmark.arm_config(c, arm, BATCH, SIZE))
    assert r["trainable"] == trainable
    assert r["pct"] == pytest.approx(100 * trainable / num_base)
    assert r["ms"] > 0 and r["gflops"] > 0 and r["temp_mb"] >= 0 and r["batch"] == BATCH
    assert r["pytorch_ms"] == 1000.0
    assert r["speedup"] == pytest.approx(1000.0 / r["ms"])
    assert r["time_ratio"] == pytest.approx(r["ms"] / 1000.0)
  by_arm = dict(zip(arms, rows))
  assert 0 < by_arm["lora"]["trainable"] < num_base and by_arm["lora"]["arm"] == "LoRA r=2"
  if "full" in by_arm:
    assert by_arm["full"]["trainable"] == num_base and by_arm["full"]["arm"] == "full fine-tuning"
  text = benchmark.report(c, SIZE, fwd, rows, repeats=1, num_steps=1)
  assert f"{benchmark.DISPLAY_NAMES[name]} micro, 32x32" in text
  assert "Forward pass" in text and "| LoRA r=2 |" in text
  assert f"{rows[0]['speedup']:.2f}x" in text and "time ratio" in text
  assert ("LoRA r=2 / full fine-tuning" in text) == (len(rows) == 2)


def test_reference_table_and_arms():
  """The PyTorch reference keys, and bad --arms values rejected before any measurement."""
  nafnet = micro_config("nafnet").model
  nafnet.preset = "sidd_w32"
  r = benchmark.with_reference({"ms": 830.5}, benchmark.PYTORCH_STEP_MS, nafnet, 4, 128)
  assert r["pytorch_ms"] == 1661.0 and r["speedup"] == pytest.approx(2.0)
  assert r["time_ratio"] == pytest.approx(0.5)
  assert benchmark.PYTORCH_FORWARD_MS[("nafnet", "sidd_w32", 4, 128)] == 432.0
  assert benchmark.PYTORCH_FORWARD_MS[("restormer", "default", 1, 128)] == 2300.0
  assert benchmark.PYTORCH_STEP_MS[("restormer", "default", 2, 128)] == 50_000.0
  assert benchmark.with_reference({"ms": 1.0}, benchmark.PYTORCH_STEP_MS, nafnet, 2,
                                  128)["speedup"] is None  # No batch-2 NAFNet reference.
  nafnet.width = 16  # Another architecture under the same preset name: no reference.
  assert benchmark.with_reference({"ms": 1.0}, benchmark.PYTORCH_STEP_MS, nafnet, 4,
                                  128)["pytorch_ms"] is None
  benchmark.check_arms(["full", "lora"])
  with pytest.raises(ValueError, match="--arms"):
    benchmark.check_arms(["full", "qlora"])


def test_roofline_rates_are_two_positive_numbers():
  rates = benchmark._rates  # pylint: disable=protected-access
  assert rates([]) is None
  assert rates(["247000", "3350"]) == (247000.0, 3350.0)
  for bad in (["1"], ["a", "2"], ["0", "2"]):
    with pytest.raises(benchmark.app.UsageError, match="--roofline_rates"):
      rates(bad)
