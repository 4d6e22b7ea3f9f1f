"""Runs a reproduction: its commands one after another, resumably, alone on the machine.

- **Resumable.** Each command is a job that resumes from its own checkpoints when re-run, and
  `W/reproduce/state.json` records which commands have finished (and how long every attempt
  took), so re-running the same reproduction after a kill skips what is done and continues the
  command that was interrupted. A long table spans several sittings with one command.
- **Alone.** Two trainings side by side each run at half speed or worse, and every number
  measured beside another job measures the load, so one reproduction runs on a machine at a
  time: a second is refused at once naming the first (a lock in the user's cache folder, or
  `SR_JAX_REPRODUCE_LOCK_DIR`), unless `concurrent` asks otherwise.
- **Checked first.** The page and its markers and the data folders are checked before any
  command runs.
- **Children die with it.** On Linux each command gets the parent-death signal, so killing the
  reproduction stops its job too rather than leaving it training unseen.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from sr_jax.reproduce import environment, markers
from sr_jax.reproduce.table import Table
from sr_jax.train import workdir_lock
from sr_jax.util import jsonfile, layout, paths

STATE = os.path.join("reproduce", "state.json")
_HEARTBEAT_S = 5.0


class ReproduceError(RuntimeError):
  """A reproduction that cannot start or whose command failed; the message says what to do."""


def lock_dir() -> str:
  """The folder of the machine-wide lock: one reproduction at a time."""
  default = os.path.join(os.path.expanduser("~"), ".cache", "sr_jax", "reproduce")
  return os.environ.get("SR_JAX_REPRODUCE_LOCK_DIR", default)


def check_ready(table: Table, docs_root: str, datasets: str) -> None:
  """Checks the pages, their markers and the data folders before any work; raises otherwise."""
  for region in table.regions:
    page = os.path.join(docs_root, region.page)
    if not os.path.isfile(page):
      raise ReproduceError(f"{table.name}: its page {page} does not exist; pass --docs_root, the "
                           "root of an sr_jax checkout (the folder holding README.md and docs/).")
    try:
      markers.region(open(page, encoding="utf-8").read(), table.marker(region))
    except ValueError as e:
      raise ReproduceError(f"{table.name}: {page}: {e}") from None
  for folder in table.datasets:
    where = os.path.join(datasets, folder) if datasets else ""
    if not where or not os.path.isdir(where):
      raise ReproduceError(f"{table.name} needs the folder {folder} ({table.needs}): pass "
                           f"--datasets DIR with DIR/{folder} in it"
                           + (f" ({where} does not exist)." if where else "."))


def _die_with_parent() -> None:
  """In the child, before exec: SIGKILL when the reproduction's process dies (Linux prctl)."""
  try:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    pass


class _State:
  """W/reproduce/state.json: {step key: {'done': bool, 'seconds': [per attempt]}}."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, STATE)
    self.steps: dict[str, dict] = jsonfile.read(self.path) if os.path.exists(self.path) else {}

  def save(self) -> None:
    jsonfile.write(self.path, self.steps)

  def record(self, key: str) -> dict:
    return self.steps.setdefault(key, {"done": False, "seconds": []})

  def seconds(self, keys: Sequence[str]) -> float:
    """The time the steps `keys` ran (a workdir two tables share holds both's steps)."""
    return sum(sum(self.steps[k]["seconds"]) for k in keys if k in self.steps)

  def sittings(self, keys: Sequence[str]) -> int:
    return max((len(self.steps[k]["seconds"]) for k in keys if k in self.steps), default=0)


def _run_step(argv: list[str], cwd: str, state: _State, key: str) -> None:
  """Runs one command to its end, adding its time to the record every few seconds."""
  record = state.record(key)
  record["seconds"].append(0.0)
  state.save()
  start = time.monotonic()
  proc = subprocess.Popen([sys.executable] + argv, cwd=cwd,
                          preexec_fn=_die_with_parent if sys.platform == "linux" else None)
  try:
    while proc.poll() is None:
      try:
        proc.wait(timeout=_HEARTBEAT_S)
      except subprocess.TimeoutExpired:
        pass
      record["seconds"][-1] = time.monotonic() - start
      state.save()
  except BaseException:
    proc.kill()
    raise
  if proc.returncode != 0:
    raise ReproduceError(f"the command `python {' '.join(argv)}` exited with status "
                         f"{proc.returncode}; its output is above. Fix the cause and re-run the "
                         "same reproduction: finished commands are skipped and this one resumes.")
  record["done"] = True
  state.save()


def anonymous(text: str, workdir: str, datasets: str) -> str:
  """`text` with this machine's folders written as the commands write them (W, DATASETS): a
  report that quotes its own command (a study's) must not publish local paths."""
  if datasets:
    text = text.replace(datasets.rstrip("/"), "DATASETS")
  return text.replace(workdir.rstrip("/"), "W")


def footer(table: Table, seconds: float, sittings: int) -> str:
  """The line under a regenerated table: command, date, wall time, machine and versions."""
  from sr_jax.util import console  # pylint: disable=g-import-not-at-top
  over = f" over {sittings} sittings" if sittings > 1 else ""
  data = " --datasets DIR" if table.datasets else ""
  return (f"*Regenerated by `python -m sr_jax.reproduce {table.name} --workdir W{data}` on "
          f"{environment.today()} in {console.duration(seconds)}{over}, on "
          f"{environment.machine()}; {environment.versions(table.packages)}.*")


def rewrite_page(page: str, name: str, body: str) -> None:
  with open(page, encoding="utf-8") as f:
    text = f.read()
  paths.write_text(page, markers.replace(text, name, body))


def run(table: Table, workdir: str, *, docs_root: str, datasets: str = "",
        concurrent: bool = False, say: Callable[[str], None] = print) -> str:
  """Runs (or resumes) `table`'s commands in `workdir`, then rewrites its regions and copies
  its figures; returns the rendered markdown. The commands run with the checkout as working
  directory (job configs are named by their path there)."""
  check_ready(table, docs_root, datasets)
  workdir, datasets = os.path.abspath(workdir), os.path.abspath(datasets) if datasets else ""
  os.makedirs(os.path.join(workdir, "reproduce"), exist_ok=True)
  with _alone(concurrent), workdir_lock.hold(os.path.join(workdir, "reproduce")):
    state = _State(workdir)
    for i, step in enumerate(table.steps, 1):
      if state.record(step.key)["done"]:
        say(f"[{table.name} {i}/{len(table.steps)}] done before, skipped: {step.text()}")
        continue
      say(f"[{table.name} {i}/{len(table.steps)}] {step.text(workdir, datasets)}")
      _run_step(step.argv(workdir, datasets), docs_root, state, step.key)
    keys = [step.key for step in table.steps]
    note = footer(table, state.seconds(keys), state.sittings(keys))
    bodies = [anonymous(region.render(workdir), workdir, datasets) + "\n\n" + note
              for region in table.regions]
  for region, body in zip(table.regions, bodies):
    page = os.path.join(docs_root, region.page)
    rewrite_page(page, table.marker(region), body)
    say(f"[{table.name}] rewrote {table.marker(region)} in {page}")
  for source, target in table.figures:
    shutil.copyfile(os.path.join(workdir, source), os.path.join(docs_root, target))
    say(f"[{table.name}] copied {source} to {target}")
  return "\n\n".join(bodies)


class _alone:  # pylint: disable=invalid-name  # Used as a context manager, like a function.
  """Holds the machine-wide reproduction lock (nothing when `concurrent`)."""

  def __init__(self, concurrent: bool):
    self.lock = None if concurrent else workdir_lock.make_lock(lock_dir())

  def __enter__(self) -> None:
    if self.lock is None:
      return
    try:
      self.lock.acquire()
    except workdir_lock.WorkdirLocked:
      raise ReproduceError(
          f"another reproduction is running on this machine: {_holder()}. Two side by side "
          "each run at half speed and both end up measuring the machine's load. Wait for it "
          "to finish, or pass --concurrent to run beside it anyway.") from None

  def __exit__(self, *exc) -> None:
    if self.lock is not None:
      self.lock.release()


def _holder() -> str:
  try:
    with open(os.path.join(lock_dir(), layout.LOCK_NAME), encoding="utf-8") as f:
      return workdir_lock.describe(json.loads(f.read() or "{}"))
  except (OSError, ValueError):
    return "holder unknown"
