"""End to end: a tiny run leaves its files, reproduces its hash, and survives non-finite steps."""

from __future__ import annotations

import dataclasses

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

from trainlab.training.run import build_run
from trainlab.training.trainer import Trainer
from trainlab.training import loop

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
    assert [r["step"] for r in records] == [4, 8, 12]
    for key in ("train_loss", "lr", "grad_norm", "update_norm", "step_time"):
      assert all(np.isfinite(r[key]) for r in records), key
    assert "eval_loss" in records[-1] and "eval_loss" not in records[0]
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
