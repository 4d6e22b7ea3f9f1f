"""One run per workdir: real processes contend for the lock; stale locks are taken over."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from sr_jax import workdir_lock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Takes the lock, says so, and holds it until killed; a refusal prints the message and how
# long acquiring took, and exits 3.
HOLDER = """
import sys, time
from sr_jax import workdir_lock
start = time.perf_counter()
try:
  with workdir_lock.hold(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
except workdir_lock.WorkdirLocked as e:
  print(f"refused after {time.perf_counter() - start:.3f} s: {e}", flush=True)
  sys.exit(3)
"""


def start_holder(workdir, seconds=120):
  proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(workdir), str(seconds)], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=dict(os.environ, PYTHONPATH=REPO))
  assert proc.stdout.readline().strip() == "locked", proc.stderr.read()
  return proc


def test_second_process_is_refused_at_once_naming_the_holder(tmp_path):
  first = start_holder(tmp_path)
  try:
    second = subprocess.run([sys.executable, "-c", HOLDER, str(tmp_path), "0"], cwd=REPO,
                            capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=REPO))
    assert second.returncode == 3, second.stdout + second.stderr
    assert f"pid {first.pid}" in second.stdout and socket.gethostname() in second.stdout
    assert "is in use by another run" in second.stdout
    assert float(second.stdout.split("refused after ")[1].split(" s")[0]) < 1.0
    assert first.poll() is None  # The holder is untouched.
  finally:
    first.kill()
    first.wait()


def test_lock_of_a_killed_process_is_taken_over_with_a_warning(tmp_path):
  first = start_holder(tmp_path)
  first.send_signal(signal.SIGKILL)
  first.wait()
  with pytest.warns(UserWarning, match=rf"stale lock .*pid {first.pid}"):
    with workdir_lock.hold(str(tmp_path)):
      body = json.loads((tmp_path / workdir_lock.LOCK_NAME).read_text())
      assert body["pid"] == os.getpid()
  assert (tmp_path / workdir_lock.LOCK_NAME).read_text() == ""  # Released cleanly.


def test_clean_release_lets_the_next_run_in_without_a_warning(tmp_path, recwarn):
  with workdir_lock.hold(str(tmp_path)):
    with workdir_lock.hold(str(tmp_path)):  # Nested (e.g. a stage of the same run): no-op.
      pass
    with pytest.raises(workdir_lock.WorkdirLocked):  # Still held by the outer block.
      workdir_lock.make_lock(str(tmp_path)).acquire()
  with workdir_lock.hold(str(tmp_path)):
    pass
  assert not [w for w in recwarn if "stale" in str(w.message)]


def test_body_naming_a_live_local_process_refuses_even_if_flock_is_free(tmp_path):
  """A filesystem that ignores flock: the pid check still protects a live run."""
  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    body = {"host": socket.gethostname(), "pid": sleeper.pid, "started": "now",
            "started_unix": time.time() + 5}
    (tmp_path / workdir_lock.LOCK_NAME).write_text(json.dumps(body))
    with pytest.raises(workdir_lock.WorkdirLocked, match=rf"pid {sleeper.pid}"):
      with workdir_lock.hold(str(tmp_path)):
        pass
  finally:
    sleeper.kill()
    sleeper.wait()
  with pytest.warns(UserWarning, match="stale lock"):  # Now dead: taken over.
    with workdir_lock.hold(str(tmp_path)):
      pass


def test_lease_lock_for_object_stores(tmp_path):
  """The gs:// kind, exercised on a local path: renewed, refused while fresh, stale after."""
  first = workdir_lock._LeaseLock(str(tmp_path), heartbeat_s=0.1, stale_s=1.0, read_back_s=0)
  first.acquire()
  time.sleep(0.3)
  renewed = json.loads((tmp_path / workdir_lock.LOCK_NAME).read_text())
  assert renewed["heartbeat_unix"] > renewed["started_unix"]
  second = workdir_lock._LeaseLock(str(tmp_path), stale_s=1.0, read_back_s=0)
  with pytest.raises(workdir_lock.WorkdirLocked, match=f"pid {os.getpid()}"):
    second.acquire()
  first._stop.set()  # The holder "dies": no more renewals.
  first._thread.join()
  time.sleep(1.2)
  with pytest.warns(UserWarning, match="has not renewed it"):
    second.acquire()
  second.release()
  assert (tmp_path / workdir_lock.LOCK_NAME).read_text() == ""
