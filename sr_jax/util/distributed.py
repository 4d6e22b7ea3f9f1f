"""Multi-host runs on JAX's own runtime: one process per host, `jax.distributed.initialize()`.

Every process runs the same command (`python -m sr_jax.main --distributed ...`); after
initialisation `jax.devices()` lists every host's devices and the mesh spans them all. Each
process reads its own share of the data (`pipeline.sharded_stream`), the step assembles the
global batch from the processes' parts (`sharding.global_batch`), orbax writes checkpoints
collectively to storage every host sees (a shared file system or gs://), and only process 0
logs, prints and writes TensorBoard events and small files.

Where the cluster manager publishes the process layout (Cloud TPU, Slurm, Open MPI, Kubernetes)
`--distributed` alone suffices: JAX detects it. Elsewhere (bare hosts, CPU processes on one
machine) pass the coordinator's address, the number of processes and this process's id.
"""

from __future__ import annotations

import jax
from absl import flags, logging

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command-line flags of a multi-host run (defined by the commands that launch runs)."""
  flags.DEFINE_bool("distributed", False, "Initialise JAX's multi-process runtime "
                    "(jax.distributed.initialize) before anything else; the cluster (Cloud TPU, "
                    "Slurm, Open MPI) is detected unless the three flags below are given.")
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0's coordinator "
                      "service (with --distributed, where no cluster manager provides it).")
  flags.DEFINE_integer("num_processes", None, "Number of processes (with --distributed).")
  flags.DEFINE_integer("process_id", None, "This process's id in [0, num_processes) (with "
                       "--distributed).")


def initialize(enabled: bool, coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None) -> None:
  """Starts the multi-process runtime when `enabled`; must run before any JAX computation.

  Raises a ValueError naming the flags when the layout is given in part, or when no cluster
  could be detected and none was given.
  """
  explicit = {"--coordinator_address": coordinator_address, "--num_processes": num_processes,
              "--process_id": process_id}
  given = [k for k, v in explicit.items() if v is not None]
  if not enabled:
    if given:
      raise ValueError(f"{', '.join(given)} given without --distributed; add --distributed "
                       "to run as one process of a multi-process job.")
    return
  if given and len(given) < len(explicit):
    missing = [k for k in explicit if k not in given]
    raise ValueError(f"--distributed with {', '.join(given)} also needs {', '.join(missing)} "
                     "(or none of the three, to let JAX detect the cluster).")
  if num_processes is not None and not 0 <= process_id < num_processes:
    raise ValueError(f"--process_id={process_id} must be in [0, --num_processes="
                     f"{num_processes}).")
  try:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  except ValueError as e:
    if given:
      raise
    raise ValueError(
        f"--distributed could not detect a cluster (Cloud TPU, Slurm, Open MPI): {e}. On other "
        "hosts pass --coordinator_address=HOST:PORT --num_processes=N --process_id=I to every "
        "process (launch/ has scripts for TPU VMs and Slurm).") from e
  logging.info("Distributed runtime: process %d of %d, %d local and %d global devices.",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())


def initialize_from_flags() -> None:
  """`initialize` with the values of `define_flags`' flags."""
  initialize(FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes,
             FLAGS.process_id)


def barrier(name: str) -> None:
  """A barrier across processes of a multi-host run (nothing on one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)
