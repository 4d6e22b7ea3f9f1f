"""The SR3 objective: its step against a hand computation, the timestep range, split sampling,
the jittable MATLAB bicubic, SR3's consistency metric and the forgetting table.

A micro UNet and a 20-step noise schedule keep each test to seconds; the end-to-end job (base,
LoRA on part of the chain, export, inference) is in tests/test_sr3_job.py.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from sr_jax import forgetting
from sr_jax.adapt import lora
from sr_jax.data import resize
from sr_jax.diffusion import samplers, sr3
from sr_jax.models import registry
from sr_jax.objectives import diffusion, step as step_lib
from sr_jax.quality import evaluate

T = 20


def _diffusion_config(**overrides) -> ml_collections.ConfigDict:
  d = diffusion.config_section()
  d.num_timesteps, d.beta_start, d.beta_end = T, 1e-3, 0.2
  d.sampler, d.sample_steps = "ddim", 4
  d.update(overrides)
  return d


def _model_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(name="sr3", preset="micro", width=0, dtype="float32",
                                        conv_impl="xla", dropout=-1.0))


def _objective(plan=None, tx=None, **overrides):
  d = _diffusion_config(**overrides)
  model = registry.build_model(_model_config())
  return diffusion.DiffusionObjective(model, tx, plan, d, scale=4)


def _params(objective, seed=0):
  inputs = registry.example_inputs(objective.model, 16)
  return jax.jit(objective.model.init)(jax.random.PRNGKey(seed), *inputs)["params"]


def test_bicubic_resize_equals_matlab_imresize():
  rng = np.random.default_rng(0)
  images = rng.random((2, 9, 7, 3)).astype(np.float32)
  up = np.asarray(jax.jit(lambda x: sr3.bicubic_resize(x, 4))(images))
  for i in range(2):
    np.testing.assert_allclose(up[i], resize.imresize(images[i].astype(np.float64), 4),
                               atol=2e-6)
  down = np.asarray(sr3.bicubic_resize(up, 0.25))
  np.testing.assert_allclose(down[0], resize.imresize(up[0].astype(np.float64), 0.25),
                             atol=2e-6)


def test_step_equals_a_hand_computation_of_the_epsilon_loss():
  """The jitted step's loss: draws of noisy_batch, the UNet's eps, mean |eps_hat - eps|."""
  tx = optax.sgd(0.1)
  objective = _objective(tx=tx, loss="l2")
  params = {"base": _params(objective), "lora": {}}
  labels = lora.labels(params, full_finetune=True)
  trainable, frozen = lora.split(params, labels)
  state = step_lib.init_state(trainable, tx, seed=3)
  frozen = diffusion.frozen_tree(frozen, params["base"], objective, labels)
  rng = np.random.default_rng(1)
  batch = {"lq": jnp.asarray(rng.random((2, 4, 4, 3)), jnp.float32),
           "gt": jnp.asarray(rng.random((2, 16, 16, 3)), jnp.float32)}
  _, metrics = jax.jit(objective.update)(state, frozen, batch)

  k_noise, _ = jax.random.split(jax.random.fold_in(state.rng, 0))
  draw = objective.noisy_batch(k_noise, batch)
  y0 = np.asarray(batch["gt"], np.float64) * 2 - 1
  gamma = np.asarray(draw["gamma"], np.float64)[:, None, None, None]
  expected_y_t = np.sqrt(gamma) * y0 + np.sqrt(1 - gamma) * np.asarray(draw["eps"])
  np.testing.assert_allclose(draw["y_t"], expected_y_t, atol=1e-5)
  condition = resize.imresize(np.asarray(batch["lq"][0], np.float64), 4) * 2 - 1
  np.testing.assert_allclose(objective.condition(batch["lq"])[0], condition, atol=1e-5)
  eps_hat = jax.jit(objective.model.apply)({"params": params["base"]},
                                           objective.condition(batch["lq"]), draw["y_t"],
                                           jnp.sqrt(draw["gamma"]))
  expected = np.mean(np.square(np.asarray(eps_hat, np.float64) - np.asarray(draw["eps"])))
  np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["t_mean"]), np.mean(draw["t"]))


def test_the_range_restricted_objective_never_leaves_its_range():
  objective = _objective(t_min=5, t_max=9)
  gammas = objective.noise.gammas
  batch = {"gt": jnp.zeros((8, 4, 4, 3))}
  draw = jax.jit(jax.vmap(lambda k: objective.noisy_batch(k, batch)))(
      jax.random.split(jax.random.PRNGKey(0), 64))
  t, gamma = np.asarray(draw["t"]).ravel(), np.asarray(draw["gamma"], np.float64).ravel()
  assert set(t) == set(range(5, 10))
  assert np.all(gamma >= gammas[t] - 1e-7) and np.all(gamma <= gammas[t - 1] + 1e-7)
  assert gamma.min() >= gammas[9] - 1e-7 and gamma.max() <= gammas[4] + 1e-7


def test_a_range_outside_the_schedule_is_an_error_naming_the_key():
  with pytest.raises(ValueError, match="t_max"):
    _objective(t_min=1, t_max=T + 1)
  with pytest.raises(ValueError, match="config.diffusion.loss"):
    _objective(loss="huber")


def test_split_sampling_uses_the_base_outside_the_range():
  objective = _objective(t_min=1, t_max=8)
  base = _params(objective)
  tuned = jax.tree.map(lambda x: x + 0.05, base)
  params = {"base": tuned, "lora": {}, "reference": base}
  rng = np.random.default_rng(2)
  cond = jnp.asarray(rng.standard_normal((1, 16, 16, 3)), jnp.float32)
  y_t = jnp.asarray(rng.standard_normal((1, 16, 16, 3)), jnp.float32)
  level = jnp.asarray([0.5])
  plain = objective.without_adapters()
  denoise = jax.jit(plain.denoise)
  eps_base, eps_tuned = denoise({"base": base}, cond, y_t, level), denoise({"base": tuned}, cond,
                                                                            y_t, level)
  assert float(jnp.max(jnp.abs(eps_base - eps_tuned))) > 1e-3
  denoiser = jax.jit(objective._sampling_denoiser)  # pylint: disable=protected-access
  for t, want in ((1, eps_tuned), (8, eps_tuned), (9, eps_base), (T, eps_base)):
    np.testing.assert_allclose(denoiser(params, cond, y_t, level, jnp.int32(t)), want,
                               atol=2e-5)  # jit vs eager rounding; the models differ by >1e-3.
  everywhere = _objective(t_min=1, t_max=8, base_outside_range=False)
  np.testing.assert_allclose(
      jax.jit(everywhere._sampling_denoiser)(params, cond, y_t, level, jnp.int32(T)),  # pylint: disable=protected-access
      eps_tuned, atol=2e-5)


def test_apply_samples_reproducibly_in_the_unit_range():
  objective = _objective()
  params = {"base": _params(objective), "lora": {}}
  lq = jnp.asarray(np.random.default_rng(3).random((1, 4, 4, 3)), jnp.float32)
  apply = jax.jit(objective.apply)
  first, again = apply(params, lq), apply(params, lq)
  assert first.shape == (1, 16, 16, 3)
  np.testing.assert_array_equal(first, again)
  assert float(first.min()) >= 0.0 and float(first.max()) <= 1.0
  other = objective.apply(params, lq, seed=1, sampler=samplers.SamplerConfig("ddpm", 4))
  assert float(jnp.max(jnp.abs(other - first))) > 1e-3


def test_the_spacing_key_reaches_the_sampler_and_its_label():
  fast = _objective(sampler="dpmpp_2m", sample_steps=5)
  assert fast.sr3.sampler.spacing == "auto" and fast.sampler_label == "DPM-Solver++(2M) 5 steps"
  uniform = _objective(sampler="dpmpp_2m", sample_steps=5, spacing="uniform")
  assert uniform.sampler_label == "DPM-Solver++(2M) 5 steps, uniform spacing"
  ts = samplers.timesteps(uniform.noise, uniform.sr3.sampler)
  np.testing.assert_array_equal(ts, samplers.sampling_timesteps(T, 5))
  assert not np.array_equal(ts, samplers.timesteps(fast.noise, fast.sr3.sampler))
  assert _objective(sampler="ddpm", sample_steps=0).sampler_label == f"DDPM {T} steps"
  with pytest.raises(ValueError, match="config.diffusion.spacing"):
    _objective(spacing="karras")


def test_consistency_is_the_mse_of_the_downscaled_output_in_units_of_1e5():
  rng = np.random.default_rng(4)
  hr = rng.random((16, 16, 3))
  lr = resize.imresize(hr, 0.25)
  assert evaluate.consistency(hr, lr, 4) == pytest.approx(0.0, abs=1e-9)
  np.testing.assert_allclose(evaluate.consistency(hr, lr + 0.01, 4), 1e-4 * 1e5, rtol=1e-6)
  with pytest.raises(ValueError, match="scale"):
    evaluate.consistency(hr, lr, 2)


def test_the_forgetting_table_reports_changes_against_the_base():
  rows = {"bicubic": {"psnr": 20.0, "ssim": 0.5},
          "base": {"psnr": 22.0, "ssim": 0.60, "lpips_alex": 0.30},
          "lora, DDIM 50 steps": {"psnr": 23.5, "ssim": 0.65, "lpips_alex": 0.25},
          "base @ general set": {"psnr": 25.0, "ssim": 0.70, "lpips_alex": 0.20},
          "lora, DDIM 50 steps @ general set": {"psnr": 24.0, "ssim": 0.69,
                                                "lpips_alex": 0.22}}
  table = forgetting.change_table(rows)
  assert "| PSNR (dB) (higher is better) | 22.0000 | 23.5000 | +1.5000 | 25.0000 | 24.0000 | " \
         "-1.0000 |" in table
  assert "+0.0500 |" in table and "-0.0500 |" in table  # SSIM new-domain gain; LPIPS drop.
  assert "consistency" not in table  # Not evaluated: no column.
  with pytest.raises(ValueError, match="general_set"):
    forgetting.change_table({k: v for k, v in rows.items() if "general" not in k})
