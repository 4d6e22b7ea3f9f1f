"""The adversarial losses against hand computations on small logits (float64 numpy)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sr_jax.objectives import adversarial

REAL = np.array([1.0, -0.5, 2.0])
FAKE = np.array([0.2, 0.7, -1.5])


def bce1(x):  # -log sigmoid(x)
  return -np.log(1.0 / (1.0 + np.exp(-x)))


def bce0(x):  # -log(1 - sigmoid(x))
  return -np.log(1.0 - 1.0 / (1.0 + np.exp(-x)))


def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


@pytest.mark.parametrize("average,factor", [("paper", 1.0), ("basicsr", 0.5)])
def test_ragan_values_equal_hand_computation(average, factor):
  mr, mf = REAL.mean(), FAKE.mean()
  d_real, d_fake = factor * bce1(REAL - mf).mean(), factor * bce0(FAKE - mr).mean()
  g = factor * (bce0(REAL - mf).mean() + bce1(FAKE - mr).mean())
  loss, parts = adversarial.discriminator_loss("ragan", average, jnp.asarray(REAL),
                                               jnp.asarray(FAKE))
  np.testing.assert_allclose(float(parts["d_real_loss"]), d_real, rtol=1e-6)
  np.testing.assert_allclose(float(parts["d_fake_loss"]), d_fake, rtol=1e-6)
  np.testing.assert_allclose(float(loss), d_real + d_fake, rtol=1e-6)
  np.testing.assert_allclose(
      float(adversarial.generator_loss("ragan", average, jnp.asarray(REAL), jnp.asarray(FAKE))),
      g, rtol=1e-6)


def test_ragan_discriminator_gradients_follow_each_variant():
  """'paper' differentiates through both batch means; 'basicsr' treats the opposite one as fixed."""
  n, mr, mf = len(REAL), REAL.mean(), FAKE.mean()
  a = sigmoid(REAL - mf)  # d bce1(x)/dx = sigmoid(x) - 1
  b = sigmoid(FAKE - mr)  # d bce0(x)/dx = sigmoid(x)
  # Paper: L = mean(bce1(r - mean f)) + mean(bce0(f - mean r)).
  paper_dr = (a - 1) / n - b.sum() / n / n
  paper_df = b / n - (a - 1).sum() / n / n
  basicsr_dr, basicsr_df = 0.5 * (a - 1) / n, 0.5 * b / n

  def grads(average):
    fn = lambda r, f: adversarial.discriminator_loss("ragan", average, r, f)[0]
    return jax.grad(fn, argnums=(0, 1))(jnp.asarray(REAL), jnp.asarray(FAKE))

  for average, (dr, df) in (("paper", (paper_dr, paper_df)),
                            ("basicsr", (basicsr_dr, basicsr_df))):
    gr, gf = grads(average)
    np.testing.assert_allclose(np.asarray(gr), dr, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(gf), df, rtol=1e-5, atol=1e-7)


def test_generator_loss_ignores_real_logits_gradient():
  fn = lambda r, f: adversarial.generator_loss("ragan", "paper", r, f)
  gr, gf = jax.grad(fn, argnums=(0, 1))(jnp.asarray(REAL), jnp.asarray(FAKE))
  assert np.all(np.asarray(gr) == 0) and np.any(np.asarray(gf) != 0)


def test_vanilla_gan_and_per_pixel_maps():
  real = np.array([[[[0.3], [-1.0]], [[2.0], [0.0]]]])  # A (1, 2, 2, 1) logit map.
  fake = -real
  loss, _ = adversarial.discriminator_loss("vanilla", "basicsr", jnp.asarray(real),
                                           jnp.asarray(fake))
  np.testing.assert_allclose(float(loss), bce1(real).mean() + bce0(fake).mean(), rtol=1e-6)
  g = adversarial.generator_loss("vanilla", "basicsr", jnp.asarray(real), jnp.asarray(fake))
  np.testing.assert_allclose(float(g), bce1(fake).mean(), rtol=1e-6)


def test_unknown_kinds_name_the_config_key():
  with pytest.raises(ValueError, match="config.gan.kind"):
    adversarial.discriminator_loss("wgan", "basicsr", jnp.zeros(2), jnp.zeros(2))
  with pytest.raises(ValueError, match="config.gan.ragan_average"):
    adversarial.generator_loss("ragan", "mean", jnp.zeros(2), jnp.zeros(2))
