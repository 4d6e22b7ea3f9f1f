"""The pixel objective: L1, Charbonnier or NAFNet's -PSNR loss on one model's output.

Predictions and targets are float images in [0, 1]; losses are computed in float32 whatever
the compute dtype of the model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sr_jax.adapt import lora, lora_branch
from sr_jax.inference import restorer as restorer_lib
from sr_jax.objectives import base, step

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


class PixelObjective(base.ModelObjective):
  """One model, one optimizer, a pixel loss: the restoration (and PSNR-oriented SR) objective."""

  def __init__(self, model, tx, plan, loss_kind: str, charbonnier_eps: float = 1e-3,
               schedule=None, layouts: lora_branch.Layouts = lora_branch.ALL_MERGED):
    super().__init__(model, tx, plan, schedule, layouts)
    self.loss_kind, self.charbonnier_eps = loss_kind, charbonnier_eps

  def update(self, state, frozen, batch):
    """One optimizer step; gradients exist only for the trainable half of the tree."""
    def loss_fn(trainable):
      pred = self.train_forward(lora.combine(trainable, frozen[base.MODEL]), batch["lq"])
      loss = pixel_loss(self.loss_kind, pred, batch["gt"], self.charbonnier_eps)
      return loss, pred

    (loss, pred), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.trainable)
    trainable, opt_state, grad_norm = base.apply_gradients(self.tx, state.trainable,
                                                           state.opt_state, grads)
    metrics = {"loss": loss, "psnr": batch_psnr(pred, batch["gt"]), "grad_norm": grad_norm}
    new_state = state.replace(step=state.step + 1, trainable=trainable, opt_state=opt_state)
    return new_state, self.step_metrics(state, metrics)


def build(context: base.BuildContext) -> base.Built:
  """The pixel objective of `config.loss` and a fresh train state."""
  loss = context.config.loss
  pixel_loss(loss.kind, jnp.zeros(()), jnp.zeros(()))  # An unknown loss fails here, early.
  objective = PixelObjective(context.model, context.tx, context.plan, loss.kind,
                             loss.charbonnier_eps, context.schedule, context.layouts)
  return base.Built(objective, step.init_state(context.trainable, context.tx, context.seed))


def loss_label(config) -> str:
  """NAFNet's loss is -PSNR in dB: say so where 'loss' is logged."""
  return "-PSNR, dB" if config.loss.kind == "psnr" else ""


SPEC = base.ObjectiveSpec("pixel", build, model_kinds=("restoration", "super_resolution"),
                          restorer=restorer_lib.image_restorer, loss_label=loss_label)
