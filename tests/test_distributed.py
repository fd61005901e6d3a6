"""Multi-host start-up from the environment, and a two-process data-parallel run on 127.0.0.1."""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from trainlab.errors import UsageError
from experiments import lm
from trainlab.training.run import build_run
from trainlab.training.trainer import Trainer
from trainlab.training import checkpoint, distributed, loop

REPO = pathlib.Path(__file__).resolve().parent.parent
STEPS = 6


@pytest.mark.parametrize("env, kind", [
    ({}, "none"),
    ({"SLURM_NTASKS": "1", "SLURM_STEP_ID": "0"}, "none"),
    ({"SLURM_NTASKS": "16", "SLURM_JOB_ID": "7"}, "none"),  # sbatch shell, not inside srun
    ({"SLURM_NTASKS": "16", "SLURM_STEP_ID": "0"}, "slurm"),
    ({"TPU_WORKER_HOSTNAMES": "10.0.0.2"}, "none"),
    ({"TPU_WORKER_HOSTNAMES": "10.0.0.2,10.0.0.3"}, "tpu_pod"),
    ({"TRAINLAB_TPU_POD": "1"}, "tpu_pod"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1",
      "SLURM_NTASKS": "16", "SLURM_STEP_ID": "0"}, "explicit"),
    ({"TRAINLAB_DISTRIBUTED": "0", "TRAINLAB_TPU_POD": "1"}, "none"),
])
def test_detect_reads_the_environment(env, kind):
  assert distributed.detect(env) == kind


def test_partial_explicit_settings_are_a_usage_error():
  with pytest.raises(UsageError, match="JAX_PROCESS_ID"):
    distributed.detect({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2"})
  with pytest.raises(UsageError, match="must be in"):
    distributed.maybe_initialize({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2",
                                  "JAX_PROCESS_ID": "2"})


def test_single_host_is_a_no_op():
  assert distributed.maybe_initialize({}) == "none"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _two_processes(workdir: pathlib.Path) -> list[subprocess.CompletedProcess]:
  port, processes = _free_port(), []
  for pid in range(2):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
           "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(pid)}
    processes.append(subprocess.Popen(
        [sys.executable, "-m", "launch.train", "--config", "experiments/lm.py:size=test",
         f"--config.total_steps={STEPS}", "--config.log.every_steps=1",
         "--config.eval.every_steps=0", "--config.checkpoint.every_steps=2",
         "--workdir", str(workdir)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  results = []
  for p in processes:
    out, err = p.communicate(timeout=1800)  # only against a hang
    results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
  return results


def _summary(result: subprocess.CompletedProcess) -> dict:
  return json.loads(result.stdout[result.stdout.index("{\n"):])  # after Gloo's own lines


def test_two_processes_train_like_one_then_save_and_restore(tmp_path):
  first = _two_processes(tmp_path / "two")
  assert [r.returncode for r in first] == [0, 0], first[0].stderr[-2000:] + first[1].stderr[-2000:]
  summaries = [_summary(first[0])]
  assert '"params_sha256"' not in first[1].stdout  # only process 0 prints the summary
  assert "training to step" in first[0].stderr and "training to step" not in first[1].stderr
  assert "step 6/6" in first[0].stderr and "step 6/6" not in first[1].stderr

  config = lm.get_config("size=test")
  config.total_steps, config.log.every_steps, config.eval.every_steps = STEPS, 1, 0
  loop.train(config, tmp_path / "one", progress=False)
  losses = [[json.loads(l)["train_loss"] for l in (tmp_path / n / "metrics.jsonl").read_text()
             .splitlines()] for n in ("two", "one")]
  assert len(losses[0]) == STEPS
  np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)

  # Both processes wrote one checkpoint; this single process restores it onto its device.
  state = checkpoint.Checkpoints(tmp_path / "two", read_only=True).restore(
      STEPS, Trainer(build_run(config)).abstract_state)
  from trainlab.training import metrics
  assert metrics.params_sha256(state.params) == summaries[0]["params_sha256"]

  again = _two_processes(tmp_path / "two")  # the rerun restores on two processes
  assert [r.returncode for r in again] == [0, 0], again[0].stderr[-2000:]
  assert f"at step {STEPS}" in again[0].stderr
  assert _summary(again[0])["params_sha256"] == summaries[0]["params_sha256"]


def test_a_second_two_process_job_on_a_locked_workdir_fails_cleanly(tmp_path):
  """Process 0 finds the lock held and every process exits 2 with one line, writing nothing."""
  from test_workdir import HOLDER
  path = tmp_path / "run"
  holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], cwd=REPO,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"}, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == "locked"
  try:
    results = _two_processes(path)
  finally:
    holder.stdin.close()
    holder.wait(timeout=1800)
  assert [r.returncode for r in results] == [2, 2], results[0].stderr[-2000:]
  for result in results:
    errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and f"pid {holder.pid}" in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
  assert sorted(p.name for p in path.iterdir()) == ["lock"]
