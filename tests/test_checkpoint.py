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

from data.errors import UsageError
from experiments import lm
from launch import branch
from training import checkpoint, loop

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


def test_sigkill_at_random_steps_then_rerun_gives_the_same_parameters(reference, tmp_path):
  summary, reference_dir = reference
  rng = random.Random()
  kills = [(rng.randint(1, 4), False), (rng.randint(5, 8), True)]
  for step, during_save in kills:
    result = _run_until(tmp_path, step, during_save=during_save)
    assert result.returncode == -signal.SIGKILL, (step, result.stderr[-2000:])
  final = _finish(tmp_path)
  assert final["params_sha256"] == summary["params_sha256"], kills
  assert _logged_steps(tmp_path) == list(range(1, STEPS + 1))
  reference_losses = [json.loads(l)["train_loss"] for l in
                      (reference_dir / "metrics.jsonl").read_text().splitlines()]
  losses = [json.loads(l)["train_loss"] for l in
            (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert losses == reference_losses


def test_sigterm_saves_the_current_step_and_the_rerun_continues(reference, tmp_path):
  result = _run_until(tmp_path, 3, during_save=False, sig=signal.SIGTERM)
  assert result.returncode == 128 + signal.SIGTERM, result.stderr[-2000:]
  stopped_at = int(result.stderr.split("after saving step ")[1].split(";")[0])
  assert 3 <= stopped_at < STEPS
  saved = checkpoint.Checkpoints(tmp_path, read_only=True).steps()
  assert saved[-1] == stopped_at
  final = _finish(tmp_path)
  assert final["params_sha256"] == reference[0]["params_sha256"]


def _two_checkpoints(workdir: pathlib.Path) -> loop.Trainer:
  config = _config(total_steps=4)
  loop.train(config, workdir, progress=False)
  return loop.Trainer(config)


def _state_file(step_dir: pathlib.Path) -> pathlib.Path:
  files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.stat().st_size > 1000]
  return max(files, key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("damage", ["truncate", "missing_item"])
def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, capfd, damage):
  trainer = _two_checkpoints(tmp_path)
  ckpts = checkpoint.Checkpoints(tmp_path)
  assert ckpts.steps() == [2, 4]
  good_two = jax.device_get(ckpts.restore(2, trainer.abstract_state))
  if damage == "truncate":
    target = _state_file(tmp_path / "checkpoints" / "4")
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
  else:
    import shutil  # pylint: disable=import-outside-toplevel
    shutil.rmtree(tmp_path / "checkpoints" / "4" / "state")
  state = ckpts.restore_latest(trainer.abstract_state)
  assert int(state.step) == 2
  jax.tree.map(np.testing.assert_array_equal, good_two, jax.device_get(state))
  warnings = [l for l in capfd.readouterr().err.splitlines() if "step 4 is unreadable" in l]
  assert len(warnings) == 1
  assert ckpts.steps() == [2]
  assert len(list((tmp_path / "checkpoints_corrupt").glob("4-*"))) == 1  # moved, not deleted
  ckpts.close()
  summary = loop.train(_config(total_steps=6), tmp_path, progress=False)  # trains 2 -> 6
  assert summary["steps"] == 6 and checkpoint.Checkpoints(tmp_path, read_only=True).steps()[-1] == 6


@pytest.mark.parametrize("change, message", [
    ({"model.d_model": 64}, r"shape \(.*32.*\) in the checkpoint"),
    ({"optimizer.name": "sgd", "optimizer.momentum": 0.9, "optimizer.nesterov": False,
      "optimizer.weight_decay": 0.0}, "lacks"),
])
def test_mismatched_checkpoint_is_a_usage_error_and_stays(tmp_path, change, message):
  _two_checkpoints(tmp_path)
  config = _config(total_steps=4)
  for key in ("b1", "b2", "eps"):
    if "optimizer.name" in change:
      del config.optimizer[key]
  for key, value in change.items():
    section, leaf = key.split(".")
    config[section][leaf] = value
  before = sorted(str(p) for p in (tmp_path / "checkpoints").rglob("*"))
  with pytest.raises(UsageError, match=message):
    loop.train(config, tmp_path, progress=False)
  assert sorted(str(p) for p in (tmp_path / "checkpoints").rglob("*")) == before


def test_mismatch_exits_2_with_one_line(run_module, tmp_path):
  _two_checkpoints(tmp_path)
  result = run_module("launch.train", *FLAGS[:2], "--config.model.d_model=64",
                      "--config.total_steps=4", "--workdir", str(tmp_path))
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
  branched = branch.branch_config(source, str(tmp_path / "run"), 3, 3)
  assert branched.schedule.to_dict() == {**wsd, "decay_steps": 3}
  assert branched.total_steps == 6
  summary = loop.train(branched, tmp_path / "branch", progress=False)
  assert summary["params_sha256"] == full["params_sha256"]
  assert _logged_steps(tmp_path / "branch") == [4, 5, 6]


def test_init_from_loads_parameters_only(tmp_path):
  trainer = _two_checkpoints(tmp_path / "source")
  saved = checkpoint.Checkpoints(tmp_path / "source", read_only=True)
  source_params = jax.device_get(saved.restore(4, trainer.abstract_state).params)
  config = _config(total_steps=4, **{"checkpoint.init_from": str(tmp_path / "source")})
  state, origin = checkpoint.restore_or_init(
      loop.Trainer(config), config, checkpoint.Checkpoints(tmp_path / "new"))
  assert origin.startswith("initialized parameters") and int(state.step) == 0
  jax.tree.map(np.testing.assert_array_equal, source_params, jax.device_get(state.params))
  mu = jax.tree.leaves(jax.device_get(state.opt_state))
  assert all(not np.any(x) for x in mu if np.ndim(x) > 1)  # fresh Adam moments
