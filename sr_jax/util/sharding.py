"""The device mesh and how arrays are laid out on it.

One mesh with two axes, 'data' x 'fsdp'. Batches are split over both (every device holds
global_batch / n_devices images). Parameters and optimizer state are replicated when the fsdp
axis has one device (the default: plain data parallelism); with `config.mesh.fsdp` = k > 1 each
large leaf is split k ways along one of its dimensions (`leaf_spec`), fully-sharded data
parallelism: XLA gathers a layer's weights where the step uses them and reduce-scatters their
gradients, so a model (e.g. SR3's 515M-parameter paper preset) and its Adam moments need 1/k
of the memory per device. Both layouts compute the same function (tested).

The same code runs on one CPU device, eight simulated ones
(XLA_FLAGS=--xla_force_host_platform_device_count=8), a GPU host, several hosts (one process
each, `sr_jax.util.distributed`) or a TPU pod slice.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = "data"
FSDP = "fsdp"
BATCH_AXES = (DATA, FSDP)
# Leaves with fewer elements stay replicated under FSDP: biases, norms, small kernels and
# scalars cost little memory, and gathering many tiny arrays costs more time than it saves.
FSDP_MIN_SIZE = 2**14


def make_mesh(num_data: int = -1, num_fsdp: int = 1,
              devices: list[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp) mesh over num_data * num_fsdp devices (num_data -1 = all the rest).

  Both axes are classic (Auto) axes. Devices are taken in `jax.devices()` order, which keeps
  each process's devices contiguous along the batch (what `global_batch` relies on).
  """
  devices = list(devices if devices is not None else jax.devices())
  if num_fsdp < 1:
    raise ValueError(f"config.mesh.fsdp={num_fsdp} must be at least 1 (1 = replicated "
                     "parameters).")
  if num_data in (-1, 0):
    if len(devices) % num_fsdp:
      raise ValueError(f"config.mesh.fsdp={num_fsdp} does not divide the {len(devices)} "
                       f"{jax.default_backend()} devices; choose a divisor.")
    num_data = len(devices) // num_fsdp
  n = num_data * num_fsdp
  if n > len(devices):
    raise ValueError(f"config.mesh.data={num_data} x config.mesh.fsdp={num_fsdp} asks for {n} "
                     f"devices; {len(devices)} are available ({jax.default_backend()}).")
  auto = jax.sharding.AxisType.Auto
  return Mesh(np.asarray(devices[:n]).reshape(num_data, num_fsdp), (DATA, FSDP),
              axis_types=(auto, auto))


def batch_devices(mesh: Mesh) -> int:
  """How many ways a batch is split: every device of the mesh holds a slice."""
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over every device of the mesh."""
  return NamedSharding(mesh, P(BATCH_AXES))


def check_batch_size(global_batch: int, mesh: Mesh) -> None:
  """The global batch must split evenly over the mesh's devices and the processes."""
  n = batch_devices(mesh)
  if global_batch % n or global_batch % jax.process_count():
    raise ValueError(f"config.batch_size={global_batch} must be divisible by the {n} devices "
                     f"of the mesh (data x fsdp) and the {jax.process_count()} processes; try "
                     f"{max(n, global_batch // n * n)}.")


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's slice of the batch into one global array split over the mesh."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local.items()}


def leaf_spec(shape: tuple[int, ...], fsdp: int, min_size: int = FSDP_MIN_SIZE) -> P:
  """The FSDP rule for one array: split its largest dimension divisible by `fsdp` (the last
  such on ties: a kernel's output channels) along 'fsdp', if it has at least `min_size`
  elements; otherwise replicate it."""
  if fsdp <= 1 or math.prod(shape) < min_size:
    return P()
  candidates = [i for i, d in enumerate(shape) if d % fsdp == 0]
  if not candidates:
    return P()
  axis = max(candidates, key=lambda i: (shape[i], i))
  return P(*([None] * axis + [FSDP]))


def tree_shardings(tree: Any, mesh: Mesh, min_size: int = FSDP_MIN_SIZE) -> Any:
  """A NamedSharding per array leaf of `tree` by `leaf_spec` (all replicated when fsdp = 1).

  Applied to a whole train state, a parameter and its Adam moments (same shape) get the same
  layout, and the step counter and rng stay replicated.
  """
  fsdp = mesh.shape[FSDP]
  return jax.tree.map(lambda x: NamedSharding(mesh, leaf_spec(np.shape(x), fsdp, min_size)),
                      tree)


def place(tree: Any, shardings: Any) -> Any:
  """Puts a host or device tree onto the mesh with the given shardings (one per leaf)."""
  return jax.device_put(tree, shardings)


def gather(tree: Any, mesh: Mesh) -> Any:
  """`tree` replicated on the mesh, however it was split: what evaluation and export read.

  A resharding inside jit (an all-gather across processes), so it works where a process holds
  only part of an array; `jax.device_get` of the result then reads the local copy.
  """
  if all(getattr(x, "is_fully_replicated", True) for x in jax.tree.leaves(tree)):
    return tree
  return jax.jit(lambda t: t, out_shardings=replicated(mesh))(tree)
