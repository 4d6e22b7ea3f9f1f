#!/usr/bin/env bash
# Runs an sr_jax job on NVIDIA GPUs, with the XLA flags and memory setting that help.
#
# Usage: launch/gpu.sh [--dry_run] local -- SR_JAX_ARGS...
#        launch/gpu.sh [--dry_run] slurm [--nodes N] [--gpus_per_node G] [--srun_arg ARG]...
#                      -- SR_JAX_ARGS...
#
#   local  one process on this host: `python -m sr_jax.main SR_JAX_ARGS`. It sees every local
#          GPU (narrow with CUDA_VISIBLE_DEVICES), so a multi-GPU host needs no --distributed.
#   slurm  `srun` with one task per node, each owning all of its node's GPUs, running
#          `python -m sr_jax.main --distributed SR_JAX_ARGS`: jax.distributed.initialize() takes
#          the coordinator, process count and process id from Slurm. --nodes and
#          --gpus_per_node default to the allocation's (SLURM_JOB_NUM_NODES and
#          SLURM_GPUS_PER_NODE, set by `sbatch --gpus-per-node`); --srun_arg adds an srun
#          option (repeatable), e.g. --srun_arg=--partition=gpu. The workdir and the data must
#          be on a file system that every node sees.
#   --dry_run  print the command instead of running it (same as DRY_RUN=1; any non-empty
#              DRY_RUN, as in launch/local.sh)
#   -h, --help print this help
# PYTHON picks the interpreter (default: python).
#
# Examples:
#   launch/gpu.sh local -- --config configs/colora_nafnet.py --workdir runs/colora
#   # Slurm batch job, two nodes of 8 GPUs (submit with `sbatch job.sh`):
#   #!/bin/bash
#   #SBATCH --job-name=sr_jax
#   #SBATCH --nodes=2
#   #SBATCH --ntasks-per-node=1
#   #SBATCH --gpus-per-node=8
#   #SBATCH --cpus-per-task=32
#   #SBATCH --time=24:00:00
#   launch/gpu.sh slurm -- --config configs/colora_nafnet.py --workdir /shared/runs/colora
#   # Bare hosts without Slurm: on each of N hosts, process I of N:
#   launch/gpu.sh local -- --distributed --coordinator_address=HOST0:1234 --num_processes=N \
#       --process_id=I --config configs/colora_nafnet.py --workdir /shared/runs/colora
set -euo pipefail

usage() { awk 'NR == 1 {next} /^#/ {sub(/^# ?/, ""); print; next} {exit}' "$0"; }
die_usage() { echo "gpu.sh: $*" >&2; usage >&2; exit 2; }

# quote: shell-quotes its arguments into one line (launch/common.sh).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

dry_run=${DRY_RUN:-}; mode=""; nodes=""; gpus=""; srun_args=(); args=()
while [[ $# -gt 0 ]]; do
  [[ "$1" == --?* ]] && set -- "$(underscore_option "$1")" "${@:2}"
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry_run) dry_run=1; shift ;;
    --nodes|--gpus_per_node|--srun_arg)
      [[ $# -ge 2 ]] || die_usage "$1 needs a value"
      case "$1" in
        --nodes) nodes=$2 ;; --gpus_per_node) gpus=$2 ;; --srun_arg) srun_args+=("$2") ;;
      esac
      shift 2 ;;
    --nodes=*|--gpus_per_node=*|--srun_arg=*) set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;
    --) shift; args=("$@"); break ;;
    local|slurm)
      [[ -z "$mode" ]] || die_usage "one mode at a time ('$mode', then '$1')"
      mode=$1; shift ;;
    *) die_usage "unknown argument '$1'" ;;
  esac
done
[[ -n "$mode" ]] || die_usage "no mode given (local or slurm)"
[[ ${#args[@]} -gt 0 ]] || die_usage "the sr_jax arguments go after '--'"
if [[ "$mode" == local && ( -n "$nodes" || -n "$gpus" || ${#srun_args[@]} -gt 0 ) ]]; then
  die_usage "--nodes, --gpus_per_node and --srun_arg are for slurm mode"
fi

# XLA flags for GPUs. The latency-hiding scheduler overlaps collectives (the gradient
# all-reduce across GPUs and nodes) with compute; triton_gemm_any lets XLA's autotuner pick a
# Triton-generated kernel for any matmul where it beats cuBLAS. Only flags that this jaxlib
# knows belong here: an unknown one (e.g. the old xla_gpu_enable_async_collectives) makes XLA
# abort at start-up with "Unknown flag in XLA_FLAGS" (tests/test_launch.py checks these).
# They go after any XLA_FLAGS already set, and one already set there is left as it is.
GPU_XLA_FLAGS=(--xla_gpu_enable_latency_hiding_scheduler=true --xla_gpu_triton_gemm_any=true)
xla_flags=${XLA_FLAGS:-}
for flag in "${GPU_XLA_FLAGS[@]}"; do
  [[ " $xla_flags " == *" ${flag%%=*}="* ]] || xla_flags+="${xla_flags:+ }${flag}"
done
envs=("XLA_FLAGS=${xla_flags}")
# JAX reserves 75% of each GPU's memory up front by default. sr_jax keeps TensorFlow (its
# TensorBoard writer) off the GPUs, so JAX can take more, for larger batches or crops; the
# rest stays free for cuDNN/NCCL workspaces, which live outside JAX's pool.
envs+=("XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.90}")

cmd=("${PYTHON:-python}" -m sr_jax.main)
if [[ "$mode" == slurm ]]; then
  nodes=${nodes:-${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-}}}
  gpus=${gpus:-${SLURM_GPUS_PER_NODE:-}}
  gpus=${gpus##*:}  # SLURM_GPUS_PER_NODE may name the type, e.g. h100:8.
  [[ "$nodes" =~ ^[1-9][0-9]*$ ]] ||
    die_usage "slurm mode needs --nodes N (or an allocation's SLURM_JOB_NUM_NODES)"
  [[ "$gpus" =~ ^[1-9][0-9]*$ ]] ||
    die_usage "slurm mode needs --gpus_per_node G (or SLURM_GPUS_PER_NODE from sbatch)"
  # JAX's Slurm detection gives each process only the GPU numbered SLURM_LOCALID (0 with one
  # task per node) unless told otherwise: the task owns all of its node's GPUs.
  ids=0; for (( i = 1; i < gpus; i++ )); do ids+=",$i"; done
  envs+=("JAX_LOCAL_DEVICE_IDS=${ids}")
  srun=(srun --nodes="$nodes" --ntasks-per-node=1 --gpus-per-node="$gpus" --kill-on-bad-exit=1)
  # Since Slurm 22.05 srun no longer inherits sbatch's --cpus-per-task: pass it on, or each
  # task (and its data-loading threads) gets a single CPU.
  if [[ -n "${SLURM_CPUS_PER_TASK:-}" && -z "${SRUN_CPUS_PER_TASK:-}" ]]; then
    srun+=(--cpus-per-task="$SLURM_CPUS_PER_TASK")
  fi
  has_distributed=""
  for a in "${args[@]}"; do
    [[ "$a" != --distributed && "$a" != --distributed=* ]] || has_distributed=1
  done
  cmd=("${srun[@]}" ${srun_args[@]+"${srun_args[@]}"} "${cmd[@]}")
  [[ -n "$has_distributed" ]] || cmd+=(--distributed)
fi
cmd+=("${args[@]}")

if [[ -n "$dry_run" ]]; then
  line=""
  for e in "${envs[@]}"; do line+="${e%%=*}=$(quote "${e#*=}") "; done  # NAME='value' assigns.
  echo "${line}$(quote "${cmd[@]}")"
else
  for e in "${envs[@]}"; do export "$e"; done  # srun passes the environment to every task.
  exec "${cmd[@]}"
fi
