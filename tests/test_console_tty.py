"""The console on a terminal: the CoLoRA demo (shrunk to a micro model) run under a
pseudo-terminal prints short time-stamped lines, no absl prefixes and no TensorFlow start-up
notices; W/log.txt keeps the full format for bug reports. Slow tier: a whole job."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABSL_PREFIX = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\]")
MICRO = ["--config.model.preset=micro", "--config.data.crop_size=32",
         "--config.data.eval_max_size=48", "--config.batch_size=8", "--config.base.num_steps=2",
         "--config.num_steps=2", "--config.colora.probe_steps=2", "--config.colora.faig_steps=2",
         "--config.colora.faig_images=8", "--config.colora.budget=0.3", "--config.log_every=1",
         "--config.checkpoint_every=2", "--config.eval_every=0"]


def run_on_a_terminal(argv: list[str]) -> tuple[int, str]:
  """Runs argv with stdout and stderr on a pseudo-terminal; returns (status, what it showed)."""
  controller, terminal = pty.openpty()
  proc = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=terminal,
                          stderr=terminal, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  os.close(terminal)
  chunks = []
  while True:
    try:
      data = os.read(controller, 65536)
    except OSError:  # The terminal closed: the process has exited.
      break
    if not data:
      break
    chunks.append(data)
  os.close(controller)
  return proc.wait(timeout=900), b"".join(chunks).decode(errors="replace")


def test_the_colora_demo_console_is_short_lines_and_the_log_file_is_full(tmp_path):
  status, shown = run_on_a_terminal(
      [sys.executable, "-m", "sr_jax.main", "--config", "colora_nafnet:demo", "--workdir",
       str(tmp_path), *MICRO])
  assert status == 0, shown[-3000:]
  lines = [l for l in shown.replace("\r", "").splitlines() if l.strip()]
  assert not [l for l in lines if ABSL_PREFIX.match(l)], lines[:10]
  for notice in ("absl::InitializeLog", "oneDNN", "TF_ENABLE_ONEDNN_OPTS"):
    assert notice not in shown, notice
  stamped = [l for l in lines if re.match(r"^\d\d:\d\d:\d\d ", l)]
  assert any("stage 1/" in l for l in stamped) and len(stamped) > 10
  log = (tmp_path / "log.txt").read_text()
  full = [l for l in log.splitlines() if ABSL_PREFIX.match(l)]
  assert any("stage 1/" in l for l in full), log[:2000]
  assert any(re.search(r" console\.py:\d+\]", l) for l in full)  # File and line, for reports.
