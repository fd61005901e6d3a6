"""Checkpoints: exact resume after SIGKILL/SIGTERM, corrupt fallback, mismatch errors, branching."""

from __future__ import annotations

import json
import os
import pathlib
import random
import shutil
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


def _start(runs: pathlib.Path) -> subprocess.Popen:
  """`python -m launch.train FLAGS` without --workdir: its default workdir, under `runs`."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "TRAINLAB_RUNS_DIR": str(runs)}
  return subprocess.Popen([sys.executable, "-m", "launch.train", *FLAGS], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _default_workdir(runs: pathlib.Path, monkeypatch) -> pathlib.Path:
  from launch import cli
  monkeypatch.setenv("TRAINLAB_RUNS_DIR", str(runs))
  return cli.default_workdir(cli.parse(["launch.train", *FLAGS], "lm.py"), "train")


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


def _run_until(runs: pathlib.Path, workdir: pathlib.Path, step: int, *, during_save: bool,
               sig: int = signal.SIGKILL) -> subprocess.CompletedProcess:
  """Starts the run and sends `sig` once `step` is logged (then, if asked, once a save is
  in flight, i.e. Orbax's temporary folder exists)."""
  process = _start(runs)
  while process.poll() is None:  # the run ends by itself if it gets past `step` unseen
    logged = _logged_steps(workdir)
    if logged and logged[-1] >= step and (not during_save or _saving(workdir)):
      process.send_signal(sig)
      break
    time.sleep(0.002)
  stdout, stderr = process.communicate(timeout=1800)  # only against a hang
  return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _interrupt_after_compiling(runs: pathlib.Path) -> subprocess.CompletedProcess:
  """Starts the run and presses Ctrl-C (SIGINT) as soon as its first step has run."""
  process = _start(runs)
  seen = []
  for line in process.stderr:
    seen.append(line)
    if line.startswith("compiled the train step"):
      process.send_signal(signal.SIGINT)
      break
  stdout, stderr = process.communicate(timeout=1800)
  return subprocess.CompletedProcess(process.args, process.returncode, stdout,
                                     "".join(seen) + stderr)


def _stopped_at(result: subprocess.CompletedProcess, workdir: pathlib.Path) -> int:
  stops = [l for l in result.stderr.splitlines() if l.startswith("stopped:")]
  assert len(stops) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
  assert "rerun the same command to continue" in stops[0] and f"(workdir {workdir})" in stops[0]
  return int(stops[0].split("after saving step ")[1].split(";")[0])


def test_the_default_workdir_resumes_exactly_after_ctrl_c_sigkill_and_sigterm(
    reference, tmp_path, monkeypatch):
  """The README's promise for `python -m launch.train` without --workdir: Ctrl-C (saves, exits
  130), SIGKILL mid-step and mid-save, SIGTERM (saves, exits 143); each time the same command
  continues the same run, which ends with the uninterrupted run's parameters and metrics."""
  summary, reference_dir = reference
  runs = tmp_path / "runs"
  workdir = _default_workdir(runs, monkeypatch)
  result = _interrupt_after_compiling(runs)
  assert result.returncode == 128 + signal.SIGINT, result.stderr[-2000:]
  assert result.stderr.splitlines()[0].startswith(f"{workdir}: started from scratch")
  assert 1 <= _stopped_at(result, workdir) < STEPS
  rng = random.Random()
  kills = [(rng.randint(3, 4), False), (rng.randint(5, 6), True)]
  for step, during_save in kills:
    result = _run_until(runs, workdir, step, during_save=during_save)
    assert result.returncode == -signal.SIGKILL, (step, result.stderr[-2000:])
  result = _run_until(runs, workdir, 8, during_save=False, sig=signal.SIGTERM)
  assert result.returncode == 128 + signal.SIGTERM, result.stderr[-2000:]
  stopped_at = _stopped_at(result, workdir)
  assert 8 <= stopped_at < STEPS
  assert checkpoint.Checkpoints(workdir, read_only=True).steps()[-1] == stopped_at
  process = _start(runs)
  stdout, stderr = process.communicate(timeout=1800)
  assert process.returncode == 0, stderr[-2000:]
  assert f"resumed from {workdir / 'checkpoints'} at step {stopped_at}" in stderr
  final = json.loads(stdout)
  assert final["workdir"] == str(workdir) and [p.name for p in runs.iterdir()] == [workdir.name]
  assert final["params_sha256"] == summary["params_sha256"], kills
  assert _logged_steps(workdir) == list(range(1, STEPS + 1))
  reference_losses = [json.loads(l)["train_loss"] for l in
                      (reference_dir / "metrics.jsonl").read_text().splitlines()]
  losses = [json.loads(l)["train_loss"] for l in
            (workdir / "metrics.jsonl").read_text().splitlines()]
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
  shutil.rmtree(tmp_path / "checkpoints" / "4" / "state")  # a missing item
  assert ckpts.restore_latest(trainer.abstract_state) is None
  errors = capfd.readouterr().err.splitlines()
  for step, why, then in ((6, "bytes, ", "using step 4 instead"),
                          (4, "is missing", "no earlier checkpoint is left")):
    lines = [l for l in errors if f"step {step} is corrupt" in l]
    assert len(lines) == 1 and why in lines[0] and then in lines[0], errors
    assert "<" not in lines[0] and "falling back" not in lines[0]
    assert len(list((tmp_path / "checkpoints_corrupt").glob(f"{step}-*"))) == 1  # not deleted
  assert ckpts.steps() == []
  ckpts.close()
  summary = loop.train(config, tmp_path, progress=False)  # from scratch; saves 4 and 6 anew
  assert summary["steps"] == 6
  assert checkpoint.Checkpoints(tmp_path, read_only=True).steps() == [4, 6]


def _flip_64_bytes(path: pathlib.Path) -> None:
  """Inverts 64 bytes in the middle of `path`; the size stays."""
  data = bytearray(path.read_bytes())
  middle = len(data) // 2
  data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
  path.write_bytes(bytes(data))


def test_bit_flipped_newest_checkpoint_is_never_trained_from(reference, tmp_path, capfd):
  """Orbax restores such a file silently (measured: 450 values of one moment changed); the
  checksums catch it, the step is quarantined and the run redoes the steps after the previous
  one, ending exactly where an uninterrupted run ends."""
  summary, reference_dir = reference
  workdir = tmp_path / "run"
  shutil.copytree(reference_dir, workdir)
  assert checkpoint.Checkpoints(workdir, read_only=True).steps() == [STEPS - 2, STEPS]
  flipped = _state_file(workdir / "checkpoints" / str(STEPS))
  size = flipped.stat().st_size
  _flip_64_bytes(flipped)
  assert flipped.stat().st_size == size
  trainer = Trainer(build_run(_config()))
  with pytest.raises(UsageError, match=rf"/{STEPS} is corrupt \(.*SHA-256"):
    checkpoint.Checkpoints(workdir, read_only=True).restore_latest(trainer.abstract_state,
                                                                   at_step=STEPS)
  capfd.readouterr()
  final = loop.train(_config(), workdir, progress=False)
  warnings = [l for l in capfd.readouterr().err.splitlines() if l.startswith("warning:")]
  assert len(warnings) == 1, warnings
  assert f"step {STEPS} is corrupt" in warnings[0] and "SHA-256" in warnings[0]
  assert f"using step {STEPS - 2} instead" in warnings[0]
  quarantined = list((workdir / "checkpoints_corrupt").glob(f"{STEPS}-*"))
  assert len(quarantined) == 1  # kept, never deleted
  assert (quarantined[0] / flipped.relative_to(workdir / "checkpoints" / str(STEPS))).exists()
  assert final["params_sha256"] == summary["params_sha256"]
  assert json.loads((workdir / "summary.json").read_text()) == final
  assert _logged_steps(workdir) == list(range(1, STEPS + 1))
  assert checkpoint.Checkpoints(workdir, read_only=True).steps() == [STEPS - 2, STEPS]


def test_checkpoint_without_checksums_is_restored_unverified_and_failures_read_cleanly(
    trained, tmp_path, capfd):
  """A step saved before checksums existed still restores (one warning); if it is truncated,
  the report names the failure without internal reprs."""
  workdir = tmp_path / "old"
  shutil.copytree(trained, workdir)
  for step in (2, 4):
    (workdir / "checkpoints" / str(step) / checkpoint.CHECKSUMS_FILE).unlink()
  target = _state_file(workdir / "checkpoints" / "4")
  target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
  trainer = Trainer(build_run(_config(total_steps=4)))
  state = checkpoint.Checkpoints(workdir).restore_latest(trainer.abstract_state)
  assert int(state.step) == 2
  errors = capfd.readouterr().err.splitlines()
  assert len([l for l in errors if "unverified" in l]) == 2, errors
  unreadable = [l for l in errors if "step 4 is unreadable" in l]
  assert len(unreadable) == 1 and "using step 2 instead" in unreadable[0]
  assert "<" not in unreadable[0] and "pybind11" not in unreadable[0], unreadable[0]


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
