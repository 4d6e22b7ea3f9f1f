"""Test set-up: eight simulated CPU devices and fast compilation for tiny models."""

import os
import sys

# Must happen before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_disable_most_optimizations", True)


@pytest.fixture(scope="module")
def single_threaded_torch():
  """PyTorch on one thread while a module's tests run: for the tiny reference models its
  thread pool only adds overhead (seconds per forward on a busy 2-core machine instead of
  milliseconds). Does nothing when PyTorch is not installed."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    yield None
    return
  before = torch.get_num_threads()
  torch.set_num_threads(1)
  yield torch
  torch.set_num_threads(before)


@pytest.fixture(scope="module")
def torch(single_threaded_torch):  # pylint: disable=redefined-outer-name
  """The single-threaded torch module, or a skip when PyTorch is not installed."""
  if single_threaded_torch is None:
    pytest.skip("PyTorch is not installed")
  return single_threaded_torch
