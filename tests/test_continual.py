"""Continual pre-training: task chaining, the loss matrix, replay batches, resumable reruns."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from trainlab.data import make_dataset
from trainlab.errors import UsageError
from experiments import continual as continual_configs
from trainlab.training.run import build_run
from trainlab.training.trainer import Trainer
from trainlab.training import checkpoint, continual, loop

REPO = pathlib.Path(__file__).resolve().parent.parent
DOMAINS = "stdlib-code,pydoc-english"
STEPS = 10  # per task; the infinite schedule anneals over the last 2


def _flags(workdir: pathlib.Path) -> tuple[str, ...]:
  return ("--config", f"experiments/continual.py:schedule=infinite,steps={STEPS}",
          f"--config.stream.domains={DOMAINS}", "--config.stream.checkpoint_every=2",
          "--config.eval.num_batches=2", "--config.log.every_steps=1", "--workdir", str(workdir))


def _config():
  config = continual_configs.get_config(f"schedule=infinite,steps={STEPS}")
  config.stream.domains = DOMAINS
  config.stream.checkpoint_every = 2
  config.eval.num_batches = 2
  config.log.every_steps = 1
  return config


@pytest.fixture(scope="module", name="stream")
def stream_fixture(tmp_path_factory):
  """A two-task infinite-schedule stream trained once through the CLI."""
  from conftest import run_module
  workdir = tmp_path_factory.mktemp("stream")
  result = run_module("launch.continual", *_flags(workdir))
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, json.loads(result.stdout)


def _params(run_dir: pathlib.Path, step: int, trainer: loop.Trainer):
  checkpoints = checkpoint.Checkpoints(run_dir, read_only=True)
  state = checkpoints.restore(step, trainer.abstract_state)
  checkpoints.close()
  return state


def test_loss_matrix_file(stream):
  workdir, printed = stream
  record = json.loads((workdir / "loss_matrix.json").read_text())
  assert record == {k: v for k, v in printed.items() if k != "workdir"}
  assert record["domains"] == DOMAINS.split(",")
  assert [sorted(r["losses"]) for r in record["tasks"]] == [
      ["stdlib-code"], ["pydoc-english", "stdlib-code"]]
  assert record["trained"] == [0, 1]
  for row in record["tasks"]:  # 10 updates of a byte model: below uniform (ln 256), finite
    assert all(0 < v < np.log(256) for v in row["losses"].values())
    assert sorted(row["losses_se"]) == sorted(row["losses"])  # over windows: small, positive
    assert all(0 < se < 0.1 * row["losses"][n] for n, se in row["losses_se"].items())
  md = (workdir / "loss_matrix.md").read_text()
  assert "| 1 (pydoc-english) |" in md
  assert f"{record['tasks'][1]['losses']['stdlib-code']:.4f}" in md
  # Task 1 continues the step counter from task 0's pre-anneal step and anneals again.
  t0, t1 = record["tasks"]
  assert (t0["end_step"], t0["pre_anneal_step"]) == (STEPS, STEPS - 2)
  assert (t1["start_step"], t1["end_step"], t1["started_from_step"]) == (STEPS - 2, 2 * STEPS - 2,
                                                                         STEPS - 2)


def test_example_losses_are_the_loss_matrix_cells_before_averaging(stream):
  workdir, _ = stream
  rows = json.loads((workdir / "loss_matrix.json").read_text())["tasks"]
  examples = continual.example_losses(_config(), workdir)
  assert sorted(examples) == ["0/stdlib-code", "1/pydoc-english", "1/stdlib-code"]
  for row in rows:
    for name, loss in row["losses"].items():
      windows = examples[f"{row['task']}/{name}"]
      assert windows.shape == (2 * _config().batch_size,)
      np.testing.assert_allclose(windows.mean(), loss, rtol=1e-5)
      np.testing.assert_allclose(windows.std(ddof=1) / np.sqrt(len(windows)),
                                 row["losses_se"][name], rtol=1e-4)
  assert (workdir / "loss_matrix_examples.npz").exists()  # cached: a second call reads it
  again = continual.example_losses(_config(), workdir)
  assert all(np.array_equal(again[k], v) for k, v in examples.items())


def test_task_two_resumes_from_pre_anneal_state(stream):
  """Two updates of task 1's own trainer from task 0's pre-anneal state reproduce task 1's
  checkpoint two steps in; the pre-anneal state differs from task 0's deployable one."""
  workdir, _ = stream
  tasks = continual.plan(_config(), workdir.resolve())
  task0, task1 = tasks
  assert task1.config.checkpoint.branch_from == str(task0.run_dir)
  trainer = Trainer(build_run(task1.config))
  pre_anneal = _params(task0.run_dir, STEPS - 2, trainer)
  deployable = _params(task0.run_dir, STEPS, trainer)
  assert not np.allclose(pre_anneal.params["embed"]["embedding"],
                         deployable.params["embed"]["embedding"])
  state = pre_anneal
  for step in (STEPS - 2, STEPS - 1):
    state, metrics = trainer.train_step(state, trainer.step_batch(step))
    assert float(metrics["lr"]) == pytest.approx(task1.config.schedule.constant_value, rel=1e-6)
  saved = _params(task1.run_dir, STEPS, trainer)
  assert int(saved.step) == STEPS
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               jax.device_get(state.params), jax.device_get(saved.params))
  # The deployable model in the matrix is task 1's final (annealed) state.
  evaluator = continual.DomainEvaluator(task0.config)
  final = evaluator.params_at(task1.run_dir, task1.end_step)
  losses = evaluator.losses(final, ["stdlib-code"])
  evaluator.close()
  record = json.loads((workdir / "loss_matrix.json").read_text())
  assert losses["stdlib-code"] == pytest.approx(record["tasks"][1]["losses"]["stdlib-code"],
                                                rel=1e-6)


def test_rerun_after_completion_trains_nothing(stream, run_module):
  workdir, _ = stream
  before = {p: p.read_text() for p in workdir.glob("task_*/metrics.jsonl")}
  steps_before = sorted(p.name for p in workdir.glob("task_*/checkpoints/*"))
  result = run_module("launch.continual", *_flags(workdir))
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads(result.stdout)["trained"] == []
  assert {p: p.read_text() for p in workdir.glob("task_*/metrics.jsonl")} == before
  assert sorted(p.name for p in workdir.glob("task_*/checkpoints/*")) == steps_before


def test_other_config_in_same_workdir_is_a_usage_error(stream, run_module):
  workdir, _ = stream
  result = run_module("launch.continual", *_flags(workdir), "--config.stream.replay_fraction=0.25")
  assert result.returncode == 2 and "different config" in result.stderr


def test_plan_chains_tasks_by_schedule(tmp_path):
  config = continual_configs.get_config("schedule=cosine,steps=20")
  tasks = continual.plan(config, tmp_path)
  assert [t.domain for t in tasks] == list(continual_configs.DEFAULT_DOMAINS)
  assert [(t.start_step, t.end_step) for t in tasks] == [(0, 20), (20, 40), (40, 60)]
  assert [t.config.schedule.num_cycles for t in tasks] == [1, 2, 3]
  assert [t.config.checkpoint.branch_step for t in tasks] == [-1, 20, 40]
  config = continual_configs.get_config("schedule=infinite_invsqrt,steps=20")
  tasks = continual.plan(config, tmp_path)
  assert [(t.start_step, t.end_step, t.pre_anneal_step) for t in tasks] == [
      (0, 20, 16), (16, 36, 32), (32, 52, 48)]
  assert [(t.config.schedule.warmup_steps, t.config.schedule.cooldown_steps) for t in tasks] == [
      (2, 10), (0, 0), (0, 0)]
  assert [t.config.checkpoint.branch_step for t in tasks] == [-1, 16, 32]
  assert all(t.config.checkpoint.keep_every == 4 for t in tasks)  # gcd(20, 4): keeps 16, 32


def test_replay_batches_are_pure_and_mix_earlier_domains():
  config = continual_configs.get_config("schedule=cosine,steps=20,replay=0.25")
  task = continual.plan(config, "/tmp/unused")[2]  # c-headers, replaying the two before it
  assert task.config.data.replay == "stdlib-code,pydoc-english"
  a, b = build_run(task.config).dataset, build_run(task.config).dataset
  batch = a.train_batch(7)
  for key in batch:
    np.testing.assert_array_equal(batch[key], b.train_batch(7)[key])
  own = make_dataset("c-headers", seed=0, batch_size=8, seq_len=32)
  np.testing.assert_array_equal(batch["inputs"][:6], own.train_batch(7)["inputs"][:6])
  for row, name in ((6, "stdlib-code"), (7, "pydoc-english")):
    earlier = make_dataset(name, seed=0, batch_size=1, seq_len=32)
    np.testing.assert_array_equal(batch["inputs"][row], earlier.train_batch(7)["inputs"][0])
  assert not np.array_equal(a.train_batch(8)["inputs"], batch["inputs"])


def _signal_when(workdir: pathlib.Path, starts: str, signum: int) -> subprocess.CompletedProcess:
  """Runs launch.continual and sends `signum` when a stderr line starts with `starts`."""
  process = subprocess.Popen([sys.executable, "-m", "launch.continual", *_flags(workdir)],
                             cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"}, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  seen = []
  for line in process.stderr:
    seen.append(line)
    if line.startswith(starts):
      process.send_signal(signum)
      break
  stdout, stderr = process.communicate(timeout=1800)  # only against a hang
  return subprocess.CompletedProcess(process.args, process.returncode, stdout,
                                     "".join(seen) + stderr)


def test_sigterm_between_tasks_and_ctrl_c_inside_one_lose_nothing(stream, run_module, tmp_path):
  """SIGTERM while task 0's model is evaluated, then Ctrl-C once task 1's first step ran: one
  line and 143 / 130 each; the same command then ends with the uninterrupted loss matrix."""
  _, uninterrupted = stream
  workdir = tmp_path / "stream"
  for starts, signum in (("task 0 (stdlib-code) is trained; evaluating", signal.SIGTERM),
                         ("compiled the train step", signal.SIGINT)):
    result = _signal_when(workdir, starts, signum)
    assert result.returncode == 128 + signum, result.stderr[-3000:]
    stops = [l for l in result.stderr.splitlines() if l.startswith("stopped:")]
    assert len(stops) == 1 and "rerun the same command to continue" in stops[0], result.stderr
    assert "Traceback" not in result.stderr and not result.stdout.strip()
  assert (workdir / "task_0_stdlib-code" / "summary.json").exists()
  result = run_module("launch.continual", *_flags(workdir))
  assert result.returncode == 0, result.stderr[-3000:]
  same = lambda rows: [{k: v for k, v in r.items() if k != "started_from"} for r in rows]
  assert same(json.loads(result.stdout)["tasks"]) == same(uninterrupted["tasks"])


def test_every_domain_and_task_is_checked_before_the_first_step(tmp_path):
  """An unknown domain late in the stream used to surface only after the earlier tasks had
  trained; now nothing is created or trained."""
  config = _config()
  config.stream.domains = "stdlib-code,pydoc-english,no-such-corpus"
  with pytest.raises(UsageError, match="no-such-corpus"):
    continual.run_stream(config, tmp_path / "stream", progress=False)
  assert not (tmp_path / "stream").exists()
  config = _config()
  config.optimizer.learning_rate = float("nan")
  with pytest.raises(UsageError, match="optimizer.learning_rate"):
    continual.run_stream(config, tmp_path / "stream", progress=False)
  assert not (tmp_path / "stream").exists()


def test_unknown_stream_key_is_one_line_with_a_hint():
  from launch import cli
  with pytest.raises(UsageError) as raised:
    cli.parse(["launch.continual", "--config.stream.domain=x"], "continual.py")
  assert str(raised.value) == ("--config.stream.domain is not a key of the config (did you mean "
                               "stream.domains?); list the keys with --print_config")


def test_weights_handoff_starts_each_task_from_the_previous_parameters_only(tmp_path):
  """MAE-1's official handoff: parameters at the pre-anneal step, fresh optimizer and schedule."""
  config = continual_configs.get_config("schedule=infinite,steps=20,handoff=weights")
  tasks = continual.plan(config, tmp_path)
  assert [(t.start_step, t.end_step, t.pre_anneal_step) for t in tasks] == [
      (0, 20, 16), (0, 20, 16), (0, 20, 16)]
  assert [t.config.checkpoint.init_step for t in tasks] == [-1, 16, 16]
  assert [t.config.checkpoint.init_from for t in tasks] == [
      "", str(tasks[0].run_dir), str(tasks[1].run_dir)]
  assert all(t.config.checkpoint.branch_from == "" for t in tasks)
  assert [(t.config.schedule.warmup_steps, t.config.schedule.cooldown_steps) for t in tasks] == [
      (2, 10), (0, 0), (0, 0)]
  cosine = continual.plan(continual_configs.get_config("schedule=cosine,steps=20,handoff=weights"),
                          tmp_path)
  assert [t.config.schedule.num_cycles for t in cosine] == [1, 1, 1]
  assert [t.config.checkpoint.init_step for t in cosine] == [-1, 20, 20]
