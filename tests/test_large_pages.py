"""The tools restart once with glibc's large pages; library imports and opted-out runs do not."""

import os
import subprocess
import sys

import pytest

from sr_jax.util import large_pages

_OK = dict(argv0="-m", platform="linux", glibc=(2, 36), thp_mode="madvise")


def test_wanted_rules():
  assert large_pages.wanted({}, **_OK)
  assert not large_pages.wanted({}, **dict(_OK, argv0="train.py"))  # A library user.
  assert not large_pages.wanted({}, **dict(_OK, argv0="-c"))  # multiprocessing workers.
  assert not large_pages.wanted({}, **dict(_OK, platform="darwin"))
  assert not large_pages.wanted({}, **dict(_OK, glibc=(2, 34)))
  assert not large_pages.wanted({}, **dict(_OK, glibc=None))  # musl.
  assert not large_pages.wanted({}, **dict(_OK, thp_mode="never"))
  assert not large_pages.wanted({"SR_JAX_LARGE_PAGES": "0"}, **_OK)
  # Already set (by us: no loop; or by the user, whose value wins).
  assert not large_pages.wanted({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, **_OK)
  assert large_pages.wanted({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, **_OK)


def test_tunables_keep_the_users_own():
  assert large_pages.tunables("") == "glibc.malloc.hugetlb=1"
  assert large_pages.tunables("glibc.malloc.arena_max=2") == (
      "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")


def test_huge_page_mode_reads_the_bracketed_choice(tmp_path):
  f = tmp_path / "enabled"
  f.write_text("always [madvise] never\n")
  assert large_pages.huge_page_mode(str(f)) == "madvise"
  assert large_pages.huge_page_mode(str(tmp_path / "missing")) is None


def _show(**env):
  out = subprocess.run([sys.executable, "-m", "sr_jax.tools.show_large_pages"], check=True,
                       capture_output=True, text=True, env=dict(os.environ, **env)).stdout
  faults = int(out.rsplit(":", 1)[1])
  return out, faults


@pytest.mark.skipif(not large_pages.wanted(
    {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "SR_JAX_LARGE_PAGES")},
    "-m", sys.platform, large_pages.glibc_version(), large_pages.huge_page_mode()),
                    reason="no glibc 2.35+ with transparent huge pages here")
def test_a_tool_runs_with_large_pages_and_takes_fewer_faults():
  env = {"GLIBC_TUNABLES": "", "SR_JAX_LARGE_PAGES": "1"}
  on, on_faults = _show(**env)
  assert "GLIBC_TUNABLES=glibc.malloc.hugetlb=1" in on and "added by sr_jax" in on
  off, off_faults = _show(**dict(env, SR_JAX_LARGE_PAGES="0"))
  assert "GLIBC_TUNABLES=\n" in off and "are off" in off
  # 256 MiB is 65,536 small pages or 128 large ones.
  assert off_faults > 60_000 and on_faults < off_faults / 10, (on_faults, off_faults)
