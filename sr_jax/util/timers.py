"""The train loop's two clocks: time spent waiting for data, and time per training step."""

from __future__ import annotations

import time


class DataWait:
  """Times the train loop's waits for the next batch, as a share of the loop's wall time.

  The step is dispatched asynchronously, so time spent in `next()` while the previous step
  still runs costs nothing; only a wait the prefetching workers did not cover shows up here.
  (clu's ReportProgress.timed would first block on the previous step, serialising the two.)
  """

  def __init__(self):
    self._start = self._since = time.perf_counter()
    self._waited = self._waited_since = 0.0
    self._entered = 0.0

  def __enter__(self):
    self._entered = time.perf_counter()

  def __exit__(self, *exc):
    waited = time.perf_counter() - self._entered
    self._waited += waited
    self._waited_since += waited

  def fraction(self, reset: bool = False) -> float:
    """The waiting share since the last reset."""
    now = time.perf_counter()
    value = self._waited_since / max(now - self._since, 1e-9)
    if reset:
      self._since, self._waited_since = now, 0.0
    return value

  def total_fraction(self) -> float:
    return self._waited / max(time.perf_counter() - self._start, 1e-9)


class StepClock:
  """Mean wall time of the training steps, compilation excluded.

  Started once the step is compiled, before the first step is dispatched; `pause()` brackets
  work that is not a step (checkpoint saves, evaluations) and is subtracted. `step_ms` is only
  meaningful once the caller has waited for the last step to finish.
  """

  def __init__(self):
    self._start: float | None = None
    self._first_step = 0
    self._paused = 0.0

  @property
  def started(self) -> bool:
    return self._start is not None

  def start(self, step: int) -> None:
    """Starts timing at `step` (the first step counted)."""
    self._start, self._first_step, self._paused = time.perf_counter(), step, 0.0

  def pause(self) -> "_Pause":
    """A context manager whose time is not step time."""
    return _Pause(self)

  def step_ms(self, last_step: int) -> float | None:
    """Mean ms per step over steps first..last, or None when fewer than two ran."""
    if self._start is None or last_step <= self._first_step:
      return None
    elapsed = time.perf_counter() - self._start - self._paused
    return 1000 * elapsed / (last_step - self._first_step + 1)


class _Pause:

  def __init__(self, clock: StepClock):
    self._clock, self._entered = clock, 0.0

  def __enter__(self):
    self._entered = time.perf_counter()

  def __exit__(self, *exc):
    self._clock._paused += time.perf_counter() - self._entered  # pylint: disable=protected-access
