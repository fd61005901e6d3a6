"""The offline allocator study on synthetic logs whose answers are known in closed form."""

from __future__ import annotations

import numpy as np
import pytest

from trainlab.algorithms import allocator_study as study

BOUNDS = dict(min_rollouts=2, max_rollouts=14)


def _log(schedule_TxM, p_of_prompt, n=8):
  """A log in which every visit drew `n` rollouts with exactly p * n successes."""
  pool = np.asarray(schedule_TxM)
  rollouts = np.full(pool.shape, n)
  return pool, rollouts, np.asarray(p_of_prompt)[pool] * n


def test_true_rates_pool_all_logged_rollouts():
  pool = np.array([[0, 2], [2, 0]])
  got = study.true_success_rates(pool, [[4, 2], [6, 8]], [[1, 0], [3, 5]], num_prompts=4)
  np.testing.assert_allclose(got, [6 / 12, np.nan, 3 / 8, np.nan])


def test_uniform_is_closed_form_for_any_rates():
  p = np.array([0.0, 1.0, 0.25, 0.5, 0.75, 0.125])
  log = _log(np.tile(np.arange(6), (5, 1)), p)
  result = study.replay(*log, rollouts_per_prompt=8, allocators=["uniform"], **BOUNDS)
  uniform = result["uniform"]
  mixed = 1.0 - p**8 - (1.0 - p) ** 8
  np.testing.assert_allclose(uniform.expected_effective_prompts_T, mixed.sum(), rtol=1e-14)
  np.testing.assert_allclose(uniform.expected_effective_rollouts_T, 8 * mixed.sum(), rtol=1e-14)
  np.testing.assert_array_equal(uniform.spend_unsolved_T, 8)
  np.testing.assert_array_equal(uniform.spend_solved_T, 8)
  np.testing.assert_array_equal(uniform.spend_mixed_T, 32)
  summary = study.summarize(uniform)
  assert summary["histogram"] == [0] * 8 + [30]
  assert summary["effective_prompt_share"] == pytest.approx(mixed.mean(), rel=1e-14)
  assert summary["unsolved_share"] == pytest.approx(1 / 6)


def test_oracle_exact_vs_official_fallback_by_hand():
  """p = (1/2, 0), budget 2 x 8 = 16, N in [2, 14]. Exact: the useful prompt gets all it can,
  (14, 2). Official: its cost estimate int(log 0.1 / log 0.5) = 3 is below the 12 rollouts
  above the minimum, so 12 - 3 = 9 go to the p = 0 prompt and the DP places 3: (5, 11)."""
  log = _log(np.tile([0, 1], (3, 1)), [0.5, 0.0])
  result = study.replay(*log, rollouts_per_prompt=8, estimator="oracle", **BOUNDS)
  np.testing.assert_array_equal(result["exact"].allocations_TxM, [[14, 2]] * 3)
  np.testing.assert_array_equal(result["official"].allocations_TxM, [[5, 11]] * 3)
  np.testing.assert_array_equal(result["uniform"].allocations_TxM, [[8, 8]] * 3)
  for name, n, unsolved in (("exact", 14, 2), ("official", 5, 11), ("uniform", 8, 8)):
    r = result[name]
    np.testing.assert_allclose(r.expected_effective_prompts_T, 1 - 2 * 0.5**n, rtol=1e-15)
    np.testing.assert_allclose(r.expected_effective_rollouts_T, n * (1 - 2 * 0.5**n),
                               rtol=1e-15)
    np.testing.assert_array_equal(r.spend_unsolved_T, unsolved)
    np.testing.assert_array_equal(r.spend_mixed_T, n)
    assert not r.fallback_skipped_T.any()


def test_authors_estimator_waits_for_8_rewards_then_feeds_the_allocators():
  """Pool p = (0, 0, 1, 1), two prompts a step, 8 rollouts by default. Epoch 1: no history,
  everyone gets 8. Epoch 2: 8 rewards each, exact estimates 0 and 1; both knapsack
  allocators give the p = 1 prompt 2 and the p = 0 prompt the other 14."""
  log = _log([[0, 2], [1, 3], [2, 0], [3, 1]], [0.0, 0.0, 1.0, 1.0])
  result = study.replay(*log, rollouts_per_prompt=8, min_rollouts=2, max_rollouts=128)
  for name in ("exact", "official"):
    np.testing.assert_array_equal(result[name].allocations_TxM,
                                  [[8, 8], [8, 8], [2, 14], [2, 14]])
    np.testing.assert_array_equal(result[name].spend_unsolved_T, [8, 8, 14, 14])
    np.testing.assert_array_equal(result[name].expected_effective_prompts_T, 0.0)
  np.testing.assert_array_equal(result["uniform"].spend_unsolved_T, 8)


def test_last_epoch_estimator_is_valid_after_one_visit_recent_after_8_rewards():
  log = _log(np.tile([0, 1], (3, 1)), [0.0, 1.0], n=4)
  kwargs = dict(rollouts_per_prompt=4, min_rollouts=2, max_rollouts=128, allocators=["exact"])
  recent = study.replay(*log, estimator="recent", **kwargs)["exact"]
  last = study.replay(*log, estimator="last_epoch", **kwargs)["exact"]
  np.testing.assert_array_equal(recent.allocations_TxM, [[4, 4], [4, 4], [6, 2]])
  np.testing.assert_array_equal(last.allocations_TxM, [[4, 4], [6, 2], [6, 2]])


def test_sampled_effective_counts_agree_with_their_expectation():
  p = np.linspace(0.05, 0.95, 16)
  steps = 200
  log = _log(np.tile(np.arange(16), (steps, 1)), p)
  uniform = study.replay(*log, rollouts_per_prompt=8, allocators=["uniform"], seed=3,
                         **BOUNDS)["uniform"]
  q = 1.0 - p**8 - (1.0 - p) ** 8  # each group is mixed with probability q, independently
  se = np.sqrt((q * (1 - q)).sum() / steps)
  assert abs(uniform.sampled_effective_prompts_T.mean() - q.sum()) < 4 * se


def test_uniforms_are_counter_based():
  a = study.uniforms(0, 5, [3, 7], [4, 2])
  b = study.uniforms(0, 5, [7, 3], [9, 6])
  np.testing.assert_array_equal(a[:4], b[9:13])  # prompt 3, rollouts 0..3, in any group order
  np.testing.assert_array_equal(a[4:], b[:2])
  assert len(set(a.tolist())) == 6 and np.all((a >= 0) & (a < 1))
  big = study.uniforms(1, 0, np.arange(100), np.full(100, 100))
  assert abs(big.mean() - 0.5) < 4 * np.sqrt(1 / 12 / big.size)
  assert not np.array_equal(study.uniforms(1, 0, [3], [4]), study.uniforms(2, 0, [3], [4]))


def test_official_without_a_prompt_for_its_surplus_skips_the_fallback():
  """Both prompts useful, cost estimate 3 + 3 < 12: the official fallback would divide by
  zero; the step is allocated by the DP alone, which splits 12 evenly between equal prompts."""
  log = _log(np.tile([0, 1], (2, 1)), [0.5, 0.5])
  official = study.replay(*log, rollouts_per_prompt=8, estimator="oracle",
                          allocators=["official"], **BOUNDS)["official"]
  np.testing.assert_array_equal(official.allocations_TxM, [[8, 8]] * 2)
  np.testing.assert_array_equal(official.fallback_skipped_T, [1, 1])
