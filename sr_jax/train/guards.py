"""Divergence guards: is an updated train state fit to be saved?

A step's loss is computed *before* its update, so a finite loss says nothing about the state
the update produced: with a learning rate of 1e10 the loss of step 1 is fine while the
parameters it leaves are ~1e10, and a checkpoint of that state would poison every resume.
`check_state` therefore looks at the state itself before a save: every floating leaf finite
(parameters, optimizer moments, EMA, discriminator), the largest parameter magnitude under
config.guard.max_param_abs, and the logged losses under config.guard.max_loss.

The reductions run on device in one jitted call (`tree_health`), so a check costs two scalars
of transfer; leaves are named (`bad_leaves`) only once a check has failed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sr_jax.util import trees

PyTree = Any
# State fields holding parameters (step.TrainState, gan.GanState); the other floating fields
# (optimizer moments, batch statistics) are only checked for finiteness.
PARAM_FIELDS = ("trainable", "ema", "d_params")


class Diverged(FloatingPointError):
  """Training produced a state unfit to save; the message names the step and the last good one."""


@dataclasses.dataclass(frozen=True)
class Verdict:
  """The outcome of `check_state` for one step ('' reason when the state may be saved)."""
  step: int
  reason: str = ""

  @property
  def ok(self) -> bool:
    return not self.reason

  def message(self, last_good_step: int | None) -> str:
    """The error the loop raises: what went wrong, what was kept, how to go on."""
    kept = ("No checkpoint was written before it, so a re-run starts from step 0"
            if last_good_step is None else
            f"The last good checkpoint is step {last_good_step}; re-running resumes from it")
    return (f"Training diverged at step {self.step}: {self.reason}. This state was not saved. "
            f"{kept}. Lower config.optimizer.learning_rate, set "
            "config.optimizer.grad_clip_norm, or check the data.")


def _is_float(x: Any) -> bool:
  return jnp.issubdtype(getattr(x, "dtype", None) or np.asarray(x).dtype, jnp.floating)


def _floating(tree: PyTree) -> list[jax.Array]:
  return [x for x in jax.tree.leaves(tree) if _is_float(x)]


def param_part(state: Any) -> PyTree:
  """The parameter fields of a train state (a plain tree counts as parameters throughout)."""
  if not dataclasses.is_dataclass(state):
    return state
  return {f: getattr(state, f) for f in PARAM_FIELDS if hasattr(state, f)}


@jax.jit
def tree_health(state: Any) -> dict[str, jax.Array]:
  """{'finite': all floating leaves finite, 'max_abs': the largest |parameter|} (jittable)."""
  leaves = _floating(state)
  finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else True
  params = _floating(param_part(state))
  max_abs = (jnp.max(jnp.stack([jnp.max(jnp.abs(x)).astype(jnp.float32) for x in params]))
             if params else jnp.float32(0))
  return {"finite": jnp.asarray(finite), "max_abs": max_abs}


@jax.jit
def _leaf_stats(state: Any) -> PyTree:
  """(all finite, max |x|) per floating leaf, (True, 0) for others: on device, so sharded and
  multi-host leaves need no gathering."""
  def stats(x):
    if not _is_float(x):
      return jnp.asarray(True), jnp.float32(0)
    return jnp.all(jnp.isfinite(x)), jnp.max(jnp.abs(x)).astype(jnp.float32)
  return jax.tree.map(stats, state)


def bad_leaves(state: Any, max_abs: float = math.inf, limit: int = 3) -> list[str]:
  """Paths of (up to `limit`) leaves that are non-finite, or parameters above `max_abs`."""
  params = {id(x) for x in _floating(param_part(state))}
  leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  stats = jax.tree.leaves(jax.device_get(_leaf_stats(state)))
  found = []
  for (path, leaf), finite, largest in zip(leaves, stats[0::2], stats[1::2]):
    if not finite:
      found.append(f"{trees.path_str(path)} (non-finite)")
    elif id(leaf) in params and largest > max_abs:
      found.append(f"{trees.path_str(path)} (|w| up to {float(largest):.3g})")
    if len(found) >= limit:
      break
  return found


def _loss_problem(losses: Mapping[str, float], max_loss: float) -> str:
  """The first '*loss' that is non-finite or above `max_loss` ('' if none)."""
  for name, value in losses.items():
    if not (name == "loss" or name.endswith("_loss")):
      continue
    if not math.isfinite(float(value)):
      return f"{name} became {float(value)}"
    if float(value) > max_loss:
      return (f"{name}={float(value):.4g} exceeds config.guard.max_loss={max_loss:g} "
              "(a blow-up)")
  return ""


def check_state(state: Any, step: int, losses: Mapping[str, float] | None = None, *,
                max_loss: float = math.inf, max_param_abs: float = math.inf) -> Verdict:
  """Whether the state after `step` may be saved; the reason names the offending leaves."""
  if losses:
    problem = _loss_problem(losses, max_loss)
    if problem:
      return Verdict(step, problem)
  health = jax.device_get(tree_health(state))
  max_abs = float(health["max_abs"])
  if not bool(health["finite"]):
    return Verdict(step, "the updated state is non-finite: " + ", ".join(bad_leaves(state)))
  if max_abs > max_param_abs:
    return Verdict(step, f"a parameter reached |w| = {max_abs:.3g}, above "
                         f"config.guard.max_param_abs={max_param_abs:g}: "
                         + ", ".join(bad_leaves(state, max_param_abs)))
  return Verdict(step)


def check_config_state(state: Any, step: int, guard_config: Any,
                       losses: Mapping[str, float] | None = None) -> Verdict:
  """`check_state` with the thresholds of config.guard."""
  return check_state(state, step, losses, max_loss=float(guard_config.max_loss),
                     max_param_abs=float(guard_config.max_param_abs))
