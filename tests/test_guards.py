"""Divergence guards: the updated state is checked, not only the loss computed before it."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sr_jax.config import config_base
from sr_jax.objectives import step as step_lib
from sr_jax.train import guards


def adam_state(learning_rate):
  """A TrainState after one Adam step on a quadratic: |w| moves by about the learning rate."""
  params = {"base": {"conv": {"kernel": jnp.full((3, 3), 0.5)}}, "lora": {}}
  tx = optax.adam(learning_rate)
  state = step_lib.init_state(params, tx, seed=0)
  grads = jax.grad(lambda p: jnp.sum(p["base"]["conv"]["kernel"] ** 2))(state.trainable)
  updates, opt_state = tx.update(grads, state.opt_state, state.trainable)
  return state.replace(step=state.step + 1, opt_state=opt_state,
                       trainable=optax.apply_updates(state.trainable, updates))


def test_sane_state_passes_and_health_is_computed_on_device():
  state = adam_state(1e-3)
  health = guards.tree_health(state)
  assert bool(health["finite"]) and float(health["max_abs"]) == pytest.approx(0.499, abs=1e-6)
  assert guards.check_state(state, 1, {"loss": -20.0}, max_param_abs=1e6).ok


def test_finite_but_diverged_state_is_caught_although_its_loss_was_fine():
  """lr 1e10: the loss of step 1 (computed before the update) is fine, the state is not."""
  state = adam_state(1e10)
  weights = np.abs(np.asarray(state.trainable["base"]["conv"]["kernel"]))
  assert np.isfinite(weights).all() and weights.max() > 1e9  # What used to be saved.
  verdict = guards.check_state(state, 1, {"loss": -12.0}, max_param_abs=1e6)
  assert not verdict.ok
  assert "trainable/base/conv/kernel (|w| up to 1e+10)" in verdict.reason
  assert "max_param_abs=1e+06" in verdict.reason
  message = verdict.message(last_good_step=None)
  assert "diverged at step 1" in message and "starts from step 0" in message


def test_non_finite_leaf_is_named_also_in_optimizer_moments():
  state = adam_state(1e-3)
  mu = state.opt_state[0].mu
  bad = jax.tree.map(lambda x: x.at[0, 0].set(jnp.nan), mu)
  state = state.replace(opt_state=(state.opt_state[0]._replace(mu=bad),) + state.opt_state[1:])
  verdict = guards.check_state(state, 7)
  assert not verdict.ok and "non-finite" in verdict.reason and "mu/base/conv/kernel" in verdict.reason
  assert "last good checkpoint is step 5" in verdict.message(last_good_step=5)


@pytest.mark.parametrize("losses,expected", [
    ({"loss": math.nan}, "loss became nan"),
    ({"loss": 1.0, "d_loss": math.inf}, "d_loss became inf"),
    ({"loss": 150.0}, "loss=150 exceeds config.guard.max_loss=100"),
])
def test_loss_checks_name_the_metric(losses, expected):
  verdict = guards.check_state(adam_state(1e-3), 3, losses, max_loss=100.0)
  assert not verdict.ok and expected in verdict.reason


def test_metrics_that_are_not_losses_are_ignored_and_defaults_come_from_the_config():
  guard = config_base.base_config().guard
  assert guard.max_loss == math.inf and guard.max_param_abs == 1e6
  state = adam_state(1e-3)
  assert guards.check_config_state(state, 2, guard, {"loss": 1e30, "grad_norm": math.inf}).ok
  assert not guards.check_config_state(adam_state(1e10), 2, guard).ok


def test_integer_leaves_and_statistics_are_not_parameters():
  """The step counter and rng are integers; batch statistics may be large, unlike weights."""
  from sr_jax.objectives import gan  # pylint: disable=g-import-not-at-top
  small = {"kernel": jnp.full((2, 2), 0.5)}
  state = gan.GanState(step=jnp.int32(10**9), trainable=small, opt_state=(), rng=jnp.zeros(
      2, jnp.uint32), ema=small, d_params=small, d_stats={"var": jnp.full((4,), 1e8)},
                       d_opt_state=())
  assert guards.check_state(state, 1, max_param_abs=1.0).ok
  state = state.replace(d_params={"kernel": jnp.full((2, 2), 3.0)})
  verdict = guards.check_state(state, 1, max_param_abs=1.0)
  assert not verdict.ok and "d_params/kernel" in verdict.reason
