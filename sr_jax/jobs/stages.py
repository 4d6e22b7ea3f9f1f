"""A job as stages over one workdir, and the one runner every job goes through.

A job says what it must check before any work (`Job.check`: the config's ranges, the images,
what eval mode needs) and which stages it is made of (`Job.stages`, built once the workdir is
locked, so a stage list may depend on what earlier runs left there). `run` checks, takes the
workdir's lock (a second job on it is refused), then runs the stages in order, printing
'stage 2/5: FAIG (M=30 points on 8 crops)' for each counted stage when a job counts more than
one. A stage receives the products of the stages before it (by title) and returns its own;
each stage resumes from what it left in the workdir, so a finished one only reloads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax

from sr_jax.train import workdir_lock
from sr_jax.util import console, paths

Products = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Stage:
  """One stage: its title (also the key of its product), what it does, and its counter note."""
  title: str
  run: Callable[[Products], Any]
  note: str = ""
  counted: bool = True  # False: bookkeeping that prints no 'stage k/n' line (a final table).


@dataclasses.dataclass(frozen=True)
class Job:
  """What a job checks before any work, and its stages."""
  check: Callable[[], None]
  stages: Callable[[], Sequence[Stage]]


def run(job: Job, workdir: str) -> Any:
  """Checks, locks `workdir`, runs every stage; returns the last stage's product."""
  job.check()
  with workdir_lock.hold(paths.absolute(workdir), jax.process_index()):  # One job per workdir.
    stages = list(job.stages())
    counted = [s.title for s in stages if s.counted]
    counter = console.Stages(counted) if len(counted) > 1 else None
    products: Products = {}
    for stage in stages:
      if counter is not None and stage.counted:
        counter.begin(stage.title, stage.note)
      products[stage.title] = stage.run(products)
    return products[stages[-1].title]
