"""Config validation before any work: every numeric key's range, the LoRA plan, joint rules."""

import importlib
import math

import pytest

from configs import lora_nafnet, prod_nafnet
from sr_jax import objectives
from sr_jax.config import config_base
from sr_jax.train import config_check

JOBS = {"colora_nafnet": ("", "demo", "demo_ablation"), "colora_restormer": ("", "demo"),
        "esrgan": ("", "demo"), "esrgan_lora": ("", "demo"), "lora_nafnet": ("", "demo"),
        "mesrgan": ("", "demo"), "prod_nafnet": ("", "demo"), "sr3": ("", "demo"),
        "sr3_finetune": ("", "demo", "lora", "range"), "srgan": ("", "demo"),
        "resshift": ("", "demo"), "resshift_finetune": ("", "demo", "lora", "range")}


def numeric_keys(node, prefix=""):
  """Dotted keys of every int / float / tuple-of-numbers value (bools are not numbers)."""
  for key, value in node.items():
    name = f"{prefix}{key}"
    if hasattr(value, "items"):
      yield from numeric_keys(value, name + ".")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
      yield name
    elif name.endswith("milestones") or (
        isinstance(value, tuple) and value and
        all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
      yield name


def test_every_numeric_key_has_a_rule():
  """A numeric key added to config_base, or to an objective's section, without a range rule
  fails here."""
  keys = set(numeric_keys(config_base.base_config()))
  rules = dict(config_check.RULES)
  for name in objectives.names():
    spec = objectives.get(name)
    if spec.section:
      keys |= set(numeric_keys(spec.section_defaults(), spec.section + "."))
      rules.update(spec.rules)
  covered = {k for k in keys if k.startswith(config_check.DEGRADATION_KEYS)}
  missing = sorted(keys - covered - set(rules))
  assert not missing, f"config keys without a range rule in config_check.RULES: {missing}"
  assert not set(rules) - keys, "rules for keys config_base no longer has"


@pytest.mark.parametrize("job", sorted(JOBS))
def test_every_shipped_config_passes(job):
  module = importlib.import_module(f"configs.{job}")
  for variant in JOBS[job]:
    config_check.validate(module.get_config(variant or None))


@pytest.mark.parametrize("key,value,allowed", [
    ("num_steps", -5, "an integer >= 1"),
    ("checkpoint_every", 0, "an integer >= 1"),
    ("log_every", 0, "an integer >= 1"),
    ("batch_size", 0, "an integer >= 1"),
    ("keep_checkpoints", 0, "an integer >= 1"),
    ("optimizer.learning_rate", 0.0, "a number > 0"),
    ("optimizer.b2", 1.0, "a number in [0, 1)"),
    ("gan.d_optimizer.learning_rate", -1e-4, "a number > 0"),
    ("data.crop_size", 0, "an integer >= 1"),
    ("data.num_workers", -1, "an integer >= 0"),
    ("mesh.data", 0, "-1 or an integer >= 1"),
    ("eval.crop_border", -2, "-1 or an integer >= 0"),
    ("model.dropout", 1.5, "-1 or a number in [0, 1)"),
    ("colora.budget", 0.0, "a number in (0, 1]"),
    ("diffusion.eta", 2.0, "a number in [0, 1]"),
    ("gan.ema_decay", 1.0, "a number in [0, 1)"),
    ("guard.max_param_abs", 0.0, "a number > 0"),
    ("optimizer.milestones", (300, 100), "an increasing tuple, each an integer >= 1"),
])
def test_an_out_of_range_value_is_named_with_its_allowed_range(key, value, allowed):
  c = prod_nafnet.get_config("demo")
  section = key.split(".")[0]
  if section in objectives.sections():  # An objective's own section, checked where present.
    c[section] = objectives.sections()[section]()
  c.update_from_flattened_dict({key: value})
  with pytest.raises(config_check.ConfigError) as error:
    config_check.validate(c)
  assert f"config.{key}={value!r}: must be {allowed}" in str(error.value)


def test_all_problems_are_listed_at_once():
  c = prod_nafnet.get_config("demo")
  c.num_steps, c.checkpoint_every, c.data.degradation.noise_sigma = -5, 0, (30.0, 5.0)
  with pytest.raises(config_check.ConfigError, match="3 config value") as error:
    config_check.validate(c)
  message = str(error.value)
  assert "config.num_steps=-5" in message and "config.checkpoint_every=0" in message
  assert "config.data.degradation.noise_sigma must be a range" in message


def test_conditional_and_joint_rules():
  c = lora_nafnet.get_config("demo")
  c.lora.enabled, c.lora.rank = False, 0
  config_check.validate(c)  # The rank of a disabled LoRA does not matter.
  c.lora.enabled = True
  with pytest.raises(config_check.ConfigError, match=r"config.lora.rank=0: must be an integer"):
    config_check.validate(c)
  c = lora_nafnet.get_config("demo")
  c.data.degradation.kind, c.data.degradation.scale, c.data.crop_size = "bicubic", 4, 66
  with pytest.raises(config_check.ConfigError, match="crop_size=66: must be a multiple of "
                                                     "data.degradation.scale=4"):
    config_check.validate(c)
  c = lora_nafnet.get_config("demo")
  objectives.configure(c, "diffusion")
  c.diffusion.num_timesteps, c.diffusion.t_min = 100, 200
  with pytest.raises(config_check.ConfigError, match="t_min=200, t_max=0: need 1 <= t_min"):
    config_check.validate(c)
  c = lora_nafnet.get_config("demo")
  c.colora.faig_images, c.colora.faig_batch = 16, 5
  with pytest.raises(config_check.ConfigError, match="faig_batch=5: must divide"):
    config_check.validate(c)
  c = lora_nafnet.get_config("demo")
  c.lora.auto_layouts, c.lora.cost_model = ("merged", "fused"), "bytes"
  with pytest.raises(config_check.ConfigError, match="2 config value") as error:
    config_check.validate(c)
  assert "config.lora.auto_layouts=('merged', 'fused'): name one or more of" in str(error.value)
  assert "config.lora.cost_model='bytes'" in str(error.value)


def test_guard_defaults_pass_and_nan_does_not():
  c = prod_nafnet.get_config("demo")
  assert c.guard.max_loss == math.inf
  c.guard.max_loss = math.nan
  with pytest.raises(config_check.ConfigError, match="config.guard.max_loss=nan"):
    config_check.validate(c)


def micro_lora(**overrides):
  c = lora_nafnet.get_config("demo")
  c.model.preset, c.data.crop_size = "micro", 32
  c.update_from_flattened_dict(overrides)
  return c


def test_lora_rank_too_large_is_found_before_base_pretraining():
  """The micro NAFNet's narrowest adapted kernel has min(fan_in, fan_out) = 8."""
  config_check.validate_lora_plan(micro_lora(**{"lora.rank": 8}))
  with pytest.raises(config_check.ConfigError, match=r"LoRA rank 9 for \S+ .*exceeds min\("
                                                     r"fan_in=.*Nothing has run yet"):
    config_check.validate_lora_plan(micro_lora(**{"lora.rank": 9}))
  with pytest.raises(config_check.ConfigError, match="No kernel matches the LoRA targets"):
    config_check.validate_lora_plan(micro_lora(**{"lora.targets": ("nothing/.*",)}))


def test_lora_plan_file_of_another_architecture_is_found_up_front(tmp_path):
  plan = tmp_path / "plan.json"
  plan.write_text('{"ranks": {"no_such/kernel": 2}, "alphas": {"no_such/kernel": 2.0}}')
  with pytest.raises(config_check.ConfigError, match="is not a kernel of this model"):
    config_check.validate_lora_plan(micro_lora(**{"lora.plan_file": str(plan)}))
  plan.write_text("{not json")
  with pytest.raises(config_check.ConfigError, match="is not a readable LoRA plan"):
    config_check.validate_lora_plan(micro_lora(**{"lora.plan_file": str(plan)}))
