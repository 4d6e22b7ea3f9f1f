"""Adversarial losses on discriminator logits: relativistic average GAN and the standard GAN.

All losses are binary cross-entropies on raw logits (BCE(x, 1) = softplus(-x), BCE(x, 0) =
softplus(x)), averaged over every logit (a per-pixel map from a U-Net discriminator counts
each pixel), computed in float32.

Relativistic average GAN (ESRGAN, Wang et al. 2018), with D_Ra(a, b) = sigmoid(C(a) -
mean C(b)):

  L_D = BCE(C(real) - mean C(fake), 1) + BCE(C(fake) - mean C(real), 0)
  L_G = BCE(C(real) - mean C(fake), 0) + BCE(C(fake) - mean C(real), 1)

Two variants, `average`:
  'paper'    the sums above; the discriminator's gradient also flows through both means.
  'basicsr'  as BasicSR's ESRGANModel trains: each loss is the mean of its two terms (BasicSR
             halves them), and in L_D the opposite side's mean is a constant (BasicSR detaches
             it: it back-propagates the real and the fake term separately).

The standard GAN ('vanilla', SRGAN): L_D = BCE(C(real), 1) + BCE(C(fake), 0),
L_G = BCE(C(fake), 1) (the non-saturating generator loss), as BasicSR's SRGANModel.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

KINDS = ("ragan", "vanilla")
AVERAGES = ("basicsr", "paper")


def bce_with_logits(logits: jax.Array, target: float) -> jax.Array:
  """Mean binary cross-entropy of `logits` against a constant target 0 or 1."""
  x = logits.astype(jnp.float32)
  return jnp.mean(jax.nn.softplus(-x) if target == 1 else jax.nn.softplus(x))


def _check(kind: str, average: str) -> None:
  if kind not in KINDS:
    raise ValueError(f"Unknown config.gan.kind {kind!r}; use one of {KINDS}.")
  if average not in AVERAGES:
    raise ValueError(f"Unknown config.gan.ragan_average {average!r}; use one of {AVERAGES}.")


def discriminator_loss(kind: str, average: str, real: jax.Array,
                       fake: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The discriminator's loss from its logits on real and (generated) fake images.

  Returns (loss, {'d_real_loss', 'd_fake_loss'}): the two terms as they enter the loss.
  """
  _check(kind, average)
  real, fake = real.astype(jnp.float32), fake.astype(jnp.float32)
  if kind == "vanilla":
    real_term, fake_term = bce_with_logits(real, 1), bce_with_logits(fake, 0)
  else:
    mean_real, mean_fake = jnp.mean(real), jnp.mean(fake)
    if average == "basicsr":
      mean_real, mean_fake = jax.lax.stop_gradient(mean_real), jax.lax.stop_gradient(mean_fake)
    real_term = bce_with_logits(real - mean_fake, 1)
    fake_term = bce_with_logits(fake - mean_real, 0)
    if average == "basicsr":
      real_term, fake_term = 0.5 * real_term, 0.5 * fake_term
  return real_term + fake_term, {"d_real_loss": real_term, "d_fake_loss": fake_term}


def generator_loss(kind: str, average: str, real: jax.Array, fake: jax.Array) -> jax.Array:
  """The generator's adversarial loss (before its weight) from the same logits.

  `real` is treated as a constant: only the generated images depend on the generator.
  """
  _check(kind, average)
  real = jax.lax.stop_gradient(real.astype(jnp.float32))
  fake = fake.astype(jnp.float32)
  if kind == "vanilla":
    return bce_with_logits(fake, 1)
  loss = (bce_with_logits(real - jnp.mean(fake), 0) +
          bce_with_logits(fake - jnp.mean(real), 1))
  return 0.5 * loss if average == "basicsr" else loss
