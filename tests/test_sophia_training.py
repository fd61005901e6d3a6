"""Sophia in the trainer: Hessian refresh order, one compile, metrics, device-count invariance."""

from __future__ import annotations

import types

import json

import jax
import numpy as np
import optax
import pytest

from trainlab.algorithms import sophia
from trainlab.errors import UsageError
from experiments import lm
from trainlab.training.run import build_run
from trainlab.training.trainer import Trainer
from trainlab.training import sophia_support
from trainlab.training import loop

INTERVAL = 3


def _sophia_config(steps: int, estimator: str = "gnb"):
  config = lm.get_config("size=test,opt=sophia")
  config.total_steps = steps
  config.optimizer.update_interval = INTERVAL
  config.optimizer.estimator = estimator
  config.schedule.warmup_steps = 1
  config.log.every_steps = 1
  config.eval.every_steps = 0
  config.eval.num_batches = 1
  return config


def _read_jsonl(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_sophia_g_trains_end_to_end_and_logs_its_health_metrics(tmp_path):
  config = _sophia_config(steps=9)
  summary = loop.train(config, tmp_path, progress=False)
  records = _read_jsonl(tmp_path / "metrics.jsonl")
  assert [r["step"] for r in records] == list(range(1, 10))
  assert all(np.isfinite(r["train_loss"]) for r in records)
  assert records[-1]["train_loss"] < records[0]["train_loss"]
  assert all(0.0 <= r["win_rate"] <= 1.0 for r in records)
  # h is zero until the first refresh, after the update of step INTERVAL - 1.
  norms = [r["hessian_norm"] for r in records]
  assert norms[:INTERVAL - 1] == [0.0] * (INTERVAL - 1) and norms[INTERVAL - 1] > 0
  assert np.isfinite(summary["final_eval_loss"]) and summary["skipped_steps"] == 0


def test_hessian_refreshes_exactly_after_steps_k_minus_1_2k_minus_1_with_one_trace(monkeypatch):
  traces = []
  original = sophia.gnb_hessian_grads
  monkeypatch.setattr(sophia, "gnb_hessian_grads",
                      lambda *a, **k: traces.append(1) or original(*a, **k))
  trainer = Trainer(build_run(_sophia_config(steps=8)))
  state = trainer.init_state()
  changed = []
  for step in range(8):
    before = jax.device_get(optax.tree_utils.tree_get(state.opt_state, "hessian"))
    state, metrics = trainer.train_step(state, trainer.step_batch(step))
    after = jax.device_get(optax.tree_utils.tree_get(state.opt_state, "hessian"))
    changed.append(any(not np.array_equal(a, b) for a, b in
                       zip(jax.tree.leaves(before), jax.tree.leaves(after))))
    assert np.isfinite(float(metrics["train_loss"])) and 0 <= float(metrics["win_rate"]) <= 1
  assert changed == [step % INTERVAL == INTERVAL - 1 for step in range(8)]
  assert len(traces) == 1  # both cond branches come from one trace of the step
  assert trainer.train_step._cache_size() == 1


@pytest.mark.slow  # ~35 s; the 8-device state-sharding check in test_sophia.py stays in CI
def test_eight_devices_give_the_first_losses_of_one_device(run_module, tmp_path):
  steps = 7  # two refreshes (after steps 2 and 5) feed into the losses of steps 3..6
  overrides = ["--config.total_steps=7", f"--config.optimizer.update_interval={INTERVAL}",
               "--config.schedule.warmup_steps=1", "--config.log.every_steps=1",
               "--config.eval.every_steps=0", "--config.eval.num_batches=1"]
  result = run_module("launch.train", "--config", "experiments/lm.py:size=test,opt=sophia",
                      *overrides, "--workdir", str(tmp_path / "eight"),
                      env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  assert result.returncode == 0, result.stderr[-2000:]
  assert json.loads((tmp_path / "eight" / "config.json").read_text())["mesh"]["data"] == -1
  config = _sophia_config(steps=steps)
  loop.train(config, tmp_path / "one", progress=False)
  eight = _read_jsonl(tmp_path / "eight" / "metrics.jsonl")
  one = _read_jsonl(tmp_path / "one" / "metrics.jsonl")
  for key in ("train_loss", "hessian_norm", "win_rate"):
    np.testing.assert_allclose([r[key] for r in eight], [r[key] for r in one], rtol=2e-4,
                               atol=1e-6, err_msg=key)
  assert eight[-1]["hessian_norm"] > eight[INTERVAL]["hessian_norm"] > 0


def test_sophia_batch_size_is_derived_or_checked():
  config = _sophia_config(steps=2)
  build_run(config)  # batch_size=0: derived, 8 sequences x 32 tokens
  config.optimizer.batch_size = 8 * 32
  build_run(config)
  config.optimizer.batch_size = 8
  with pytest.raises(UsageError, match="optimizer.batch_size=8 must be the 256 tokens"):
    build_run(config)


@pytest.mark.parametrize("key,value,message", [
    ("update_interval", 0, "update_interval=0"),
    ("estimator", "newton", "estimator='newton'"),
    ("hessian_clip_norm", -1.0, "hessian_clip_norm=-1.0"),
])
def test_bad_sophia_trainer_keys_are_usage_errors(key, value, message):
  config = _sophia_config(steps=2)
  config.optimizer[key] = value
  with pytest.raises(UsageError, match=message):
    build_run(config)


def test_hessian_clip_norm_is_rejected_for_other_optimizers():
  config = lm.get_config("size=test,opt=adamw")
  config.optimizer.hessian_clip_norm = 1.0
  with pytest.raises(UsageError, match="optimizer.hessian_clip_norm is not an argument of "
                     "optimizer 'adamw'"):
    build_run(config)



def test_hessian_batch_size_estimates_on_fewer_rows_with_one_compile():
  config = _sophia_config(steps=2 * INTERVAL)
  config.optimizer.hessian_batch_size = config.batch_size // 2
  trainer = Trainer(build_run(config))
  state = trainer.init_state()
  for step in range(2 * INTERVAL):
    batch = trainer.step_batch(step)
    assert batch["hessian"]["inputs"].shape[0] == config.batch_size // 2
    state, metrics = trainer.train_step(state, batch)
  assert float(metrics["hessian_norm"]) > 0
  assert trainer.train_step._cache_size() == 1
  # rho * batch_size * h estimates the Gauss-Newton diagonal: batch_size counts the estimate's
  # tokens, not the training batch's.
  assert trainer.run.support.tokens == config.batch_size // 2 * config.data.seq_len


@pytest.mark.parametrize("value,num_devices,message", [
    (-2, 1, "hessian_batch_size=-2 must be an integer"),
    (10**6, 1, "hessian_batch_size=1000000 must be an integer"),
    (3, 2, "hessian_batch_size=3 is not divisible by the 2 batch shards"),
])
def test_bad_hessian_batch_size_is_a_usage_error(value, num_devices, message):
  config = _sophia_config(steps=2)
  config.optimizer.hessian_batch_size = value
  mesh = types.SimpleNamespace(shape={"data": num_devices, "fsdp": 1, "tensor": 1})
  with pytest.raises(UsageError, match=message):
    sophia_support.SophiaSupport(config, mesh)
