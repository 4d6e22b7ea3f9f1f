"""One run per workdir: real processes contend for the lock; stale locks are taken over."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from sr_jax.train import workdir_lock
from sr_jax.util import layout

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Takes the lock, says so, and holds it until killed; a refusal prints the message and how
# long acquiring took, and exits 3.
HOLDER = """
import sys, time
from sr_jax.train import workdir_lock
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
      body = json.loads((tmp_path / layout.LOCK_NAME).read_text())
      assert body["pid"] == os.getpid()
  assert (tmp_path / layout.LOCK_NAME).read_text() == ""  # Released cleanly.


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
    (tmp_path / layout.LOCK_NAME).write_text(json.dumps(body))
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
  renewed = json.loads((tmp_path / layout.LOCK_NAME).read_text())
  assert renewed["heartbeat_unix"] > renewed["started_unix"]
  second = workdir_lock._LeaseLock(str(tmp_path), stale_s=1.0, read_back_s=0)
  with pytest.raises(workdir_lock.WorkdirLocked, match=f"pid {os.getpid()}"):
    second.acquire()
  first._beat.stop()  # The holder "dies": no more renewals.
  time.sleep(1.2)
  with pytest.warns(UserWarning, match="has not renewed it"):
    second.acquire()
  second.release()
  assert (tmp_path / layout.LOCK_NAME).read_text() == ""


# A holder on a file system that ignores flock (flock is made a no-op), optionally claiming
# another host name, with a short heartbeat and staleness.
NO_FLOCK = """
import fcntl, socket, sys, time, warnings
fcntl.flock = lambda *args: None
if sys.argv[2] != "-":
  socket.gethostname = lambda: sys.argv[2]
from sr_jax.train import workdir_lock
workdir_lock.HEARTBEAT_S, workdir_lock.STALE_S = 0.2, 1.5
mode = sys.argv[3]
if mode == "hold":
  with workdir_lock.hold(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
deadline, refusals = time.time() + float(sys.argv[4]), 0
while time.time() < deadline:
  try:
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      with workdir_lock.hold(sys.argv[1]):
        print(f"acquired after {refusals} refusals; warned: {[str(w.message) for w in caught]}",
              flush=True)
        sys.exit(0)
  except workdir_lock.WorkdirLocked:
    refusals += 1
    time.sleep(0.1)
print(f"refused {refusals} times", flush=True)
"""


def test_without_flock_a_renewing_holder_on_another_host_is_never_taken_over(tmp_path):
  env = dict(os.environ, PYTHONPATH=REPO)
  first = subprocess.Popen([sys.executable, "-c", NO_FLOCK, str(tmp_path), "host-a", "hold"],
                           cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=env)
  try:
    assert first.stdout.readline().strip() == "locked", first.stderr.read()
    # For 4 s (well past the 1.5 s staleness) the first renews: every attempt is refused.
    second = subprocess.run([sys.executable, "-c", NO_FLOCK, str(tmp_path), "host-b", "try",
                             "4"], cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert second.stdout.startswith("refused"), second.stdout + second.stderr
    assert int(second.stdout.split()[1]) > 10
    body = json.loads((tmp_path / layout.LOCK_NAME).read_text())
    assert body["host"] == "host-a" and time.time() - body["heartbeat_unix"] < 1.5
  finally:
    first.kill()
    first.wait()
  # Its holder gone, the heartbeat goes stale and the lock is taken over with a warning.
  third = subprocess.run([sys.executable, "-c", NO_FLOCK, str(tmp_path), "host-b", "try", "10"],
                         cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
  assert third.stdout.startswith("acquired"), third.stdout + third.stderr
  assert "stale lock" in third.stdout and "host host-a" in third.stdout
