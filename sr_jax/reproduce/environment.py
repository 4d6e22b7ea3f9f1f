"""Where a number was measured: the machine and the package versions, for a table's footer.

A timing or a PSNR is only comparable with the machine and the library versions beside it
(XLA's CPU kernels and its float reassociation change between jaxlib releases, so a demo's
last digits do too). The footer names the processor model and core count, never the host name.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
from importlib import metadata

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")


def cpu_model() -> str:
  """The processor's model name from /proc/cpuinfo (Linux), else platform's guess."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def cores() -> int:
  """The cores this process may run on (a container's share, not the host's count)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def machine() -> str:
  """'2 cores of an Intel(R) Xeon(R) ..., Linux x86_64' (and the accelerator, if JAX has one)."""
  text = f"{cores()} cores of {cpu_model()}, {platform.system()} {platform.machine()}"
  if "jax" in sys.modules:  # Only when already imported: asking starts a backend.
    import jax  # pylint: disable=g-import-not-at-top
    if jax.default_backend() != "cpu":
      text += f", {jax.device_count()} x {jax.devices()[0].device_kind}"
  return text


def versions(extra: tuple[str, ...] = ()) -> str:
  """'Python 3.11.7, jax 0.10.2, jaxlib 0.10.2, ...' for the installed packages."""
  parts = [f"Python {platform.python_version()}"]
  for name in PACKAGES + tuple(extra):
    try:
      parts.append(f"{name} {metadata.version(name)}")
    except metadata.PackageNotFoundError:
      continue
  return ", ".join(parts)


def today() -> str:
  return datetime.date.today().isoformat()
