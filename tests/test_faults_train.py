"""The fault-tolerance pieces inside the real training loop (micro NAFNet, a few steps): the
divergence guard, the fallback past a damaged checkpoint, the checks before any work, and the
workdir lock."""

import glob
import os
import subprocess
import sys

import pytest

from sr_jax.jobs import train
from sr_jax.train import checkpoint, config_check, guards, workdir_lock
from sr_jax.util import layout
from tests.test_train import micro_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_diverged_state_is_never_saved_and_a_sane_rerun_finishes(tmp_path):
  """lr 1e10 used to save step 1 with |w| = 1e10, which every re-run resumed and failed on."""
  blowup = {"optimizer.learning_rate": 1e10, "optimizer.schedule": "constant",
            "checkpoint_every": 1, "log_every": 1, "num_steps": 3}
  with pytest.raises(guards.Diverged, match=r"diverged at step 1: a parameter reached "
                                            r"\|w\| = .*re-run starts from step 0"):
    train.train_and_evaluate(micro_config(**blowup), str(tmp_path))
  assert checkpoint.manager(str(tmp_path)).all_steps() == []
  rows = train.train_and_evaluate(micro_config(num_steps=2), str(tmp_path))
  assert rows["trained"]["psnr"] > 10


def test_a_truncated_latest_checkpoint_falls_back_to_the_previous_step(tmp_path, caplog):
  train.train_and_evaluate(micro_config(num_steps=4), str(tmp_path))
  latest = tmp_path / "checkpoints" / "4"
  array = max(glob.glob(f"{latest}/state/ocdbt.process_0/d/*"), key=os.path.getsize)
  os.truncate(array, os.path.getsize(array) // 2)
  with caplog.at_level("WARNING"):
    train.train_and_evaluate(micro_config(num_steps=4), str(tmp_path))
  assert "Checkpoint step 4" in caplog.text and "falling back to step 2" in caplog.text
  assert glob.glob(str(tmp_path / layout.CORRUPT_NAME / "4-*" / "state"))
  assert checkpoint.manager(str(tmp_path)).all_steps() == [2, 4]  # Step 4 trained again.


def test_bad_numbers_and_a_bad_lora_rank_stop_before_any_work(tmp_path):
  with pytest.raises(config_check.ConfigError, match=r"config.num_steps=-5: must be an integer"):
    train.train_and_evaluate(micro_config(num_steps=-5), str(tmp_path / "a"))
  assert not (tmp_path / "a" / "export").exists()
  too_large = micro_config(**{"lora.enabled": True, "lora.rank": 64, "base.num_steps": 2})
  with pytest.raises(config_check.ConfigError, match="LoRA rank 64"):
    train.train_and_evaluate(too_large, str(tmp_path / "b"))
  assert not (tmp_path / "b" / "base").exists()  # No base was pre-trained first.


def test_a_run_on_a_workdir_another_process_holds_is_refused(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time\nfrom sr_jax.train import workdir_lock\n"
       "with workdir_lock.hold(sys.argv[1]):\n  print('locked', flush=True)\n  time.sleep(120)",
       str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True,
      env=dict(os.environ, PYTHONPATH=REPO))
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(workdir_lock.WorkdirLocked, match=f"pid {holder.pid}"):
      train.train_and_evaluate(micro_config(num_steps=2), str(tmp_path))
    assert not (tmp_path / "checkpoints").exists()
  finally:
    holder.kill()
    holder.wait()
