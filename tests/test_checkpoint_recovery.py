"""A damaged latest checkpoint falls back to the newest intact step; nothing is deleted."""

import glob
import os
import shutil

import grain
import jax.numpy as jnp
import numpy as np
import pytest

from sr_jax.train import checkpoint, guards
from sr_jax.util import layout


def template():
  return {"w": jnp.zeros((10, 100)), "b": jnp.zeros(3)}, {"f": jnp.zeros(4)}


def data_iter():
  return iter(grain.MapDataset.range(1000).to_iter_dataset())


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """A run directory with steps 1, 2, 3; step s has w in [s, s + 1) and read 10 * s records."""
  root = tmp_path_factory.mktemp("run")
  mgr = checkpoint.manager(str(root), keep=5)
  it = data_iter()
  for step in (1, 2, 3):
    for _ in range(10):
      next(it)
    rng = np.random.default_rng(step)  # Incompressible, so a truncation cuts into the data.
    state = {"w": jnp.asarray(step + rng.random((10, 100)), jnp.float32),
             "b": jnp.full(3, float(step))}
    checkpoint.save(mgr, step, state, {"f": jnp.ones(4)}, it, {"model": {"name": "toy"}})
  mgr.wait_until_finished()
  mgr.close()
  return root


def largest_array_file(step_dir):
  return max(glob.glob(f"{step_dir}/state/ocdbt.process_0/d/*"), key=os.path.getsize)


def truncate(step_dir):
  path = largest_array_file(step_dir)
  os.truncate(path, os.path.getsize(path) // 2)


def delete_arrays(step_dir):
  for path in glob.glob(f"{step_dir}/state/ocdbt.process_0/d/*"):
    os.remove(path)


def garble_iterator(step_dir):
  (step_dir / "data_iter" / "process_0-of-1.json").write_text('{"next_ind')


def delete_meta(step_dir):
  shutil.rmtree(step_dir / "meta")


@pytest.mark.parametrize("damage,named", [
    (truncate, "Error reading \"state.w"),
    (delete_arrays, "Error reading \"state.w"),
    (garble_iterator, "process_0-of-1.json is not valid JSON"),
    (delete_meta, "/3/meta is missing"),
])
def test_each_kind_of_damage_falls_back_to_the_previous_step(saved, tmp_path, caplog, damage,
                                                              named):
  run = tmp_path / "run"
  shutil.copytree(saved, run)
  damage(run / "checkpoints" / "3")
  mgr = checkpoint.manager(str(run))
  it = data_iter()
  state, frozen = template()
  with caplog.at_level("WARNING"):
    step, state, frozen = checkpoint.restore_latest_intact(mgr, state, frozen, it)
  assert step == 2 and int(state["w"][0, 0]) == 2 and float(frozen["f"][0]) == 1.0
  assert next(it) == 20  # The iterator resumes where step 2 left it.
  assert mgr.all_steps() == [1, 2] and mgr.latest_step() == 2
  moved = glob.glob(str(run / layout.CORRUPT_NAME / "3-*"))
  assert len(moved) == 2  # The step directory (kept, not deleted) and its reason file.
  kept = next(m for m in moved if os.path.isdir(m))
  assert os.path.exists(os.path.join(kept, "_CHECKPOINT_METADATA"))
  warning = " ".join(r.getMessage() for r in caplog.records)
  assert "step 3" in warning and kept in warning and named in warning
  assert named in open(kept + ".reason.txt").read()


def test_no_intact_step_raises_one_paragraph_naming_each_and_changes_nothing(saved, tmp_path):
  run = tmp_path / "run"
  shutil.copytree(saved, run)
  for step in (1, 2, 3):
    truncate(run / "checkpoints" / str(step))
  garble_iterator(run / "checkpoints" / "2")
  mgr = checkpoint.manager(str(run))
  with pytest.raises(checkpoint.NoIntactCheckpoint) as error:
    checkpoint.restore_latest_intact(mgr, *template(), data_iter())
  message = str(error.value)
  assert "\n" not in message
  for step in (1, 3):
    assert f"Step {step}: ValueError: OUT_OF_RANGE: Error reading \"state.w" in message
  assert "Step 2: " in message and "process_0-of-1.json is not valid JSON" in message
  assert "move the checkpoints directory aside" in message
  assert mgr.all_steps() == [1, 2, 3] and not (run / layout.CORRUPT_NAME).exists()


def test_a_config_error_is_not_mistaken_for_damage(saved, tmp_path):
  run = tmp_path / "run"
  shutil.copytree(saved, run)
  mgr = checkpoint.manager(str(run))

  def other_model(step, meta):
    raise ValueError(f"step {step} holds {meta['model']['name']}, not the configured model")
  with pytest.raises(ValueError, match="step 3 holds toy"):
    checkpoint.restore_latest_intact(mgr, *template(), data_iter(), check_meta=other_model)
  # A shape that does not fit fails on every step alike: reported, nothing moved.
  state, frozen = template()
  with pytest.raises(checkpoint.NoIntactCheckpoint, match="may not fit this config"):
    checkpoint.restore_latest_intact(mgr, {"w": jnp.zeros((10, 100))}, frozen, data_iter())
  assert mgr.all_steps() == [1, 2, 3]


def test_a_refused_state_is_set_aside_and_a_lone_one_restarts_from_zero(saved, tmp_path):
  """A diverged checkpoint (saved before the guards existed) is not resumed again."""
  run = tmp_path / "run"
  shutil.copytree(saved, run)
  mgr = checkpoint.manager(str(run))

  def diverged(step, state):
    verdict = guards.check_state(state, step, max_param_abs=2.0)
    return None if verdict.ok else verdict.reason
  it = data_iter()
  step, state, _ = checkpoint.restore_latest_intact(mgr, *template(), it,
                                                     check_restored=diverged)
  assert step == 1 and int(state["w"][0, 0]) == 1 and mgr.all_steps() == [1]
  reasons = sorted(glob.glob(str(run / layout.CORRUPT_NAME / "*.reason.txt")))
  assert len(reasons) == 2 and "max_param_abs=2" in open(reasons[0]).read()
  it = data_iter()
  step, state, _ = checkpoint.restore_latest_intact(
      mgr, *template(), it, check_restored=lambda s, _: "diverged")
  assert step is None and mgr.all_steps() == []
  assert float(state["w"][0, 0]) == 0.0 and next(it) == 0  # A fresh start, from record 0.


def test_a_run_without_checkpoints_starts_fresh(tmp_path):
  state, frozen = template()
  assert checkpoint.restore_latest_intact(checkpoint.manager(str(tmp_path)), state, frozen,
                                          None) == (None, state, frozen)
