"""Every config value checked before any work: ranges, the LoRA plan, and the images.

A bad number used to surface late or never: num_steps=-5 exported the random initialisation as
"trained", checkpoint_every=0 was a ZeroDivisionError at step 1, and a LoRA rank too large for
a layer was reported after the base had been pre-trained. `validate_all(config)` runs before
the run starts and raises one ConfigError listing every problem, each naming its key and the
allowed values:

  validate(config)            the range of every numeric key (RULES; the degradation ranges are
                              sr_jax/data/op_ranges.py's), and the rules that tie keys together
  validate_lora_plan(config)  the LoRA plan against the architecture's parameter shapes, from
                              jax.eval_shape (no parameters are built)
  check_images                every evaluation image decoded, every training image checked
"""

from __future__ import annotations

from typing import Any

import ml_collections

from sr_jax import objectives
from sr_jax.config import rules
from sr_jax.config.rules import ConfigError, Int, Real, Rule

ConfigDict = ml_collections.ConfigDict


def _lora_on(c: ConfigDict) -> bool:
  return bool(c.lora.enabled)


def _probe_runs(c: ConfigDict) -> bool:
  return bool(c.colora.enabled) and not c.colora.probe_checkpoint


# Every numeric key of config_base.base_config() outside the degradation sub-configs (whose
# ranges sr_jax/data/op_ranges.py checks); tests/test_config_check.py fails for a key left out.
RULES: dict[str, Rule] = {
    "seed": Int(0), "num_steps": Int(1), "batch_size": Int(1), "log_every": Int(1),
    "checkpoint_every": Int(1), "keep_checkpoints": Int(1), "eval_every": Int(0),
    "eval_checkpoint_step": Int(0, also=(-1,)), "num_image_summaries": Int(0),
    "model.width": Int(0), "model.dropout": Real(0, 1, hi_open=True, also=(-1,)),
    "data.crop_size": Int(1), "data.num_workers": Int(0), "data.num_train_images": Int(0),
    "data.eval_max_size": Int(0), "data.val_images": Int(0), "data.eval_crops": Int(1),
    "lora.rank": Int(1, when=_lora_on), "lora.alpha": Real(0, lo_open=True, when=_lora_on),
    "lora.learning_rate_multiplier": Real(0, lo_open=True),
    "colora.probe_steps": Int(1, when=_probe_runs),
    "colora.probe_learning_rate": Real(0, lo_open=True, when=_probe_runs),
    "colora.faig_steps": Int(1), "colora.faig_images": Int(1), "colora.faig_batch": Int(0),
    "colora.budget": Real(0, 1, lo_open=True), "colora.alpha": Real(0),
    "colora.beta": Real(0, 1), "colora.max_rank": Int(0),
    "colora.lora_scale": Real(0, lo_open=True),
    "base.num_steps": Int(0), "base.learning_rate": Real(0, lo_open=True),
    "base.milestones": Int(1, sequence=True),
    "loss.charbonnier_eps": Real(0, lo_open=True),
    **rules.optimizer_rules("optimizer"),
    "ema.decay": Real(0, 1, hi_open=True), "base.ema_decay": Real(0, 1, hi_open=True, also=(-1,)),
    "eval.crop_border": Int(0, also=(-1,)),
    "mesh.data": Int(1, also=(-1,)), "mesh.fsdp": Int(1), "mesh.fsdp_min_size": Int(0),
    "guard.max_loss": Real(), "guard.max_param_abs": Real(0, lo_open=True),
    "study.budget": Real(0, 1, lo_open=True), "study.curve_budgets": Real(0, 1, sequence=True),
    "study.seeds": Int(0, sequence=True),
    "study.full_learning_rates": Real(0, lo_open=True, sequence=True),
    "study.lora_learning_rates": Real(0, lo_open=True, sequence=True),
    "study.base_images": Int(0), "study.train_images": Int(1), "study.val_images": Int(1),
    "study.test_images": Int(0), "study.general_images": Int(0),
    "study.range_t_max": Int(1),
}
DEGRADATION_KEYS = ("data.degradation", "base.degradation")


def _get(config: ConfigDict, key: str) -> Any:
  node = config
  for part in key.split("."):
    node = node[part]
  return node


def _objective(config: ConfigDict) -> Any:
  """The config's objective spec (None for an unknown name: reported on its own)."""
  try:
    return objectives.get(config.objective)
  except ValueError:
    return None


def section_rules(config: ConfigDict) -> dict[str, Rule]:
  """The rules of every objective section the config holds (ObjectiveSpec.rules)."""
  found = {}
  for name in objectives.names():
    spec = objectives.get(name)
    if spec.section and spec.section in config:
      found.update(spec.rules)
  return found


def range_problems(config: ConfigDict) -> list[str]:
  """'config.<key>=<value>: must be <allowed>' for each key outside its rule (the shared keys'
  RULES and the rules of each objective section the config holds)."""
  problems = []
  for key, rule in {**RULES, **section_rules(config)}.items():
    try:
      value = _get(config, key)
    except KeyError:
      continue  # A config without that section (e.g. an older sub-config in a test).
    if (rule.when is None or rule.when(config)) and not rule.ok(value):
      problems.append(f"config.{key}={value!r}: must be {rule.describe()}")
  return problems


def degradation_problems(config: ConfigDict) -> list[str]:
  """The degradation sub-configs through the pipeline's own checks (sr_jax/data/op_ranges.py)."""
  from sr_jax.data import degradations  # pylint: disable=g-import-not-at-top
  problems = []
  for key in DEGRADATION_KEYS:
    try:
      degradations.as_spec(_get(config, key))
    except KeyError:
      continue
    except (ValueError, TypeError) as e:
      problems.append("config." + str(e).replace("degradation.", key + ".", 1))
  return problems


def joint_problems(config: ConfigDict) -> list[str]:
  """Rules tying keys together (each message names every key involved)."""
  from sr_jax.adapt import lora, lora_layouts  # pylint: disable=g-import-not-at-top
  from sr_jax.data import degradations  # pylint: disable=g-import-not-at-top
  problems = []
  if config.lora.scaling not in lora.SCALINGS:
    problems.append(f"config.lora.scaling={config.lora.scaling!r}: must be one of "
                    f"{lora.SCALINGS}")
  problems += lora_layouts.setting_problems(config.lora.formulation, config.lora.cost_model,
                                            tuple(config.lora.auto_layouts))
  spec = _objective(config)
  if spec is not None:
    problems += spec.problems(config)  # The objective's own (ObjectiveSpec.problems).
  if config.colora.faig_batch and config.colora.faig_images % config.colora.faig_batch:
    problems.append(f"config.colora.faig_batch={config.colora.faig_batch}: must divide "
                    f"colora.faig_images={config.colora.faig_images} (0 = all at once)")
  try:
    scale = degradations.as_spec(config.data.degradation).effective_scale
  except (ValueError, TypeError):
    return problems  # Reported by degradation_problems.
  if config.data.crop_size % scale:
    problems.append(f"config.data.crop_size={config.data.crop_size}: must be a multiple of "
                    f"data.degradation.scale={scale} (it is the HR crop)")
  return problems


def validate(config: ConfigDict) -> None:
  """Raises ConfigError listing every out-of-range value (see module doc); cheap, no I/O."""
  problems = range_problems(config) + degradation_problems(config) + joint_problems(config)
  if problems:
    raise ConfigError(f"{len(problems)} config value(s) out of range:\n  " +
                      "\n  ".join(problems) + "\nFix them in the job config or with "
                      "--config.<key>=<value>; nothing has run yet.")


def abstract_params(config: ConfigDict) -> Any:
  """The model's parameter shapes (jax.ShapeDtypeStruct leaves), without allocating them."""
  import jax  # pylint: disable=g-import-not-at-top
  from sr_jax.models import registry  # pylint: disable=g-import-not-at-top
  model = registry.build_model(config.model)
  inputs = registry.example_inputs(model, config.data.crop_size)
  return jax.eval_shape(lambda rng: model.init(rng, *inputs)["params"], jax.random.PRNGKey(0))


def validate_lora_plan(config: ConfigDict) -> None:
  """Checks the LoRA plan (ranks, targets, plan file) against the architecture, if LoRA is on."""
  if not config.lora.enabled:
    return
  try:
    from sr_jax.train import run_setup  # pylint: disable=g-import-not-at-top
    run_setup.lora_plan(config, abstract_params(config))
  except ValueError as e:
    raise ConfigError(f"The LoRA settings do not fit config.model ({config.model.name} "
                      f"{config.model.preset}): {e} Nothing has run yet.") from e


def _folders(data: Any, split: str) -> list[str]:
  kind = data.source
  if kind not in ("folder", "paired"):
    return []
  dirs = [getattr(data, f"{split}_dir")]
  if kind == "paired":
    dirs.append(getattr(data, f"{split}_lq_dir"))
  return [d for d in dirs if d]


def check_images(config: Any) -> None:
  """Every image the run will read, checked up front (see module doc); no-op for embedded/tfds.

  Training folders are checked for the task (data) and evaluation folders fully decoded,
  including config.eval.general_set when it is a folder.
  """
  from sr_jax.data import integrity, sources  # pylint: disable=g-import-not-at-top
  data = config.data
  recursive = bool(data.get("recursive", False))
  skip = bool(data.get("skip_bad_images", False))
  for directory in _folders(data, "train"):
    files = sources.list_image_files(directory, recursive=recursive)
    integrity.usable([[f] for f in files], skip, f"in {directory}")
  eval_dirs = _folders(data, "eval")
  general = config.eval.get("general_set", "")
  if general and general != "embedded":
    eval_dirs.append(general)
  for directory in eval_dirs:
    integrity.check_decodes(sources.list_image_files(directory, recursive=recursive),
                            f"in {directory}")


def validate_all(config: ConfigDict) -> None:
  """Everything checkable before work: ranges, the LoRA plan, then every image (I/O)."""
  validate(config)
  validate_lora_plan(config)
  check_images(config)
