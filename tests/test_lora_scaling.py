"""lora.scaling: the standard alpha / r against rsLoRA's alpha / sqrt(r) (Kalajdzievski 2023)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import colora_nafnet
from sr_jax.adapt import lora
from sr_jax.config import config_base
from sr_jax.models import registry
from sr_jax.study import arms as arms_lib, select
from sr_jax.train import config_check
from sr_jax.util import jsonfile


def _params():
  rng = np.random.default_rng(0)
  return {"conv": {"kernel": rng.normal(size=(3, 3, 8, 16)).astype(np.float32)}}


def test_rank_stabilized_scale_is_alpha_over_sqrt_rank_and_standard_is_the_default():
  assert config_base.base_config().lora.scaling == "standard"
  params = _params()
  standard = lora.make_plan(params, targets=[".*/kernel"], rank=4, alpha=8.0)
  stable = lora.make_plan(params, targets=[".*/kernel"], rank=4, alpha=8.0,
                          scaling="rank_stabilized")
  assert standard.scale("conv/kernel") == 2.0  # 8 / 4
  assert stable.scale("conv/kernel") == 4.0  # 8 / sqrt(4)
  # The merged kernel carries that factor: W + (alpha / sqrt(r)) * reshape(A @ B).
  rng = np.random.default_rng(1)
  a = rng.normal(size=(72, 4)).astype(np.float32)
  b = rng.normal(size=(4, 16)).astype(np.float32)
  merged = lora.merge(params, {"conv": {"kernel": {"a": a, "b": b}}}, stable)
  expected = params["conv"]["kernel"] + 4.0 * (a @ b).reshape(3, 3, 8, 16)
  np.testing.assert_allclose(np.asarray(merged["conv"]["kernel"]), expected, rtol=1e-5,
                             atol=1e-5)


def test_the_scaling_travels_with_the_plan():
  plan = lora.make_plan(_params(), targets=[".*/kernel"], rank=2, alpha=3.0,
                        scaling="rank_stabilized")
  again = lora.LoraPlan.from_json(plan.to_json())
  assert again == plan and again.scale("conv/kernel") == pytest.approx(3.0 / np.sqrt(2))
  older = {"ranks": {"conv/kernel": 2}, "alphas": {"conv/kernel": 3.0}}  # No 'scaling' key.
  assert lora.LoraPlan.from_json(older).scale("conv/kernel") == 1.5
  assert lora.LoraPlan.from_json(older, "rank_stabilized").scaling == "rank_stabilized"
  with pytest.raises(ValueError, match="rank_stabilized"):
    lora.make_plan(_params(), targets=[".*/kernel"], rank=2, alpha=3.0, scaling="sqrt")


def test_an_unknown_scaling_is_a_config_error():
  c = config_base.base_config()
  c.lora.scaling = "rslora"
  with pytest.raises(config_check.ConfigError, match="lora.scaling='rslora'"):
    config_check.validate(c)


def test_an_allocation_plan_file_carries_the_runs_scaling(tmp_path):
  """The study's and the CoLoRA job's plan files record config.lora.scaling: a recorded scaling
  wins over the config when the file is read, so a file written 'standard' would silently turn
  an rsLoRA run into a standard one (the bug this guards)."""
  config = colora_nafnet.get_config("study_quick")
  config.lora.scaling = "rank_stabilized"
  model = registry.build_preset("nafnet", "micro")
  base = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"]
  path = select.plan_file(config, str(tmp_path), arms_lib.Arm("uniform", 0.07), base, None)
  saved = jsonfile.read(path)
  assert saved["scaling"] == "rank_stabilized"
  plan = lora.LoraPlan.from_json(saved, "standard")
  kernel, rank = plan.ranks[0]
  assert plan.scale(kernel) == pytest.approx(dict(plan.alphas)[kernel] / np.sqrt(rank))
