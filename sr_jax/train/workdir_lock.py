"""One run per workdir: an exclusive lock taken before a run touches its checkpoints.

Two runs on one workdir would interleave their checkpoints: the second resumes from the
first's while the first keeps training, and two saves of one step collide inside orbax.
`hold(workdir)` takes the lock for the length of a run, and a second run is refused at once
with a message naming the holder (host, pid, start time and command).

Local (and NFS) workdirs: `fcntl.flock` on WORKDIR/.sr_jax.lock, whose JSON body names the
holder. The kernel drops a flock when its process dies, however it dies (kill -9 included), so
a free flock under a non-empty body is a stale lock: it is taken over with a warning naming the
dead holder. A clean release empties the body (the file itself stays: unlinking a flocked file
lets a third process lock a fresh inode while a second still waits on the old one). Where a
filesystem ignores flock, the body decides: a holder alive on this host refuses, and so does a
holder on another host whose heartbeat (renewed every HEARTBEAT_S by a thread) is younger than
STALE_S; after a crash on another host the lock is taken over once its heartbeat is stale.

Object stores (gs://...) have no locks: the body is a lease renewed every HEARTBEAT_S by a
background thread and read back after writing (the last writer wins a race; the other is
refused). A lease not renewed for STALE_S is stale and taken over with a warning.

Multi-host runs: process 0 holds the lock; the other processes share its workdir and do not
lock (`hold(..., process_index=...)`).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
import threading
import time
import uuid
import warnings
from typing import Any, Iterator

from sr_jax.util import layout, paths

HEARTBEAT_S = 60.0
STALE_S = 300.0
_READ_BACK_S = 2.0

_held: dict[str, int] = {}  # Lock paths this process holds -> nesting depth.
_held_guard = threading.Lock()


class WorkdirLocked(RuntimeError):
  """Another live run holds the workdir."""


def _body() -> dict[str, Any]:
  now = time.time()
  return {"host": socket.gethostname(), "pid": os.getpid(),
          "started": datetime.datetime.fromtimestamp(now).isoformat(timespec="seconds"),
          "started_unix": now, "heartbeat_unix": now, "token": uuid.uuid4().hex,
          "command": " ".join(sys.argv)[:500]}


def describe(holder: dict[str, Any]) -> str:
  """'host H, pid P, started T (command C)' for messages."""
  text = (f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, started "
          f"{holder.get('started', '?')}")
  return text + (f" (command: {holder['command']})" if holder.get("command") else "")


def _refusal(workdir: str, lock_path: str, holder: dict[str, Any]) -> WorkdirLocked:
  return WorkdirLocked(
      f"--workdir {workdir} is in use by another run: {describe(holder)}. Two runs on one "
      f"workdir would mix their checkpoints. Wait for that run to finish or stop it, or use "
      f"another --workdir. (If that process is certainly gone, delete {lock_path}.)")


def _parse(text: str) -> dict[str, Any]:
  try:
    value = json.loads(text) if text.strip() else {}
  except ValueError:
    return {"host": "?", "pid": "?", "started": "?", "command": f"unreadable lock: {text[:80]!r}"}
  return value if isinstance(value, dict) else {}


def process_alive(pid: int, started_unix: float | None = None) -> bool:
  """Whether `pid` runs on this host (and, when known, started no later than the lock)."""
  try:
    os.kill(int(pid), 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # Exists, owned by another user.
  except (TypeError, ValueError, OverflowError):
    return False
  if started_unix is not None:
    try:
      import psutil  # pylint: disable=g-import-not-at-top
      return psutil.Process(int(pid)).create_time() <= float(started_unix) + 1.0
    except ImportError:
      return True
    except Exception:  # pylint: disable=broad-except  # psutil.NoSuchProcess and the like.
      return False
  return True


def heartbeat_age(holder: dict[str, Any]) -> float:
  """Seconds since a lock body's holder last renewed it."""
  return time.time() - float(holder.get("heartbeat_unix", 0) or 0)


class _Heartbeat:
  """A daemon thread that stamps `body['heartbeat_unix']` and calls `write` every `interval_s`
  until stopped: the renewal both lock kinds hold their lease by."""

  def __init__(self, body: dict[str, Any], write, interval_s: float, name: str):
    self.body, self.write, self.interval_s = body, write, interval_s
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True, name=name)
    self._thread.start()

  def _run(self) -> None:
    while not self._stop.wait(self.interval_s):
      self.body["heartbeat_unix"] = time.time()
      self.write()

  def stop(self) -> None:
    self._stop.set()
    self._thread.join()


class _FileLock:
  """flock on a local lock file; the JSON body names the holder and is a lease too: a thread
  renews its heartbeat every `heartbeat_s`, so where a file system ignores flock (some network
  file systems), a holder on another host whose heartbeat is fresh is never taken over."""

  def __init__(self, workdir: str, heartbeat_s: float | None = None,
               stale_s: float | None = None):
    self.workdir = workdir
    self.path = layout.Workdir(workdir).lock
    self.heartbeat_s = HEARTBEAT_S if heartbeat_s is None else heartbeat_s
    self.stale_s = STALE_S if stale_s is None else stale_s
    self._fd: int | None = None
    self._body: dict[str, Any] = {}
    self._beat: _Heartbeat | None = None

  def _holder_lives(self, previous: dict[str, Any]) -> bool:
    """Whether the previous body's holder may still run: alive on this host, or on another
    host with a heartbeat younger than stale_s (its liveness cannot be checked from here)."""
    if previous.get("pid") == os.getpid() and previous.get("host") == socket.gethostname():
      return False
    if previous.get("host") == socket.gethostname():
      return process_alive(previous.get("pid"), previous.get("started_unix"))
    return heartbeat_age(previous) < self.stale_s

  def acquire(self) -> None:
    import fcntl  # pylint: disable=g-import-not-at-top  # POSIX only.
    os.makedirs(self.workdir, exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      holder = _parse(os.pread(fd, 1 << 16, 0).decode(errors="replace"))
      os.close(fd)
      raise _refusal(self.workdir, self.path, holder) from None
    previous = _parse(os.pread(fd, 1 << 16, 0).decode(errors="replace"))
    if previous:
      if self._holder_lives(previous):
        os.close(fd)  # The file system ignored flock, but the holder is (or may be) alive.
        raise _refusal(self.workdir, self.path, previous)
      warnings.warn(f"Taking over a stale lock on {self.workdir}: its holder ("
                    f"{describe(previous)}) ended without releasing it.", stacklevel=3)
    self._fd, self._body = fd, _body()
    self._write()
    self._beat = _Heartbeat(self._body, self._write, self.heartbeat_s, "workdir-heartbeat")

  def _write(self) -> None:
    os.ftruncate(self._fd, 0)
    os.pwrite(self._fd, json.dumps(self._body, indent=1).encode(), 0)
    os.fsync(self._fd)

  def release(self) -> None:
    if self._fd is None:
      return
    self._beat.stop()  # Before the file closes: no renewal writes to a closed descriptor.
    os.ftruncate(self._fd, 0)  # An empty body: released cleanly, not stale.
    os.close(self._fd)  # Closing drops the flock.
    self._fd = None


class _LeaseLock:
  """A renewed lease on an object store (no locking primitive there; see module doc)."""

  def __init__(self, workdir: str, heartbeat_s: float = HEARTBEAT_S, stale_s: float = STALE_S,
               read_back_s: float = _READ_BACK_S):
    self.workdir, self.path = workdir, layout.Workdir(workdir).lock
    self.heartbeat_s, self.stale_s, self.read_back_s = heartbeat_s, stale_s, read_back_s
    self._body: dict[str, Any] | None = None
    self._beat: _Heartbeat | None = None

  def _read(self) -> dict[str, Any]:
    return _parse(paths.read_text(self.path)) if paths.exists(self.path) else {}

  def acquire(self) -> None:
    paths.makedirs(self.workdir)
    previous = self._read()
    if previous:
      age = heartbeat_age(previous)
      if age < self.stale_s:
        raise _refusal(self.workdir, self.path, previous)
      warnings.warn(f"Taking over a stale lock on {self.workdir}: its holder "
                    f"({describe(previous)}) has not renewed it for {age:.0f} s.", stacklevel=3)
    self._body = _body()
    paths.write_text(self.path, json.dumps(self._body))
    time.sleep(self.read_back_s)  # Let a racing writer land, then see who won.
    winner = self._read()
    if winner.get("token") != self._body["token"]:
      raise _refusal(self.workdir, self.path, winner)
    self._beat = _Heartbeat(self._body, self._write, self.heartbeat_s, "workdir-lease")

  def _write(self) -> None:
    paths.write_text(self.path, json.dumps(self._body))

  def release(self) -> None:
    if self._beat is None:
      return
    self._beat.stop()
    self._beat = None
    if self._read().get("token") == self._body["token"]:
      paths.write_text(self.path, "")


def make_lock(workdir: str) -> _FileLock | _LeaseLock:
  """The lock kind for `workdir`: flock for local paths, a lease for object-store URLs."""
  workdir = paths.absolute(workdir)
  return _LeaseLock(workdir) if paths.is_url(workdir) else _FileLock(workdir)


@contextlib.contextmanager
def hold(workdir: str, process_index: int = 0) -> Iterator[None]:
  """Holds the workdir's lock for the `with` block; raises WorkdirLocked at once if taken.

  Re-entrant within a process (a nested `hold` of the same workdir is a no-op); processes
  other than 0 of a multi-host run do not lock.
  """
  if process_index != 0:
    yield
    return
  lock = make_lock(workdir)
  with _held_guard:
    nested = _held.get(lock.path, 0) > 0
    if not nested:
      lock.acquire()
    _held[lock.path] = _held.get(lock.path, 0) + 1
  try:
    yield
  finally:
    with _held_guard:
      _held[lock.path] -= 1
      if not _held[lock.path]:
        del _held[lock.path]
        lock.release()
