"""Expected errors print their message alone (no traceback, at most a few lines) with exit status
2 for usage and config errors, 1 for failures during work; unexpected ones keep their traceback
and say they are a bug. Each kind is checked through the command line, in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from sr_jax.util import errors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICRO = ["--config.model.preset=micro", "--config.data.crop_size=32",
         "--config.data.eval_max_size=48", "--config.base.num_steps=0", "--config.num_steps=2",
         "--config.lora.enabled=False", "--config.batch_size=8"]


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True,
                        timeout=600, env=dict(os.environ, JAX_PLATFORMS="cpu", **(env or {})))


def assert_message(proc: subprocess.CompletedProcess, status: int, *needles: str) -> None:
  """The error is one short message: exit `status`, no traceback, every needle in it."""
  err = proc.stderr
  assert proc.returncode == status, (proc.returncode, err[-3000:])
  assert "Traceback" not in err, err[-3000:]
  message = err[err.index("error: "):] if "error: " in err else err
  assert len(message.strip().splitlines()) <= 6, message
  for needle in needles:
    assert needle in message, (needle, message)


def test_config_value_out_of_range_exits_2_naming_the_key():
  proc = run("sr_jax.main", "--config", "configs/lora_nafnet.py:demo", "--workdir", "/tmp/x",
             "--config.num_steps=-5")
  assert_message(proc, 2, "config.num_steps=-5", "--config.<key>=<value>")


def test_mistyped_key_exits_2_naming_the_closest_key():
  proc = run("sr_jax.main", "--config", "configs/lora_nafnet.py:demo", "--workdir", "/tmp/x",
             "--config.lora.rnak=4")
  assert_message(proc, 2, "lora.rnak", "Did you mean 'lora.rank'?")


def test_a_held_workdir_exits_1_naming_the_holder(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time\nfrom sr_jax.train import workdir_lock\n"
       "with workdir_lock.hold(sys.argv[1]):\n  print('locked', flush=True)\n  time.sleep(300)",
       str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    proc = run("sr_jax.main", "--config", "configs/lora_nafnet.py:demo", "--workdir",
               str(tmp_path), *MICRO)
    assert_message(proc, 1, "is in use by another run", f"pid {holder.pid}", "another --workdir")
  finally:
    holder.kill()
    holder.wait()


def test_a_diverged_run_exits_1_naming_the_step(tmp_path):
  proc = run("sr_jax.main", "--config", "configs/lora_nafnet.py:demo", "--workdir",
             str(tmp_path), *MICRO, "--config.guard.max_loss=-1000")
  assert_message(proc, 1, "config.guard.max_loss")


def test_a_missing_checkpoint_for_inference_exits_2(tmp_path):
  proc = run("sr_jax.infer", "--checkpoint", str(tmp_path / "none"), "--input",
             str(tmp_path / "in.png"), "--output", str(tmp_path / "out"))
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert "error: " in proc.stderr and len(proc.stderr.strip().splitlines()) <= 6


def test_missing_image_folders_exit_2_naming_the_flag(tmp_path):
  proc = run("sr_jax.quality.metrics", "--pred", str(tmp_path / "nope"), "--gt", str(tmp_path))
  assert_message(proc, 2, "--pred")


def test_a_wrong_architecture_conversion_exits_2(tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  src = tmp_path / "weights.safetensors"
  save_file({"conv_first.weight": np.zeros((64, 3, 3, 3), np.float32)}, str(src))
  proc = run("sr_jax.convert", "--arch", "nafnet", "--src", str(src), "--dst",
             str(tmp_path / "out"))
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert "error: " in proc.stderr and len(proc.stderr.strip().splitlines()) <= 6


def test_an_unknown_published_table_exits_2_listing_them():
  proc = run("sr_jax.reproduce", "no_such_table", "--workdir", "/tmp/x")
  assert_message(proc, 2, "no_such_table", "demo", "--list")


def test_traceback_flag_shows_the_stack_of_an_expected_error():
  proc = run("sr_jax.main", "--config", "configs/lora_nafnet.py:demo", "--workdir", "/tmp/x",
             "--config.num_steps=-5", "--traceback")
  assert proc.returncode == 2 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr


def test_an_unexpected_exception_keeps_its_traceback_and_says_it_is_a_bug():
  code = ("import numpy as np\nfrom sr_jax.util import errors\n"
          "errors.guarded(lambda: np.zeros(-1))()")  # numpy's own ValueError: not sr_jax's.
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 1
  assert "Traceback" in proc.stderr and "negative dimensions" in proc.stderr
  assert errors.BUG_LINE in proc.stderr


def test_what_counts_as_expected():
  with pytest.raises(ValueError) as library:
    json.loads("{")  # A library's ValueError: a bug if it reaches the user.
  assert not errors.is_expected(library.value)
  from sr_jax.adapt import lora  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError) as ours:
    lora.make_plan({"k": {"kernel": np.zeros((3, 3, 4, 4))}}, targets=[".*"], rank=2, alpha=2.0,
                   scaling="sqrt")  # sr_jax's own message for the user.
  assert errors.is_expected(ours.value) and errors.exit_code(ours.value) == 1
  assert not errors.is_expected(TypeError("a TypeError is always a bug"))
  assert errors.is_expected(errors.UsageError("x"))  # Declares its exit code.
  assert errors.exit_code(errors.UsageError("x")) == 2
