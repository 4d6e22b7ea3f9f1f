"""A reproduction of a real (micro) training job, killed mid-run and re-run, gives the table of
an uninterrupted one: the job resumes from its checkpoint bitwise and the finished command is
not run again. Slow tier: four job processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from sr_jax.reproduce import markers, render
from sr_jax.reproduce.table import Region, Table, main_job

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MICRO = ("model.preset=micro", "data.crop_size=32", "data.eval_max_size=48", "batch_size=8",
          "base.num_steps=0", "lora.enabled=False", "num_steps=40", "checkpoint_every=4",
          "log_every=4", "eval_every=0", "data.eval_crops=2")


def micro_table() -> Table:
  """Two short jobs; the table keeps only deterministic columns (PSNR, SSIM, trainable)."""
  def draw(workdir: str) -> str:
    rows = [(f"run {i}: {arm}", row) for i in (0, 1)
            for arm, row in render.results(os.path.join(workdir, f"run{i}")).items()]
    return render.rows_table(rows, ("psnr", "ssim", "trainable"))
  return Table(name="micro", what="test", regions=(Region("page.md", draw),),
               steps=tuple(main_job("configs/lora_nafnet.py:demo", f"{{workdir}}/run{i}",
                                    *_MICRO, f"seed={i}") for i in (0, 1)))


_DRIVER = '''
import sys
sys.path.insert(0, {tests!r})
import test_reproduce_job
from sr_jax.reproduce import runner
runner.run(test_reproduce_job.micro_table(), sys.argv[1], docs_root=sys.argv[2],
           concurrent=True)
'''


def _start(workdir: str, root: str) -> subprocess.Popen:
  script = _DRIVER.format(tests=os.path.dirname(os.path.abspath(__file__)))
  return subprocess.Popen([sys.executable, "-c", script, workdir, root],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))


def _checkout(tmp_path, name: str) -> str:
  """A folder with the page and the configs (the commands run from the checkout)."""
  root = tmp_path / name
  root.mkdir()
  (root / "page.md").write_text("<!-- reproduce:micro -->\n<!-- /reproduce:micro -->\n")
  os.symlink(os.path.join(ROOT, "configs"), root / "configs")
  os.symlink(os.path.join(ROOT, "sr_jax"), root / "sr_jax")
  return str(root)


def _table(root: str) -> str:
  return markers.region(open(os.path.join(root, "page.md")).read(), "micro").split(
      "\n\n*Regenerated")[0]


def test_killed_job_reproduction_resumes_to_the_same_table(tmp_path):
  clean_root, root = _checkout(tmp_path, "clean"), _checkout(tmp_path, "killed")
  proc = _start(str(tmp_path / "w_clean"), clean_root)
  out, _ = proc.communicate(timeout=900)
  assert proc.returncode == 0, out[-3000:]
  expected = _table(clean_root)
  assert expected.count("| run ") == 4  # Input and trained rows of both runs.

  work = str(tmp_path / "w")
  proc = _start(work, root)
  checkpoints = os.path.join(work, "run1", "checkpoints")
  deadline = time.time() + 900
  while not (os.path.isdir(checkpoints) and any(d.isdigit() for d in os.listdir(checkpoints))):
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    assert time.time() < deadline
    time.sleep(0.5)
  proc.send_signal(signal.SIGKILL)  # Mid-way through the second job.
  proc.wait()
  assert not os.path.exists(os.path.join(work, "run1", "results.json"))

  proc = _start(work, root)
  out, _ = proc.communicate(timeout=900)
  assert proc.returncode == 0, out[-3000:]
  assert "done before, skipped" in out  # The first job is not run again.
  assert _table(root) == expected
