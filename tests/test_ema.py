"""The EMA of weights (config.ema.decay): updated in the step, checkpointed and resumed bitwise,
what evaluation and export use, only over the trainable tree, and absent when the decay is 0."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from sr_jax.data import pipeline
from sr_jax.jobs import train
from sr_jax.train import config_check, run_setup
from sr_jax.util import exports, trees
from tests.test_train import micro_config

DECAY = 0.5  # Short: after a few steps the EMA is far from both the init and the last iterate.


def _batches(config, count):
  it = iter(pipeline.make_train_dataset(config.data, seed=0, batch_size=config.batch_size))
  return [next(it) for _ in range(count)]


def _flat(tree):
  return {k: np.asarray(v) for k, v in trees.flatten(tree).items()}


def test_ema_follows_its_recurrence_over_the_trainable_tree_only():
  c = micro_config(**{"lora.enabled": True, "ema.decay": DECAY})
  run = run_setup.build_run(c, "/tmp/unused", base=None)
  assert jax.tree.structure(run.state.ema) == jax.tree.structure(run.state.trainable)
  expected = _flat(run.state.trainable)  # The EMA starts at the initial values.
  step_fn = run.train_step()
  state = run.state
  for batch in _batches(c, 3):
    state, _ = step_fn(state, run.frozen, batch)
    expected = {k: DECAY * v + (1 - DECAY) * np.asarray(trees.flatten(state.trainable)[k])
                for k, v in expected.items()}
  got = _flat(state.ema)
  assert got.keys() == expected.keys()
  for path, value in expected.items():
    np.testing.assert_allclose(got[path], value, rtol=1e-6, atol=1e-7, err_msg=path)
  assert not np.allclose(got[next(iter(got))], _flat(state.trainable)[next(iter(got))])
  # Evaluation and export read the EMA, not the last iterate.
  evaluated = trees.flatten(run.objective.eval_params(state, run.frozen))
  for path, value in trees.flatten(state.ema).items():
    np.testing.assert_array_equal(evaluated[path], value)


def test_decay_zero_keeps_no_ema_and_evaluates_the_last_iterate():
  c = micro_config()
  run = run_setup.build_run(c, "/tmp/unused", base=None)
  assert run.state.ema is None
  plain_leaves = len(jax.tree.leaves((run.state.trainable, run.state.opt_state, run.state.step,
                                      run.state.rng)))
  assert len(jax.tree.leaves(run.state)) == plain_leaves  # Checkpoints hold what they held.
  state, _ = run.train_step()(run.state, run.frozen, _batches(c, 1)[0])
  assert state.ema is None
  assert run.objective.eval_trainable(state) is state.trainable


def test_ema_is_checkpointed_resumed_bitwise_and_exported(tmp_path):
  common = {"optimizer.schedule": "constant", "ema.decay": DECAY, "checkpoint_every": 2}
  straight, resumed = str(tmp_path / "a"), str(tmp_path / "b")
  train.train_and_evaluate(micro_config(**common, num_steps=4), straight)
  train.train_and_evaluate(micro_config(**common, num_steps=2), resumed)  # "Interrupted" at 2.
  train.train_and_evaluate(micro_config(**common, num_steps=4), resumed)
  a, b = (_flat(exports.load_params(os.path.join(w, "export", "params"))[0])
          for w in (straight, resumed))
  assert a.keys() == b.keys()
  for path in a:  # An EMA restarted at step 2 from the weights would differ here.
    np.testing.assert_array_equal(a[path], b[path], err_msg=path)
  # The export is the EMA: it differs from the same run's last iterate.
  raw = micro_config(**dict(common, **{"ema.decay": 0.0}), num_steps=4)
  train.train_and_evaluate(raw, str(tmp_path / "raw"))
  last = _flat(exports.load_params(str(tmp_path / "raw" / "export" / "params"))[0])
  assert any(not np.array_equal(a[p], last[p]) for p in a)


def test_gan_objective_refuses_the_generic_ema():
  from configs import esrgan  # pylint: disable=g-import-not-at-top
  c = esrgan.get_config("demo")
  c.ema.decay = 0.9
  with pytest.raises(config_check.ConfigError, match="gan.ema_decay"):
    config_check.validate(c)
