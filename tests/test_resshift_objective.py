"""The ResShift objective: its step against a hand computation of the x0 loss, the residual
output, the timestep range, split sampling, the sampling record and the config checks.

A micro UNet keeps each test to seconds; the end-to-end job (base, LoRA on part of the chain,
export, inference, the sampler table) is in tests/test_resshift_job.py.
"""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import resshift as resshift_config
from sr_jax import objectives
from sr_jax.adapt import lora
from sr_jax.data import resize
from sr_jax.diffusion import resshift, resshift_sr
from sr_jax.models import registry
from sr_jax.objectives import resshift as objective_lib, step as step_lib
from sr_jax.train import config_check


def _config(**overrides) -> ml_collections.ConfigDict:
  r = objective_lib.config_section()
  r.num_steps = 6
  r.update(overrides)
  return r


def _objective(plan=None, tx=None, **overrides):
  model = registry.build_model(ml_collections.ConfigDict(dict(
      name="sr3", preset="micro", width=0, dtype="float32", conv_impl="xla", dropout=-1.0)))
  return objective_lib.ResShiftObjective(model, tx, plan, _config(**overrides), scale=4)


def _params(objective, seed=0):
  inputs = registry.example_inputs(objective.model, 16)
  return jax.jit(objective.model.init)(jax.random.PRNGKey(seed), *inputs)["params"]


def _batch(seed=1, n=2):
  rng = np.random.default_rng(seed)
  return {"lq": jnp.asarray(rng.random((n, 4, 4, 3)), jnp.float32),
          "gt": jnp.asarray(rng.random((n, 16, 16, 3)), jnp.float32)}


def test_registered_and_the_record_rebuilds_the_schedule():
  assert objectives.get("resshift").model_kinds == ("diffusion",)
  record = resshift_sr.sampling_record(_config(kappa=1.5, power=0.5, eta_T=0.9801), 4)
  assert record["scale"] == 4 and record["output"] == "residual"
  chain = resshift_sr.schedule_of(record)
  np.testing.assert_allclose(chain.etas, resshift.shift_etas(6, 1.5, 0.5, 0.9801), rtol=1e-12)
  assert chain.kappa == 1.5 and chain.normalize_input and chain.level == "sqrt_eta"


@pytest.mark.parametrize("output", ["residual", "x0"])
def test_step_equals_a_hand_computation_of_the_x0_loss(output):
  """The jitted step's loss: the draws of draw_training, x0_hat = the UNet's output (plus the
  bicubic y for 'residual'), the mean squared error against the HR image in [-1, 1]."""
  tx = optax.sgd(0.1)
  objective = _objective(tx=tx, output=output)
  params = {"base": _params(objective), "lora": {}}
  labels = lora.labels(params, full_finetune=True)
  trainable, frozen = lora.split(params, labels)
  state = step_lib.init_state(trainable, tx, seed=3)
  frozen = objective_lib.frozen_tree(frozen, params["base"], objective, labels)
  batch = _batch()
  new_state, metrics = jax.jit(objective.update)(state, frozen, batch)
  assert int(new_state.step) == 1

  k_draw, _ = jax.random.split(jax.random.fold_in(state.rng, 0))
  y = np.stack([resize.imresize(np.asarray(lq, np.float64), 4) for lq in batch["lq"]]) * 2 - 1
  x0 = np.asarray(batch["gt"], np.float64) * 2 - 1
  draw = resshift.draw_training(objective.chain, jnp.asarray(x0, jnp.float32),
                                jnp.asarray(y, jnp.float32), k_draw)
  t = np.asarray(draw["t"])
  eta = objective.chain.eta[t][:, None, None, None]
  x_t = x0 + eta * (y - x0) + 2.0 * np.sqrt(eta) * np.asarray(draw["noise"])
  x_in = x_t / (1 + 3 * 2.0 * np.sqrt(eta))
  out = np.asarray(objective.model.apply({"params": params["base"]}, jnp.asarray(y, jnp.float32),
                                         jnp.asarray(x_in, jnp.float32),
                                         jnp.asarray(np.sqrt(eta.ravel()), jnp.float32)))
  x0_hat = out + y if output == "residual" else out
  np.testing.assert_allclose(float(metrics["loss"]), np.mean((x0_hat - x0) ** 2), rtol=2e-4)


def test_the_range_restricted_objective_never_leaves_its_range():
  chain = resshift.ShiftSchedule.create(15)
  x = jnp.zeros((8, 4, 4, 3))
  draws = jax.jit(jax.vmap(lambda k: resshift.draw_training(chain, x, x, k, (2, 5))["t"]))(
      jax.random.split(jax.random.PRNGKey(0), 64))
  assert set(np.asarray(draws).ravel()) == {2, 3, 4, 5}
  whole = jax.vmap(lambda k: resshift.draw_training(chain, x, x, k)["t"])(
      jax.random.split(jax.random.PRNGKey(0), 64))
  assert set(np.asarray(whole).ravel()) == set(range(1, 16))
  with pytest.raises(ValueError, match="config.resshift.t_min"):
    _objective(t_min=3, t_max=7)  # T = 6 here.


def test_split_sampling_uses_the_base_outside_the_range():
  objective = _objective(t_min=1, t_max=3)
  assert objective.arm_label("lora") == "lora t in [1, 3] (base outside), ResShift 6 steps"
  base = _params(objective)
  tuned = jax.tree.map(lambda x: x + 0.05, base)
  params = {"base": tuned, "lora": {}, "reference": base}
  rng = np.random.default_rng(2)
  y, x_in = (jnp.asarray(rng.standard_normal((2, 16, 16, 3)), jnp.float32) for _ in range(2))
  level = jnp.full((2,), 0.5)
  predict = jax.jit(objective.without_adapters().sr.predict_x0)
  from_base, from_tuned = predict({"base": base}, y, x_in, level), predict({"base": tuned}, y,
                                                                           x_in, level)
  assert float(jnp.max(jnp.abs(from_base - from_tuned))) > 1e-3
  network = jax.jit(objective.sr.sampling_network)
  for t, want in ((1, from_tuned), (3, from_tuned), (4, from_base), (6, from_base)):
    np.testing.assert_allclose(network(params, y, x_in, level, jnp.full((2,), t, jnp.int32)),
                               want, atol=2e-5)
  everywhere = _objective(t_min=1, t_max=3, base_outside_range=False)
  assert not everywhere.sr.split_sampling
  np.testing.assert_allclose(
      jax.jit(everywhere.sr.sampling_network)(params, y, x_in, level, jnp.full((2,), 6)),
      from_tuned, atol=2e-5)


def test_apply_samples_reproducibly_in_the_unit_range_and_starts_near_bicubic():
  """A fresh residual network's samples stay near the bicubic upscaling it refines."""
  objective = _objective()
  params = {"base": _params(objective), "lora": {}}
  lq = _batch(3, 1)["lq"]
  apply = jax.jit(objective.apply)
  first, again = apply(params, lq), apply(params, lq)
  assert first.shape == (1, 16, 16, 3)
  np.testing.assert_array_equal(first, again)
  assert float(first.min()) >= 0.0 and float(first.max()) <= 1.0
  other = objective.apply(params, lq, seed=1)
  assert float(jnp.max(jnp.abs(other - first))) > 1e-4
  bicubic = np.clip(resize.imresize(np.asarray(lq[0], np.float64), 4), 0, 1)
  x0_objective = _objective(output="x0")
  direct = jax.jit(x0_objective.apply)(params, lq)
  assert np.abs(first[0] - bicubic).mean() < np.abs(direct[0] - bicubic).mean()


def test_config_checks_name_the_keys():
  config = resshift_config.get_config("demo")
  config_check.validate(config)
  assert config.objective == "resshift" and config.resshift.num_steps == 15
  config.resshift.t_min, config.resshift.t_max = 4, 2
  config.resshift.output, config.resshift.level = "eps", "sigma"
  config.resshift.kappa = 0.0
  config.resshift.eta_1 = 0.9999  # Above eta_T = 0.999.
  with pytest.raises(config_check.ConfigError) as error:
    config_check.validate(config)
  for key in ("resshift.t_min", "resshift.output", "resshift.level", "resshift.kappa",
              "resshift.eta_1"):
    assert key in str(error.value)


def test_paper_schedule_through_the_config():
  """The shipped config's chain is the paper's x4 one: sqrt(eta_1) = 0.02 and T = 15."""
  config = resshift_config.get_config()
  chain = resshift_sr.schedule_of(resshift_sr.sampling_record(config.resshift, 4))
  assert chain.num_steps == 15 and math.sqrt(chain.etas[0]) == pytest.approx(0.02)
  assert chain.etas[-1] == pytest.approx(0.999)


def test_eta_1_sets_the_first_step_and_a_record_without_it_keeps_the_papers_rule():
  """resshift.eta_1 reaches the schedule through the record; 0, or a record written before the
  key existed, gives the paper's min((0.04 / kappa)^2, 0.001)."""
  record = resshift_sr.sampling_record(_config(kappa=16.0, eta_1=1e-7), 4)
  chain = resshift_sr.schedule_of(record)
  assert record["eta_1"] == 1e-7 and chain.etas[0] == pytest.approx(1e-7, rel=1e-12)
  np.testing.assert_allclose(chain.etas, resshift.shift_etas(6, 16.0, 0.3, 0.999, 1e-7),
                             rtol=1e-12)
  older = {k: v for k, v in record.items() if k != "eta_1"}
  for paper in (older, dict(record, eta_1=0.0)):
    etas = resshift_sr.schedule_of(paper).etas
    assert etas[0] == pytest.approx((0.04 / 16.0) ** 2, rel=1e-12)
    assert etas[-1] == pytest.approx(0.999, rel=1e-12)


def test_the_demo_runs_kappa_16_and_the_fine_tuning_demo_keeps_the_papers_chain():
  from configs import resshift_finetune  # pylint: disable=g-import-not-at-top
  demo = resshift_config.get_config("demo")
  assert demo.resshift.kappa == 16.0 and demo.num_steps == 4500
  assert resshift_finetune.get_config("demo").resshift.kappa == 2.0
