"""Launch scripts parse, and their dry runs print the commands they would run, nothing more."""

import glob
import os
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, "launch")
TPU = os.path.join(LAUNCH, "tpu_vm.sh")
GPU = os.path.join(LAUNCH, "gpu.sh")
# sr_jax arguments that must reach sr_jax.main word for word: spaces, both quotes, a '$'.
SR_ARGS = ["--config", "configs/colora_nafnet.py", "--workdir", "gs://bucket/runs/a b",
           "--config.note=it's a \"quoted\" $HOME"]
GPU_XLA_FLAGS = ["--xla_gpu_enable_latency_hiding_scheduler=true",
                 "--xla_gpu_triton_gemm_any=true"]


@pytest.fixture
def env(tmp_path):
  """An environment whose PATH starts with stand-ins for every tool the launchers call: a dry
  run that executes any of them leaves a trace in `calls`."""
  calls = tmp_path / "calls"
  stubs = tmp_path / "bin"
  stubs.mkdir()
  for tool in ("gcloud", "srun", "tar", "python", "python3"):
    (stubs / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> "{calls}"\nexit 1\n')
    (stubs / tool).chmod(0o755)
  e = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SRUN_", "TPU_"))}
  e.pop("DRY_RUN", None)
  e.pop("XLA_PYTHON_CLIENT_MEM_FRACTION", None)
  e.update(PATH=f"{stubs}:{os.environ['PATH']}", XLA_FLAGS="")
  yield e
  assert not calls.exists(), f"a dry run executed: {calls.read_text()}"


def _run(script, *args, env, dry_run=True):
  if dry_run:
    env = dict(env, DRY_RUN="1")
  return subprocess.run([script, *args], capture_output=True, text=True, env=env)


def _commands(stdout):
  """The dry run's commands as argv lists (comment lines skipped)."""
  return [shlex.split(line) for line in stdout.splitlines() if not line.startswith("#")]


def _split_env(argv):
  """(leading NAME=value assignments as a dict, the command)."""
  i = 0
  while i < len(argv) and "=" in argv[i] and argv[i].split("=")[0].isidentifier():
    i += 1
  return dict(a.split("=", 1) for a in argv[:i]), argv[i:]


def _tpu_remote(argv):
  """The command that `gcloud ... ssh --worker=all --command C` runs on every worker."""
  assert argv[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"] and "--worker=all" in argv
  return argv[argv.index("--command") + 1]


def test_local_launcher_dry_run_sets_device_count():
  script = os.path.join(REPO, "launch", "local.sh")
  subprocess.run(["bash", "-n", script], check=True)
  out = subprocess.run([script, "4", "python", "-m", "sr_jax.main"], capture_output=True,
                       text=True, check=True, env=dict(os.environ, DRY_RUN="1")).stdout
  assert "--xla_force_host_platform_device_count=4" in out and "python -m sr_jax.main" in out
  bad = subprocess.run([script, "x"], capture_output=True, text=True)
  assert bad.returncode == 2 and "Usage" in bad.stdout


def test_every_launch_script_parses():
  scripts = glob.glob(os.path.join(LAUNCH, "*.sh"))
  assert {TPU, GPU} <= set(scripts)
  for script in scripts:
    subprocess.run(["bash", "-n", script], check=True)
    if os.path.basename(script) == "common.sh":  # Sourced helpers, not a program.
      continue
    with open(script) as f:
      head = f.read().splitlines()[:60]
    assert head[0] == "#!/usr/bin/env bash" and "set -euo pipefail" in head, script


def test_tpu_all_creates_copies_installs_and_runs_on_every_worker(env):
  flags = ["--name", "sr", "--zone", "us-west4-a", "--project", "proj",
           "--accelerator-type", "v5litepod-16"]
  res = _run(TPU, *flags, "all", "--", *SR_ARGS, env=env)
  assert res.returncode == 0, res.stderr
  # --dry-run and DRY_RUN=1 are the same.
  assert _run(TPU, "--dry-run", *flags, "all", "--", *SR_ARGS, env=env,
              dry_run=False).stdout == res.stdout
  cmds = _commands(res.stdout)
  tpu = ["gcloud", "compute", "tpus", "tpu-vm"]
  where = ["sr", "--zone=us-west4-a", "--project=proj"]
  assert [c[4] if c[:4] == tpu else c[0] for c in cmds] == [
      "describe", "create", "tar", "scp", "ssh", "ssh"]
  assert cmds[0][5:8] == where
  assert cmds[1] == tpu + ["create"] + where + ["--accelerator-type=v5litepod-16",
                                                "--version=v2-alpha-tpuv5-lite"]
  tarball = cmds[2][cmds[2].index("-czf") + 1]
  assert cmds[2][-5:] == [REPO, "pyproject.toml", "README.md", "sr_jax", "configs"]
  assert cmds[3][5] == tarball and cmds[3][6].startswith("sr:") and "--worker=all" in cmds[3]
  setup = _tpu_remote(cmds[4])
  assert "tar -xzf" in setup and "pip install" in setup and "jax[tpu]" in shlex.split(setup)
  assert "-e" in shlex.split(setup)  # The copied checkout, with its dependencies.
  remote = shlex.split(_tpu_remote(cmds[5]))
  main = remote.index("sr_jax.main")
  assert remote[main - 1] == "-m" and remote[main - 2].endswith("/bin/python")
  assert remote[main + 1:] == ["--distributed", *SR_ARGS]


def test_tpu_single_actions(env):
  flags = ["--name", "sr", "--zone", "z"]
  delete = _commands(_run(TPU, *flags, "delete", env=env).stdout)
  assert delete == [["gcloud", "compute", "tpus", "tpu-vm", "delete", "sr", "--zone=z", "--quiet"]]
  create = _commands(_run(TPU, *flags, "--accelerator-type=v6e-8", "--spot", "create",
                          env=env).stdout)
  assert [c[4] for c in create] == ["describe", "create"]
  assert "--version=v2-alpha-tpuv6e" in create[1] and "--spot" in create[1]
  # A single-host slice may keep its workdir on the VM; --distributed is not repeated; --env.
  run = _commands(_run(TPU, *flags, "--accelerator-type", "v5litepod-8", "--env", "A=b c",
                       "run", "--", "--distributed", "--workdir=/tmp/w", env=env).stdout)
  assert len(run) == 1
  remote = shlex.split(_tpu_remote(run[0]))
  assert remote[remote.index("env") + 1] == "A=b c"
  assert remote[remote.index("sr_jax.main") + 1:] == ["--distributed", "--workdir=/tmp/w"]


@pytest.mark.parametrize("workdir", [["--workdir", "/tmp/w"], ["--workdir=runs/w"], []])
def test_tpu_refuses_a_workdir_not_on_gcs_for_several_workers(env, workdir):
  for accelerator in ("v5litepod-16", "v4-16", "unknown-8"):
    res = _run(TPU, "--name", "sr", "--zone", "z", "--accelerator-type", accelerator, "all",
               "--", "--config", "c", *workdir, env=env)
    assert res.returncode == 2 and res.stdout == "", res.stdout  # Refused before creating.
    assert "gs://" in res.stderr and "same checkpoints" in res.stderr


@pytest.mark.parametrize("args", [
    [], ["--name", "sr", "--zone", "z"], ["--name", "sr", "--zone", "z", "start"],
    ["--zone", "z", "delete"], ["--name", "sr", "delete"],
    ["--name", "sr", "--zone", "z", "run"], ["--name", "sr", "--zone", "z", "run", "--config", "c"],
    ["--name", "sr", "--zone", "z", "delete", "--", "--config", "c"],
    ["--name", "sr", "--zone", "z", "create", "delete"], ["--name", "sr", "--zone", "z", "--env"],
    ["--name", "sr", "--zone", "z", "--env", "no-equals", "create"],
])
def test_tpu_bad_usage_exits_2_with_the_usage(env, args):
  res = _run(TPU, *args, env=env)
  assert res.returncode == 2 and "Usage: launch/tpu_vm.sh" in res.stderr and res.stdout == ""


def test_gpu_local_is_one_plain_process(env):
  res = _run(GPU, "local", "--", *SR_ARGS, env=dict(env, PYTHON="python3"))
  assert res.returncode == 0, res.stderr
  (cmd,) = _commands(res.stdout)
  assigns, argv = _split_env(cmd)
  assert argv == ["python3", "-m", "sr_jax.main", *SR_ARGS]
  assert assigns["XLA_FLAGS"].split() == GPU_XLA_FLAGS
  assert 0.5 < float(assigns["XLA_PYTHON_CLIENT_MEM_FRACTION"]) < 1
  assert "JAX_LOCAL_DEVICE_IDS" not in assigns
  assert _run(GPU, "--dry-run", "local", "--", *SR_ARGS, env=dict(env, PYTHON="python3"),
              dry_run=False).stdout == res.stdout


def test_gpu_slurm_runs_one_distributed_task_per_node(env):
  res = _run(GPU, "slurm", "--nodes", "4", "--gpus-per-node=8", "--srun-arg=--partition=gpu",
             "--", *SR_ARGS, env=dict(env, XLA_FLAGS="--xla_gpu_triton_gemm_any=false --a=1",
                                      XLA_PYTHON_CLIENT_MEM_FRACTION=".8"))
  assert res.returncode == 0, res.stderr
  (cmd,) = _commands(res.stdout)
  assigns, argv = _split_env(cmd)
  main = argv.index("sr_jax.main")
  assert argv[0] == "srun" and argv[main - 2:main] == ["python", "-m"]
  srun = argv[1:main - 2]
  for opt in ("--nodes=4", "--ntasks-per-node=1", "--gpus-per-node=8", "--partition=gpu"):
    assert opt in srun
  assert argv[main + 1:] == ["--distributed", *SR_ARGS]
  # Each task owns its node's 8 GPUs (JAX's Slurm detection alone would give it only one).
  assert assigns["JAX_LOCAL_DEVICE_IDS"] == "0,1,2,3,4,5,6,7"
  # Existing XLA flags kept, and a flag already set there is not overridden.
  assert assigns["XLA_FLAGS"].split() == ["--xla_gpu_triton_gemm_any=false", "--a=1",
                                          GPU_XLA_FLAGS[0]]
  assert assigns["XLA_PYTHON_CLIENT_MEM_FRACTION"] == ".8"


def test_gpu_slurm_takes_the_layout_from_the_allocation(env):
  alloc = dict(env, SLURM_JOB_NUM_NODES="2", SLURM_GPUS_PER_NODE="h100:4",
               SLURM_CPUS_PER_TASK="16")
  (cmd,) = _commands(_run(GPU, "slurm", "--", "--distributed", "--workdir", "w", env=alloc).stdout)
  assigns, argv = _split_env(cmd)
  for opt in ("--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=4", "--cpus-per-task=16"):
    assert opt in argv
  assert argv[argv.index("sr_jax.main") + 1:] == ["--distributed", "--workdir", "w"]
  assert assigns["JAX_LOCAL_DEVICE_IDS"] == "0,1,2,3"


@pytest.mark.parametrize("args", [
    [], ["local"], ["local", "--"], ["--", "--config", "c"], ["gpus", "--", "x"],
    ["local", "--config", "c"], ["local", "--nodes", "2", "--", "x"], ["slurm", "--", "x"],
    ["slurm", "--nodes", "2", "--", "x"], ["slurm", "--nodes", "0", "--gpus-per-node", "8", "--",
                                            "x"],
])
def test_gpu_bad_usage_exits_2_with_the_usage(env, args):
  res = _run(GPU, *args, env=env)
  assert res.returncode == 2 and "Usage: launch/gpu.sh" in res.stderr and res.stdout == ""


def test_help_prints_the_usage(env):
  for script in (TPU, GPU):
    res = _run(script, "--help", env=env, dry_run=False)
    assert res.returncode == 0 and "Usage: launch/" in res.stdout and res.stderr == ""
    assert _run(script, "-h", env=env, dry_run=False).stdout == res.stdout


def test_gpu_xla_flags_are_accepted_by_this_jaxlib(env):
  """XLA aborts at start-up on a flag it does not know (old recipes' flags included), so the
  flags gpu.sh sets must parse here: XLA_FLAGS taken from its dry run, on CPU."""
  out = _run(GPU, "local", "--", "--workdir", "w",
             env=dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=3")).stdout
  assigns, _ = _split_env(_commands(out)[0])
  probe = "import jax; print(jax.device_count())"

  def jax_with(flags):
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env=dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu"), timeout=120)

  res = jax_with(assigns["XLA_FLAGS"])
  assert res.returncode == 0, res.stderr[-2000:]
  assert res.stdout.strip() == "3"  # The flags already set still apply.
  # The check has teeth: an unknown flag fails the same way.
  bad = jax_with(assigns["XLA_FLAGS"] + " --xla_gpu_enable_async_collectives=true")
  assert bad.returncode != 0 and "Unknown flag in XLA_FLAGS" in bad.stderr


def test_launcher_options_are_spelled_with_underscores_and_old_hyphens_still_work(env):
  new = _run(GPU, "slurm", "--nodes", "2", "--gpus_per_node=8", "--srun_arg=--partition=gpu",
             "--", *SR_ARGS, env=env)
  old = _run(GPU, "slurm", "--nodes", "2", "--gpus-per-node=8", "--srun-arg=--partition=gpu",
             "--", *SR_ARGS, env=env)
  assert new.returncode == old.returncode == 0, old.stderr
  assert new.stdout == old.stdout and "--partition=gpu" in new.stdout
  assert "note:" not in new.stderr
  assert "note: --gpus-per-node is now spelled --gpus_per_node" in old.stderr
  flags = ["--name", "sr", "--zone", "z"]
  new = _run(TPU, *flags, "--accelerator_type", "v6e-8", "create", env=env)
  old = _run(TPU, *flags, "--accelerator-type", "v6e-8", "create", env=env)
  assert new.stdout == old.stdout and "--accelerator-type=v6e-8" in new.stdout  # gcloud's own.
