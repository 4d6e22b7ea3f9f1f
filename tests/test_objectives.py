"""The objective protocol: a new objective registered from outside the package trains through the
unchanged trainer; objective/model mismatches are errors before any work."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import lora_nafnet
from sr_jax import checkpoint, lora, objectives, run_setup, step as step_lib, train
from sr_jax.data import pipeline
from sr_jax.models import registry
from sr_jax.objectives import base, pixel

SHIFT = 0.25  # The toy objective's constant, passed through the frozen tree's 'extra'.


class ShiftedTargetObjective(base.ModelObjective):
  """Learns to output the target plus a constant shift (an L2 loss); a stand-in for any
  objective the package does not know about."""

  def update(self, state, frozen, batch):
    shift = frozen[base.EXTRA]["shift"]

    def loss_fn(trainable):
      pred = self.apply(lora.combine(trainable, frozen[base.MODEL]), batch["lq"])
      return jnp.mean(jnp.square(pred - (batch["gt"] + shift)))

    loss, grads = jax.value_and_grad(loss_fn)(state.trainable)
    trainable, opt_state, grad_norm = base.apply_gradients(self.tx, state.trainable,
                                                           state.opt_state, grads)
    new_state = state.replace(step=state.step + 1, trainable=trainable, opt_state=opt_state)
    return new_state, self.step_metrics(state, {"loss": loss, "grad_norm": grad_norm})

  def arm_label(self, default: str) -> str:
    return f"toy ({default})"


def build_toy(context: base.BuildContext) -> base.Built:
  objective = ShiftedTargetObjective(context.model, context.tx, context.plan, context.schedule)
  return base.Built(objective, step_lib.init_state(context.trainable, context.tx, context.seed),
                    extra_frozen={"shift": jnp.float32(SHIFT)}, meta={"toy": {"shift": SHIFT}})


def _config(**overrides):
  c = lora_nafnet.get_config("demo")
  c.model.preset = "micro"
  c.data.crop_size, c.data.eval_max_size, c.batch_size = 32, 48, 8
  c.base.num_steps, c.num_steps, c.log_every, c.checkpoint_every = 0, 1, 1, 1
  c.lora.enabled, c.num_image_summaries = False, 0
  c.optimizer.learning_rate = 1e-3
  c.update_from_flattened_dict(overrides)
  return c


def test_a_toy_objective_registered_here_trains_through_the_unchanged_trainer(tmp_path):
  objectives.register(base.ObjectiveSpec("toy_shift", build_toy,
                                         model_kinds=("restoration",)))
  config = _config(objective="toy_shift")
  rows = train.train_and_evaluate(config, str(tmp_path))
  assert "toy (trained)" in rows  # The objective names its row.
  meta = json.loads((tmp_path / "export" / "params" / "meta.json").read_text())
  assert meta["toy"] == {"shift": SHIFT}  # Its record travels with the export.

  # The one step it took is the toy's update, constant included: recompute it independently.
  model = registry.build_model(config.model)
  init = run_setup.init_base(model, config.data.crop_size, jax.random.PRNGKey(config.seed))
  batch = next(iter(pipeline.make_train_dataset(config.data, seed=config.seed,
                                                batch_size=config.batch_size)))

  def loss_fn(params):
    pred = model.apply({"params": params}, jnp.asarray(batch["lq"]))
    return jnp.mean(jnp.square(pred - (jnp.asarray(batch["gt"]) + SHIFT)))

  grads = jax.grad(loss_fn)(init)
  tx = step_lib.make_optimizer(config.optimizer, step_lib.learning_rate_schedule(
      config.optimizer, config.num_steps))
  updates, _ = tx.update(grads, tx.init(init), init)
  expected = lora.flatten(jax.tree.map(lambda p, u: p + u, init, updates))
  exported = lora.flatten(checkpoint.load_params(os.path.join(tmp_path, "export", "params"))[0])
  for path, value in expected.items():
    np.testing.assert_allclose(exported[path], value, rtol=1e-4, atol=1e-6, err_msg=path)


def test_a_diffusion_model_with_the_pixel_objective_is_an_error_naming_the_key(tmp_path):
  config = _config(**{"model.name": "sr3", "model.preset": "micro"})
  with pytest.raises(ValueError, match=r"config.objective='pixel' trains restoration or "
                                       r"super_resolution models.*'sr3' is a diffusion model"):
    run_setup.build_run(config, str(tmp_path), None)


def test_the_gan_objective_pretrains_its_base_with_the_pixel_objective():
  config = _config(objective="gan")
  assert train.base_config(config).objective == "pixel"
  assert objectives.get("pixel") is pixel.SPEC
