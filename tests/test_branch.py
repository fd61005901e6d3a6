"""`python -m launch.branch` end to end: a decay branched off a stable WSD run's checkpoint.

A WSD run (16 steps, 2 warmup, 1-sqrt decay over the last 4, checkpoints kept every 4 steps)
is branched at step 8 with a 4-step decay. Because batches are a pure function of (seed,
step), the branch must be bit-identical to a WSD run of 12 steps trained from scratch, must
start from the stable run's state at step 8 (identical loss, gradient and update at step 9),
and must follow the WSD decay from step 8 (expected values in NumPy float64 below).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import signal
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from experiments import lm
from trainlab.errors import UsageError
from trainlab.training import loop

REPO = pathlib.Path(__file__).resolve().parent.parent
PEAK, WARMUP, AT, DECAY = 3e-3, 2, 8, 4


def _wsd_config(total_steps: int, keep_every: int = 0):
  config = lm.get_config("size=test")
  config.total_steps = total_steps
  config.optimizer.learning_rate = PEAK
  config.schedule = ml_collections.ConfigDict(dict(
      name="wsd", warmup_steps=WARMUP, decay_steps=DECAY,
      decay_shape="1-sqrt", init_value=0.0, end_value=0.0))
  config.eval.every_steps, config.eval.num_batches = 0, 2
  config.log.every_steps = 1
  config.checkpoint.every_steps, config.checkpoint.keep_every = 0, keep_every
  return config


def _expected_lr(count: int) -> float:
  """Hägele et al.'s WSD with 1-sqrt cooldown, total AT + DECAY, in float64."""
  start = AT  # = total - decay of the branch
  if count < WARMUP:
    return PEAK * count / WARMUP
  if count < start:
    return PEAK
  return PEAK * (1.0 - math.sqrt(min(count - start, DECAY) / DECAY))


def _records(workdir) -> list[dict]:
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(name="stable", scope="module")
def stable_fixture(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("stable")
  summary = loop.train(_wsd_config(16, keep_every=4), workdir, progress=False)
  return workdir, summary


def test_branch_resumes_stable_state_and_decays(stable, run_module, tmp_path):
  """The branch is stopped by SIGTERM once its first step has run (one line, exit 143), then
  the same command finishes it."""
  stable_dir, _ = stable
  branch_dir = tmp_path / "branch"
  args = ("--from", str(stable_dir), "--at", str(AT), "--decay-steps", str(DECAY),
          "--workdir", str(branch_dir))
  process = subprocess.Popen([sys.executable, "-m", "launch.branch", *args], cwd=REPO,
                             env={**os.environ, "JAX_PLATFORMS": "cpu"}, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  seen = []
  for line in process.stderr:
    seen.append(line)
    if line.startswith("compiled the train step"):
      process.send_signal(signal.SIGTERM)
      break
  stdout, stderr = process.communicate(timeout=1800)  # only against a hang
  stderr = "".join(seen) + stderr
  assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
  stops = [l for l in stderr.splitlines() if l.startswith("stopped:")]
  assert len(stops) == 1 and "rerun the same command to continue" in stops[0], stderr[-2000:]
  assert "Traceback" not in stderr and not stdout.strip()
  result = run_module("launch.branch", *args)
  assert result.returncode == 0, result.stderr[-3000:]

  records = _records(branch_dir)
  assert [r["step"] for r in records] == list(range(AT + 1, AT + DECAY + 1))
  summary = json.loads((branch_dir / "summary.json").read_text())
  assert summary["steps"] == AT + DECAY
  assert math.isfinite(summary["final_eval_loss"]) and math.isfinite(summary["final_train_loss"])

  # The metrics of step AT + 1 are a function of the state at AT: same as the stable run's.
  first = records[0]
  stable_first = next(r for r in _records(stable_dir) if r["step"] == AT + 1)
  for key in ("train_loss", "grad_norm", "update_norm", "lr"):
    np.testing.assert_allclose(first[key], stable_first[key], rtol=1e-6, err_msg=key)

  # Logged lr at step k is the one used by update k - 1 (the schedule's count).
  got = np.array([r["lr"] for r in records])
  want = np.array([_expected_lr(r["step"] - 1) for r in records])
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert got[0] == pytest.approx(PEAK) and got[-1] < PEAK / 2

  # Branching is exactly training the shorter WSD run from scratch.
  scratch = loop.train(_wsd_config(AT + DECAY), tmp_path / "scratch", progress=False)
  assert summary["params_sha256"] == scratch["params_sha256"]


def test_branch_at_unsaved_step_is_a_usage_error(stable, run_module, tmp_path):
  stable_dir, _ = stable
  result = run_module("launch.branch", "--from", str(stable_dir), "--at", "6",
                      "--decay-steps", str(DECAY), "--workdir", str(tmp_path / "b"))
  assert result.returncode == 2, result.stderr[-2000:]
  assert "step 6" in result.stderr and "Traceback" not in result.stderr
  assert not (tmp_path / "b").exists()  # a failed start leaves no empty workdir


def test_branch_overrides_are_checked_like_every_config_flag(stable):
  from launch import branch
  stable_dir, _ = stable
  argv = ["launch.branch", "--from", str(stable_dir), "--at", str(AT), "--decay-steps",
          str(DECAY), "--config.total_step=3"]
  with pytest.raises(UsageError) as raised:
    branch.main(argv)
  message = str(raised.value)
  assert message == ("--config.total_step is not a key of the config (did you mean "
                     "total_steps?); list the keys with --print_config"), message
  with pytest.raises(UsageError, match="optimizer.learning_rate"):
    branch.main([*argv[:-1], "--config.optimizer.learning_rate=abc"])
