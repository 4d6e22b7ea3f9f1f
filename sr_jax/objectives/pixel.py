"""Pixel losses for restoration: L1, Charbonnier and NAFNet's -PSNR.

Predictions and targets are float images in [0, 1]; losses are computed in float32 whatever
the compute dtype of the model.
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import optax

from sr_jax import lora

LOSSES = ("l1", "charbonnier", "psnr")


def l1(pred: jax.Array, target: jax.Array) -> jax.Array:
  return jnp.mean(jnp.abs(pred - target))


def charbonnier(pred: jax.Array, target: jax.Array, eps: float = 1e-3) -> jax.Array:
  return jnp.mean(jnp.sqrt(jnp.square(pred - target) + eps * eps))


def psnr_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
  """-PSNR averaged over images, as NAFNet trains (10 log10 of the per-image MSE + 1e-8)."""
  mse = jnp.mean(jnp.square(pred - target), axis=tuple(range(1, pred.ndim)))
  return jnp.mean(10.0 * jnp.log10(mse + 1e-8))


def pixel_loss(kind: str, pred: jax.Array, target: jax.Array,
               charbonnier_eps: float = 1e-3) -> jax.Array:
  """The configured loss (config.loss.kind) in float32."""
  pred, target = pred.astype(jnp.float32), target.astype(jnp.float32)
  if kind == "l1":
    return l1(pred, target)
  if kind == "charbonnier":
    return charbonnier(pred, target, charbonnier_eps)
  if kind == "psnr":
    return psnr_loss(pred, target)
  raise ValueError(f"Unknown config.loss.kind {kind!r}; choose one of {LOSSES}.")


def batch_psnr(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Mean training PSNR in dB (float, unrounded: a progress signal, not the eval protocol)."""
  mse = jnp.mean(jnp.square(jnp.clip(pred.astype(jnp.float32), 0, 1) - target),
                 axis=tuple(range(1, pred.ndim)))
  return jnp.mean(-10.0 * jnp.log10(jnp.maximum(mse, 1e-10)))


class PixelObjective:
  """One model, one optimizer, a pixel loss: the restoration objective.

  `apply(params, lq)` runs the model on the tree {'base', 'lora'} (adapters merged into their
  kernels); `update` is the per-step function the step builder jits.
  """

  def __init__(self, model, tx, plan, loss_kind: str, charbonnier_eps: float = 1e-3,
               schedule=None):
    self.model, self.tx, self.plan = model, tx, plan
    self.loss_kind, self.charbonnier_eps, self.schedule = loss_kind, charbonnier_eps, schedule

  # What the training loop reads. Other objectives' frozen trees hold more than the model's
  # frozen half (the GAN's perceptual VGG, a diffusion run's reference base) under other keys;
  # FROZEN_KEY names the model's half there. It is also exactly what a checkpoint holds.
  FROZEN_KEY: str | None = None

  def model_frozen(self, frozen):
    """The model's frozen half of {'base', 'lora'} (what checkpoints hold)."""
    return frozen if self.FROZEN_KEY is None else frozen[self.FROZEN_KEY]

  def with_model_frozen(self, frozen, model_frozen):
    """`frozen` with its model half replaced (e.g. by one restored from a checkpoint)."""
    if self.FROZEN_KEY is None:
      return model_frozen
    return dict(frozen, **{self.FROZEN_KEY: model_frozen})

  @staticmethod
  def eval_trainable(state):
    """The trainable half that is evaluated and exported."""
    return state.trainable

  def eval_params(self, state, frozen) -> dict:
    """The parameters `apply` evaluates: {'base', 'lora'} (a GAN generator's EMA)."""
    return lora.combine(self.eval_trainable(state), self.model_frozen(frozen))

  def without_adapters(self) -> "PixelObjective":
    """This objective without its LoRA plan: `apply` then runs {'base': ...} alone."""
    plain = copy.copy(self)
    plain.plan = None
    return plain

  def apply(self, params, lq: jax.Array) -> jax.Array:
    merged = lora.merge(params["base"], params.get("lora", {}), self.plan)
    return self.model.apply({"params": merged}, lq)

  def update(self, state, frozen, batch):
    """One optimizer step; gradients exist only for the trainable half of the tree."""
    def loss_fn(trainable):
      pred = self.apply(lora.combine(trainable, frozen), batch["lq"])
      loss = pixel_loss(self.loss_kind, pred, batch["gt"], self.charbonnier_eps)
      return loss, pred

    (loss, pred), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.trainable)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.trainable)
    trainable = optax.apply_updates(state.trainable, updates)
    metrics = {"loss": loss, "psnr": batch_psnr(pred, batch["gt"]),
               "grad_norm": optax.tree.norm(grads)}
    if self.schedule is not None:
      metrics["learning_rate"] = self.schedule(state.step)
    new_state = state.replace(step=state.step + 1, trainable=trainable, opt_state=opt_state)
    return new_state, metrics
