"""The allowed values of a config key: intervals with sentinels, checked before any work.

Every numeric key has a rule, so a bad number is reported naming its key and the values it may
take (num_steps=-5 once exported the random initialisation as "trained"). The shared keys' rules
are in sr_jax.train.config_check; an objective's section brings its own (ObjectiveSpec.rules).
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
  exit_code = 2  # A config error (sr_jax.util.errors): printed alone, exit status 2.


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


def chain_range_problems(section: str, t_min: int, t_max: int, steps_key: str,
                         steps: int) -> list[str]:
  """A diffusion section's trained timestep range [t_min, t_max] (t_max 0 = the last of
  `steps`), as the one message a config check reports, or none."""
  if t_min <= (t_max or steps) <= steps:
    return []
  return [f"config.{section}.t_min={t_min}, t_max={t_max}: need 1 <= t_min <= t_max <= "
          f"{section}.{steps_key}={steps} (t_max 0 = the last)"]


def optimizer_rules(prefix: str) -> dict[str, Rule]:
  """The rules of an optimizer section (sr_jax.config.config_base.optimizer_config) at `prefix`."""
  return {f"{prefix}.learning_rate": Real(0, lo_open=True),
          f"{prefix}.b1": Real(0, 1, hi_open=True), f"{prefix}.b2": Real(0, 1, hi_open=True),
          f"{prefix}.weight_decay": Real(0), f"{prefix}.end_learning_rate": Real(0),
          f"{prefix}.gamma": Real(0, lo_open=True), f"{prefix}.warmup_steps": Int(0),
          f"{prefix}.grad_clip_norm": Real(0), f"{prefix}.milestones": Int(1, sequence=True)}
