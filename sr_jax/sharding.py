"""The device mesh and how arrays are laid out on it.

One mesh with a 'data' axis: batches are split along it, parameters and optimizer state are
replicated. The same code runs on one CPU device, eight simulated ones
(XLA_FLAGS=--xla_force_host_platform_device_count=8), a GPU host or a TPU pod slice.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = "data"


def make_mesh(num_data: int = -1, devices: list[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over `num_data` devices (-1 = all) with a classic (Auto) 'data' axis."""
  devices = list(devices if devices is not None else jax.devices())
  n = len(devices) if num_data in (-1, 0) else num_data
  if n > len(devices):
    raise ValueError(f"config.mesh.data={num_data} asks for more devices than the "
                     f"{len(devices)} available ({jax.default_backend()}).")
  return Mesh(np.asarray(devices[:n]), (DATA,), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA))


def check_batch_size(global_batch: int, mesh: Mesh) -> None:
  """The global batch must split evenly over the data axis and the processes."""
  n = mesh.shape[DATA]
  if global_batch % n or global_batch % jax.process_count():
    raise ValueError(f"config.batch_size={global_batch} must be divisible by the {n} devices on "
                     f"the 'data' axis and the {jax.process_count()} processes; try "
                     f"{max(n, global_batch // n * n)}.")


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's slice of the batch into one global array sharded on 'data'."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a host or device tree replicated on every device of the mesh."""
  return jax.device_put(tree, replicated(mesh))
