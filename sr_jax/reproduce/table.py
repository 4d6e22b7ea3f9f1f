"""What a published table is: the commands that measure it and how their outputs become markdown.

A `Table` names its page and marker, the commands it runs in order (each a `python -m ...`
line with `{workdir}` and `{datasets}` in place of the folders), the data those commands
read, the wall time one reproduction took alone on 2 CPU cores, and a `render` function that
turns the files the commands left in the workdir into the markdown between the markers.
Nothing in a rendered table is typed by hand: every number is read from those files.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Callable

EMBEDDED = "the photos embedded in scikit-image (nothing to download)"


@dataclasses.dataclass(frozen=True)
class Step:
  """One command: `python -m MODULE ARGS...`, its folders as `{workdir}` and `{datasets}`."""
  module: str
  args: tuple[str, ...]

  def argv(self, workdir: str, datasets: str) -> list[str]:
    return ["-m", self.module] + [a.format(workdir=workdir, datasets=datasets) for a in self.args]

  def text(self, workdir: str = "W", datasets: str = "DATASETS") -> str:
    """The command as a person would type it."""
    return "python " + " ".join(shlex.quote(a) for a in self.argv(workdir, datasets))

  @property
  def key(self) -> str:
    """Identifies the step in a workdir's record, whatever the workdir is called."""
    return self.text("{workdir}", "{datasets}")


def main_job(config: str, workdir: str, *overrides: str) -> Step:
  """`python -m sr_jax.main --config CONFIG --workdir WORKDIR --config.KEY=VALUE...`."""
  return Step("sr_jax.main", ("--config", config, "--workdir", workdir) +
              tuple(f"--config.{o}" for o in overrides))


@dataclasses.dataclass(frozen=True)
class Region:
  """Where a rendered table goes: a page (relative to the checkout's root) and the marker
  suffix (`reproduce:NAME` for the first region, `reproduce:NAME.KEY` for others)."""
  page: str
  render: Callable[[str], str]  # workdir -> markdown (tables, a protocol line); no footer.
  key: str = ""


@dataclasses.dataclass(frozen=True)
class Table:
  """A published table and how to regenerate it (see the module docstring)."""
  name: str
  what: str  # One line: what the table shows.
  steps: tuple[Step, ...]
  regions: tuple[Region, ...]
  needs: str = EMBEDDED
  datasets: tuple[str, ...] = ()  # Folders expected under --datasets.
  wall_time: str = "not yet measured"  # One reproduction alone on 2 CPU cores.
  packages: tuple[str, ...] = ()  # Extra packages whose versions the footer names.
  # Figures drawn by the commands: (path under the workdir, path in the checkout) to copy.
  figures: tuple[tuple[str, str], ...] = ()

  def marker(self, region: Region) -> str:
    return f"{self.name}.{region.key}" if region.key else self.name

  @property
  def pages(self) -> list[str]:
    return list(dict.fromkeys(r.page for r in self.regions))

  def commands(self, workdir: str = "W", datasets: str = "DATASETS") -> list[str]:
    return [s.text(workdir, datasets) for s in self.steps]
