"""What a run prints: stage counters, timed phases, one line per log interval, and a TensorBoard
writer that does not echo every value to the console.

A job's console is a page a person reads while waiting: which stage of how many is running,
what it is doing when it takes more than a few seconds (compiling, FAIG, evaluating,
exporting), and one line per log interval with the loss, the speed and the time left. The
full record (every scalar, the hparams, the whole config) goes to TensorBoard and the workdir.

Rates and ETAs are measured between points where the host has waited for the device: the
train loop dispatches steps asynchronously, so timing the loop itself counts dispatches, not
steps, and the first interval would read many times faster than the run.
"""

from __future__ import annotations

import contextlib
import logging as py_logging
import os
import time
from collections.abc import Iterator, Sequence

import jax
from absl import logging
from clu import metric_writers

LOG_FILE = "log.txt"


class ShortFormatter(py_logging.Formatter):
  """'10:42:07 message' for the console (a warning or error says so before the message);
  absl's prefix (level, date, time to the microsecond, thread id, file:line) is 55 characters
  a person reads past on every line, so it goes to the workdir's log file instead."""

  def format(self, record: py_logging.LogRecord) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
    level = "" if record.levelno < py_logging.WARNING else f"{record.levelname.lower()}: "
    text = f"{stamp} {level}{record.getMessage()}"
    if record.exc_info:
      text += "\n" + self.formatException(record.exc_info)
    return text


def short_console() -> None:
  """absl's console handler prints ShortFormatter lines."""
  logging.get_absl_handler().setFormatter(ShortFormatter())


def log_to_file(workdir: str) -> str | None:
  """Also writes every log line in absl's full format (level, time, thread, file:line) to
  workdir/log.txt, appended across resumed runs: what a bug report needs. Object-store
  workdirs (gs://) keep the console only. Returns the file's path (None when not written)."""
  if "://" in workdir or jax.process_index() > 0:
    return None
  path = os.path.join(os.path.abspath(workdir), LOG_FILE)
  logger = logging.get_absl_logger()
  if any(getattr(h, "baseFilename", None) == path for h in logger.handlers):
    return path
  os.makedirs(os.path.dirname(path), exist_ok=True)
  handler = py_logging.FileHandler(path, encoding="utf-8")
  handler.setFormatter(logging.PythonFormatter())
  handler.setLevel(py_logging.INFO)
  logger.addHandler(handler)
  return path


def tensorboard_writer(workdir: str) -> metric_writers.MetricWriter:
  """An asynchronous TensorBoard writer for process 0; a writer of nothing elsewhere.

  (clu's default writer also logs every value written, which doubled each metric on the
  console and printed the hparams as kilobyte-long lines.)
  """
  if jax.process_index() > 0:
    return metric_writers.MultiWriter([])
  return metric_writers.AsyncMultiWriter([metric_writers.SummaryWriter(workdir)])


def duration(seconds: float) -> str:
  """'42 s', '3m05s', '2h04m'."""
  if seconds != seconds or seconds == float("inf"):
    return "?"
  seconds = int(round(seconds))
  if seconds < 60:
    return f"{seconds} s"
  if seconds < 3600:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Stages:
  """'stage 3/5: FAIG' lines for a job made of several stages."""

  def __init__(self, names: Sequence[str]):
    self.names, self.done = list(names), 0

  def begin(self, name: str, note: str = "") -> None:
    self.done += 1
    logging.info("stage %d/%d: %s%s", self.done, len(self.names), name,
                 f" ({note})" if note else "")


@contextlib.contextmanager
def phase(what: str) -> Iterator[None]:
  """Logs '<what>...' on entry and '<what>: done in T' on exit."""
  logging.info("%s...", what)
  start = time.perf_counter()
  yield
  logging.info("%s: done in %s.", what, duration(time.perf_counter() - start))


class Counter:
  """Progress of a counted task ('FAIG: 30/100 path points, 1.20 s each, 1m24s left'): a line
  after the first report (compilation included), then about every tenth of the way (or every
  `every` items), the rate measured from the first report on so compilation does not skew it."""

  def __init__(self, what: str, unit: str, total: int, every: int = 0):
    self.what, self.unit, self.total = what, unit, total
    self.every = every or max(1, total // 10)
    self.start, self.first, self.logged = time.perf_counter(), None, 0

  def __call__(self, done: int) -> None:
    now = time.perf_counter()
    if self.first is None:  # Timing starts here: the first report includes compilation.
      self.first, self.logged = (now, done), done
      logging.info("%s: %d/%d %s (the first %s, compilation included, took %s).", self.what,
                   done, self.total, self.unit, done, duration(now - self.start))
      return
    if done < self.total and done - self.logged < self.every:
      return
    self.logged = done
    t0, d0 = self.first
    rate = (done - d0) / max(now - t0, 1e-9)
    logging.info("%s: %d/%d %s, %.2f s each, %s left.", self.what, done, self.total, self.unit,
                 1 / rate, duration((self.total - done) / rate))


class StepProgress:
  """The train loop's line per log interval: step, share, losses, steps/s and the ETA.

  `start(step)` is called once the first step of this session has finished (the host waited
  for it, so compilation and the first step are behind); every `line` is made right after the
  host waited for the logged step's metrics, so both ends of the measured span are real
  completions.
  """

  def __init__(self, num_steps: int, loss_label: str = ""):
    self.num_steps, self.loss_label = num_steps, loss_label
    self.t0: float | None = None
    self.step0 = 0

  def start(self, step: int) -> None:
    self.t0, self.step0 = time.perf_counter(), step

  def rate(self, step: int) -> float | None:
    """Steps per second since `start` (None before two steps are measured)."""
    if self.t0 is None or step <= self.step0:
      return None
    return (step - self.step0) / max(time.perf_counter() - self.t0, 1e-9)

  def metric_text(self, means: dict[str, float]) -> str:
    """'loss (-PSNR, dB) -13.27, psnr 13.27, ...': the losses first, then the other metrics."""
    parts = []
    for key, value in sorted(means.items(), key=lambda kv: "loss" not in kv[0]):
      label = f"{key} ({self.loss_label})" if key == "loss" and self.loss_label else key
      parts.append(f"{label} {value:.4g}")
    return ", ".join(parts)

  def line(self, step: int, means: dict[str, float]) -> str:
    text = (f"step {step}/{self.num_steps} ({100 * step / self.num_steps:.0f}%): "
            f"{self.metric_text(means)}")
    rate = self.rate(step)
    if rate is not None:
      text += f"; {rate:.2f} steps/s, ETA {duration((self.num_steps - step) / rate)}"
    return text
