"""Runs the command-line tools with glibc's transparent huge pages for malloc.

Why: on CPU, XLA allocates fresh buffers for a step's temporaries, and each 4 KiB page is
faulted in on first touch. On a 2-core VM a NAFNet-w32 training step (batch 4, 128x128) took
~420,000 minor page faults and 4.3-5.7 s; with glibc's `glibc.malloc.hugetlb=1` tunable (glibc
2.35+, transparent huge pages in 'madvise' or 'always' mode) malloc asks for 2 MiB pages and
the same step takes 1,000-2,400 faults and 2.3-2.8 s (docs/speed.md has the command). The
tunable is read only when a process starts, so setting it from Python is too late: the tools
re-execute themselves once, before any heavy import, with it added to GLIBC_TUNABLES.

When: only for `python -m sr_jax.<tool>` (Python sets sys.argv[0] to '-m' while it imports the
package of a -m module, so a library user importing sr_jax is never re-executed, nor are
multiprocessing workers); only on Linux with glibc >= 2.35 and huge pages not disabled; never
when GLIBC_TUNABLES already names the tunable (so the re-executed process does not loop, and
a user's own value wins). SR_JAX_LARGE_PAGES=0 turns it off.

`python -m sr_jax.tools.show_large_pages` prints whether this process runs with them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

TUNABLE = "glibc.malloc.hugetlb"
SWITCH = "SR_JAX_LARGE_PAGES"  # "0" turns the re-execution off.
MARK = "SR_JAX_LARGE_PAGES_ADDED"  # Set in the re-executed process, for the log line.
_THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def glibc_version() -> tuple[int, int] | None:
  """(major, minor) of the C library when it is glibc, else None."""
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
    major, minor = version.split(".")[:2]
    return (int(major), int(minor)) if name == "glibc" else None
  except (AttributeError, OSError, ValueError):
    return None


def huge_page_mode(path: str = _THP_MODE) -> str | None:
  """The kernel's transparent huge page mode ('always', 'madvise', 'never'), or None."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find("["), text.find("]")
  return text[start + 1:end] if 0 <= start < end else None


def wanted(env: Mapping[str, str], argv0: str, platform: str, glibc: tuple[int, int] | None,
           thp_mode: str | None) -> bool:
  """Whether to re-execute with the tunable (the rules of the module docstring)."""
  return (argv0 == "-m" and platform.startswith("linux") and env.get(SWITCH, "1") != "0"
          and TUNABLE not in env.get("GLIBC_TUNABLES", "") and glibc is not None
          and glibc >= (2, 35) and thp_mode in ("always", "madvise"))


def tunables(current: str) -> str:
  """GLIBC_TUNABLES with the huge-page tunable appended (tunables are ':'-separated)."""
  return f"{current}:{TUNABLE}=1" if current else f"{TUNABLE}=1"


def reexecute_if_wanted(argv: Sequence[str] | None = None) -> None:
  """Replaces this process by the same command with large pages, when `wanted` says so."""
  env = os.environ
  if not wanted(env, sys.argv[0] if sys.argv else "", sys.platform, glibc_version(),
                huge_page_mode()):
    return
  argv = list(argv if argv is not None else getattr(sys, "orig_argv", []))
  if not argv or not sys.executable:
    return
  new_env = dict(env, GLIBC_TUNABLES=tunables(env.get("GLIBC_TUNABLES", "")), **{MARK: "1"})
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, [sys.executable] + argv[1:], new_env)
  except OSError:  # Could not re-execute: carry on with small pages.
    return


def active() -> bool:
  """Whether this process was started with the huge-page tunable on."""
  return f"{TUNABLE}=1" in os.environ.get("GLIBC_TUNABLES", "")


def describe() -> str:
  """One line for the log: are large pages on, and how to change it."""
  if active():
    how = "added by sr_jax" if os.environ.get(MARK) else "from GLIBC_TUNABLES"
    return (f"Large pages for malloc are on ({TUNABLE}=1, {how}); {SWITCH}=0 turns them off.")
  return ("Large pages for malloc are off (on Linux with glibc 2.35+ the tools turn on "
          f"{TUNABLE}=1 unless {SWITCH}=0).")
