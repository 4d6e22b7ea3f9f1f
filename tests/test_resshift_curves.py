"""sr_jax.tools.resshift_curves: its step-by-step chain is the sampler's chain, and its
one-step predictions are the network's x0 from the forward process's states."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sr_jax.diffusion import resshift, resshift_sr, restorers
from sr_jax.models import registry
from sr_jax.objectives import resshift as resshift_objective
from sr_jax.tools import resshift_curves


def _restorer(num_steps=5):
  model = registry.build_model(ml_collections.ConfigDict(dict(
      name="sr3", preset="micro", width=0, dtype="float32", conv_impl="xla", dropout=-1.0)))
  params = jax.jit(model.init)(jax.random.PRNGKey(0),
                               *registry.example_inputs(model, 16))["params"]
  config = resshift_objective.config_section()
  config.num_steps = num_steps
  record = resshift_sr.sampling_record(config, 4)
  return restorers.ResShiftRestorer(model, params, params, record, seed=3)


def _images(n=2):
  rng = np.random.default_rng(0)
  return [{"lq": rng.random((4, 4, 3)).astype(np.float32),
           "gt": rng.random((16, 16, 3)).astype(np.float32)} for _ in range(n)]


def test_the_chain_step_by_step_ends_where_the_sampler_ends():
  """The last recorded x0 prediction (t = 1, where the posterior is the point x0_hat) equals
  the sampler's output for the same seed, image by image; every step's prediction is there."""
  restorer, images = _restorer(), _images()
  along = resshift_curves.chain_predictions(restorer, images, seed=3)
  assert sorted(along) == [1, 2, 3, 4, 5]
  for i, item in enumerate(images):
    sampled = restorer.sr.sample(restorer.params, jnp.asarray(item["lq"])[None], seed=3)
    np.testing.assert_allclose(along[1][i], np.asarray(sampled[0]), atol=2e-5)
    assert not np.allclose(along[5][i], along[1][i], atol=1e-3)  # Not one frame repeated.


def test_a_one_step_prediction_is_the_network_on_a_forward_draw():
  """x0_hat at t from x_t = q_sample(x0, y, t, z) with the tool's draw, computed here by hand:
  the network (residual output) on the scaled x_t and the level sqrt(eta_t)."""
  restorer, images = _restorer(), _images(1)
  sr, t = restorer.sr, 3
  got = resshift_curves.one_step_predictions(restorer, images, t, seed=7)[0]
  key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(7), t), 0)
  lq, gt = jnp.asarray(images[0]["lq"])[None], jnp.asarray(images[0]["gt"])[None]
  y, x0 = sr.condition(lq), gt * 2 - 1
  eta, kappa = sr.schedule.eta[t], sr.schedule.kappa
  x_t = x0 + eta * (y - x0) + kappa * np.sqrt(eta) * jax.random.normal(key, x0.shape)
  out = sr.model.apply({"params": restorer.params["base"]}, y,
                       x_t / (1 + 3 * kappa * np.sqrt(eta)), jnp.full((1,), np.sqrt(eta)))
  expected = (np.clip(np.asarray(y + out), -1, 1) + 1) / 2
  np.testing.assert_allclose(got, expected[0], atol=2e-5)
  assert resshift.LEVELS[0] == "sqrt_eta"  # The level the hand computation assumes.


def test_the_picture_puts_bicubic_the_output_and_the_hr_image_side_by_side():
  images = _images(3)
  outputs = [np.full((16, 16, 3), 0.5, np.float32) for _ in images]
  strip = resshift_curves.picture(images, outputs, [0, 2], zoom=2, gap=4)
  assert strip.dtype == np.uint8 and strip.shape == (2 * 32 + 4, 3 * 32 + 2 * 4, 3)
  hr = np.round(np.kron(images[2]["gt"], np.ones((2, 2, 1))) * 255)
  np.testing.assert_array_equal(strip[36:, 72:], hr.astype(np.uint8))
  assert np.all(strip[:32, 36:68] == 128) and np.all(strip[32:36] == 255)
