"""The layout of a workdir: the one place that spells where a run keeps what.

    W/                      one job (`python -m sr_jax.main --workdir W`)
      .sr_jax.lock          held while a job runs on W (sr_jax.train.workdir_lock)
      checkpoints/<step>/   orbax checkpoints; checkpoints_corrupt/ holds steps set aside
      export/params         the merged model (sr_jax.util.exports)
      export/adapters       LoRA adapters and the base leaves tuned with them
      results.md, results.json, timing.json, config.yaml
      base/                 the base stage, itself laid out like W
      probe/, <arm>/, faig/ CoLoRA: the probe run, one run per arm, FAIG scores and allocations

Paths are joined with `os.path.join`, which leaves gs:// URLs intact (sr_jax.util.paths).
"""

from __future__ import annotations

import dataclasses
import os

LOCK_NAME = ".sr_jax.lock"
CORRUPT_NAME = "checkpoints_corrupt"


@dataclasses.dataclass(frozen=True)
class Workdir:
  """A run directory; `root` is a local path or an object-store URL."""
  root: str

  def sub(self, name: str) -> Workdir:
    """A run nested in this one (a CoLoRA arm, a study's task)."""
    return Workdir(os.path.join(self.root, name))

  @property
  def base(self) -> Workdir:
    """The base stage's run (pre-training before the job's own stage)."""
    return self.sub("base")

  @property
  def probe(self) -> Workdir:
    """CoLoRA's probe run (full fine-tuning whose weights FAIG scores)."""
    return self.sub("probe")

  @property
  def checkpoints(self) -> str:
    return os.path.join(self.root, "checkpoints")

  @property
  def corrupt_checkpoints(self) -> str:
    return os.path.join(self.root, CORRUPT_NAME)

  @property
  def export_params(self) -> str:
    return os.path.join(self.export, "params")

  @property
  def export_adapters(self) -> str:
    return os.path.join(self.export, "adapters")

  @property
  def results(self) -> str:
    return os.path.join(self.root, "results.md")

  @property
  def results_json(self) -> str:
    return os.path.join(self.root, "results.json")

  @property
  def timing(self) -> str:
    return os.path.join(self.root, "timing.json")

  @property
  def config_yaml(self) -> str:
    """The config the job ran with, as written at its start."""
    return os.path.join(self.root, "config.yaml")

  @property
  def lock(self) -> str:
    return f"{self.root.rstrip('/')}/{LOCK_NAME}"

  @property
  def faig(self) -> str:
    """CoLoRA's FAIG scores, block chart and rank allocations."""
    return os.path.join(self.root, "faig")

  @property
  def export(self) -> str:
    """The folder holding export/params and export/adapters."""
    return os.path.join(self.root, "export")

  def allocation(self, arm: str) -> str:
    """The ranks CoLoRA's allocation gave an arm."""
    return os.path.join(self.faig, f"allocation_{arm}.json")

  def ranks_plot(self, arm: str) -> str:
    return os.path.join(self.faig, f"ranks_{arm}.png")
