#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: one process per host, all started with --worker=all.
#
#   launch/tpu_pod.sh check   -- --config FILE[:ARG] [launch.train flags]  # local fit check
#   launch/tpu_pod.sh create  [--check -- --config FILE[:ARG] [launch.train flags]]
#   launch/tpu_pod.sh setup                          # idempotent: code + venv + jax[tpu]
#   launch/tpu_pod.sh run     -- --workdir DIR [launch.train flags]
#   launch/tpu_pod.sh babysit [--check] -- --workdir DIR [launch.train flags]
#   launch/tpu_pod.sh delete
#
# Flags: the script's flags (--dry-run, --check, --help) go anywhere before `--`; everything
# after `--` goes to `python -m launch.train` unchanged, except --dry-run, which is the script's
# wherever it is (launch.train has no such flag). An unknown flag or subcommand, or train flags
# for a subcommand that takes none, is one line on stderr and exit 2, before anything runs.
# --dry-run prints every command (quoted, pasteable) and runs none; babysit prints one pass.
#
# Settings (environment): TPU_NAME (trainlab), ZONE (us-central2-b), ACCELERATOR_TYPE (v4-32),
# RUNTIME_VERSION (tpu-ubuntu2204-base), PROJECT (gcloud's default), SPOT=1 for a preemptible
# slice, JAX_VERSION (0.10.2), BUCKET (a GCS bucket that `setup` mounts with gcsfuse at
# /gcs/$BUCKET; put DIR there so checkpoints outlive a preempted VM), PYTHON (python: runs
# `check` on this machine), TOPOLOGY, CHECK=1 (as --check), BABYSIT_SLEEP (60 s),
# BABYSIT_MAX_SAME (2).
#
# `check` compiles the train step for the slice on this machine, no TPU needed:
# `python -m launch.compile TRAIN FLAGS --topology T` (without --workdir: the pod's workdir is
# usually the bucket mount; the report goes to launch.compile's default workdir here). T is
# TOPOLOGY if set, else the slice's default layout from ACCELERATOR_TYPE: v4-N and v5p-N have
# N/2 chips in 3D (v4-8 -> v4:2x2x1, v4-32 -> v4:2x2x4, v5p-128 -> v5p:4x4x4), v5litepod-N
# (or v5e-N) and v6e-N have N chips in 2D (v5litepod-16 -> v5e:4x4, v6e-256 -> v6e:16x16): from
# the smallest layout, each doubling doubles the shortest side (the last of equal ones). Other
# types and chip counts that are not a power of two need TOPOLOGY. `create --check` (or CHECK=1)
# runs the check first and creates nothing unless it passes (launch.compile exits 2: no fit).
#
# `setup` ships the committed code only (`git archive HEAD`) and warns when the working tree
# has changes that are therefore not shipped. `run` exports TRAINLAB_TPU_POD=1, so
# `training/distributed.py` calls `jax.distributed.initialize()` on every host.
#
# `babysit` loops until DIR/summary.json exists: when the slice is gone or not READY it deletes,
# recreates and sets it up again, then reruns the same command, which resumes from the newest
# checkpoint in DIR. It retries preemptions forever: a slice that is not READY after a failure,
# exit 255 (ssh lost), 143 or 130 (the run saved its state on SIGTERM/SIGINT), and a failed
# create (no capacity). It gives up, with the run's exit code and one line, on a deterministic
# failure: exit 2 (bad input) at once; the same other exit code (or a failed setup)
# BABYSIT_MAX_SAME times in a row; exit 0 without DIR/summary.json. It sleeps BABYSIT_SLEEP
# seconds before every retry. With --check it runs the check once, before its first create.

set -euo pipefail

TPU_NAME="${TPU_NAME:-trainlab}"
ZONE="${ZONE:-us-central2-b}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-32}"
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
JAX_VERSION="${JAX_VERSION:-0.10.2}"
PYTHON="${PYTHON:-python}"
BABYSIT_SLEEP="${BABYSIT_SLEEP:-60}"
BABYSIT_MAX_SAME="${BABYSIT_MAX_SAME:-2}"
REMOTE_DIR="trainlab"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
USAGE="usage: launch/tpu_pod.sh [--dry-run] [--check] check|create|setup|run|babysit|delete"
USAGE+=" [-- TRAIN FLAGS] (--help for more)"

die() { echo "tpu_pod.sh: $1" >&2; exit "${2:-2}"; }
note() { echo "tpu_pod.sh $action: $1" >&2; }

dry_run=0
check_flag=0
action=""
train_args=()
while (( $# )); do
  case "$1" in
    --)
      shift
      for arg in "$@"; do
        if [[ "$arg" == "--dry-run" ]]; then dry_run=1; else train_args+=("$arg"); fi
      done
      break
      ;;
    --dry-run) dry_run=1 ;;
    --check) check_flag=1 ;;
    -h|--help) sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;
    -*) die "unknown flag $1 (flags for launch.train go after --); $USAGE" ;;
    check|create|setup|run|babysit|delete)
      [[ -z "$action" ]] || die "two subcommands, $action and $1; $USAGE"
      action="$1"
      ;;
    *) die "unknown subcommand $1; $USAGE" ;;
  esac
  shift
done
[[ -n "$action" ]] || die "no subcommand; $USAGE"
[[ "${CHECK:-0}" =~ ^[01]$ ]] || die "CHECK=$CHECK: use 0 or 1"
[[ "$BABYSIT_SLEEP" =~ ^[0-9]+$ ]] || die "BABYSIT_SLEEP=$BABYSIT_SLEEP: use whole seconds"
[[ "$BABYSIT_MAX_SAME" =~ ^[1-9][0-9]*$ ]] || die "BABYSIT_MAX_SAME=$BABYSIT_MAX_SAME: use 1 or more"
want_check=0
case "$action" in
  check) want_check=1 ;;
  create|babysit) (( check_flag )) || [[ "${CHECK:-0}" == 1 ]] && want_check=1 ;;
  *) (( ! check_flag )) || die "--check applies to create and babysit only" ;;
esac
case "$action" in
  setup|delete) (( ${#train_args[@]} == 0 )) || die "$action takes no launch.train flags" ;;
  create) (( ${#train_args[@]} == 0 || want_check )) || die "create takes launch.train flags only with --check" ;;
esac
if (( want_check && ${#train_args[@]} == 0 )); then
  die "the check needs the launch.train flags after -- (the config to compile)"
fi

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

# The default layout of ACCELERATOR_TYPE as a launch.compile topology (see the header).
default_topology() {
  local type="$ACCELERATOR_TYPE" gen per_chip dims count chips n i shortest
  case "$type" in
    v4-*) gen=v4 per_chip=2 dims=(2 2 1) ;;
    v5p-*) gen=v5p per_chip=2 dims=(2 2 1) ;;
    v5litepod-*|v5e-*) gen=v5e per_chip=1 dims=(1 1) ;;
    v6e-*) gen=v6e per_chip=1 dims=(1 1) ;;
    *) return 1 ;;
  esac
  count="${type##*-}"
  [[ "$count" =~ ^[1-9][0-9]*$ ]] || return 1
  (( count % per_chip == 0 )) || return 1
  chips=$(( count / per_chip ))
  n=1
  for i in "${dims[@]}"; do n=$(( n * i )); done
  while (( n < chips )); do
    shortest=0
    for i in "${!dims[@]}"; do (( dims[i] <= dims[shortest] )) && shortest=$i; done
    dims[shortest]=$(( dims[shortest] * 2 ))
    n=$(( n * 2 ))
  done
  (( n == chips )) || return 1
  local IFS=x
  echo "$gen:${dims[*]}"
}

# The train flags without --workdir (it names the pod's directory, not one on this machine).
compile_args() {
  local i=0
  while (( i < ${#train_args[@]} )); do
    case "${train_args[$i]}" in
      --workdir) i=$(( i + 2 )); continue ;;
      --workdir=*) ;;
      *) printf '%s\0' "${train_args[$i]}" ;;
    esac
    i=$(( i + 1 ))
  done
}

check() {
  local topology args=()
  if [[ -n "${TOPOLOGY:-}" ]]; then
    topology="$TOPOLOGY"
  else
    topology="$(default_topology)" || die "no default topology for ACCELERATOR_TYPE=$ACCELERATOR_TYPE; set TOPOLOGY (e.g. v4:2x2x4, v5e:4x4)"
  fi
  while IFS= read -r -d '' arg; do args+=("$arg"); done < <(compile_args)
  local cmd=("$PYTHON" -m launch.compile "${args[@]}" --topology "$topology")
  if (( dry_run )); then
    echo "cd $(quote "$REPO_ROOT") && $(quote "${cmd[@]}")"
    return 0
  fi
  note "compiling the train step for $topology ($ACCELERATOR_TYPE) on this machine"
  local code=0
  (cd "$REPO_ROOT" && "${cmd[@]}") || code=$?
  if (( code == 2 )); then
    die "the config does not fit $topology or is invalid (launch.compile exited 2); nothing created"
  elif (( code )); then
    die "launch.compile failed with exit $code; nothing created" "$code"
  fi
}

create() {
  local extra=()
  [[ "${SPOT:-0}" == "1" ]] && extra+=(--spot)
  do_cmd "${gcloud_tpu[@]}" create "$TPU_NAME" "${where[@]}" \
    --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" "${extra[@]}"
}

setup() {
  local tarball="${TMPDIR:-/tmp}/${TPU_NAME}-trainlab.tar.gz"
  if (( dry_run )); then
    echo "# ships the committed code only (git archive HEAD): uncommitted changes are not shipped"
  else
    local head changes
    head="$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null)" \
      || die "setup ships git archive HEAD, but $REPO_ROOT is not a git checkout with a commit"
    note "shipping commit $head (git archive HEAD: committed files only)"
    changes="$(git -C "$REPO_ROOT" status --porcelain | wc -l)"
    if (( changes )); then
      note "warning: $changes uncommitted changes (see git status) will NOT be shipped; commit them to run them on the pod"
    fi
  fi
  # `|| return`: babysit calls setup in a `||` list, where `set -e` does not stop at a failure.
  do_cmd git -C "$REPO_ROOT" archive --format=tar.gz -o "$tarball" HEAD || return
  do_cmd "${gcloud_tpu[@]}" scp "$tarball" "$TPU_NAME:trainlab.tar.gz" "${where[@]}" --worker=all \
    || return
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

slice_state() {
  "${gcloud_tpu[@]}" describe "$TPU_NAME" "${where[@]}" --format='value(state)' 2>/dev/null \
    || echo MISSING
}

# Exit status of `test -f DIR/summary.json` on worker 0: 0 there, 1 not there, 255 no ssh.
summary_test() {
  do_cmd "${gcloud_tpu[@]}" ssh "$TPU_NAME" "${where[@]}" --worker=0 \
    --command="test -f $(quote "$1")/summary.json"
}

babysit() {
  local workdir
  workdir="$(workdir_arg)"
  [[ -n "$workdir" ]] || die "babysit needs --workdir DIR among the train flags (the rerun resumes there)"
  (( want_check )) && check
  if (( dry_run )); then
    echo "# repeat until $(quote "$workdir")/summary.json exists:"
    do_cmd "${gcloud_tpu[@]}" describe "$TPU_NAME" "${where[@]}" --format='value(state)'
    echo "# if the state is not READY (preempted, deleted, failed):"
    delete; create; setup
    summary_test "$workdir"
    run
    echo "# retry after ${BABYSIT_SLEEP}s on 255, 143, 130 or a slice that is not READY;" \
      "stop on exit 2 or the same exit code $BABYSIT_MAX_SAME times in a row"
    return 0
  fi
  trap 'note "interrupted; $TPU_NAME is left as it is"; exit 130' INT
  trap 'note "terminated; $TPU_NAME is left as it is"; exit 143' TERM
  local state failure="" last="" repeats=0 needs_setup=0 code
  while true; do
    state="$(slice_state)"
    if [[ -n "$failure" ]]; then  # judged once the slice's state is known
      if [[ "$state" != READY ]]; then
        note "$failure; $TPU_NAME is ${state:-MISSING} (preempted): retrying"
        last="" repeats=0
      elif [[ "$failure" == *" 255" || "$failure" == *" 143" || "$failure" == *" 130" ]]; then
        note "$failure (ssh lost or the run saved on a signal): retrying"
        last="" repeats=0
      else
        if [[ "$failure" == "$last" ]]; then repeats=$(( repeats + 1 )); else repeats=1; fi
        last="$failure"
        (( repeats < BABYSIT_MAX_SAME )) || die "babysit: $failure, $repeats times in a row; giving up (the slice is left as it is)" "${failure##* }"
        note "$failure; retrying ($repeats of $BABYSIT_MAX_SAME in a row)"
      fi
      failure=""
    fi
    if [[ "$state" != READY ]]; then
      note "$TPU_NAME is ${state:-MISSING}; recreating"
      [[ "$state" != MISSING ]] && { delete || true; }
      code=0
      create || code=$?
      if (( code )); then
        note "create exited with $code (no capacity?); retrying in ${BABYSIT_SLEEP}s"
        sleep "$BABYSIT_SLEEP"
        continue
      fi
      needs_setup=1
    fi
    if (( needs_setup )); then
      code=0
      setup || code=$?
      if (( code )); then
        failure="setup exited with $code"
        sleep "$BABYSIT_SLEEP"
        continue
      fi
      needs_setup=0
    fi
    code=0
    summary_test "$workdir" || code=$?
    if (( code == 0 )); then
      note "$workdir/summary.json exists; done"
      return 0
    fi
    code=0
    run || code=$?
    if (( code == 0 )); then
      code=0
      summary_test "$workdir" || code=$?
      (( code == 0 )) && { note "$workdir/summary.json exists; done"; return 0; }
      (( code == 255 )) && { failure="the summary check exited with 255"; sleep "$BABYSIT_SLEEP"; continue; }
      die "babysit: the run exited 0 but $workdir/summary.json does not exist (is --workdir the run's folder?); giving up"
    fi
    (( code == 2 )) && die "babysit: the run exited with 2 (bad input: see its error above); giving up" 2
    failure="the run exited with $code"
    sleep "$BABYSIT_SLEEP"
  done
}

case "$action" in
  create) (( want_check )) && check; create ;;
  *) "$action" ;;
esac
