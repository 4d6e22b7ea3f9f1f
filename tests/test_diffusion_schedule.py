"""Tests for sr_jax.diffusion.schedule against independent float64 numpy computations.

The references build gamma as exp(cumsum(log1p(-beta))) and the cosine schedule with a Python
loop over math.cos, so a slip in the cumulative product, its offset (gammas[0] = 1) or the
cosine's normalisation shows up as a mismatch.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sr_jax.diffusion import schedule as schedule_lib


def _ref_gammas(betas: np.ndarray) -> np.ndarray:
  return np.exp(np.concatenate([[0.0], np.cumsum(np.log1p(-betas))]))


def _ref_cosine_betas(num_steps: int, s: float = 8e-3) -> np.ndarray:
  f = [math.cos(((i / num_steps + s) / (1 + s)) * math.pi / 2) ** 2 for i in range(num_steps + 1)]
  return np.array([min(1 - f[i + 1] / f[i], 0.999) for i in range(num_steps)])


# ----------------------------------------------------------------------------------------------
# Schedules.


def test_linear_sr3_default_schedule():
  noise = schedule_lib.NoiseSchedule.create("linear", 2000, 1e-6, 1e-2)
  assert noise.num_steps == 2000 and noise.betas.dtype == np.float64
  assert noise.betas[0] == 1e-6 and noise.betas[-1] == 1e-2
  np.testing.assert_allclose(noise.betas, 1e-6 + np.arange(2000) * (1e-2 - 1e-6) / 1999,
                             rtol=1e-12)
  assert noise.gammas.shape == (2001,) and noise.gammas[0] == 1.0
  np.testing.assert_allclose(noise.gammas, _ref_gammas(noise.betas), rtol=1e-10)
  np.testing.assert_allclose(noise.gammas[-1], 4.38597823613e-05, rtol=1e-9)
  assert np.all(np.diff(noise.gammas) < 0)


def test_cosine_schedule():
  noise = schedule_lib.NoiseSchedule.create("cosine", 50, 0.0, 0.0)
  np.testing.assert_allclose(noise.betas, _ref_cosine_betas(50), rtol=1e-10)
  np.testing.assert_allclose(noise.gammas, _ref_gammas(noise.betas), rtol=1e-9, atol=1e-15)
  assert noise.betas[-1] == 0.999  # The clamp bites at the last step.


def test_quad_schedule():
  betas = schedule_lib.make_betas("quad", 10, 1e-4, 4e-2)
  np.testing.assert_allclose(np.sqrt(betas), np.linspace(1e-2, 0.2, 10), rtol=1e-12)


def test_schedule_is_read_only():
  noise = schedule_lib.NoiseSchedule.create("linear", 5, 1e-3, 1e-1)
  with pytest.raises(ValueError):
    noise.gammas[1] = 0.5
  with pytest.raises(ValueError):
    noise.betas[0] = 0.5


@pytest.mark.parametrize("kind,num_steps,start,end,match", [
    ("sigmoid", 10, 1e-4, 2e-2, "config.diffusion.schedule"),
    ("linear", 10, 0.0, 2e-2, "config.diffusion.schedule"),
    ("linear", 10, 1e-4, 1.5, "config.diffusion.schedule"),
    ("quad", 0, 1e-4, 2e-2, "num_timesteps"),
])
def test_make_betas_rejects_bad_values(kind, num_steps, start, end, match):
  with pytest.raises(ValueError, match=match):
    schedule_lib.make_betas(kind, num_steps, start, end)


def test_check_range():
  noise = schedule_lib.NoiseSchedule.create("linear", 20, 1e-4, 0.1)
  assert schedule_lib.check_range(noise, 1, 0) == (1, 20)
  assert schedule_lib.check_range(noise, 5, 9) == (5, 9)
  for t_min, t_max, key in [(0, 5, "t_min"), (6, 5, "t_min"), (1, 21, "t_max"), (1, -1, "t_max")]:
    with pytest.raises(ValueError, match=f"config.diffusion.{key}"):
      schedule_lib.check_range(noise, t_min, t_max)


# ----------------------------------------------------------------------------------------------
# The forward process.


def test_q_sample_and_inverses():
  rng = np.random.default_rng(0)
  y0 = rng.uniform(-1, 1, (3, 4, 5, 2)).astype(np.float32)
  noise = rng.standard_normal((3, 4, 5, 2)).astype(np.float32)
  gamma = np.array([0.999, 0.5, 0.01], np.float32)
  g = gamma.astype(np.float64)[:, None, None, None]
  expected = np.sqrt(g) * y0 + np.sqrt(1 - g) * noise
  y_t = schedule_lib.q_sample(jnp.asarray(y0), jnp.asarray(gamma), jnp.asarray(noise))
  assert y_t.dtype == jnp.float32
  np.testing.assert_allclose(y_t, expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(schedule_lib.predict_x0(y_t, gamma, noise), y0, atol=1e-4)
  np.testing.assert_allclose(schedule_lib.predict_eps(y_t, gamma, y0), noise, atol=1e-3)


# ----------------------------------------------------------------------------------------------
# The continuous noise level.


def _check_levels(noise, t, gamma, t_min, t_max):
  t, gamma = np.asarray(t), np.asarray(gamma)
  assert t.dtype == np.int32 and gamma.dtype == np.float32
  table = noise.gammas.astype(np.float32)
  assert np.all((t >= t_min) & (t <= t_max))
  assert np.all(gamma >= table[t]) and np.all(gamma <= table[t - 1])
  assert set(t.tolist()) == set(range(t_min, t_max + 1))


def test_sample_noise_level_restricted_range_under_jit():
  noise = schedule_lib.NoiseSchedule.create("linear", 20, 1e-3, 0.2)
  draw = jax.jit(lambda rng: schedule_lib.sample_noise_level(rng, 512, noise, 5, 9))
  t, gamma = draw(jax.random.PRNGKey(0))
  assert t.shape == gamma.shape == (512,)
  _check_levels(noise, t, gamma, 5, 9)
  # The level is continuous: it is spread over each interval, not stuck at its ends.
  table = noise.gammas
  position = (np.asarray(gamma, np.float64) - table[t]) / (table[t - 1] - table[t])
  assert 0.35 < position.mean() < 0.65 and position.min() < 0.1 and position.max() > 0.9


def test_sample_noise_level_full_range_and_rng():
  noise = schedule_lib.NoiseSchedule.create("linear", 2000, 1e-6, 1e-2)
  t, gamma = schedule_lib.sample_noise_level(jax.random.PRNGKey(1), 64, noise)
  assert np.all((np.asarray(t) >= 1) & (np.asarray(t) <= 2000))
  table = noise.gammas.astype(np.float32)
  assert np.all(np.asarray(gamma) >= table[t]) and np.all(np.asarray(gamma) <= table[t - 1])
  assert len(set(np.asarray(t).tolist())) > 1  # Drawn per image.
  other, _ = schedule_lib.sample_noise_level(jax.random.PRNGKey(2), 64, noise)
  assert not np.array_equal(t, other)
