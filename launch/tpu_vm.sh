#!/usr/bin/env bash
# Runs an sr_jax job on a Cloud TPU VM (one host or a multi-host slice) with gcloud. Every
# worker runs the same `python -m sr_jax.main --distributed ...`; jax.distributed.initialize()
# detects the Cloud TPU slice and makes the workers one job. Keep data and the workdir on GCS
# (gs://): every worker must see the same files, and orbax writes the checkpoints there.
#
# Usage: launch/tpu_vm.sh [options] ACTION [-- SR_JAX_ARGS...]
#
# Actions:
#   create   create the TPU VM, or reuse it when `describe` finds one with that name
#   setup    copy this checkout (pyproject.toml, README.md, sr_jax/, configs/) to every worker
#            and install it there with 'jax[tpu]' in a Python 3.12 virtual environment (uv)
#   run      run `python -m sr_jax.main --distributed SR_JAX_ARGS` on every worker at once
#   all      create, setup, run (the VM is kept: delete it yourself when done)
#   delete   delete the TPU VM
# Options:
#   --name NAME              TPU VM name (default: $TPU_NAME)                        required
#   --zone ZONE              e.g. us-west4-a (default: $TPU_ZONE)                     required
#   --project PROJECT        default: gcloud's configured project
#   --accelerator_type TYPE  default v5litepod-16 (4 workers of 4 v5e chips)
#   --version VERSION        TPU software version; default from the type: v2-alpha-tpuv6e (v6e),
#                            v2-alpha-tpuv5 (v5p), v2-alpha-tpuv5-lite (v5e), else
#                            tpu-ubuntu2204-base
#   --spot                   create a Spot VM (cheaper; if preempted, delete, create and `run`
#                            again: sr_jax resumes from the latest checkpoint in the workdir)
#   --jax SPEC               the JAX that setup installs (default 'jax[tpu]'; pin with e.g.
#                            'jax[tpu]==0.10.2')
#   --env KEY=VALUE          environment for `run` on every worker (repeatable)
#   --dry_run                print every command instead of running it (same as DRY_RUN=1;
#                            any non-empty DRY_RUN, as in launch/local.sh)
#   -h, --help               print this help
# A multi-worker run refuses a --workdir that is not gs://.
#
# Example (the sr_jax arguments follow `--`, exactly as for `python -m sr_jax.main`):
#   launch/tpu_vm.sh --name sr --zone us-west4-a --accelerator_type v5litepod-16 all -- \
#       --config configs/colora_nafnet.py --workdir gs://BUCKET/runs/colora \
#       --config.data.source=tfds --config.data.tfds_name=div2k/bicubic_x4 \
#       --config.data.tfds_data_dir=gs://BUCKET/tfds
#   launch/tpu_vm.sh --name sr --zone us-west4-a delete
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON_VERSION=3.12        # sr_jax needs Python >= 3.11; the TPU images ship 3.10.
REMOTE_DIR=sr_jax          # On each worker, under $HOME: the checkout...
REMOTE_VENV=sr_jax_venv    # ...and the virtual environment it is installed in.
REMOTE_TARBALL=sr_jax.tar.gz

usage() { awk 'NR == 1 {next} /^#/ {sub(/^# ?/, ""); print; next} {exit}' "$0"; }
die_usage() { echo "tpu_vm.sh: $*" >&2; usage >&2; exit 2; }

dry_run=${DRY_RUN:-}
# quote: shell-quotes its arguments into one line (launch/common.sh).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# Prints a command, shell-quoted, in a dry run; runs it otherwise.
run() {
  if [[ -n "$dry_run" ]]; then quote "$@"; else "$@"; fi
}

# Workers (hosts) in a slice of accelerator type $1; 0 when the type is unknown.
workers_of() {
  local gen=${1%-*} n=${1##*-}
  [[ "$n" =~ ^[0-9]+$ ]] || { echo 0; return; }
  case "$gen" in
    v5litepod|v5e|v6e) if (( n <= 8 )); then echo 1; else echo $(( n / 4 )); fi ;;  # Chips.
    v2|v3|v4|v5p) echo $(( (n + 7) / 8 )) ;;  # TensorCores, 8 per host.
    *) echo 0 ;;
  esac
}

name=${TPU_NAME:-}; zone=${TPU_ZONE:-}; project=""; accelerator=v5litepod-16; version=""
spot=""; jax_spec='jax[tpu]'; action=""; envs=(); args=()
while [[ $# -gt 0 ]]; do
  [[ "$1" == --?* ]] && set -- "$(underscore_option "$1")" "${@:2}"
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry_run) dry_run=1; shift ;;
    --spot) spot=1; shift ;;
    --name|--zone|--project|--accelerator_type|--version|--jax|--env)
      [[ $# -ge 2 ]] || die_usage "$1 needs a value"
      case "$1" in
        --name) name=$2 ;; --zone) zone=$2 ;; --project) project=$2 ;;
        --accelerator_type) accelerator=$2 ;; --version) version=$2 ;; --jax) jax_spec=$2 ;;
        --env) [[ "$2" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die_usage "--env wants KEY=VALUE, not '$2'"
               envs+=("$2") ;;
      esac
      shift 2 ;;
    --name=*|--zone=*|--project=*|--accelerator_type=*|--version=*|--jax=*|--env=*)
      set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;
    --) shift; args=("$@"); break ;;
    create|setup|run|all|delete)
      [[ -z "$action" ]] || die_usage "one action at a time ('$action', then '$1')"
      action=$1; shift ;;
    *) die_usage "unknown argument '$1'" ;;
  esac
done
[[ -n "$action" ]] || die_usage "no action given"
[[ -n "$name" ]] || die_usage "--name (or TPU_NAME) is required"
[[ -n "$zone" ]] || die_usage "--zone (or TPU_ZONE) is required"
if [[ "$action" == run || "$action" == all ]]; then
  [[ ${#args[@]} -gt 0 ]] || die_usage "'$action' needs the sr_jax arguments after '--'"
elif [[ ${#args[@]} -gt 0 ]]; then
  die_usage "'$action' takes no sr_jax arguments"
fi
if [[ -z "$version" ]]; then
  case "$accelerator" in
    v6e-*) version=v2-alpha-tpuv6e ;;
    v5p-*) version=v2-alpha-tpuv5 ;;
    v5litepod-*|v5e-*) version=v2-alpha-tpuv5-lite ;;
    *) version=tpu-ubuntu2204-base ;;
  esac
fi

# Every worker must read and write the same checkpoints: on several workers, only GCS will do.
if [[ "$action" == run || "$action" == all ]]; then
  workdir=""
  for (( i = 0; i < ${#args[@]}; i++ )); do
    case "${args[i]}" in
      --workdir=*) workdir=${args[i]#--workdir=} ;;
      --workdir) workdir=${args[i+1]:-} ;;
    esac
  done
  workers=$(workers_of "$accelerator")
  if [[ "$workers" != 1 && "$workdir" != gs://* ]]; then
    if [[ "$workers" == 0 ]]; then slice="may have several workers (unknown type)"
    else slice="has ${workers} workers"; fi
    echo "tpu_vm.sh: refusing --workdir '${workdir:-(none given)}': a ${accelerator} slice" \
         "${slice}, and all of them must read and write the same checkpoints. Use a gs://" \
         "workdir, e.g. --workdir gs://BUCKET/runs/NAME." >&2
    exit 2
  fi
fi

gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$zone")
[[ -z "$project" ]] || where+=(--project="$project")

do_create() {
  if [[ -n "$dry_run" ]]; then
    run "${gcloud_tpu[@]}" describe "$name" "${where[@]}" --format='value(state)'
    echo "# create runs only when describe finds no VM named ${name}:"
  else
    local state
    if state=$("${gcloud_tpu[@]}" describe "$name" "${where[@]}" --format='value(state)' \
               2>/dev/null); then
      echo "tpu_vm.sh: reusing TPU VM ${name} (state ${state:-unknown})" >&2
      [[ "$state" == READY ]] || echo "tpu_vm.sh: warning: ${name} is ${state}, not READY;" \
        "a preempted Spot VM must be deleted and created again" >&2
      return
    fi
  fi
  local create=("${gcloud_tpu[@]}" create "$name" "${where[@]}" --accelerator-type="$accelerator"
                --version="$version")
  [[ -z "$spot" ]] || create+=(--spot)
  run "${create[@]}"
}

do_setup() {
  local tarball="${TMPDIR:-/tmp}/sr_jax_${name}.tar.gz"
  run tar -czf "$tarball" --exclude=__pycache__ -C "$REPO" pyproject.toml README.md sr_jax configs
  run "${gcloud_tpu[@]}" scp "$tarball" "${name}:${REMOTE_TARBALL}" "${where[@]}" --worker=all
  local uv='~/.local/bin/uv' py="~/${REMOTE_VENV}/bin/python"
  local setup="set -e; rm -rf ~/${REMOTE_DIR}; mkdir -p ~/${REMOTE_DIR}"
  setup+="; tar -xzf ~/${REMOTE_TARBALL} -C ~/${REMOTE_DIR}"
  # pip >= 23 on newer images wants --break-system-packages for a --user install.
  setup+="; python3 -m pip install -q --user -U uv"
  setup+=" || python3 -m pip install -q --user -U --break-system-packages uv"
  setup+="; [ -x ${py} ] || ${uv} venv --python ${PYTHON_VERSION} ~/${REMOTE_VENV}"
  setup+="; ${uv} pip install --python ${py} -U $(quote "$jax_spec") -e ~/${REMOTE_DIR}"
  run "${gcloud_tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command "$setup"
}

do_run() {
  local cmd=(--distributed) a
  for a in "${args[@]}"; do
    [[ "$a" != --distributed && "$a" != --distributed=* ]] || cmd=()  # Already there.
  done
  local remote="cd ~/${REMOTE_DIR} && "
  [[ ${#envs[@]} -eq 0 ]] || remote+="env $(quote "${envs[@]}") "
  remote+="~/${REMOTE_VENV}/bin/python -m sr_jax.main $(quote ${cmd[@]+"${cmd[@]}"} "${args[@]}")"
  run "${gcloud_tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command "$remote"
}

do_delete() { run "${gcloud_tpu[@]}" delete "$name" "${where[@]}" --quiet; }

case "$action" in
  create) do_create ;;
  setup) do_setup ;;
  run) do_run ;;
  all) do_create; do_setup; do_run ;;
  delete) do_delete ;;
esac
