"""A trainer killed with SIGKILL takes its grain workers (and their resource tracker) with it."""

import os
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def descendants(pid: int) -> list[int]:
  """All processes below `pid` (psutil when installed, else /proc)."""
  try:
    import psutil  # pylint: disable=g-import-not-at-top
    try:
      return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
      return []
  except ImportError:
    parents = {}
    for entry in os.listdir("/proc"):
      try:
        with open(f"/proc/{entry}/stat") as f:
          parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
      except (ValueError, OSError):
        continue
    found, frontier = [], [pid]
    while frontier:
      children = [c for c, p in parents.items() if p in frontier]
      found += children
      frontier = children
    return found


def running(pid: int) -> bool:
  """Alive and not a zombie (an orphan's zombie waits for a PID 1 that may never reap it)."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except OSError:
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_a_trainer_with_two_workers_leaves_no_child(tmp_path):
  cmd = [sys.executable, "-m", "sr_jax.main", "--config", "configs/prod_nafnet.py:demo",
         "--workdir", str(tmp_path / "run"), "--config.model.preset=micro",
         "--config.num_steps=100000", "--config.batch_size=2", "--config.data.crop_size=32",
         "--config.checkpoint_every=100000", "--config.data.num_workers=2",
         "--config.log_every=5"]
  log = open(tmp_path / "log.txt", "w")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # One device, not 8.
  trainer = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                             env=dict(env, PYTHONPATH=REPO, JAX_PLATFORMS="cpu"))
  try:
    # Wait for steady training (the console's "step 10/100000 (0%)" line; steps logged every 5):
    # the workers then sit blocked on full queues, the state in which they outlived a killed
    # trainer. (It waited for an older console format, so always for the whole deadline.)
    deadline, children = time.time() + 300, []
    while time.time() < deadline and trainer.poll() is None:
      children = descendants(trainer.pid)  # Two workers and the resource tracker.
      if len(children) >= 3 and "step 10/" in (tmp_path / "log.txt").read_text():
        break
      time.sleep(1)
    assert len(children) >= 3, (children, (tmp_path / "log.txt").read_text()[-3000:])
    time.sleep(5)
    children = descendants(trainer.pid)
  finally:
    trainer.send_signal(signal.SIGKILL)
    trainer.wait()
    log.close()
  time.sleep(15)
  survivors = [pid for pid in children if running(pid)]
  for pid in survivors:  # Do not leave them behind for the rest of the suite.
    os.kill(pid, signal.SIGKILL)
  assert not survivors, f"{len(survivors)} of {len(children)} children outlived the trainer"


# A parent that spawns one worker running pipeline.die_with_parent, prints both pids, then
# sleeps; the worker would sleep far longer than the test waits.
SPAWNER = """
import multiprocessing, time
from sr_jax.data import pipeline

def worker():
  pipeline.die_with_parent(0, 1, poll_s=0.1)
  time.sleep(600)

if __name__ == "__main__":
  child = multiprocessing.get_context("spawn").Process(target=worker)
  child.start()
  print(child.pid, flush=True)
  time.sleep(600)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_die_with_parent_ends_a_spawned_worker_within_a_second(tmp_path):
  script = tmp_path / "spawner.py"
  script.write_text(SPAWNER)
  parent = subprocess.Popen([sys.executable, str(script)], cwd=REPO, stdout=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONPATH=REPO))
  child = int(parent.stdout.readline())
  time.sleep(3)  # The worker has imported the pipeline and started its watchdog.
  assert running(child)
  parent.send_signal(signal.SIGKILL)
  parent.wait()
  deadline = time.time() + 5
  while running(child) and time.time() < deadline:
    time.sleep(0.1)
  alive = running(child)
  if alive:
    os.kill(child, signal.SIGKILL)
  assert not alive
