"""GRPO trainer: group advantages and the clipped token-mean loss against NumPy float64
transcriptions, static shapes across allocations, allocation within budget, end-to-end runs."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainlab.data import arithmetic
from experiments import rl
from trainlab.algorithms import grpo
from trainlab.training import grpo as grpo_training


def _np_advantages(rewards, groups, valid, eps=1e-6):
  """GRPO eq. 3: (r - mean of its group) / (unbiased std of its group + eps); 0 on padding."""
  out = np.zeros(len(rewards))
  for g in set(groups[valid].tolist()):
    members = valid & (groups == g)
    r = rewards[members].astype(np.float64)
    std = r.std(ddof=1) if r.size > 1 else 0.0  # one rollout: centered reward is 0 anyway
    out[members] = (r - r.mean()) / (std + eps)
  return out


def test_advantages_are_group_normalized():
  rng = np.random.default_rng(0)
  counts = np.array([2, 5, 8, 3, 1, 6])
  group, valid = grpo.rollout_buffer(counts, 32)
  rewards = (rng.random(32) < 0.5).astype(np.float32) * valid
  rewards[:2] = [1.0, 1.0]  # an all-equal group has zero advantage
  got = grpo.group_advantages(jnp.asarray(rewards), jnp.asarray(group), jnp.asarray(valid),
                              len(counts))
  want = _np_advantages(rewards, group, valid)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(got)[~valid] == 0.0)
  # Non-degenerate groups have mean 0 and unbiased variance ~1 after normalization.
  for g in (1, 2, 5):
    a = np.asarray(got)[valid & (group == g)]
    if np.ptp(rewards[valid & (group == g)]) > 0:
      assert abs(a.mean()) < 1e-5 and abs(a.var(ddof=1) - 1.0) < 1e-3


def test_clipped_loss_matches_numpy():
  rng = np.random.default_rng(1)
  logp = np.log(rng.uniform(0.05, 1.0, (6, 5)))
  old = logp + rng.normal(0.0, 0.4, (6, 5))
  adv = rng.normal(size=6)
  mask = (rng.random((6, 5)) < 0.7).astype(np.float64)
  eps = 0.2
  ratio = np.exp(logp - old)
  surrogate = np.minimum(ratio * adv[:, None], np.clip(ratio, 1 - eps, 1 + eps) * adv[:, None])
  want = -(surrogate * mask).sum() / mask.sum()
  loss, clip_frac = grpo.clipped_token_loss(
      *(jnp.asarray(x, jnp.float32) for x in (logp, old, adv, mask)), eps)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  is_clipped = (ratio * adv[:, None]) > np.clip(ratio, 1 - eps, 1 + eps) * adv[:, None]
  np.testing.assert_allclose(float(clip_frac), (is_clipped * mask).sum() / mask.sum(), rtol=1e-6)


def test_answer_mask_stops_after_first_eos():
  e, d = arithmetic.EOS, 3
  answers = jnp.array([[d, e, d, e], [e, d, d, d], [d, d, d, d]])
  np.testing.assert_array_equal(np.asarray(grpo.answer_mask(answers, arithmetic.EOS)),
                                [[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]])


def test_is_correct_checks_up_to_eos():
  problems = arithmetic.make_problems(0, "pool", 0, 3, max_add_digits=2, max_mul_digits=1)
  generated = problems.answers_NxA.copy()
  generated[0, problems.answer_len_N[0]:] = 5  # tokens after EOS do not matter
  generated[1, 0] = (generated[1, 0] % 10) + 1  # a wrong first digit
  np.testing.assert_array_equal(
      arithmetic.is_correct(generated, problems.answers_NxA, problems.answer_len_N), [1, 0, 1])
  a, op, b = problems.text[2].split("=")[0].partition("*") if "*" in problems.text[2] \
      else problems.text[2].split("=")[0].partition("+")
  value = int(a) * int(b) if op == "*" else int(a) + int(b)
  assert problems.text[2].split("=")[1] == str(value)[::-1] + "."


@pytest.mark.parametrize("seed", range(5))
def test_knapsack_allocation_respects_total_and_buffer(seed):
  config = rl.get_config("size=test,allocation=knapsack")
  rng = np.random.default_rng(seed)
  rates = rng.choice([0.0, 1.0, 0.1, 0.5, 0.9, np.nan], size=32)
  config.rl.prompts_per_step = 32
  config.task.pool_size = 32
  budget = 32 * config.rl.rollouts_per_prompt
  trainer = grpo_training.GRPOTrainer(config)
  counts = trainer.allocate(rates)
  assert counts.sum() <= budget and counts.min() >= config.rl.min_rollouts
  assert np.all(counts[np.isnan(rates)] == config.rl.rollouts_per_prompt)
  assert np.all(counts[(rates == 0.0) | (rates == 1.0)] <= config.rl.max_rollouts)
  group, valid = grpo.rollout_buffer(counts, budget)
  np.testing.assert_array_equal(np.bincount(group[valid], minlength=32), counts)
  assert valid.sum() == counts.sum()
  config.allocation = "uniform"
  uniform = grpo_training.GRPOTrainer(config).allocate(rates)
  assert uniform.sum() == budget


def test_one_compile_serves_every_allocation():
  config = rl.get_config("size=test,allocation=knapsack")
  trainer = grpo_training.GRPOTrainer(config)
  state = trainer.init_state()
  pool = np.arange(config.rl.prompts_per_step)
  rng = np.random.default_rng(0)
  for step, counts in enumerate([np.array([8, 8, 8, 8]), np.array([2, 2, 3, 25]),
                                 np.array([2, 2, 2, 2])]):
    group, valid = grpo.rollout_buffer(counts, trainer.buffer_size)
    prompts = trainer.pool.prompts_NxP[pool[group]]
    answers, old_logp = trainer.sample(state.params, prompts, jax.random.PRNGKey(step))
    rewards = (rng.random(trainer.buffer_size) < 0.5).astype(np.float32) * valid
    state, metrics = trainer.rl_step(state, prompts, np.asarray(answers), old_logp, rewards,
                                     group, valid)
    assert np.isfinite(float(metrics["loss"]))
  assert trainer.sample._cache_size() == 1
  assert trainer.rl_step._cache_size() == 1
  assert int(state.step) == 3


def test_end_to_end_run_writes_metrics_and_is_deterministic(run_module, tmp_path):
  result = run_module("launch.rl", "--config", "experiments/rl.py:size=test,allocation=knapsack",
                      "--workdir", str(tmp_path / "run"))
  assert result.returncode == 0, result.stderr[-2000:]
  records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  config = rl.get_config("size=test,allocation=knapsack")
  assert [r["step"] for r in records] == list(range(config.total_steps + 1))
  budget = config.rl.prompts_per_step * config.rl.rollouts_per_prompt
  for r in records[1:]:
    assert 0.0 <= r["effective_rollout_ratio"] <= 1.0 and np.isfinite(r["loss"])
    assert r["rollouts_used"] <= budget
    assert sum(v for k, v in r.items() if k.startswith("alloc_hist/")) == \
        config.rl.prompts_per_step
  assert "heldout_pass_rate" in records[0] and "heldout_pass_rate" in records[-1]
  summary = json.loads((tmp_path / "run" / "summary.json").read_text())
  again = grpo_training.train(config, tmp_path / "again", progress=False)
  assert again["params_sha256"] == summary["params_sha256"]


@pytest.mark.parametrize("override", ["--config.allocation=greedy",
                                      "--config.task.pool_size=15"])
def test_bad_config_is_one_line_exit_2(run_module, tmp_path, override):
  result = run_module("launch.rl", "--config", "experiments/rl.py:size=test", override,
                      "--workdir", str(tmp_path))
  assert result.returncode == 2
  assert len(result.stderr.strip().splitlines()) == 1 and "error:" in result.stderr
