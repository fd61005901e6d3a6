"""TPU pod and SLURM launch scripts: `--dry-run` prints exactly the commands they would run."""

from __future__ import annotations

import os
import pathlib
import shlex
import subprocess

REPO = pathlib.Path(__file__).resolve().parent.parent
TRAIN_FLAGS = ["--workdir", "/gcs/bkt/run 1", "--config", "experiments/lm.py:size=small"]


def _dry_run(script: str, *args: str, **env: str) -> list[str]:
  clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TPU_", "ZONE"))}
  result = subprocess.run(["bash", f"launch/{script}", "--dry-run", *args], cwd=REPO,
                          env={**clean, **env}, capture_output=True, text=True, timeout=60,
                          check=False)
  assert result.returncode == 0, result.stderr
  return result.stdout.splitlines()


def _tpu(*args: str, **env: str) -> list[list[str]]:
  env = {"TPU_NAME": "pod1", "ZONE": "us-east5-a", "PROJECT": "proj", **env}
  return [shlex.split(line) for line in _dry_run("tpu_pod.sh", *args, **env)
          if not line.startswith("#")]


GCLOUD = ["gcloud", "compute", "tpus", "tpu-vm"]
WHERE = ["--zone=us-east5-a", "--project=proj"]


def test_tpu_create_and_delete():
  assert _tpu("create", SPOT="1", ACCELERATOR_TYPE="v5p-64") == [
      GCLOUD + ["create", "pod1", *WHERE, "--accelerator-type=v5p-64",
                "--version=tpu-ubuntu2204-base", "--spot"]]
  assert _tpu("delete") == [GCLOUD + ["delete", "pod1", *WHERE, "--quiet"]]


def test_tpu_setup_is_idempotent_and_installs_jax_for_tpu():
  archive, scp, ssh = _tpu("setup", BUCKET="bkt")
  assert archive[:2] == ["git", "-C"] and archive[3:5] == ["archive", "--format=tar.gz"]
  assert scp[:5] == GCLOUD + ["scp"] and scp[-1] == "--worker=all"
  assert ssh[:6] == GCLOUD + ["ssh", "pod1"] and "--worker=all" in ssh
  remote = ssh[-1].removeprefix("--command=")
  assert "[ -x ~/venv/bin/python ] || python3 -m venv ~/venv" in remote  # only once
  assert "pip install -q -e ~/trainlab 'jax[tpu]==0.10.2' -f " \
         "https://storage.googleapis.com/jax-releases/libtpu_releases.html" in remote
  assert "mountpoint -q /gcs/bkt || gcsfuse --implicit-dirs bkt /gcs/bkt" in remote


def test_tpu_run_starts_the_same_train_command_on_every_worker():
  (ssh,) = _tpu("run", "--", *TRAIN_FLAGS)
  assert ssh[:-1] == GCLOUD + ["ssh", "pod1", *WHERE, "--worker=all"]
  remote = ssh[-1].removeprefix("--command=")
  assert shlex.split(remote) == ["cd", "~/trainlab", "&&", "TRAINLAB_TPU_POD=1",
                                 "~/venv/bin/python", "-m", "launch.train", *TRAIN_FLAGS]


def test_tpu_babysit_recreates_checks_the_summary_and_reruns():
  commands = _tpu("babysit", "--", *TRAIN_FLAGS)
  verbs = [c[4] if c[:4] == GCLOUD else c[0] for c in commands]
  assert verbs == ["describe", "delete", "create", "git", "scp", "ssh", "ssh", "ssh"]
  check, run = commands[-2], commands[-1]
  assert "--worker=0" in check
  assert shlex.split(check[-1].removeprefix("--command=")) == ["test", "-f",
                                                               "/gcs/bkt/run 1/summary.json"]
  assert run == _tpu("run", "--", *TRAIN_FLAGS)[0]


def test_tpu_babysit_without_workdir_is_a_usage_error():
  result = subprocess.run(["bash", "launch/tpu_pod.sh", "--dry-run", "babysit"], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)
  assert result.returncode == 2 and "--workdir" in result.stderr


def test_slurm_runs_one_train_process_per_gpu_through_srun():
  (line,) = _dry_run("slurm.sbatch", *TRAIN_FLAGS, "--config.total_steps=5")
  assert shlex.split(line) == ["srun", "--kill-on-bad-exit=1", "--cpu-bind=none", "python", "-m",
                               "launch.train", *TRAIN_FLAGS, "--config.total_steps=5"]
  header = (REPO / "launch" / "slurm.sbatch").read_text()
  assert "#SBATCH --ntasks-per-node=8" in header and "#SBATCH --gpus-per-node=8" in header
  assert "#SBATCH --requeue" in header and "#SBATCH --signal=TERM@120" in header
