#!/usr/bin/env bash
# Runs an sr_jax command on this host with N simulated CPU devices, to try the sharded code
# paths (the 'data' mesh axis, per-device batches) without accelerators.
#
# Usage: launch/local.sh N python -m sr_jax.main --config configs/lora_nafnet.py:demo --workdir W
#        DRY_RUN=1 launch/local.sh 8 ...   # print the command instead of running it
#
# At scale: launch/gpu.sh (a GPU host, or many through Slurm) and launch/tpu_vm.sh (Cloud TPU VMs).
set -euo pipefail
if [[ $# -lt 2 || ! "$1" =~ ^[0-9]+$ ]]; then
  sed -n '2,8p' "$0"; exit 2
fi
devices=$1; shift
export XLA_FLAGS="--xla_force_host_platform_device_count=${devices} ${XLA_FLAGS:-}"
if [[ -n "${DRY_RUN:-}" ]]; then
  echo "XLA_FLAGS=\"${XLA_FLAGS}\" $*"
else
  exec "$@"
fi
