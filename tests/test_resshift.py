"""Tests for sr_jax.diffusion.resshift against independent numpy computations.

The references rebuild the shifting schedule with a Python loop over math functions, the marginal
by summing the forward transitions' increments, the posterior by Gaussian conjugacy (prior
q(x_{t-1} | x0, y) times likelihood q(x_t | x_{t-1}, y)) rather than by the closed form the module
uses, and a whole sampling chain step by step in numpy from the documented per-image keys.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sr_jax.diffusion import resshift
from sr_jax.models import registry
from sr_jax.util import sharding

PAPER = resshift.ShiftSchedule.create()  # T = 15, kappa = 2, p = 0.3, eta_T = 0.999.


def _ref_etas(T, kappa, p, eta_T=0.999):
  eta_1 = min((0.04 / kappa) ** 2, 0.001)
  b0 = math.exp(math.log(eta_T / eta_1) / (2 * (T - 1)))
  out = []
  for t in range(1, T + 1):
    beta = ((t - 1) / (T - 1)) ** p * (T - 1)
    out.append((math.sqrt(eta_1) * b0 ** beta) ** 2)
  return np.array(out)


def _pair(seed=0, shape=(2, 8, 8, 3)):
  """An HR image x0 and a different 'upsampled LR' y, both in [-0.9, 0.9]."""
  rng = np.random.default_rng(seed)
  return tuple(rng.uniform(-0.9, 0.9, shape).astype(np.float32) for _ in range(2))


# ----------------------------------------------------------------------------------------------
# The schedule, the marginal and the posterior.


@pytest.mark.parametrize("T,kappa,p,eta_1", [(15, 2.0, 0.3, 4e-4), (15, 1.0, 0.3, 1e-3),
                                             (4, 4.0, 0.3, 1e-4), (50, 2.0, 1.0, 4e-4)])
def test_schedule_is_eq10(T, kappa, p, eta_1):
  s = resshift.ShiftSchedule.create(T, kappa, p)
  assert s.etas.dtype == np.float64 and s.num_steps == T
  np.testing.assert_allclose(s.etas, _ref_etas(T, kappa, p), rtol=1e-12)
  np.testing.assert_allclose([s.etas[0], s.etas[-1]], [eta_1, 0.999], rtol=1e-12)
  assert kappa * math.sqrt(s.etas[0]) <= 0.04 + 1e-12 and np.all(np.diff(s.etas) > 0)
  assert s.eta[0] == 0 and s.alpha[0] == 0
  np.testing.assert_allclose(np.cumsum(s.alpha), s.eta, rtol=1e-12)


def test_paper_schedule_numbers():
  """T = 15, kappa = 2, p = 0.3: sqrt(eta) starts at 0.02 and rises fast (p < 1), and the
  network's default level is sqrt(eta)."""
  sqrt_eta = np.sqrt(PAPER.etas)
  assert sqrt_eta[0] == pytest.approx(0.02) and sqrt_eta[-1] == pytest.approx(math.sqrt(0.999))
  # beta_2 = (1/14)^0.3 * 14 of the 14 doublings' worth: sqrt(eta_2) = 0.02 * 49.97^0.4527.
  assert sqrt_eta[1] == pytest.approx(0.02 * (math.sqrt(0.999 / 4e-4)) ** ((1 / 14) ** 0.3),
                                      rel=1e-12)
  np.testing.assert_allclose(PAPER.levels[1:], sqrt_eta, rtol=1e-12)
  np.testing.assert_allclose(PAPER.input_scale[1:], 1 / (1 + 6 * sqrt_eta), rtol=1e-12)
  timestep = resshift.ShiftSchedule.create(level="timestep", normalize_input=False)
  np.testing.assert_allclose(timestep.levels, np.arange(16) / 15)
  assert np.all(timestep.input_scale == 1)


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_steps=1), "num_steps"), (dict(kappa=0.0), "kappa"), (dict(power=-1), "power"),
    (dict(eta_T=1e-4), "eta_1"), (dict(eta_1=0.0), "eta_1"), (dict(level="sigma"), "level"),
])
def test_schedule_validation(kwargs, match):
  with pytest.raises(ValueError, match=match):
    resshift.ShiftSchedule.create(**kwargs)


def test_marginal_composes_the_forward_steps():
  """q_sample's mean and std equal the sums of the forward transitions' shifts and variances."""
  x0, y = _pair(1)
  etas = _ref_etas(15, 2.0, 0.3)
  shifts = np.diff(np.concatenate([[0.0], etas]))  # alpha_t, computed from the reference.
  t = np.array([1, 15])
  zeros, ones = np.zeros_like(x0), np.ones_like(x0)
  mean = resshift.q_sample(PAPER, x0, y, t, zeros)
  std = resshift.q_sample(PAPER, x0, y, t, ones) - mean
  for i, ti in enumerate(t):
    np.testing.assert_allclose(mean[i], x0[i] + shifts[:ti].sum() * (y[i] - x0[i]), atol=1e-6)
    np.testing.assert_allclose(std[i], 2.0 * math.sqrt(shifts[:ti].sum()), rtol=1e-5)


@pytest.mark.parametrize("t", [1, 2, 7, 15])
def test_posterior_is_bayes(t):
  x0, y = _pair(2)
  x_t = np.random.default_rng(3).standard_normal(x0.shape).astype(np.float32)
  eta = np.concatenate([[0.0], _ref_etas(15, 2.0, 0.3)])
  kappa2, e0 = 4.0, y.astype(np.float64) - x0
  prior_mean, prior_var = x0 + eta[t - 1] * e0, kappa2 * eta[t - 1]
  like_var = kappa2 * (eta[t] - eta[t - 1])  # x_t | x_{t-1} ~ N(x_{t-1} + alpha e0, like_var)
  if t == 1:  # x_0 is x0 itself.
    ref_mean, ref_var = x0.astype(np.float64), 0.0
  else:
    ref_var = 1 / (1 / prior_var + 1 / like_var)
    ref_mean = ref_var * (prior_mean / prior_var + (x_t - (eta[t] - eta[t - 1]) * e0) / like_var)
  mean, var = resshift.posterior(PAPER, jnp.asarray(x_t), jnp.asarray(x0), jnp.full((2,), t))
  np.testing.assert_allclose(mean, ref_mean, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.ravel(var), ref_var, rtol=1e-6, atol=1e-12)


def test_posterior_steps_keep_the_marginal():
  """From x_T ~ q(x_T | x0, y), posterior steps with the true x0 give x_t ~ q(x_t | x0, y)."""
  x0, y = _pair(4, (4, 32, 32, 3))
  ts, coef = resshift.step_table(PAPER)
  x = resshift.q_sample(PAPER, x0, y, np.full(4, 15), jax.random.normal(jax.random.PRNGKey(0),
                                                                          x0.shape))
  for i, t in enumerate(ts[:-1]):
    z = jax.random.normal(jax.random.PRNGKey(int(t)), x0.shape)
    x = resshift.reverse_step(x, jnp.asarray(x0), jax.tree.map(lambda a, i=i: a[i], coef), z)
    s = t - 1
    standard = (x - x0 - PAPER.eta[s] * (y - x0)) / (2.0 * math.sqrt(PAPER.eta[s]))
    assert abs(float(jnp.mean(standard))) < 0.04 and abs(float(jnp.std(standard)) - 1) < 0.03


# ----------------------------------------------------------------------------------------------
# Training.


def test_training_loss():
  x0, y = _pair(5, (4, 8, 8, 3))
  rng = jax.random.PRNGKey(11)
  draw = resshift.draw_training(PAPER, x0, y, rng)
  assert draw["t"].dtype == jnp.int32 and 1 <= int(draw["t"].min()) <= int(draw["t"].max()) <= 15
  np.testing.assert_allclose(draw["x_t"], resshift.q_sample(PAPER, x0, y, draw["t"],
                                                            draw["noise"]), atol=1e-6)
  seen = {}

  def predict(condition, x_in, level, t):
    seen.update(condition=condition, x_in=x_in, level=level, t=t)
    return 0.5 * x_in

  loss = resshift.training_loss(predict, PAPER, x0, y, rng)
  scale = PAPER.input_scale[np.asarray(draw["t"])][:, None, None, None]
  np.testing.assert_allclose(seen["x_in"], np.asarray(draw["x_t"]) * scale, rtol=1e-5)
  np.testing.assert_allclose(seen["level"], np.sqrt(PAPER.eta[np.asarray(draw["t"])]), rtol=1e-6)
  np.testing.assert_array_equal(seen["condition"], y)
  ref = np.mean((0.5 * np.asarray(draw["x_t"]) * scale - x0) ** 2)
  assert float(loss) == pytest.approx(ref, rel=1e-5)
  assert float(resshift.training_loss(lambda c, x, l, t: jnp.asarray(x0), PAPER, x0, y, rng)) == 0
  with pytest.raises(ValueError, match="upsample"):
    resshift.training_loss(predict, PAPER, x0, y[:, :4], rng)


def test_training_loss_differentiates_the_predictor():
  x0, y = _pair(6)
  grad = jax.grad(lambda w: resshift.training_loss(lambda c, x, l, t: w * x, PAPER, x0, y,
                                                   jax.random.PRNGKey(0)))(1.0)
  assert np.isfinite(grad) and grad != 0


# ----------------------------------------------------------------------------------------------
# Sampling.


def _oracle_for(schedule):
  """The true x0 (passed as params) when the network sees the step's own level, else NaN."""
  levels = jnp.asarray(schedule.levels, jnp.float32)

  def oracle(x0, condition, x_in, level, t):
    del condition, x_in
    right = jnp.all(jnp.abs(level - levels[t]) < 1e-7) & (t.shape == level.shape)
    return jnp.where(right, x0, jnp.nan)

  return oracle


@pytest.mark.parametrize("schedule,clip", [
    (PAPER, True), (PAPER, False),
    (resshift.ShiftSchedule.create(4, 1.0, 0.5, level="timestep", normalize_input=False), True),
])
def test_oracle_sampler_returns_x0(schedule, clip):
  x0, y = _pair(7)
  out = resshift.sample(_oracle_for(schedule), jnp.asarray(x0), jnp.asarray(y), schedule,
                        jax.random.PRNGKey(0), clip_x0=clip)
  assert out.shape == x0.shape and out.dtype == jnp.float32
  np.testing.assert_allclose(out, x0, atol=1e-6)


def _linear_net(params, condition, x_in, level, t):
  """An imperfect predictor using every input, so samples depend on each step's noise."""
  del t
  return params["w"] * x_in + params["b"] * condition + 0.3 * level[:, None, None, None]


PARAMS = {"w": jnp.float32(0.8), "b": jnp.float32(0.6)}


def _numpy_chain(x0_shape, y, rng, first_index, clip, T=15, kappa=2.0, p=0.3):
  """The sampler in numpy from the paper's formulas; noise from the documented per-image keys."""
  eta = np.concatenate([[0.0], _ref_etas(T, kappa, p)])

  def noise(t):
    keys = [jax.random.fold_in(rng, first_index + i) for i in range(x0_shape[0])]
    return np.stack([jax.random.normal(jax.random.fold_in(k, t), x0_shape[1:]) for k in keys])

  x = y + kappa * math.sqrt(eta[T]) * noise(0)
  for t in range(T, 0, -1):
    x_in = x / (1 + 3 * kappa * math.sqrt(eta[t]))
    x0_hat = 0.8 * x_in + 0.6 * y + 0.3 * math.sqrt(eta[t])
    x0_hat = np.clip(x0_hat, -1, 1) if clip else x0_hat
    alpha = eta[t] - eta[t - 1]
    mean = eta[t - 1] / eta[t] * x + alpha / eta[t] * x0_hat
    x = mean + kappa * math.sqrt(eta[t - 1] / eta[t] * alpha) * noise(t)
  return x


@pytest.mark.parametrize("clip", [True, False])
def test_sampler_matches_numpy_chain(clip):
  _, y = _pair(8)
  rng = jax.random.PRNGKey(5)
  out = resshift.sample(_linear_net, PARAMS, jnp.asarray(y), PAPER, rng, clip_x0=clip,
                        first_index=3)
  np.testing.assert_allclose(out, _numpy_chain(y.shape, y, rng, 3, clip), atol=2e-5)


def test_noise_depends_on_the_image_not_the_batch():
  _, y = _pair(9, (4, 8, 8, 3))
  rng = jax.random.PRNGKey(1)
  run = functools.partial(resshift.sample, _linear_net, PARAMS, schedule=PAPER, rng=rng)
  whole = run(y=jnp.asarray(y))
  halves = [run(y=jnp.asarray(y[:2])), run(y=jnp.asarray(y[2:]), first_index=2)]
  np.testing.assert_allclose(np.concatenate(halves), whole, atol=1e-6)
  # Same input everywhere: the images still differ (each has its own noise).
  same = run(y=jnp.asarray(np.repeat(y[:1], 4, axis=0)))
  assert not np.allclose(same[0], same[1], atol=1e-3)
  other = resshift.sample(_linear_net, PARAMS, jnp.asarray(y), PAPER, jax.random.PRNGKey(2))
  assert not np.allclose(other, whole, atol=1e-3)


def test_sampler_on_a_mesh_in_chunks_and_jit():
  mesh = sharding.make_mesh()
  assert sharding.batch_devices(mesh) == 8
  _, y = _pair(10, (8, 4, 4, 3))
  y = jnp.asarray(y)
  rng = jax.random.PRNGKey(3)
  plain = resshift.sample(_linear_net, PARAMS, y, PAPER, rng)
  reports = []
  chunked = resshift.sample(_linear_net, PARAMS, y, PAPER, rng, mesh=mesh,
                            progress=lambda d, n: reports.append((d, n)), chunk_size=4)
  assert reports == [(4, 15), (8, 15), (12, 15), (15, 15)]
  assert chunked.sharding.is_equivalent_to(sharding.batch_sharding(mesh), 4)
  jitted = jax.jit(lambda p, c, r: resshift.sample(_linear_net, p, c, PAPER, r, mesh=mesh))(
      PARAMS, y, rng)
  for out in (chunked, jitted):
    np.testing.assert_allclose(out, plain, atol=1e-5)
  with pytest.raises(ValueError, match="multiple"):
    resshift.sample(_linear_net, PARAMS, y[:6], PAPER, rng, mesh=mesh)


def test_with_the_sr3_unet():
  """The micro SR3 UNet as the x0 network: fitting one pair drives the loss down, and the
  sampler then recovers x0 from its degraded y far better than y itself."""
  model = registry.build_preset("sr3", "micro", impl="xla")
  rng = np.random.default_rng(11)
  x0 = rng.uniform(-0.9, 0.9, (2, 8, 8, 3)).astype(np.float32)
  y = np.clip(x0 + 0.3 * rng.standard_normal(x0.shape), -1, 1).astype(np.float32)
  params = model.init(jax.random.PRNGKey(0), *model.example_inputs(8, 2))["params"]
  tx = optax.adam(3e-3)
  opt_state = tx.init(params)

  def net(p, condition, x_in, level, t):
    del t
    return model.apply({"params": p}, condition, x_in, level)

  @jax.jit
  def step(p, opt_state, key):
    loss_fn = lambda p: resshift.training_loss(functools.partial(net, p), PAPER, x0, y, key)
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, opt_state = tx.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state, loss

  losses = []
  for i in range(40):
    params, opt_state, loss = step(params, opt_state, jax.random.PRNGKey(i))
    losses.append(float(loss))
  assert np.mean(losses[-5:]) < 0.1 * np.mean(losses[:5])
  out = resshift.sample(net, params, jnp.asarray(y), PAPER, jax.random.PRNGKey(99))
  assert np.mean(np.abs(out - x0)) < 0.5 * np.mean(np.abs(y - x0))
