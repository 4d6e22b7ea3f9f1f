"""Tests for sr_jax.diffusion.samplers: step formulas against float64 numpy, recovery of a
known image with a perfect noise oracle, reproducibility under chunking, jit and a mesh.

The oracle denoiser returns the exact noise of y_t for a known x0 (passed as the condition),
so every sampler must land on x0: DDPM by its posterior, DDIM by construction.
"""

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sr_jax.diffusion import samplers, schedule as schedule_lib
from sr_jax.tools import sr3_sampling
from sr_jax.util import sharding

SMALL = schedule_lib.NoiseSchedule.create("linear", 20, 1e-3, 0.3)


def _image(seed: int = 0, shape=(2, 8, 8, 3)) -> np.ndarray:
  return np.random.default_rng(seed).uniform(-0.9, 0.9, shape).astype(np.float32)


def oracle(params, condition, y_t, noise_level, t):
  """The exact eps for x0 = condition, reading gamma from the noise level."""
  del params, t
  g = (noise_level ** 2)[:, None, None, None]
  return (y_t - jnp.sqrt(g) * condition) / jnp.sqrt(1.0 - g)


# ----------------------------------------------------------------------------------------------
# Configuration and timesteps.


@pytest.mark.parametrize("kwargs,key", [
    (dict(kind="euler"), "config.diffusion.sampler"),
    (dict(num_steps=-1), "config.diffusion.sample_steps"),
    (dict(eta=1.5), "config.diffusion.eta"),
])
def test_sampler_config_validation(kwargs, key):
  with pytest.raises(ValueError, match=key):
    samplers.SamplerConfig(**kwargs)


@pytest.mark.parametrize("total", [1, 2, 7, 20, 1000, 2000])
def test_sampling_timesteps(total):
  for n in sorted({0, 1, 2, 3, 5, 10, 49, 50, 100, 999, total - 1, total, total + 5}):
    ts = samplers.sampling_timesteps(total, n)
    expected = total if n == 0 or n >= total else max(n, 1)
    assert len(ts) == expected == len(set(ts.tolist()))
    assert ts[0] == total and np.all(np.diff(ts) < 0) and ts.min() >= 1
    if len(ts) >= 2:
      assert ts[-1] == 1
  np.testing.assert_array_equal(samplers.sampling_timesteps(total, 0), np.arange(total, 0, -1))


def test_sampling_timesteps_are_evenly_spaced():
  gaps = -np.diff(samplers.sampling_timesteps(2000, 50))
  assert gaps.min() >= 40 and gaps.max() <= 41


# ----------------------------------------------------------------------------------------------
# One step against numpy.


def _ref_x0(y_t, eps, g_t, clip):
  x0 = (y_t - np.sqrt(1 - g_t) * eps) / np.sqrt(g_t)
  return np.clip(x0, -1, 1) if clip else x0


def _ref_ddpm(y_t, eps, g_t, g_s, z, clip):
  a, x0 = g_t / g_s, _ref_x0(y_t, eps, g_t, clip)
  mean = (1 - a) * np.sqrt(g_s) / (1 - g_t) * x0 + (1 - g_s) * np.sqrt(a) / (1 - g_t) * y_t
  return mean + np.sqrt((1 - a) * (1 - g_s) / (1 - g_t)) * z


def _ref_ddim(y_t, eps, g_t, g_s, eta, z, clip):
  x0 = _ref_x0(y_t, eps, g_t, clip)
  if clip:
    eps = (y_t - np.sqrt(g_t) * x0) / np.sqrt(1 - g_t)
  sigma = eta * np.sqrt((1 - g_s) / (1 - g_t)) * np.sqrt(1 - g_t / g_s)
  return np.sqrt(g_s) * x0 + np.sqrt(1 - g_s - sigma ** 2) * eps + sigma * z


def _step_inputs(seed=0):
  rng = np.random.default_rng(seed)
  y_t, eps, z = (rng.standard_normal((2, 4, 4, 3)) for _ in range(3))
  return y_t, eps, z, (jnp.asarray(v, jnp.float32) for v in (y_t, eps, z))


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("t,s", [(20, 19), (12, 7), (3, 1), (1, 0)])
def test_ddpm_step_matches_numpy(t, s, clip):
  y_t, eps, z, (jy, je, jz) = _step_inputs()
  g_t, g_s = SMALL.gammas[t], SMALL.gammas[s]
  got = samplers.ddpm_step(jy, je, g_t, g_s, jz, clip)
  np.testing.assert_allclose(got, _ref_ddpm(y_t, eps, g_t, g_s, z, clip), rtol=1e-5, atol=1e-5)
  # Traced gammas give the same step (float32 coefficients).
  traced = jax.jit(functools.partial(samplers.ddpm_step, clip_x0=clip))(jy, je, g_t, g_s, jz)
  np.testing.assert_allclose(traced, got, rtol=1e-4, atol=1e-4)


def test_ddpm_full_chain_step_is_the_classic_update():
  """Posterior-mean form = (y_t - (1 - a_t) / sqrt(1 - g_t) eps) / sqrt(a_t) + sigma_t z."""
  y_t, eps, z, (jy, je, jz) = _step_inputs(1)
  for t in (20, 10, 2, 1):
    g_t, g_prev, beta = SMALL.gammas[t], SMALL.gammas[t - 1], SMALL.betas[t - 1]
    a_t = 1 - beta
    sigma = np.sqrt(beta * (1 - g_prev) / (1 - g_t))
    classic = (y_t - (1 - a_t) / np.sqrt(1 - g_t) * eps) / np.sqrt(a_t) + sigma * z
    np.testing.assert_allclose(_ref_ddpm(y_t, eps, g_t, g_prev, z, False), classic, atol=1e-10)
    got = samplers.ddpm_step(jy, je, g_t, g_prev, jz, clip_x0=False)
    np.testing.assert_allclose(got, classic, rtol=1e-5, atol=1e-5)


def test_ddpm_last_step_adds_no_noise():
  _, _, _, (jy, je, jz) = _step_inputs()
  a = samplers.ddpm_step(jy, je, SMALL.gammas[1], 1.0, jz)
  b = samplers.ddpm_step(jy, je, SMALL.gammas[1], 1.0, 100 * jz)
  np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("t,s", [(20, 15), (5, 1), (1, 0)])
def test_ddim_step_matches_numpy(t, s, eta, clip):
  y_t, eps, z, (jy, je, jz) = _step_inputs(2)
  g_t, g_s = SMALL.gammas[t], SMALL.gammas[s]
  got = samplers.ddim_step(jy, je, g_t, g_s, eta, jz, clip)
  np.testing.assert_allclose(got, _ref_ddim(y_t, eps, g_t, g_s, eta, z, clip),
                             rtol=1e-5, atol=1e-5)


def test_ddim_eta():
  _, _, _, (jy, je, jz) = _step_inputs(3)
  g_t, g_s = SMALL.gammas[15], SMALL.gammas[9]
  a = samplers.ddim_step(jy, je, g_t, g_s, 0.0, jz)
  np.testing.assert_array_equal(a, samplers.ddim_step(jy, je, g_t, g_s, 0.0, -3 * jz))
  sigma = samplers.ddim_coefficients(g_t, g_s, 1.0).noise
  np.testing.assert_allclose(sigma, np.sqrt((1 - g_s) / (1 - g_t) * (1 - g_t / g_s)), rtol=1e-12)
  # eta = 1 has the ancestral sampler's noise.
  np.testing.assert_allclose(sigma, samplers.ddpm_coefficients(g_t, g_s).noise, rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# Whole chains with a perfect oracle.


@pytest.mark.parametrize("config", [
    samplers.SamplerConfig("ddpm", 0),
    samplers.SamplerConfig("ddpm", 7),
    samplers.SamplerConfig("ddpm", 0, clip_x0=False),
    samplers.SamplerConfig("ddim", 5, eta=0.0),
    samplers.SamplerConfig("ddim", 5, eta=1.0),
    samplers.SamplerConfig("ddim", 20, eta=0.0, clip_x0=False),
])
def test_oracle_recovers_the_image(config):
  x0 = _image()
  y = samplers.sample(oracle, {}, jnp.asarray(x0), SMALL, config, jax.random.PRNGKey(0))
  assert y.shape == x0.shape and y.dtype == jnp.float32
  np.testing.assert_allclose(y, x0, atol=1e-4)


def test_oracle_recovers_the_image_on_sr3_schedule():
  """T = 2000, beta 1e-6 -> 1e-2. Near the data end 1 - gamma is ~1e-6, which float32 holds
  to a few percent when the oracle squares its noise level; an oracle that reads gamma from
  the float64 table by t is exact to rounding."""
  noise = schedule_lib.NoiseSchedule.create("linear", 2000, 1e-6, 1e-2)
  sqrt_g = jnp.asarray(np.sqrt(noise.gammas), jnp.float32)
  sqrt_1mg = jnp.asarray(np.sqrt(1 - noise.gammas), jnp.float32)

  def exact(params, condition, y_t, noise_level, t):
    del params, noise_level
    return (y_t - sqrt_g[t] * condition) / sqrt_1mg[t]

  x0 = jnp.asarray(_image(1, (1, 4, 4, 3)))
  for config in (samplers.SamplerConfig("ddpm", 0), samplers.SamplerConfig("ddim", 50)):
    y = samplers.sample(exact, {}, x0, noise, config, jax.random.PRNGKey(3))
    np.testing.assert_allclose(y, x0, atol=1e-6)
    y = samplers.sample(oracle, {}, x0, noise, config, jax.random.PRNGKey(3))
    np.testing.assert_allclose(y, x0, atol=3e-4)


def test_denoiser_sees_the_scheduled_timesteps():
  config = samplers.SamplerConfig("ddim", 6, eta=1.0)
  table = jnp.asarray(SMALL.gammas, jnp.float32)
  seen = []

  def by_timestep(params, condition, y_t, noise_level, t):
    jax.debug.callback(seen.append, t, ordered=True)
    g = table[t]  # The oracle only works if t is the step's own timestep.
    same = jnp.all(jnp.abs(noise_level ** 2 - g) < 1e-6)
    eps = oracle(params, condition, y_t, jnp.full_like(noise_level, jnp.sqrt(g)), t)
    return jnp.where(same, eps, jnp.nan)

  x0 = _image(2)
  y = samplers.sample(by_timestep, {}, jnp.asarray(x0), SMALL, config, jax.random.PRNGKey(0),
                      chunk_size=4)
  jax.effects_barrier()
  np.testing.assert_array_equal(np.asarray(seen), samplers.sampling_timesteps(20, 6))
  np.testing.assert_allclose(y, x0, atol=1e-4)


# ----------------------------------------------------------------------------------------------
# Reproducibility, chunking, jit and sharding.


def _noisy_denoiser(params, condition, y_t, noise_level, t):
  """An imperfect, parameterised denoiser: samples then depend on every step's noise."""
  del t
  return params["w"] * oracle(None, condition, y_t, noise_level, None) + params["b"] * y_t


PARAMS = {"w": jnp.float32(0.9), "b": jnp.float32(0.05)}
DDPM = samplers.SamplerConfig("ddpm", 0)


def test_chunking_and_progress_do_not_change_the_sample():
  x0 = jnp.asarray(_image(3))
  rng = jax.random.PRNGKey(7)
  run = functools.partial(samplers.sample, _noisy_denoiser, PARAMS, x0, SMALL, DDPM)
  whole = run(rng)
  reports = []
  for kwargs in (dict(chunk_size=7), dict(progress=lambda d, n: reports.append((d, n))),
                 dict(chunk_size=20)):
    np.testing.assert_array_equal(run(rng, **kwargs), whole)
  assert [d for d, _ in reports] == list(range(1, 21)) and {n for _, n in reports} == {20}
  assert not np.allclose(run(jax.random.PRNGKey(8)), whole, atol=1e-3)


def test_chunks_compile_once_per_length():
  x0 = jnp.asarray(_image(4))
  rng = jax.random.PRNGKey(0)
  traces = []

  def counting(params, condition, y_t, noise_level, t):
    traces.append(y_t.shape)  # Runs once per trace, not per step.
    return _noisy_denoiser(params, condition, y_t, noise_level, t)

  for params in (PARAMS, {"w": jnp.float32(1.0), "b": jnp.float32(0.0)}):
    samplers.sample(counting, params, x0, SMALL, DDPM, rng, chunk_size=8)
  assert len(traces) == 2  # Chunks of 8 and the last 4; params are arguments, not constants.


def test_progress_logger(caplog):
  caplog.set_level(logging.INFO, logger="absl")
  log = samplers.progress_logger("DDPM")
  log(5, 20)
  log(20, 20)
  assert "DDPM: 5/20 steps" in caplog.text and "DDPM: 20/20 steps" in caplog.text
  assert "ETA 0 s" in caplog.text


def test_sample_inside_jit():
  x0 = jnp.asarray(_image(5))
  rng = jax.random.PRNGKey(1)
  for config in (DDPM, samplers.SamplerConfig("ddim", 5, eta=0.5)):
    jitted = jax.jit(lambda p, c, r, config=config: samplers.sample(
        _noisy_denoiser, p, c, SMALL, config, r))
    np.testing.assert_allclose(jitted(PARAMS, x0, rng),
                               samplers.sample(_noisy_denoiser, PARAMS, x0, SMALL, config, rng),
                               rtol=1e-5, atol=1e-5)


def test_sample_on_a_mesh_matches_one_device():
  mesh = sharding.make_mesh()
  assert mesh.shape[sharding.DATA] == 8
  x0 = jnp.asarray(_image(6, (8, 4, 4, 3)))
  rng = jax.random.PRNGKey(2)
  config = samplers.SamplerConfig("ddim", 6, eta=1.0)
  plain = samplers.sample(_noisy_denoiser, PARAMS, x0, SMALL, config, rng)
  chunked = samplers.sample(_noisy_denoiser, PARAMS, x0, SMALL, config, rng, mesh=mesh,
                            chunk_size=4)
  assert chunked.sharding.is_equivalent_to(sharding.batch_sharding(mesh), 4)
  jitted = jax.jit(lambda p, c, r: samplers.sample(_noisy_denoiser, p, c, SMALL, config, r,
                                                   mesh=mesh))(PARAMS, x0, rng)
  eager = samplers.sample(_noisy_denoiser, PARAMS, x0, SMALL, config, rng, mesh=mesh)
  for y in (chunked, jitted, eager):
    np.testing.assert_allclose(y, plain, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="multiple"):
    samplers.sample(_noisy_denoiser, PARAMS, x0[:6], SMALL, config, rng, mesh=mesh)


# ----------------------------------------------------------------------------------------------
# DPM-Solver++(2M) and lambda-spaced timesteps.


def _lam(g):
  with np.errstate(divide="ignore"):
    return np.log(np.sqrt(g) / np.sqrt(1 - g))


def _ref_dpmpp_2m(x_T, data_pred, gammas):
  """Lu et al. 2022, Algorithm 2 (DPM-Solver++(2M)) over t_0 > ... > t_M with the given gammas;
  data_pred(x, i) is x_theta(x, t_i). The last step is first order (lower_order_final)."""
  alpha, sigma, lam = np.sqrt(gammas), np.sqrt(1 - gammas), _lam(gammas)
  M = len(gammas) - 1
  prev = data_pred(x_T, 0)
  h = lam[1] - lam[0]
  x = sigma[1] / sigma[0] * x_T - alpha[1] * (np.exp(-h) - 1) * prev
  for i in range(2, M + 1):
    cur = data_pred(x, i - 1)
    h, h_prev = lam[i] - lam[i - 1], lam[i - 1] - lam[i - 2]
    if i == M:  # lower_order_final: D = x_theta(x_{t_{M-1}}).
      d = cur
    else:
      r = h_prev / h
      d = (1 + 1 / (2 * r)) * cur - 1 / (2 * r) * prev
    x = sigma[i] / sigma[i - 1] * x - alpha[i] * (np.exp(-h) - 1) * d
    prev = cur
  return x


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("prev,t,s", [(None, 20, 15), (20, 15, 9), (9, 4, 2), (2, 1, 0)])
def test_dpmpp_2m_step_matches_numpy(prev, t, s, clip):
  y_t, eps, x0_prev, (jy, je, jp) = _step_inputs(4)
  g = SMALL.gammas
  g_prev = None if prev is None else g[prev]
  got, x0_hat = samplers.dpmpp_2m_step(jy, je, None if prev is None else jp, g[t], g[s], g_prev,
                                       clip_x0=clip)
  x0 = _ref_x0(y_t, eps, g[t], clip)
  np.testing.assert_allclose(x0_hat, x0, rtol=1e-5, atol=1e-5)
  a_s, sig_t, sig_s = np.sqrt(g[s]), np.sqrt(1 - g[t]), np.sqrt(1 - g[s])
  h = _lam(g[s]) - _lam(g[t])
  d = x0
  if prev is not None and s > 0:
    r = (_lam(g[t]) - _lam(g[prev])) / h
    d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_prev
  ref = sig_s / sig_t * y_t - a_s * (np.exp(-h) - 1) * d
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_dpmpp_2m_first_step_is_ddim():
  _, _, _, (jy, je, jp) = _step_inputs(5)
  g_t, g_s = SMALL.gammas[18], SMALL.gammas[11]
  first, _ = samplers.dpmpp_2m_step(jy, je, jp, g_t, g_s, None)
  np.testing.assert_allclose(first, samplers.ddim_step(jy, je, g_t, g_s, 0.0, jp), atol=1e-6)


@pytest.mark.parametrize("spacing", ["uniform", "logsnr"])
@pytest.mark.parametrize("clip", [False, True])
def test_dpmpp_2m_chain_matches_algorithm_2(spacing, clip):
  x0 = _image(7)
  rng = jax.random.PRNGKey(4)
  config = samplers.SamplerConfig("dpmpp_2m", 6, clip_x0=clip, spacing=spacing)
  got = samplers.sample(_noisy_denoiser, PARAMS, jnp.asarray(x0), SMALL, config, rng)
  ts = samplers.timesteps(SMALL, config)
  gammas = SMALL.gammas[np.append(ts, 0)]

  def data_pred(x, i):  # _noisy_denoiser's eps in float64, then its x0.
    g = gammas[i]
    eps = 0.9 * (x - np.sqrt(g) * x0) / np.sqrt(1 - g) + 0.05 * x
    pred = (x - np.sqrt(1 - g) * eps) / np.sqrt(g)
    return np.clip(pred, -1, 1) if clip else pred

  x_T = np.asarray(jax.random.normal(jax.random.fold_in(rng, 0), x0.shape), np.float64)
  np.testing.assert_allclose(got, _ref_dpmpp_2m(x_T, data_pred, gammas), rtol=1e-4, atol=1e-4)


def _gaussian_toy(mu=0.3, sd=0.5):
  """SR3's schedule, data N(mu, sd^2) per pixel, its exact eps predictor by timestep, and the
  probability-flow ODE's exact end: x at t = 1 mapped to its x0 prediction."""
  noise = schedule_lib.NoiseSchedule.create("linear", 2000, 1e-6, 1e-2)
  g = noise.gammas
  a, s = (jnp.asarray(v, jnp.float32) for v in (np.sqrt(g), np.sqrt(1 - g)))

  def eps(params, condition, y_t, noise_level, t):
    del params, condition, noise_level
    return s[t] * (y_t - a[t] * mu) / (a[t] ** 2 * sd ** 2 + s[t] ** 2)

  def exact(x_T):
    z = (x_T - np.sqrt(g[-1]) * mu) / np.sqrt(g[-1] * sd ** 2 + 1 - g[-1])
    return mu + np.sqrt(g[1]) * sd ** 2 / np.sqrt(g[1] * sd ** 2 + 1 - g[1]) * z

  return noise, eps, exact


def test_dpmpp_2m_converges_at_second_order_on_a_gaussian():
  noise, eps, exact = _gaussian_toy()
  rng = jax.random.PRNGKey(0)
  condition = jnp.zeros((2, 8, 8, 3))
  ref = exact(np.asarray(jax.random.normal(jax.random.fold_in(rng, 0), condition.shape)))

  def error(kind, n):
    config = samplers.SamplerConfig(kind, n, clip_x0=False)
    y = samplers.sample(eps, {}, condition, noise, config, rng)
    return float(np.abs(np.asarray(y, np.float64) - ref).max())

  errors = [error("dpmpp_2m", n) for n in (10, 20, 40, 80)]
  assert all(a > b for a, b in zip(errors, errors[1:]))
  assert errors[-2] / errors[-1] > 3.5  # Second order: ~4 per halving (DDIM's first: ~2).
  assert errors[-1] < 5e-3 and error("ddim", 80) > 5 * errors[-1]


def test_dpmpp_2m_is_deterministic_chunkable_and_mesh_independent():
  mesh = sharding.make_mesh()
  x0 = jnp.asarray(_image(8, (8, 4, 4, 3)))
  rng = jax.random.PRNGKey(6)
  config = samplers.SamplerConfig("dpmpp_2m", 7)
  run = functools.partial(samplers.sample, _noisy_denoiser, PARAMS, x0, SMALL, config)
  whole = run(rng)
  np.testing.assert_array_equal(run(rng), whole)
  for kwargs in (dict(chunk_size=3), dict(mesh=mesh), dict(mesh=mesh, chunk_size=2)):
    np.testing.assert_allclose(run(rng, **kwargs), whole, rtol=1e-5, atol=1e-5)
  assert not np.allclose(run(jax.random.PRNGKey(7)), whole, atol=1e-3)  # Only x_T is random.


def test_dpmpp_2m_oracle_recovers_the_image():
  x0 = _image(9)
  for spacing in ("uniform", "logsnr"):
    config = samplers.SamplerConfig("dpmpp_2m", 5, spacing=spacing)
    y = samplers.sample(oracle, {}, jnp.asarray(x0), SMALL, config, jax.random.PRNGKey(0))
    np.testing.assert_allclose(y, x0, atol=1e-4)


@pytest.mark.parametrize("total,steps", [(20, range(0, 25)), (2000, (5, 10, 20, 50, 200, 1999))])
def test_logsnr_timesteps(total, steps):
  noise = schedule_lib.NoiseSchedule.create("linear", total, 1e-6 if total > 20 else 1e-3,
                                            1e-2 if total > 20 else 0.3)
  lam = _lam(noise.gammas)
  for n in steps:
    ts = samplers.logsnr_timesteps(noise.gammas, n)
    assert len(ts) == len(set(ts.tolist())) == (total if n == 0 or n >= total else n)
    assert ts[0] == total and ts[-1] == (1 if len(ts) > 1 else total)
    assert np.all(np.diff(ts) < 0)
  # Where the integer grid is fine enough, the lambda gaps are even to rounding.
  gaps = np.diff(lam[samplers.logsnr_timesteps(noise.gammas, 10)]) if total > 20 else None
  if gaps is not None:
    assert gaps.max() / gaps.min() < 1.3


def test_auto_spacing():
  uniform = samplers.sampling_timesteps(2000, 10)
  noise = schedule_lib.NoiseSchedule.create("linear", 2000, 1e-6, 1e-2)
  for kind in ("ddpm", "ddim"):
    np.testing.assert_array_equal(samplers.timesteps(noise, samplers.SamplerConfig(kind, 10)),
                                  uniform)
  np.testing.assert_array_equal(
      samplers.timesteps(noise, samplers.SamplerConfig("dpmpp_2m", 10)),
      samplers.logsnr_timesteps(noise.gammas, 10))
  with pytest.raises(ValueError, match="config.diffusion.spacing"):
    samplers.SamplerConfig(spacing="karras")


def test_the_sampler_table_names_the_fewest_dpm_steps_that_match_ddpm():
  def row(sampler, steps, psnr, lpips, seconds):
    return dict(model="SR3", sampler=f"{sampler} {steps} steps", steps=steps, psnr=psnr,
                lpips_alex=lpips, seconds=seconds)

  rows = [dict(model="-", sampler="bicubic", steps=0, psnr=26.0, lpips_alex=0.3,
               seconds=float("nan"), images=3),
          row("DDPM", 2000, 22.0, 0.40, 60.0), row("DDIM", 50, 21.9, 0.41, 1.5),
          row("DPM-Solver++(2M)", 10, 21.5, 0.41, 0.3),  # 0.5 dB short.
          row("DPM-Solver++(2M)", 20, 21.8, 0.43, 0.6),  # LPIPS 0.03 worse.
          row("DPM-Solver++(2M)", 50, 21.75, 0.415, 1.5),  # Within both: the answer.
          row("DPM-Solver++(2M)", 100, 22.1, 0.40, 3.0)]
  reference, match = sr3_sampling.fewest_matching(rows)
  assert reference["steps"] == 2000 and match["steps"] == 50
  text = sr3_sampling.table(rows, 3)
  assert "DDPM 2000 steps: 50 (-0.25 dB), 40x faster per image." in text
  rows[5]["psnr"], rows[6]["lpips_alex"] = 21.0, 0.5
  assert sr3_sampling.fewest_matching(rows)[1] is None
  assert "No DPM-Solver++(2M) row comes within" in sr3_sampling.table(rows, 3)
  assert sr3_sampling.fewest_matching(rows[:3]) is None  # No DPM row: no verdict.
