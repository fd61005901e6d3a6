"""Checkpoints: exact resume after SIGKILL/SIGTERM, corrupt fallback, mismatch errors, branching."""

from __future__ import annotations

import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from trainlab.errors import UsageError
from experiments import lm
from trainlab.training.run import build_run
from trainlab.training.trainer import Trainer
from trainlab.training import checkpoint, loop, resume
from trainlab.training.branch import branch_config

# Orbax leaves read coroutines of a failed (corrupt) restore for the garbage collector.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
REPO = pathlib.Path(__file__).resolve().parent.parent
STEPS = 12
FLAGS = ("--config", "experiments/lm.py:size=test", f"--config.total_steps={STEPS}",
         "--config.checkpoint.every_steps=2", "--config.log.every_steps=1",
         "--config.eval.every_steps=0")


def _config(**overrides):
  config = lm.get_config("size=test")
  config.total_steps = STEPS
  config.checkpoint.every_steps = 2
  config.log.every_steps = 1
  config.eval.every_steps = 0
  for key, value in overrides.items():
    section, _, leaf = key.rpartition(".")
    (config[section] if section else config)[leaf] = value
  return config


@pytest.fixture(scope="module", name="reference")
def reference_fixture(tmp_path_factory):
  """An uninterrupted run of the same config, in this process."""
  workdir = tmp_path_factory.mktemp("reference")
  return loop.train(_config(), workdir, progress=False), workdir


def _start(workdir: pathlib.Path) -> subprocess.Popen:
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return subprocess.Popen([sys.executable, "-m", "launch.train", *FLAGS, "--workdir",
                           str(workdir)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _logged_steps(workdir: pathlib.Path) -> list[int]:
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return []
  steps = []
  for line in path.read_text().splitlines():
    try:
      steps.append(json.loads(line)["step"])
    except json.JSONDecodeError:
      pass
  return steps


def _saving(workdir: pathlib.Path) -> bool:
  return any("tmp" in p.name for p in (workdir / "checkpoints").glob("*"))


def _run_until(workdir: pathlib.Path, step: int, *, during_save: bool,
               sig: int = signal.SIGKILL) -> subprocess.CompletedProcess:
  """Starts the run and sends `sig` once `step` is logged (then, if asked, once a save is
  in flight, i.e. Orbax's temporary folder exists)."""
  process = _start(workdir)
  deadline = time.time() + 240
  while time.time() < deadline and process.poll() is None:
    logged = _logged_steps(workdir)
    if logged and logged[-1] >= step and (not during_save or _saving(workdir)):
      process.send_signal(sig)
      break
    time.sleep(0.002)
  stdout, stderr = process.communicate(timeout=240)
  return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _finish(workdir: pathlib.Path) -> dict:
  process = _start(workdir)
  stdout, stderr = process.communicate(timeout=300)
  assert process.returncode == 0, stderr[-2000:]
  return json.loads(stdout)


def test_sigkill_and_sigterm_then_rerun_give_the_same_parameters(reference, tmp_path):
  """SIGKILL mid-step and mid-save, then SIGTERM (which saves and exits 143), then finish."""
  summary, reference_dir = reference
  rng = random.Random()
  kills = [(rng.randint(1, 3), False), (rng.randint(4, 6), True)]
  for step, during_save in kills:
    result = _run_until(tmp_path, step, during_save=during_save)
    assert result.returncode == -signal.SIGKILL, (step, result.stderr[-2000:])
  result = _run_until(tmp_path, 8, during_save=False, sig=signal.SIGTERM)
  assert result.returncode == 128 + signal.SIGTERM, result.stderr[-2000:]
  stopped_at = int(result.stderr.split("after saving step ")[1].split(";")[0])
  assert 8 <= stopped_at < STEPS
  assert checkpoint.Checkpoints(tmp_path, read_only=True).steps()[-1] == stopped_at
  final = _finish(tmp_path)
  assert final["params_sha256"] == summary["params_sha256"], kills
  assert _logged_steps(tmp_path) == list(range(1, STEPS + 1))
  reference_losses = [json.loads(l)["train_loss"] for l in
                      (reference_dir / "metrics.jsonl").read_text().splitlines()]
  losses = [json.loads(l)["train_loss"] for l in
            (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert losses == reference_losses


@pytest.fixture(scope="module", name="trained")
def trained_fixture(tmp_path_factory):
  """A finished 4-step run with checkpoints at steps 2 and 4 (tests only read it)."""
  workdir = tmp_path_factory.mktemp("trained")
  loop.train(_config(total_steps=4), workdir, progress=False)
  return workdir


def _state_file(step_dir: pathlib.Path) -> pathlib.Path:
  files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.stat().st_size > 1000]
  return max(files, key=lambda p: p.stat().st_size)


def test_corrupt_latest_checkpoints_fall_back_to_the_previous_complete_one(tmp_path, capfd):
  config = _config(total_steps=6)
  loop.train(config, tmp_path, progress=False)
  trainer = Trainer(build_run(config))
  ckpts = checkpoint.Checkpoints(tmp_path)
  assert ckpts.steps() == [4, 6]
  good = jax.device_get(ckpts.restore(4, trainer.abstract_state))
  target = _state_file(tmp_path / "checkpoints" / "6")  # a truncated data file
  target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
  state = ckpts.restore_latest(trainer.abstract_state)
  assert int(state.step) == 4
  jax.tree.map(np.testing.assert_array_equal, good, jax.device_get(state))
  import shutil
  shutil.rmtree(tmp_path / "checkpoints" / "4" / "state")  # a missing item
  assert ckpts.restore_latest(trainer.abstract_state) is None
  errors = capfd.readouterr().err.splitlines()
  for step in (6, 4):
    assert len([l for l in errors if f"step {step} is unreadable" in l]) == 1
    assert len(list((tmp_path / "checkpoints_corrupt").glob(f"{step}-*"))) == 1  # not deleted
  assert ckpts.steps() == []
  ckpts.close()
  summary = loop.train(config, tmp_path, progress=False)  # from scratch; saves 4 and 6 anew
  assert summary["steps"] == 6
  assert checkpoint.Checkpoints(tmp_path, read_only=True).steps() == [4, 6]


@pytest.mark.parametrize("change, message", [
    ({"model.d_model": 64}, r"shape \(.*32.*\) in the checkpoint"),
    ({"optimizer.name": "sgd", "optimizer.momentum": 0.9, "optimizer.nesterov": False,
      "optimizer.weight_decay": 0.0}, "lacks"),
])
def test_mismatched_checkpoint_is_a_usage_error_and_stays(trained, change, message):
  config = _config(total_steps=4)
  for key in ("b1", "b2", "eps"):
    if "optimizer.name" in change:
      del config.optimizer[key]
  for key, value in change.items():
    section, leaf = key.split(".")
    config[section][leaf] = value
  before = sorted((str(p), p.stat().st_size) for p in trained.rglob("*"))
  with pytest.raises(UsageError, match=message):
    loop.train(config, trained, progress=False)
  assert sorted((str(p), p.stat().st_size) for p in trained.rglob("*")) == before


def test_mismatch_exits_2_with_one_line(run_module, trained):
  result = run_module("launch.train", *FLAGS[:2], "--config.model.d_model=64",
                      "--config.total_steps=4", "--workdir", str(trained))
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith("error: checkpoint ")
  assert "Traceback" not in result.stderr


def test_branch_from_continues_the_schedule_exactly(tmp_path):
  wsd = {"name": "wsd", "warmup_steps": 1, "decay_steps": 3, "init_value": 0.0}
  stable = _config(total_steps=6, **{"checkpoint.keep_every": 3, "checkpoint.keep": 1})
  stable.schedule = wsd
  full = loop.train(stable, tmp_path / "run", progress=False)
  assert checkpoint.Checkpoints(tmp_path / "run", read_only=True).steps() == [3, 6]
  source = json.loads((tmp_path / "run" / "config.json").read_text())
  branched = branch_config(source, str(tmp_path / "run"), 3, 3)
  assert branched.schedule.to_dict() == {**wsd, "decay_steps": 3}
  assert branched.total_steps == 6
  summary = loop.train(branched, tmp_path / "branch", progress=False)
  assert summary["params_sha256"] == full["params_sha256"]
  assert _logged_steps(tmp_path / "branch") == [4, 5, 6]


def test_init_from_loads_parameters_only(trained, tmp_path):
  config = _config(total_steps=4)
  saved = checkpoint.Checkpoints(trained, read_only=True)
  source_params = jax.device_get(saved.restore(4, Trainer(build_run(config)).abstract_state).params)
  config.checkpoint.init_from = str(trained)
  state, origin = resume.restore_or_init(
      Trainer(build_run(config)), checkpoint.Checkpoints(tmp_path / "new"))
  assert origin.startswith("initialized parameters") and int(state.step) == 0
  jax.tree.map(np.testing.assert_array_equal, source_params, jax.device_get(state.params))
  mu = jax.tree.leaves(jax.device_get(state.opt_state))
  assert all(not np.any(x) for x in mu if np.ndim(x) > 1)  # fresh Adam moments
