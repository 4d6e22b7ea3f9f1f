"""Launch scripts parse, and their dry runs print the command with the device flag."""

import os
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_local_launcher_dry_run_sets_device_count():
  script = os.path.join(REPO, "launch", "local.sh")
  subprocess.run(["bash", "-n", script], check=True)
  out = subprocess.run([script, "4", "python", "-m", "sr_jax.main"], capture_output=True,
                       text=True, check=True, env=dict(os.environ, DRY_RUN="1")).stdout
  assert "--xla_force_host_platform_device_count=4" in out and "python -m sr_jax.main" in out
  bad = subprocess.run([script, "x"], capture_output=True, text=True)
  assert bad.returncode == 2 and "Usage" in bad.stdout
