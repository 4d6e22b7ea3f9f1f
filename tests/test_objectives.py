"""The objective protocol: a new objective registered from outside the package trains through the
unchanged trainer; objective/model mismatches are errors before any work."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import lora_nafnet
from sr_jax import infer, objectives
from sr_jax.adapt import lora
from sr_jax.config import config_doc, rules as config_rules
from sr_jax.data import pipeline, sources
from sr_jax.inference import restore_io, restorer as restorer_lib
from sr_jax.jobs import base_stage, train
from sr_jax.models import registry
from sr_jax.objectives import base, pixel, step as step_lib
from sr_jax.train import config_check, loop as train_loop, run_setup
from sr_jax.util import exports, trees

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
  expected = trees.flatten(jax.tree.map(lambda p, u: p + u, init, updates))
  exported = trees.flatten(exports.load_params(os.path.join(tmp_path, "export", "params"))[0])
  for path, value in expected.items():
    np.testing.assert_allclose(exported[path], value, rtol=1e-4, atol=1e-6, err_msg=path)


def test_a_diffusion_model_with_the_pixel_objective_is_an_error_naming_the_key(tmp_path):
  config = _config(**{"model.name": "sr3", "model.preset": "micro"})
  with pytest.raises(ValueError, match=r"config.objective='pixel' trains restoration or "
                                       r"super_resolution models.*'sr3' is a diffusion model"):
    run_setup.build_run(config, str(tmp_path), None)


def test_the_gan_objective_pretrains_its_base_with_the_pixel_objective():
  config = _config(objective="gan")
  assert base_stage.base_config(config).objective == "pixel"
  assert objectives.get("pixel") is pixel.SPEC


# An objective that owns its whole life, registered from here: a config section with a
# commented default, a range rule and a joint rule, a restorer, a loss label.


def toy_section() -> ml_collections.ConfigDict:
  """The toy objective's own section (config.toy)."""
  return ml_collections.ConfigDict(dict(
      shift=SHIFT,  # Constant the toy model learns to add to every target pixel.
  ))


def _toy_problems(config):
  if config.toy.shift >= 1:
    return [f"config.toy.shift={config.toy.shift}: must be below 1 (images lie in [0, 1])"]
  return []


class ShiftingRestorer:
  """The toy's restorer for sr_jax.infer: the image model's output plus the exported shift."""

  def __init__(self, checkpoint, adapter, options):
    self.inner = restorer_lib.image_restorer(checkpoint, adapter, options)
    self.shift = exports.read_params_meta(checkpoint)["toy"]["shift"]

  def __call__(self, image):
    return self.inner(image) + self.shift

  def num_tiles(self, height, width):
    return self.inner.num_tiles(height, width)


def build_sectioned_toy(context: base.BuildContext) -> base.Built:
  shift = float(context.config.toy.shift)
  objective = ShiftedTargetObjective(context.model, context.tx, context.plan, context.schedule)
  return base.Built(objective, step_lib.init_state(context.trainable, context.tx, context.seed),
                    extra_frozen={"shift": jnp.float32(shift)}, meta={"toy": {"shift": shift}})


TOY_SPEC = base.ObjectiveSpec(
    "toy_sectioned", build_sectioned_toy, model_kinds=("restoration",), section="toy",
    section_defaults=toy_section, rules={"toy.shift": config_rules.Real(0)},
    problems=_toy_problems, restorer=ShiftingRestorer,
    loss_label=lambda config: "L2 to the shifted target")


def test_an_objective_with_its_own_section_rules_and_restorer_lives_through_unchanged_code(
    tmp_path):
  objectives.register(TOY_SPEC)
  config = objectives.configure(_config(), "toy_sectioned")
  assert config.toy.shift == SHIFT and "gan" not in config  # Its section, and only its own.
  assert "toy.shift = 0.25" in config_doc.listing(config, sections=objectives.sections())
  assert "Constant the toy model learns" in config_doc.listing(config,
                                                               sections=objectives.sections())
  assert train_loop.loss_label(config) == "L2 to the shifted target"

  # Validation: its range rule and its joint rule, before any work.
  for bad, message in ((-0.5, r"config.toy.shift=-0.5: must be a number >= 0"),
                       (2.0, r"config.toy.shift=2.0: must be below 1")):
    config.toy.shift = bad
    with pytest.raises(config_check.ConfigError, match=message):
      train.train_and_evaluate(config, str(tmp_path / "bad"))
    assert not (tmp_path / "bad" / "checkpoints").exists()
  config.toy.shift = SHIFT

  # Training, evaluation and export through the unchanged trainer.
  rows = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert "toy (trained)" in rows
  export_dir = str(tmp_path / "run" / "export" / "params")
  meta = exports.read_params_meta(export_dir)
  assert meta["objective"] == "toy_sectioned" and meta["toy"] == {"shift": SHIFT}
  assert objectives.for_export(export_dir) is TOY_SPEC

  # Inference: sr_jax.infer asks the export's objective for its restorer.
  image = np.linspace(0, 0.5, 32 * 32 * 3, dtype=np.float32).reshape(32, 32, 3)
  restore_io.write_png(tmp_path / "in.png", image)
  infer.run(export_dir, None, str(tmp_path / "in.png"), str(tmp_path / "out.png"), tlc="off")
  plain = restorer_lib.image_restorer(export_dir, None, restorer_lib.RestoreOptions(tlc="off"))
  restore_io.write_png(tmp_path / "plain_plus_shift.png",
                       plain(sources.read_image(tmp_path / "in.png")) + SHIFT)
  np.testing.assert_array_equal(sources.read_image(tmp_path / "out.png"),
                                sources.read_image(tmp_path / "plain_plus_shift.png"))
  assert not np.array_equal(sources.read_image(tmp_path / "out.png"),
                            np.clip(plain(sources.read_image(tmp_path / "in.png")), 0, 1))
