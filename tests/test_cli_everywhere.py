"""One command line everywhere: every entry point that takes --config rejects a mistyped key
the same way, parses tuples alike and lists the config with --show_config; job configs are
found by name; an installed wheel runs a micro job from outside the checkout. Slow tier."""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
import venv

import pytest

pytestmark = pytest.mark.slow
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY_POINTS = ("sr_jax.main", "sr_jax.study", "sr_jax.forgetting", "sr_jax.data.preview",
                "sr_jax.tools.benchmark", "sr_jax.tools.data_benchmark",
                "sr_jax.tools.sr3_sampling")


def run(*args: str, cwd: str = REPO) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True,
                        timeout=600, env=dict(os.environ, JAX_PLATFORMS="cpu"))


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_every_entry_point_rejects_a_typo_and_parses_tuples_alike(module):
  typo = run(module, "--config", "configs/colora_nafnet.py:study", "--config.study.taks=haze",
             "--show_config")
  assert typo.returncode == 2, typo.stderr[-2000:]
  assert "Unknown config key 'study.taks'" in typo.stderr
  assert "Did you mean 'study.tasks'?" in typo.stderr and "Traceback" not in typo.stderr
  listing = run(module, "--config", "colora_nafnet:study", "--config.study.curve_tasks=",
                "--config.study.tasks=haze,low_light", "--show_config")
  assert listing.returncode == 0, listing.stderr[-2000:]
  assert re.search(r"study\.curve_tasks = \(\)\s", listing.stdout), listing.stdout[:3000]
  assert re.search(r"study\.tasks = haze,low_light\s", listing.stdout), listing.stdout[:3000]


def test_an_installed_wheel_runs_a_micro_job_by_name_from_elsewhere(tmp_path):
  wheels = tmp_path / "wheels"
  built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                          "--no-build-isolation", "-w", str(wheels), REPO], capture_output=True,
                         text=True, timeout=600)
  assert built.returncode == 0, built.stderr[-2000:]
  env_dir = tmp_path / "env"
  venv.EnvBuilder(system_site_packages=True, with_pip=True).create(env_dir)
  python = str(env_dir / "bin" / "python")
  wheel = glob.glob(str(wheels / "sr_jax-*.whl"))[0]
  installed = subprocess.run([python, "-m", "pip", "install", "--no-deps", "--force-reinstall",
                              wheel], capture_output=True, text=True, timeout=600)
  assert installed.returncode == 0, installed.stderr[-2000:]
  outside = tmp_path / "elsewhere"
  outside.mkdir()
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
  env.update(JAX_PLATFORMS="cpu")
  where = subprocess.run([python, "-c", "import sr_jax; print(sr_jax.__file__)"], cwd=outside,
                         capture_output=True, text=True, env=env, timeout=120)
  assert str(env_dir) in where.stdout, (where.stdout, where.stderr)  # Not the checkout.
  job = subprocess.run(
      [str(env_dir / "bin" / "sr-jax"), "--config", "lora_nafnet:demo", "--workdir",
       str(tmp_path / "w"), "--config.model.preset=micro", "--config.data.crop_size=32",
       "--config.data.eval_max_size=48", "--config.base.num_steps=2", "--config.num_steps=2",
       "--config.batch_size=8"], cwd=outside, capture_output=True, text=True, env=env,
      timeout=900)
  assert job.returncode == 0, job.stderr[-3000:]
  assert (tmp_path / "w" / "results.md").exists() and (tmp_path / "w" / "log.txt").exists()
