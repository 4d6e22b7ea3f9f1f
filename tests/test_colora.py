"""CoLoRA: rank allocation under a budget, plan files, and the whole job on a micro NAFNet."""

import json
import logging
import os

import ml_collections
import numpy as np
import pytest

from configs import colora_nafnet
from sr_jax.adapt import colora, lora
from sr_jax.jobs import colora_job
from sr_jax.train import run_setup
from sr_jax.util import exports, trees


def colora_cfg(**overrides):
  c = ml_collections.ConfigDict(dict(budget=0.5, alpha=1.0, beta=0.0, max_rank=0,
                                     depthwise="frozen", tune_extras=False))
  c.update(overrides)
  return c


def toy_base(n_layers=4, c=8):
  """Equal-shape dense 3x3 kernels plus biases, so rank costs are equal."""
  rng = np.random.default_rng(0)
  return {f"l{i}": {"kernel": rng.standard_normal((3, 3, c, c)).astype(np.float32),
                    "bias": np.zeros(c, np.float32)} for i in range(n_layers)}


def used(allocation):
  return sum(r * allocation.rank_costs[p] for p, r in allocation.ranks.items())


@pytest.mark.parametrize("budget", [0.05, 0.2, 0.5, 0.9])
def test_budget_is_respected_and_nearly_used_up(budget):
  base = toy_base()
  scores = {f"l{i}/kernel": s for i, s in enumerate([1e-3, 5e-4, 1e-5, 1e-7])}
  a = colora.allocate(base, scores, colora_cfg(budget=budget), (r".*/kernel",), "")
  assert a.trainable_params <= a.budget_params == int(budget * lora.count(base))
  cheapest = min(a.rank_costs[p] for p, r in a.ranks.items() if r < 8)
  assert a.budget_params - a.trainable_params < cheapest
  assert used(a) == a.adapter_params


def test_higher_contribution_gets_more_rank_and_alpha_beta_shape_it():
  base = toy_base()
  scores = {f"l{i}/kernel": s for i, s in enumerate([1e-3, 5e-4, 1e-4, 1e-6])}
  a = colora.allocate(base, scores, colora_cfg(budget=0.3), (r".*/kernel",), "")
  ranks = [a.ranks[f"l{i}/kernel"] for i in range(4)]
  assert ranks == sorted(ranks, reverse=True) and ranks[0] > ranks[-1]
  uniform = colora.allocate(base, scores, colora_cfg(budget=0.3), (r".*/kernel",), "",
                            uniform=True)
  assert max(uniform.ranks.values()) - min(uniform.ranks.values()) <= 1
  assert colora.allocate(base, scores, colora_cfg(budget=0.3, alpha=0.0), (r".*/kernel",),
                         "").ranks == uniform.ranks
  sharp = colora.allocate(base, scores, colora_cfg(budget=0.3, alpha=3.0), (r".*/kernel",), "")
  assert sharp.ranks["l3/kernel"] <= a.ranks["l3/kernel"]  # Sharper: less for the weak layer.
  floored = colora.allocate(base, scores, colora_cfg(budget=0.3, beta=0.5), (r".*/kernel",), "")
  assert floored.ranks["l3/kernel"] >= a.ranks["l3/kernel"] and floored.ranks["l3/kernel"] > 0
  weights = colora.layer_weights({"a": 2.0, "b": 1.0, "c": 0.0}, 1.0, 0.2)
  np.testing.assert_allclose([weights[k] for k in "abc"], [1.0, 0.6, 0.2])


def test_extras_and_depthwise_count_against_the_budget():
  base = toy_base()
  base["dw"] = {"kernel": np.zeros((3, 3, 1, 8), np.float32)}
  scores = {f"l{i}/kernel": 1.0 for i in range(4)}
  a = colora.allocate(base, scores, colora_cfg(tune_extras=True, depthwise="full"),
                      (r".*/kernel",), "dw/kernel")
  assert "dw/kernel" not in a.ranks  # Depthwise kernels never get an adapter.
  assert a.fixed_params == 4 * 8 + 72
  assert a.extra_trainable == colora.EXTRA_TRAINABLE + ("dw/kernel",)
  with pytest.raises(ValueError, match=r"exceed the CoLoRA budget.*colora.tune_extras=False"):
    colora.allocate(base, scores, colora_cfg(budget=0.0001, tune_extras=True), (r".*/kernel",),
                    "dw/kernel")
  with pytest.raises(ValueError, match="No FAIG score"):
    colora.allocate(base, {}, colora_cfg(), (r".*/kernel",), "")


def test_zero_contribution_layers_get_no_leftover_rank():
  base = toy_base()
  scores = {"l0/kernel": 1.0, "l1/kernel": 0.0, "l2/kernel": 0.0, "l3/kernel": 0.0}
  a = colora.allocate(base, scores, colora_cfg(budget=0.6), (r".*/kernel",), "")
  assert a.ranks == {"l0/kernel": 7, "l1/kernel": 0, "l2/kernel": 0, "l3/kernel": 0}


def test_plan_file_round_trip_and_errors(tmp_path):
  base = toy_base()
  scores = {f"l{i}/kernel": s for i, s in enumerate([4.0, 3.0, 2.0, 1.0])}
  a = colora.allocate(base, scores, colora_cfg(budget=0.2), (r".*/kernel",), "")
  path = str(tmp_path / "allocation.json")
  a.save(path, lora_scale=2.0)
  config = colora_nafnet.get_config("demo")
  config.lora.plan_file = path
  plan = run_setup.lora_plan(config, base)
  assert dict(plan.ranks) == {p: r for p, r in a.ranks.items() if r > 0}
  assert all(plan.scale(p) == 2.0 for p in plan.paths)
  saved = json.loads(open(path).read())
  assert saved["trainable_params"] == a.trainable_params and saved["all_ranks"] == a.ranks
  saved["ranks"]["l0/kernel"] = 99
  open(path, "w").write(json.dumps(saved))
  with pytest.raises(ValueError, match=r"rank 99 for l0/kernel.*\[1, 8\]"):
    run_setup.lora_plan(config, base)
  saved["ranks"] = {"nowhere/kernel": 1}
  open(path, "w").write(json.dumps(saved))
  with pytest.raises(ValueError, match="'nowhere/kernel' is not a kernel of this model"):
    run_setup.lora_plan(config, base)


def micro_colora(**overrides):
  c = colora_nafnet.get_config("demo_ablation")
  c.model.preset = "micro"
  c.data.crop_size, c.data.eval_max_size, c.batch_size = 32, 48, 8
  c.base.num_steps, c.num_steps, c.colora.probe_steps = 2, 2, 2
  c.colora.faig_steps, c.colora.faig_images, c.colora.budget = 2, 8, 0.3
  c.log_every, c.checkpoint_every, c.num_image_summaries = 1, 2, 0
  c.update_from_flattened_dict(overrides)
  return c


def saved_micro_base(directory):
  """A randomly initialised micro NAFNet saved as a base (pre-training is tested elsewhere)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from sr_jax.models import registry  # pylint: disable=g-import-not-at-top
  config = micro_colora()
  params = registry.build_model(config.model).init(jax.random.PRNGKey(0),
                                                   jnp.zeros((1, 32, 32, 3)))["params"]
  exports.save_params(directory, params, {"model": registry.architecture(config.model)})
  return directory


def test_colora_job_runs_every_arm_and_resumes(tmp_path, caplog):
  base_dir = saved_micro_base(str(tmp_path / "given_base"))
  tmp_path = tmp_path / "job"
  caplog.set_level(logging.INFO, logger="absl")
  rows = colora_job.run(micro_colora(**{"base.checkpoint": base_dir}), str(tmp_path))
  assert list(rows) == ["degraded input", "base", "full fine-tuning", "uniform LoRA", "CoLoRA"]
  # Progress: a stage counter, FAIG's points; each arm's own table names it as the final one.
  logged = [r.getMessage() for r in caplog.records]
  stages = [m for m in logged if m.startswith("stage ")]
  assert stages[0] == "stage 1/6: base" and stages[2].startswith("stage 3/6: FAIG")
  assert stages[-1] == "stage 6/6: CoLoRA arm (2 steps)"
  assert any(m.startswith("FAIG: 2/2 path points") for m in logged)
  assert "| CoLoRA |" in (tmp_path / "colora" / "results.md").read_text()
  assert "| lora |" not in (tmp_path / "colora" / "results.md").read_text()
  for arm in ("uniform LoRA", "CoLoRA"):
    assert 0 < rows[arm]["trainable_pct"] <= 30.0 + 1e-6
    assert rows[arm]["export_mb"] > 0  # (The micro model is too small for adapters to be.)
    assert rows[arm]["trainable"] < rows["full fine-tuning"]["trainable"]
    assert rows[arm]["step_ms"] > 0 and rows[arm]["step_memory_mb"] > 0
  assert rows["full fine-tuning"]["trainable_pct"] == 100.0
  table = (tmp_path / "results.md").read_text()
  assert "| CoLoRA |" in table and "ms/step" in table
  for name in ("scores.json", "allocation_colora.json", "allocation_uniform.json",
               "faig_blocks.png", "ranks_colora.png"):
    assert (tmp_path / "faig" / name).exists(), name
  colora_plan = json.loads((tmp_path / "faig" / "allocation_colora.json").read_text())
  # What the allocation paid for is exactly what the arm trained.
  assert rows["CoLoRA"]["trainable"] == colora_plan["trainable_params"]
  # The exported adapter, applied to the base, is bit-for-bit the exported merged model.
  from sr_jax.adapt import adapters  # pylint: disable=g-import-not-at-top
  base_params, _ = adapters.load_base(base_dir)
  applied = trees.flatten(adapters.apply_adapter(
      base_params, adapters.load_adapter(str(tmp_path / "colora" / "export" / "adapters"))))
  merged = trees.flatten(exports.load_params(str(tmp_path / "colora" / "export" /
                                                 "params"))[0])
  assert set(applied) == set(merged)
  for path, value in merged.items():
    np.testing.assert_array_equal(np.asarray(applied[path]), np.asarray(value), err_msg=path)
  adapters_meta = json.loads((tmp_path / "colora" / "export" / "adapters" / "meta.json")
                             .read_text())
  assert adapters_meta["lora_plan"]["ranks"] == colora_plan["ranks"]  # Saved with the adapters.
  # Re-running reuses every stage: the FAIG scores are not recomputed.
  stamp = os.path.getmtime(tmp_path / "faig" / "scores.json")
  again = colora_job.run(micro_colora(**{"base.checkpoint": base_dir}), str(tmp_path))
  assert os.path.getmtime(tmp_path / "faig" / "scores.json") == stamp
  assert again["CoLoRA"]["psnr"] == pytest.approx(rows["CoLoRA"]["psnr"], abs=1e-6)
  # Eval mode evaluates every arm's checkpoint; no probe, no FAIG.
  evaluated = colora_job.run(micro_colora(**{"base.checkpoint": base_dir, "mode": "eval"}),
                             str(tmp_path))
  assert list(evaluated) == list(rows)
  assert evaluated["uniform LoRA"]["psnr"] == pytest.approx(rows["uniform LoRA"]["psnr"],
                                                            abs=1e-6)
  # Another allocation for the same workdir: the colora arm's checkpoints refuse it by name.
  changed = micro_colora(**{"base.checkpoint": base_dir, "colora.alpha": 4.0,
                            "colora.beta": 0.0, "colora.arms": ("colora",)})
  with pytest.raises(ValueError, match="trained with another LoRA plan"):
    colora_job.run(changed, str(tmp_path))


def test_colora_eval_mode_on_an_empty_workdir_names_everything_missing(tmp_path):
  with pytest.raises(FileNotFoundError) as error:
    colora_job.run(micro_colora(mode="eval"), str(tmp_path))
  message = str(error.value)
  assert f"pre-trained base {tmp_path}/base/export/params (2 steps)" in message
  for arm in ("full fine-tuning", "uniform LoRA", "CoLoRA"):
    assert f"checkpoint of the {arm} arm" in message
  assert "CoLoRA allocation" in message and "full fine-tuning allocation" not in message
  assert not list(tmp_path.iterdir())  # Nothing was trained or written.
