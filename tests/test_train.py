"""End to end: a tiny run leaves its files, reproduces its hash, and survives non-finite steps."""

from __future__ import annotations

import dataclasses
import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trainlab.training.run import build_run
from trainlab.training.trainer import Trainer
from trainlab.training import loop, metrics

STEPS = "--config.total_steps=12"


def _read_jsonl(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_train_cli_writes_its_files_and_is_bitwise_reproducible(run_module, tmp_path):
  hashes = []
  for name in ("a", "b"):
    workdir = tmp_path / name
    result = run_module("launch.train", "--config", "experiments/lm.py:size=test", STEPS,
                        "--config.log.every_steps=4", "--config.eval.every_steps=6",
                        "--workdir", str(workdir))
    assert result.returncode == 0, result.stderr[-2000:]
    config = json.loads((workdir / "config.json").read_text())
    assert config["total_steps"] == 12
    records = _read_jsonl(workdir / "metrics.jsonl")
    assert [r["step"] for r in records] == [4, 6, 8, 12]  # 6: an eval step between log steps
    for key in ("train_loss", "lr", "grad_norm", "update_norm", "step_time"):
      assert all(np.isfinite(r[key]) for r in records), key
    assert ["eval_loss" in r for r in records] == [False, True, False, True]
    # stderr is a pipe here, as in SLURM or CI: plain lines, no bar redraws.
    assert "\r" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines.index("compiling the train step ...") < min(
        i for i, l in enumerate(lines) if l.startswith("step "))
    assert any(l.startswith("compiled the train step in ") for l in lines)
    logged = {int(l.split()[1].split("/")[0]): l for l in lines if l.startswith("step ")}
    assert sorted(logged) == [4, 6, 8, 12]
    for step, line in logged.items():
      record = next(r for r in records if r["step"] == step)
      assert f"loss {record['train_loss']:.4f}" in line and " tok/s" in line, line
      if "eval_loss" in record:
        assert f"eval {record['eval_loss']:.4f} ± {record['eval_loss_se']:.4f}" in line, line
      else:
        assert " eval " not in line, line
    assert str(workdir) in lines[0] and "started from scratch" in lines[0]
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    summary = json.loads((workdir / "summary.json").read_text())
    for key in ("final_train_loss", "final_eval_loss", "steps", "wall_time_s", "params_sha256",
                "baseline_loss"):
      assert key in summary
    assert summary["steps"] == 12
    hashes.append(summary["params_sha256"])
  assert hashes[0] == hashes[1]


def test_different_seed_gives_different_parameters(tmp_path, tiny_config):
  config = tiny_config
  config.total_steps = 5
  a = loop.train(config, tmp_path / "a", progress=False)
  config.seed = 1
  b = loop.train(config, tmp_path / "b", progress=False)
  assert a["params_sha256"] != b["params_sha256"]


def test_loss_goes_down_on_the_image_task(tmp_path):
  from experiments import image
  config = image.get_config("data=digits,epochs=2")
  summary = loop.train(config, tmp_path, progress=False)
  assert summary["final_eval_loss"] < 0.7 * summary["baseline_loss"]
  assert summary["final_eval_accuracy"] > 0.7


def test_non_finite_steps_are_skipped_then_stop_the_run(tmp_path, tiny_config):
  config = tiny_config
  trainer = Trainer(build_run(config))
  state = trainer.init_state()
  batch = trainer.step_batch(0)
  poisoned = {**batch, "weights": batch["weights"].at[0, 0].set(jnp.nan)}
  before = jax.device_get(state.params)
  step = trainer.train_step
  state, metrics = step(state, poisoned)
  assert int(metrics["nonfinite_in_a_row"]) == 1 and int(state.step) == 1
  jax.tree.map(np.testing.assert_array_equal, before, jax.device_get(state.params))
  state, metrics = step(state, batch)  # the schedule did not advance: lr is still warmup's 0
  state, metrics = step(state, batch)
  assert int(metrics["nonfinite_in_a_row"]) == 0 and int(state.step) == 3
  assert optax.global_norm(jax.tree.map(jnp.subtract, state.params, before)) > 0


def test_divergence_stops_with_a_clear_error(tmp_path, tiny_config):
  config = tiny_config
  config.max_nonfinite_steps = 2
  run = build_run(config)

  def train_batch(step):
    batch = run.dataset.train_batch(step)
    return {**batch, "weights": np.full_like(batch["weights"], np.nan)}

  poisoned = dataclasses.replace(run, dataset=dataclasses.replace(run.dataset,
                                                                   train_batch=train_batch))
  try:
    loop.train_run(poisoned, tmp_path, progress=False)
  except loop.DivergedError as e:
    assert "2 non-finite steps in a row" in str(e)
  else:
    raise AssertionError("the run did not stop")


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def _console_output(stream):
  console = metrics.Console(20, 100, "tok", enabled=True, stream=stream)
  console.compiling()
  console.compiled(2.0, 1)
  for done in range(1, 11):
    console.advance()
  console.log(10, {"train_loss": 1.5, "lr": 1e-3, "eval_loss": 1.25, "eval_loss_se": 0.01}, 0.5)
  console.close()
  return stream.getvalue()


def test_console_is_plain_lines_in_a_file_and_a_bar_only_on_a_terminal():
  plain = _console_output(io.StringIO())
  assert plain.splitlines() == [
      "compiling the train step ...", "compiled the train step in 2.0 s (its first run included)",
      plain.splitlines()[2]]
  assert plain.splitlines()[2].startswith(
      "step 10/20  loss 1.5000  lr 1.000e-03  200 tok/s  eval 1.2500 ± 0.0100  ETA ")
  assert "\r" not in plain
  terminal = _console_output(_Terminal())
  assert "\r" in terminal and "10/20" in terminal  # tqdm's bar
  assert "step 10/20  loss 1.5000" in terminal


def test_eta_counts_from_the_end_of_the_first_step(monkeypatch):
  """100 s of compilation, then 1 s per step: 9 steps left take 9 s, not 9 x 10.9 s."""
  clock = iter([1000.0, 1010.0])
  monkeypatch.setattr(metrics.time, "perf_counter", lambda: next(clock))
  console = metrics.Console(20, 100, "tok", enabled=False)
  console.compiled(100.0, 1)  # the first step ends at t = 1000
  assert console.eta(11) == "9s"  # t = 1010: 10 steps in 10 s


def test_a_run_in_progress_has_no_stale_summary(tmp_path, tiny_config):
  """A resumed run that stops early leaves no summary of the earlier, shorter run."""
  config = tiny_config
  config.total_steps, config.max_nonfinite_steps = 4, 2
  loop.train(config, tmp_path, progress=False)
  assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 4
  config.total_steps = 8
  run = build_run(config)

  def train_batch(step):
    batch = run.dataset.train_batch(step)
    return {**batch, "weights": np.full_like(batch["weights"], np.nan)}

  poisoned = dataclasses.replace(run, dataset=dataclasses.replace(run.dataset,
                                                                   train_batch=train_batch))
  with pytest.raises(loop.DivergedError):
    loop.train_run(poisoned, tmp_path, progress=False)
  assert not (tmp_path / "summary.json").exists()


def test_a_finished_run_rerun_re_evaluates_and_rewrites_its_summary(tmp_path, tiny_config):
  config = tiny_config
  config.total_steps = 3
  first = loop.train(config, tmp_path, progress=False)
  (tmp_path / "summary.json").write_text('{"steps": 0, "final_eval_loss": 9.0}')
  again = loop.train(config, tmp_path, progress=False)
  assert json.loads((tmp_path / "summary.json").read_text()) == again
  for key in ("steps", "final_train_loss", "final_eval_loss", "params_sha256"):
    assert again[key] == first[key], key
