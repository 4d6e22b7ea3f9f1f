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

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import ml_collections

ConfigDict = ml_collections.ConfigDict


class ConfigError(ValueError):
  """One or more config values are out of range; the message lists each key."""
  exit_code = 2  # A config error (sr_jax.errors): printed alone, exit status 2.


@dataclasses.dataclass(frozen=True)
class Rule:
  """The allowed values of one numeric key: a bounded interval, plus sentinel values."""
  integer: bool
  lo: float | None = None
  hi: float | None = None
  lo_open: bool = False
  hi_open: bool = False
  also: tuple[float, ...] = ()  # Sentinels allowed outside the interval (e.g. -1 = "all").
  sequence: bool = False  # A tuple of such values, strictly increasing (milestones).
  when: Callable[[ConfigDict], bool] | None = None  # Checked only when this holds.

  def _scalar_ok(self, v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
      return False
    if v in self.also:
      return True
    if self.integer and not float(v).is_integer() or math.isnan(v):
      return False
    return ((self.lo is None or v > self.lo or (v == self.lo and not self.lo_open))
            and (self.hi is None or v < self.hi or (v == self.hi and not self.hi_open)))

  def ok(self, value: Any) -> bool:
    if not self.sequence:
      return self._scalar_ok(value)
    return (isinstance(value, (tuple, list)) and all(self._scalar_ok(v) for v in value)
            and all(a < b for a, b in zip(value, value[1:])))

  def describe(self) -> str:
    kind = "an integer" if self.integer else "a number"
    if self.lo is not None and self.hi is not None:
      text = (f"{kind} in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}"
              f"{')' if self.hi_open else ']'}")
    elif self.lo is not None:
      text = f"{kind} {'>' if self.lo_open else '>='} {self.lo:g}"
    else:
      text = kind
    if self.also:
      text = " or ".join(f"{a:g}" for a in self.also) + f" or {text}"
    return f"an increasing tuple, each {text}" if self.sequence else text


def Int(lo=None, hi=None, **kw) -> Rule:  # pylint: disable=invalid-name
  return Rule(True, lo, hi, **kw)


def Real(lo=None, hi=None, **kw) -> Rule:  # pylint: disable=invalid-name
  return Rule(False, lo, hi, **kw)


def _lora_on(c: ConfigDict) -> bool:
  return bool(c.lora.enabled)


def _probe_runs(c: ConfigDict) -> bool:
  return bool(c.colora.enabled) and not c.colora.probe_checkpoint


def _optimizer_rules(prefix: str) -> dict[str, Rule]:
  return {f"{prefix}.learning_rate": Real(0, lo_open=True),
          f"{prefix}.b1": Real(0, 1, hi_open=True), f"{prefix}.b2": Real(0, 1, hi_open=True),
          f"{prefix}.weight_decay": Real(0), f"{prefix}.end_learning_rate": Real(0),
          f"{prefix}.gamma": Real(0, lo_open=True), f"{prefix}.warmup_steps": Int(0),
          f"{prefix}.grad_clip_norm": Real(0), f"{prefix}.milestones": Int(1, sequence=True)}


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
    **_optimizer_rules("optimizer"), **_optimizer_rules("gan.d_optimizer"),
    "gan.d_num_feat": Int(1), "gan.pixel_weight": Real(0), "gan.perceptual_weight": Real(0),
    "gan.gan_weight": Real(0), "gan.ema_decay": Real(0, 1, hi_open=True),
    "ema.decay": Real(0, 1, hi_open=True), "base.ema_decay": Real(0, 1, hi_open=True, also=(-1,)),
    "diffusion.num_timesteps": Int(1), "diffusion.beta_start": Real(0, 1, lo_open=True),
    "diffusion.beta_end": Real(0, 1, lo_open=True), "diffusion.t_min": Int(1),
    "diffusion.t_max": Int(0), "diffusion.sample_steps": Int(0), "diffusion.eta": Real(0, 1),
    "diffusion.sample_seed": Int(0),
    "resshift.num_steps": Int(2), "resshift.kappa": Real(0, lo_open=True),
    "resshift.power": Real(0, lo_open=True), "resshift.eta_T": Real(0, 1, lo_open=True),
    "resshift.eta_1": Real(0, 1),
    "resshift.t_min": Int(1), "resshift.t_max": Int(0), "resshift.sample_seed": Int(0),
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


def range_problems(config: ConfigDict) -> list[str]:
  """'config.<key>=<value>: must be <allowed>' for each key outside its rule."""
  problems = []
  for key, rule in RULES.items():
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


def resshift_problems(config: ConfigDict) -> list[str]:
  """ResShift's names and its training timestep range (when it is the objective)."""
  r = config.get("resshift")
  if config.objective != "resshift" or r is None:
    return []
  from sr_jax.diffusion import resshift, resshift_sr  # pylint: disable=g-import-not-at-top
  problems = []
  last = r.t_max or r.num_steps
  if not r.t_min <= last <= r.num_steps:
    problems.append(f"config.resshift.t_min={r.t_min}, t_max={r.t_max}: need 1 <= t_min <= "
                    f"t_max <= resshift.num_steps={r.num_steps} (t_max 0 = the last)")
  if r.level not in resshift.LEVELS:
    problems.append(f"config.resshift.level={r.level!r}: must be one of {resshift.LEVELS}")
  if r.output not in resshift_sr.OUTPUTS:
    problems.append(f"config.resshift.output={r.output!r}: must be one of "
                    f"{resshift_sr.OUTPUTS}")
  if r.get("eta_1", 0.0) and not r.eta_1 < r.eta_T:
    problems.append(f"config.resshift.eta_1={r.eta_1}: must be below resshift.eta_T={r.eta_T} "
                    "(0 = the paper's rule)")
  return problems


def joint_problems(config: ConfigDict) -> list[str]:
  """Rules tying keys together (each message names every key involved)."""
  from sr_jax import lora, lora_branch  # pylint: disable=g-import-not-at-top
  from sr_jax.data import degradations  # pylint: disable=g-import-not-at-top
  problems = []
  if config.lora.scaling not in lora.SCALINGS:
    problems.append(f"config.lora.scaling={config.lora.scaling!r}: must be one of "
                    f"{lora.SCALINGS}")
  if config.lora.cost_model not in lora_branch.COST_MODELS:
    problems.append(f"config.lora.cost_model={config.lora.cost_model!r}: must be one of "
                    f"{list(lora_branch.COST_MODELS)}.")
  if config.lora.formulation not in lora_branch.FORMULATIONS:
    problems.append(f"config.lora.formulation={config.lora.formulation!r}: must be one of "
                    f"{lora_branch.FORMULATIONS}")
  d = config.diffusion
  if config.objective == "diffusion":
    last = d.t_max or d.num_timesteps
    if not d.t_min <= last <= d.num_timesteps:
      problems.append(f"config.diffusion.t_min={d.t_min}, t_max={d.t_max}: need 1 <= t_min <= "
                      f"t_max <= diffusion.num_timesteps={d.num_timesteps} (t_max 0 = the last)")
    if d.sample_steps > d.num_timesteps:
      problems.append(f"config.diffusion.sample_steps={d.sample_steps}: must be at most "
                      f"diffusion.num_timesteps={d.num_timesteps} (0 = every step)")
    if d.schedule != "cosine" and not d.beta_start < d.beta_end:
      problems.append(f"config.diffusion.beta_start={d.beta_start:g} must be below "
                      f"diffusion.beta_end={d.beta_end:g}")
  problems += resshift_problems(config)
  if config.objective == "gan" and config.ema.decay:
    problems.append(f"config.ema.decay={config.ema.decay:g}: the GAN objective keeps its "
                    f"generator's EMA with gan.ema_decay (now {config.gan.ema_decay:g}); set "
                    "ema.decay=0")
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
    from sr_jax import run_setup  # pylint: disable=g-import-not-at-top
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
