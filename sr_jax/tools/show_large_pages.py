"""python -m sr_jax.tools.show_large_pages: whether the tools run with large pages for malloc
(sr_jax.util.large_pages), the GLIBC_TUNABLES they run with, and the minor page faults this process
takes to fill a fresh 256 MiB buffer (~65,000 with 4 KiB pages, a few hundred with 2 MiB ones)."""

import os
import resource

import numpy as np

from sr_jax.util import large_pages


def faults_to_fill(mib: int = 256) -> int:
  """Minor page faults taken to allocate and write `mib` MiB (NumPy's own huge-page advice is
  turned off first, so the count shows what malloc gives XLA)."""
  np._core.multiarray._set_madvise_hugepage(False)
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  buffer = np.ones(mib * 2**20 // 4, np.float32)
  after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  del buffer
  return after - before


if __name__ == "__main__":
  print(large_pages.describe())
  print(f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')}")
  print(f"minor page faults filling 256 MiB: {faults_to_fill()}")
