#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: one process per host, all started with --worker=all.
#
#   launch/tpu_pod.sh [--dry-run] create
#   launch/tpu_pod.sh [--dry-run] setup                 # idempotent: code + venv + jax[tpu]
#   launch/tpu_pod.sh [--dry-run] run -- --workdir DIR [launch.train flags]
#   launch/tpu_pod.sh [--dry-run] babysit -- --workdir DIR [launch.train flags]
#   launch/tpu_pod.sh [--dry-run] delete
#
# Settings (environment): TPU_NAME (trainlab), ZONE (us-central2-b), ACCELERATOR_TYPE
# (v4-32), RUNTIME_VERSION (tpu-ubuntu2204-base), PROJECT (gcloud's default), SPOT=1 for a
# preemptible slice, JAX_VERSION (0.10.2), BUCKET (a GCS bucket that `setup` mounts with
# gcsfuse at /gcs/$BUCKET; put DIR there so checkpoints outlive a preempted VM).
#
# `run` exports TRAINLAB_TPU_POD=1, so `training/distributed.py` calls
# `jax.distributed.initialize()` on every host. `babysit` loops until DIR/summary.json exists:
# when the slice is gone or not READY it deletes, recreates and sets it up again, then reruns
# the same command, which resumes from the newest checkpoint in DIR. `--dry-run` prints every
# command instead of running it (babysit prints one pass of its loop).
set -euo pipefail

TPU_NAME="${TPU_NAME:-trainlab}"
ZONE="${ZONE:-us-central2-b}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-32}"
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
JAX_VERSION="${JAX_VERSION:-0.10.2}"
REMOTE_DIR="trainlab"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then
  dry_run=1
  shift
fi
action="${1:-}"
shift || true
[[ "${1:-}" == "--" ]] && shift
train_args=("$@")

gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$ZONE")
[[ -n "${PROJECT:-}" ]] && where+=(--project="$PROJECT")

# Shell-quotes each argument, with single quotes only where needed, joined by spaces.
quote() {
  local out=() a
  for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_./:=@%+,~-]+$ ]]; then out+=("$a"); else out+=("'${a//\'/\'\\\'\'}'"); fi
  done
  echo "${out[*]}"
}

# Prints the command (quoted so it can be pasted) or runs it.
do_cmd() {
  if (( dry_run )); then
    quote "$@"
  else
    "$@"
  fi
}

on_all() { do_cmd "${gcloud_tpu[@]}" ssh "$TPU_NAME" "${where[@]}" --worker=all --command="$1"; }

create() {
  local extra=()
  [[ "${SPOT:-0}" == "1" ]] && extra+=(--spot)
  do_cmd "${gcloud_tpu[@]}" create "$TPU_NAME" "${where[@]}" \
    --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" "${extra[@]}"
}

setup() {
  local tarball="/tmp/${TPU_NAME}-trainlab.tar.gz"
  do_cmd git -C "$REPO_ROOT" archive --format=tar.gz -o "$tarball" HEAD
  do_cmd "${gcloud_tpu[@]}" scp "$tarball" "$TPU_NAME:trainlab.tar.gz" "${where[@]}" --worker=all
  local remote="mkdir -p ~/$REMOTE_DIR && tar -xzf ~/trainlab.tar.gz -C ~/$REMOTE_DIR"
  remote+=" && { [ -x ~/venv/bin/python ] || python3 -m venv ~/venv; }"
  remote+=" && ~/venv/bin/pip install -q -e ~/$REMOTE_DIR 'jax[tpu]==$JAX_VERSION'"
  remote+=" -f https://storage.googleapis.com/jax-releases/libtpu_releases.html"
  if [[ -n "${BUCKET:-}" ]]; then
    remote+=" && sudo mkdir -p /gcs/$BUCKET && sudo chown \$USER /gcs/$BUCKET"
    remote+=" && { mountpoint -q /gcs/$BUCKET || gcsfuse --implicit-dirs $BUCKET /gcs/$BUCKET; }"
  fi
  on_all "$remote"
}

train_command() {
  local quoted
  quoted="$(quote "${train_args[@]}")"
  echo "cd ~/$REMOTE_DIR && TRAINLAB_TPU_POD=1 ~/venv/bin/python -m launch.train $quoted"
}

run() { on_all "$(train_command)"; }

delete() { do_cmd "${gcloud_tpu[@]}" delete "$TPU_NAME" "${where[@]}" --quiet; }

workdir_arg() {
  local i
  for ((i = 0; i < ${#train_args[@]}; i++)); do
    case "${train_args[$i]}" in
      --workdir=*) echo "${train_args[$i]#--workdir=}"; return ;;
      --workdir) echo "${train_args[$((i + 1))]:-}"; return ;;
    esac
  done
}

babysit() {
  local workdir state
  workdir="$(workdir_arg)"
  if [[ -z "$workdir" ]]; then
    echo "error: babysit needs --workdir DIR among the train flags (the rerun resumes there)" >&2
    exit 2
  fi
  while true; do
    if (( dry_run )); then
      echo "# repeat until summary.json exists:"
      do_cmd "${gcloud_tpu[@]}" describe "$TPU_NAME" "${where[@]}" --format='value(state)'
      echo "# if the state is not READY (preempted, deleted, failed):"
      delete; create; setup
      do_cmd "${gcloud_tpu[@]}" ssh "$TPU_NAME" "${where[@]}" --worker=0 \
        --command="test -f $(quote "$workdir")/summary.json"
      run
      return
    fi
    state="$("${gcloud_tpu[@]}" describe "$TPU_NAME" "${where[@]}" --format='value(state)' \
      2>/dev/null || echo MISSING)"
    if [[ "$state" != "READY" ]]; then
      echo "babysit: $TPU_NAME is ${state:-MISSING}; recreating" >&2
      [[ "$state" != "MISSING" ]] && delete
      create && setup || { sleep 60; continue; }
    fi
    if "${gcloud_tpu[@]}" ssh "$TPU_NAME" "${where[@]}" --worker=0 \
        --command="test -f $(quote "$workdir")/summary.json"; then
      echo "babysit: $workdir/summary.json exists; done" >&2
      return 0
    fi
    run || echo "babysit: run exited with $?; checking the slice and rerunning" >&2
    sleep 10
  done
}

case "$action" in
  create|setup|run|babysit|delete) "$action" ;;
  *)
    echo "usage: launch/tpu_pod.sh [--dry-run] create|setup|run|babysit|delete [-- TRAIN FLAGS]" >&2
    exit 2
    ;;
esac
