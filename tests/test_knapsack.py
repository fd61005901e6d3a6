"""Tests for algorithms.knapsack against brute force, NumPy float64 math and official outputs.

tests/testdata/knapsack_official.json holds outputs of the official
`sampling_budget_by_knapsack` (liziniu/KnapsackRL, commit and command in its "source").
"""

from __future__ import annotations

import itertools
import json
import pathlib

import numpy as np
import pytest

from trainlab.algorithms import knapsack

_OFFICIAL = json.loads(
    (pathlib.Path(__file__).parent / "testdata" / "knapsack_official.json").read_text())


def _value(n, p):
  """V(n, p) of Li et al. (2025), Eq. 5, transcribed in float64."""
  n = np.asarray(n, dtype=np.float64)
  p = np.asarray(p, dtype=np.float64)
  return (1.0 - np.power(p, n) - np.power(1.0 - p, n)) * p * (1.0 - p) ** 2


def _objective(rollouts, p, valid):
  return float(np.sum(np.where(valid, _value(rollouts, p), 0.0)))


def _random_case(rng, max_prompts, max_width):
  m = int(rng.integers(1, max_prompts + 1))
  lo = int(rng.integers(1, 4))
  hi = lo + int(rng.integers(0, max_width + 1))
  kind = rng.random(m)
  p = np.where(kind < 0.15, 0.0, np.where(kind < 0.3, 1.0, rng.random(m)))
  p = np.where((kind > 0.3) & (kind < 0.45), rng.integers(1, 16, m) / 16, p)  # repeated p: ties
  valid = rng.random(m) > 0.15
  default = int(rng.integers(lo, hi + 1))
  needed = int(valid.sum()) * lo + int((~valid).sum()) * default
  budget = needed + int(rng.integers(0, m * (hi - lo) + 8))
  return p, valid, lo, hi, default, budget


def _check_common(out, p, valid, lo, hi, default, budget):
  assert out.dtype == np.int64
  assert out.sum() <= budget
  assert np.all(out[~valid] == default)
  assert np.all((out[valid] >= lo) & (out[valid] <= hi))
  assert np.all(out[valid & (p == 1.0)] == lo)
  useful = valid & (p > 0.0) & (p < 1.0)
  zero = valid & (p == 0.0)
  if np.any(out[zero] > lo):  # surplus reaches p = 0 only once the useful prompts are full
    assert np.all(out[useful] == hi)


def test_rollout_value_hand_values():
  np.testing.assert_allclose(knapsack.rollout_value(2, 0.5), 0.0625, rtol=1e-15)
  np.testing.assert_allclose(knapsack.rollout_value(3, 0.25),
                             (1 - 1 / 64 - 27 / 64) * 0.25 * 9 / 16, rtol=1e-15)
  assert knapsack.rollout_value(1, 0.3) == pytest.approx(0.0, abs=1e-17)
  np.testing.assert_array_equal(knapsack.rollout_value([4, 8], [0.0, 1.0]), [0.0, 0.0])
  n = np.arange(1, 10)[:, None]
  p = np.linspace(0.0, 1.0, 7)[None, :]
  got = knapsack.rollout_value(n, p)
  assert got.shape == (9, 7)
  np.testing.assert_allclose(got, _value(n, p), rtol=1e-14, atol=1e-18)


def test_value_is_concave_and_increasing_in_n():
  """Increments V(n+1)-V(n) = p^2 q^3 (p^(n-1) + q^(n-1)) are positive and non-increasing."""
  p = np.linspace(0.0, 1.0, 4001)[1:-1, None]
  n = np.arange(1, 301)[None, :]
  q = 1.0 - p
  closed_form = p**2 * q**3 * (p ** (n - 1.0) + q ** (n - 1.0))
  assert np.all(closed_form > 0)
  assert np.all(np.diff(closed_form, axis=1) <= 0)
  used = knapsack._marginal_gain(p, q, n)  # the expression the water-filling ranks
  assert np.all(np.diff(used, axis=1) <= 0)
  np.testing.assert_allclose(used, closed_form, rtol=1e-14)
  diffs = _value(n + 1, p) - _value(n, p)
  np.testing.assert_allclose(diffs, closed_form, rtol=1e-6, atol=1e-16)


@pytest.mark.parametrize("case", _OFFICIAL["cases"], ids=lambda c: c["name"])
def test_official_reproduces_authors_code(case):
  kwargs = dict(min_rollouts=case["min_rollouts"], max_rollouts=case["max_rollouts"],
                default_rollouts=case["default_rollouts"], valid=case["valid"],
                method="official", allow_fallback=case["allow_fallback"])
  if "error" in case:
    with pytest.raises(ValueError, match="total_budget"):
      knapsack.allocate_rollouts(case["success_rates"], case["total_budget"], **kwargs)
    return
  out = knapsack.allocate_rollouts(case["success_rates"], case["total_budget"], **kwargs)
  np.testing.assert_array_equal(out, case["rollouts"])


def test_exact_matches_brute_force():
  rng = np.random.default_rng(0)
  for _ in range(300):
    p, valid, lo, hi, default, budget = _random_case(rng, max_prompts=4, max_width=4)
    out = knapsack.allocate_rollouts(p, budget, min_rollouts=lo, max_rollouts=hi,
                                     default_rollouts=default, valid=valid)
    _check_common(out, p, valid, lo, hi, default, budget)
    free = budget - int((~valid).sum()) * default
    best = -np.inf
    for combo in itertools.product(range(lo, hi + 1), repeat=int(valid.sum())):
      if sum(combo) <= free:
        best = max(best, float(np.sum(_value(np.array(combo), p[valid]))))
    assert _objective(out, p, valid) >= best - 1e-13


def test_exact_spends_surplus_on_zero_prompts():
  p = np.array([0.0, 0.5, 0.0, 1.0, 0.0, 0.25])
  valid = np.array([True, True, True, True, True, False])
  out = knapsack.allocate_rollouts(p, 8 + 2 * 4 + 8 + 7, min_rollouts=2, max_rollouts=8,
                                   default_rollouts=8, valid=valid)
  # 31 - 18 = 13 left above the minima: 6 fill prompt 1, then 7 over three p = 0 prompts.
  np.testing.assert_array_equal(out, [5, 8, 4, 2, 4, 8])
  out = knapsack.allocate_rollouts(p, 1000, min_rollouts=2, max_rollouts=8,
                                   default_rollouts=8, valid=valid)
  np.testing.assert_array_equal(out, [8, 8, 8, 2, 8, 8])


def test_exact_ties_go_to_lower_index():
  out = knapsack.allocate_rollouts([0.5, 0.5, 0.5], 9, min_rollouts=2, max_rollouts=10)
  np.testing.assert_array_equal(out, [3, 3, 3])
  out = knapsack.allocate_rollouts([0.5, 0.5, 0.5], 8, min_rollouts=2, max_rollouts=10)
  np.testing.assert_array_equal(out, [3, 3, 2])


def test_exact_matches_dp_on_medium_cases():
  rng = np.random.default_rng(1)
  for _ in range(12):
    p, valid, lo, hi, default, budget = _random_case(rng, max_prompts=40, max_width=30)
    exact = knapsack.allocate_rollouts(p, budget, min_rollouts=lo, max_rollouts=hi,
                                       default_rollouts=default, valid=valid)
    dp = knapsack.allocate_rollouts(p, budget, min_rollouts=lo, max_rollouts=hi,
                                    default_rollouts=default, valid=valid, method="dp")
    for out in (exact, dp):
      _check_common(out, p, valid, lo, hi, default, budget)
    assert _objective(exact, p, valid) == pytest.approx(_objective(dp, p, valid), rel=1e-12,
                                                        abs=1e-15)


def test_exact_matches_sorted_marginal_gains_at_scale():
  """Top-K of all marginal gains (a full sort in float64) on 3,000 prompts with many ties."""
  rng = np.random.default_rng(2)
  m, lo, hi = 3000, 2, 128
  p = np.where(rng.random(m) < 0.5, rng.integers(0, 17, m) / 16, rng.random(m))
  useful = (p > 0) & (p < 1)
  n = np.arange(lo, hi)[None, :]
  gains = _value(n + 1, p[useful, None]) - _value(n, p[useful, None])
  flat = np.sort(gains.ravel())[::-1]
  for budget in (m * lo + 1, m * 8, m * 8 + 777, m * 40, m * lo + useful.sum() * (hi - lo) - 3):
    out = knapsack.allocate_rollouts(p, int(budget), min_rollouts=lo, max_rollouts=hi)
    _check_common(out, p, np.ones(m, bool), lo, hi, 8, budget)
    assert out.sum() == budget
    expected = float(np.sum(_value(lo, p[useful]))) + float(flat[:budget - m * lo].sum())
    assert _objective(out, p, np.ones(m, bool)) == pytest.approx(expected, rel=1e-11)


def test_budget_above_all_maxima():
  p = np.array([0.3, 0.0, 1.0, 0.9])
  out = knapsack.allocate_rollouts(p, 10_000, min_rollouts=2, max_rollouts=16)
  np.testing.assert_array_equal(out, [16, 16, 2, 16])
  out = knapsack.allocate_rollouts(p, 10_000, min_rollouts=2, max_rollouts=16, method="dp")
  np.testing.assert_array_equal(out, [16, 16, 2, 16])


@pytest.mark.parametrize("method", ["exact", "dp", "official"])
def test_budget_below_minimum_raises(method):
  with pytest.raises(ValueError, match="total_budget"):
    knapsack.allocate_rollouts([0.5, 0.2, 0.0], 5, min_rollouts=2, method=method)
  with pytest.raises(ValueError, match="total_budget"):
    knapsack.allocate_rollouts([0.5, 0.2], 9, min_rollouts=2, default_rollouts=8,
                               valid=[True, False], method=method)


@pytest.mark.parametrize("kwargs, match", [
    (dict(success_rates=[0.5, 1.5]), "success_rates"),
    (dict(success_rates=[0.5, -0.1]), "success_rates"),
    (dict(success_rates=[0.5, float("nan")]), "success_rates"),
    (dict(success_rates=[[0.5]]), "success_rates"),
    (dict(min_rollouts=9, max_rollouts=8), "max_rollouts"),
    (dict(min_rollouts=0), "min_rollouts"),
    (dict(default_rollouts=200, valid=[True, False]), "default_rollouts"),
    (dict(default_rollouts=1, valid=[False, False]), "default_rollouts"),
    (dict(method="greedy"), "method"),
    (dict(valid=[True]), "valid"),
    (dict(total_budget=100.5), "total_budget"),
])
def test_bad_arguments_raise(kwargs, match):
  args = dict(success_rates=[0.5, 0.2], total_budget=100)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    knapsack.allocate_rollouts(args.pop("success_rates"), args.pop("total_budget"), **args)


def test_default_rollouts_follow_the_bounds_and_are_checked_only_when_used():
  """Issue 13: `min_rollouts=2, max_rollouts=4` works although 8 is outside the bounds."""
  p = [0.5, 0.2, 0.0, 1.0]
  # Every prompt has history: the allocation is the one the bounds alone define.
  out = knapsack.allocate_rollouts(p, 10, min_rollouts=2, max_rollouts=4)
  # Two units above the floor of 2: marginal gains p^2 q^3 (p^(n-1) + q^(n-1)) at n = 2 are
  # 1/32 (p = 0.5) and 0.02048 (p = 0.2), then 1/64 for p = 0.5 at n = 3.
  np.testing.assert_array_equal(out, [3, 3, 2, 2])
  np.testing.assert_array_equal(
      knapsack.allocate_rollouts(p, 10, min_rollouts=2, max_rollouts=4, default_rollouts=200),
      out)
  # Without history a prompt gets min(max(8, min_rollouts), max_rollouts) = 4 here.
  out = knapsack.allocate_rollouts(p, 12, min_rollouts=2, max_rollouts=4,
                                   valid=[True, True, True, False])
  np.testing.assert_array_equal(out, [3, 3, 2, 4])
  out = knapsack.allocate_rollouts(p, 40, min_rollouts=10, max_rollouts=16,
                                   valid=[False, True, True, True])
  assert out[0] == 10


def test_effective_gradient_ratio_hand_cases():
  groups = [np.array([1.0, 1.0, 1.0]), [0.0, 1.0], np.zeros(5), [0.0, 0.0, 0.0, 1.0], [1.0]]
  prompt_share, rollout_share = knapsack.effective_gradient_ratio(groups)
  assert prompt_share == pytest.approx(2 / 5)
  assert rollout_share == pytest.approx(6 / 15)
  assert knapsack.effective_gradient_ratio([[0.2, 0.7]]) == (1.0, 1.0)
  assert knapsack.effective_gradient_ratio([[1, 1], [0, 0, 0]]) == (0.0, 0.0)
  with pytest.raises(ValueError, match="rewards_by_prompt"):
    knapsack.effective_gradient_ratio([])


def test_dense_and_banded_water_filling_agree():
  """Both threshold searches apply the same tie rule, so they return the same counts."""
  rng = np.random.default_rng(3)
  for _ in range(20):
    m = int(rng.integers(1, 300))
    lo = int(rng.integers(1, 4))
    hi = lo + int(rng.integers(1, 130))
    p = np.where(rng.random(m) < 0.5, rng.integers(1, 16, m) / 16, rng.uniform(0.01, 0.99, m))
    budget = int(rng.integers(1, m * (hi - lo)))
    np.testing.assert_array_equal(knapsack._waterfill_dense(p, lo, hi, budget),
                                  knapsack._waterfill_banded(p, lo, hi, budget))
