"""The job command line: short errors for mistyped keys, tuples as typed, the key listing."""

import os
import subprocess
import sys

import pytest

from configs import colora_nafnet
from sr_jax import objectives
from sr_jax.config import config_base, config_cli, config_doc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args, timeout=120):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "sr_jax.main", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("text, expected", [
    ("uniform,colora", ("uniform", "colora")),
    ("uniform, colora,", ("uniform", "colora")),
    ("('uniform','colora')", ("uniform", "colora")),
    ("1000,2000", (1000, 2000)),
    ("conv5_4=1.0", ("conv5_4=1.0",)),
    ("conv5_4=0.5,conv4_4=1", ("conv5_4=0.5", "conv4_4=1")),
    (".*/kernel", (".*/kernel",)),
    ("('a{1,2}',)", ("a{1,2}",)),
    ("full", ("full",)),
    ("", ()),
    ("()", ()),
])
def test_tuples_parse_as_typed(text, expected):
  assert config_cli.parse_tuple(text) == expected


def test_unknown_key_names_the_closest_key_and_the_sections_keys():
  config = colora_nafnet.get_config("demo")
  assert config_cli.unknown_key_message(config, "colora.arms") is None
  message = config_cli.unknown_key_message(config, "num_stepz")
  assert "'num_stepz'" in message and "Did you mean 'num_steps'?" in message
  assert "batch_size, checkpoint_every, colora" in message  # The top level's keys, sorted.
  message = config_cli.unknown_key_message(config, "colora.armz")
  assert "section 'colora'" in message and "Did you mean 'colora.arms'?" in message
  assert "Valid keys of section 'colora': alpha, arms, beta," in message
  # A key of another section is found by its last part.
  assert "Did you mean 'lora.rank'?" in config_cli.unknown_key_message(config, "rank")
  # A typo in the section's name.
  assert "Did you mean 'optimizer.b1'?" in config_cli.unknown_key_message(config, "optimzer.b1")
  assert "is a value, not a section" in config_cli.unknown_key_message(config, "seed.x")


def test_cli_typo_is_one_short_error_with_exit_status_2(tmp_path):
  proc = _main("--config", "configs/colora_nafnet.py:demo", "--workdir", str(tmp_path),
               "--config.num_stepz=3")
  assert proc.returncode == 2, proc.stderr
  assert "Traceback" not in proc.stderr
  assert "Did you mean 'num_steps'?" in proc.stderr
  assert len(proc.stderr.strip().splitlines()) <= 4, proc.stderr
  assert not os.listdir(tmp_path)  # Nothing ran.


def test_show_config_lists_every_key_with_value_and_meaning_with_overrides_applied():
  proc = _main("--config", "configs/colora_nafnet.py:demo", "--show_config",
               "--config.colora.arms=uniform,colora", "--config.lora.targets=.*/kernel")
  assert proc.returncode == 0, proc.stderr
  out = proc.stdout
  keys = [k for k, _ in config_doc.leaves(colora_nafnet.get_config("demo"))]
  for key in keys:
    assert f" {key} = " in out, key
  assert "* colora.arms = uniform,colora" in out  # As typed; '*': changed from the default.
  assert "colora.budget = 0.07" in out and "Trainable share of the base's parameters" in out
  assert "[data.degradation] How a clean crop becomes a model input" in out
  assert "(no description)" not in out


def test_every_key_of_the_base_config_has_a_meaning():
  meanings = config_doc.meanings(objectives.sections())
  missing = [k for k, _ in config_doc.leaves(config_base.base_config()) if not meanings.get(k)]
  assert not missing, f"Keys without a comment in sr_jax/config/config_base.py: {missing}"
  # Shared helpers document every section they build, with their own comments.
  assert meanings["gan.d_optimizer.b2"] == meanings["optimizer.b2"] != ""
  assert meanings["base.degradation.noise_sigma"].startswith("Gaussian noise std")
  # A comment block above a key belongs to it; a trailing comment wins.
  assert meanings["data.source"].startswith("'embedded' (scikit-image photos)")
  assert meanings["model.width"] == "NAFNet width or Restormer dim."


def test_summary_is_a_few_lines():
  summary = config_doc.summary(colora_nafnet.get_config("demo"))
  assert len(summary.splitlines()) <= 4
  assert "nafnet 'tiny'" in summary and "CoLoRA: arms colora" in summary
