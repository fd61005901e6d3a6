"""Knapsack-RL rollout allocation (Li et al., 2025, "Knapsack RL", arXiv 2509.25849).

Each prompt i with success rate p_i gets N_i rollouts, chosen to maximize

  sum_i V(N_i, p_i),  V(N, p) = (1 - p^N - (1 - p)^N) * p * (1 - p)^2

subject to sum_i N_i <= N_total and N_low <= N_i <= N_up. V is the probability that a
GRPO group of N rollouts has a non-zero advantage times the paper's information gain.

Concavity. The marginal gain of one more rollout is

  V(n + 1, p) - V(n, p) = p^2 (1 - p)^3 * (p^(n-1) + (1 - p)^(n-1)),

positive and strictly decreasing in n >= 1 for every p in (0, 1), since both powers shrink.
So V is strictly concave and increasing in n, and with unit costs the exact optimum is the
set of the largest marginal gains (water-filling): pick the threshold lambda such that the
units with gain >= lambda fill the budget. The gain is computed by one fixed float
expression (`_marginal_gain`) that stays non-increasing in n in floating point (checked on a
grid of 4,000 p by 300 n in the tests), so the greedy choice is exact for that objective.

Methods of `allocate_rollouts`:
  "exact":    the water-filling optimum, found by a threshold search, no DP.
  "dp":       a plain dynamic program over the budget for the same objective (slow
              reference).
  "official": emulation of `sampling_budget_by_knapsack` in liziniu/KnapsackRL
              (verl/trainer/ppo/exploration_utils.py, commit ca5d5f5), quirks included:
              its DP scores "no extra rollouts" as 0 instead of V(N_low) and must fill its
              budget, so it is not the optimum of its own objective. It follows the code as
              run with numba installed (vLLM brings it): float32 success rates, numba's
              square-and-multiply powers (bit-exact), and for tiny DPs
              (items * budget * (N_up - N_low) <= 50,000) the pure-Python branch, whose
              powers we take from libm where numpy<2 used its SIMD pow: the last bit may
              differ there, which can only flip exact near-ties.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

_METHODS = ("exact", "official", "dp")


def rollout_value(n, p) -> np.ndarray:
  """V(n, p) = (1 - p^n - (1 - p)^n) * p * (1 - p)^2, broadcast over `n` and `p`."""
  n = np.asarray(n, dtype=np.float64)
  p = np.asarray(p, dtype=np.float64)
  q = 1.0 - p
  return (1.0 - p**n - q**n) * p * q**2


def allocate_rollouts(
    success_rates: Sequence[float] | np.ndarray,
    total_budget: int,
    *,
    min_rollouts: int = 2,
    max_rollouts: int = 128,
    default_rollouts: int | None = None,
    valid: Sequence[bool] | np.ndarray | None = None,
    method: str = "exact",
    allow_fallback: bool = True,
) -> np.ndarray:
  """Rollouts per prompt (int64 array) under a total budget.

  Args:
    success_rates: per-prompt success rate p_i in [0, 1], shape [M].
    total_budget: total rollouts N_total for the step.
    min_rollouts: N_low, for every prompt with history.
    max_rollouts: N_up.
    default_rollouts: rollouts of a prompt without enough history (`valid=False`); such
      prompts are left out of the optimization in every method, as officially. None: 8
      clipped into `[min_rollouts, max_rollouts]`. A value given is checked against those
      bounds only when some prompt lacks history (otherwise only "official" can read it,
      when no prompt is useful or has p = 0, as the official code does).
    valid: per-prompt bool, whether the prompt has enough history; default all True.
    method: "exact", "dp" or "official" (see module docstring).
    allow_fallback: "official" only: hand the budget above the cost estimate of the useful
      prompts to the p = 0 prompts, as officially.

  "exact" and "dp": prompts with p in {0, 1} get `min_rollouts`; prompts with 0 < p < 1 share
  the rest by the optimum of sum V. Equal marginal gains go to the lower prompt index first
  (exact). Budget left once every useful prompt is at `max_rollouts` is spread evenly over
  the valid p = 0 prompts in index order (the first `r` of them get one more), each capped
  at `max_rollouts`; anything beyond is left unspent (the total is at most the budget). The
  "dp" allocation reaches the same objective but may split ties differently.
  "official" returns the official allocation, which can exceed `max_rollouts` (fallback
  and leftover spreading) and treats invalid prompts as p = 0 in its fallback.

  Raises:
    ValueError: on bad arguments, a budget below the minimum
      (`min_rollouts` per valid prompt plus `default_rollouts` per invalid one), or, for
      "official", where the official code fails its own budget assertion.
  """
  p, is_valid, budget, default_rollouts = _validate(
      success_rates, total_budget, min_rollouts, max_rollouts, default_rollouts, valid, method)
  if method == "official":
    return _official(p, is_valid, budget, default_rollouts, min_rollouts, max_rollouts,
                     allow_fallback)
  rollouts = np.where(is_valid, min_rollouts, default_rollouts).astype(np.int64)
  useful = is_valid & (p > 0.0) & (p < 1.0)
  extra = budget - int(rollouts.sum())
  width = max_rollouts - min_rollouts
  n_units = int(useful.sum()) * width
  if extra >= n_units:
    rollouts[useful] = max_rollouts
    zero = np.flatnonzero(is_valid & (p == 0.0))
    if zero.size:
      surplus = extra - n_units
      share = surplus // zero.size + (np.arange(zero.size) < surplus % zero.size)
      rollouts[zero] += np.minimum(share, width)
    return rollouts
  solve = _waterfill if method == "exact" else _dp_exact
  rollouts[useful] += solve(p[useful], min_rollouts, max_rollouts, extra)
  return rollouts


def effective_gradient_ratio(
    rewards_by_prompt: Sequence[Sequence[float] | np.ndarray],
) -> tuple[float, float]:
  """Shares of prompts and of rollouts whose group rewards are not all equal.

  A GRPO group whose rewards are all equal has zero advantage and gives no gradient. Empty
  and single-rollout groups count as all-equal.

  Returns:
    (prompt_share, rollout_share).
  """
  groups = [np.asarray(r, dtype=np.float64).reshape(-1) for r in rewards_by_prompt]
  if not groups:
    raise ValueError("rewards_by_prompt must hold at least one group of rewards")
  sizes = np.array([g.size for g in groups])
  mixed = np.array([g.size > 1 and bool(np.any(g != g[0])) for g in groups])
  total = int(sizes.sum())
  rollout_share = float(sizes[mixed].sum() / total) if total else 0.0
  return float(mixed.mean()), rollout_share


def _validate(success_rates, total_budget, min_rollouts, max_rollouts, default_rollouts,
              valid, method):
  if method not in _METHODS:
    raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
  integers = [("min_rollouts", min_rollouts), ("max_rollouts", max_rollouts),
              ("total_budget", total_budget)]
  if default_rollouts is not None:
    integers.append(("default_rollouts", default_rollouts))
  for name, value in integers:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
      raise ValueError(f"{name} must be an integer, got {value!r}")
  if min_rollouts < 1:
    raise ValueError(f"min_rollouts must be >= 1, got {min_rollouts}")
  if max_rollouts < min_rollouts:
    raise ValueError(f"max_rollouts ({max_rollouts}) must be >= min_rollouts ({min_rollouts})")
  p = np.asarray(success_rates, dtype=np.float64)
  if p.ndim != 1:
    raise ValueError(f"success_rates must be 1-D, got shape {p.shape}")
  if not np.all((p >= 0.0) & (p <= 1.0)):
    raise ValueError("success_rates must lie in [0, 1] (no NaN)")
  if valid is None:
    is_valid = np.ones(p.shape, dtype=bool)
  else:
    is_valid = np.asarray(valid)
    if is_valid.shape != p.shape:
      raise ValueError(f"valid must have the shape of success_rates {p.shape}, "
                       f"got {is_valid.shape}")
    is_valid = is_valid.astype(bool)
  if default_rollouts is None:
    default_rollouts = min(max(8, min_rollouts), max_rollouts)
  elif not is_valid.all() and not min_rollouts <= default_rollouts <= max_rollouts:
    raise ValueError(f"default_rollouts ({default_rollouts}) must lie in "
                     f"[min_rollouts, max_rollouts] = [{min_rollouts}, {max_rollouts}] (it is "
                     "the rollouts of the prompts without history, valid=False)")
  needed = int(is_valid.sum()) * min_rollouts + int((~is_valid).sum()) * default_rollouts
  if total_budget < needed:
    raise ValueError(f"total_budget ({total_budget}) is below the minimum {needed} "
                     "(min_rollouts per valid prompt, default_rollouts per invalid one)")
  return p, is_valid, int(total_budget), int(default_rollouts)


_DENSE_UNITS = 1 << 18


def _marginal_gain(p: np.ndarray, q: np.ndarray, m: np.ndarray) -> np.ndarray:
  """V(m + 1, p) - V(m, p) = p^2 q^3 (p^(m-1) + q^(m-1)); non-increasing in m in floats too."""
  e = np.asarray(m - 1, dtype=np.float64)
  return ((p * p) * (q * q * q)) * (p**e + q**e)


def _waterfill(p: np.ndarray, lo: int, hi: int, budget: int) -> np.ndarray:
  """Extra rollouts (above `lo`) that take the `budget` largest marginal gains.

  Unit m (going from m to m + 1 rollouts, lo <= m < hi) of prompt i has gain g_i(m). The
  budget-th largest gain is the water level lambda: every unit above it is taken, and units
  equal to it go to the lower prompt index (then the lower m) first. Small problems select
  lambda among all units directly; large ones find it by bisection on log(lambda) with a
  closed-form count (no powers), bracket it by exact counts, and sort only the units between
  the brackets. Requires budget < len(p) * (hi - lo).
  """
  width = hi - lo
  if budget <= 0:
    return np.zeros(p.size, dtype=np.int64)
  if p.size * width <= _DENSE_UNITS:
    return _waterfill_dense(p, lo, hi, budget)
  return _waterfill_banded(p, lo, hi, budget)


def _waterfill_dense(p: np.ndarray, lo: int, hi: int, budget: int) -> np.ndarray:
  gains = _marginal_gain(p[:, None], 1.0 - p[:, None], np.arange(lo, hi)[None, :]).ravel()
  level = np.partition(gains, gains.size - budget)[gains.size - budget]
  above = gains > level
  ties = np.flatnonzero(gains == level)[:budget - int(above.sum())]  # row-major: index, m
  above[ties] = True
  return above.reshape(p.size, hi - lo).sum(axis=1)


def _waterfill_banded(p: np.ndarray, lo: int, hi: int, budget: int) -> np.ndarray:
  width = hi - lo
  # Prompts with equal p have equal gains: work on distinct values weighted by multiplicity.
  values, inverse, weight = np.unique(p, return_inverse=True, return_counts=True)
  q = 1.0 - values
  with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
    log_coef = np.log((values * values) * (q * q * q))
    log_a = np.log(np.maximum(values, q))

  def gain(i, m):
    return _marginal_gain(values[i], q[i], m)

  # Gains that underflow (p or q below ~1e-100) or with max(p, q) rounding to 1 get estimate
  # 0; the exact count repairs them.
  regular = np.isfinite(log_coef) & (log_a < 0.0)
  log_coef_r = np.where(regular, log_coef, 0.0)
  inv_log_a = np.where(regular, 1.0 / np.where(regular, log_a, -1.0), 0.0)
  weight_r = np.where(regular, weight, 0.0)

  def total(count, w):  # einsum: no BLAS threads, which contend on a loaded machine
    return np.einsum("i,i->", count, w)

  def estimate(log_lam):
    # max(p, q)^(m-1) >= lambda / coef guarantees gain >= lambda; the exact count is at most
    # one above this (log1p(r^e) <= -log(a) for e >= 1), up to float rounding.
    e = np.floor((log_lam - log_coef_r) * inv_log_a) + (2.0 - lo)
    return np.minimum(np.maximum(e, 0.0), float(width))

  def exact_count(log_lam):
    """Per value: the number of units with gain >= lambda (a prefix, gains decrease)."""
    lam = math.exp(log_lam)
    if lam == 0.0:
      return np.full(values.size, width, dtype=np.int64)
    count = np.where(regular, estimate(log_lam), 0.0).astype(np.int64)
    # The estimate is a lower bound up to rounding and at most one below the count. Check the
    # unit below and above it; only prompts moved by a check need a further look.
    dec = np.flatnonzero(count > 0)
    dec = dec[gain(dec, lo + count[dec] - 1) < lam]
    count[dec] -= 1
    inc = np.flatnonzero(count < width)
    inc = inc[gain(inc, lo + count[inc]) >= lam]
    count[inc] += 1
    suspect = np.union1d(dec[count[dec] > 0], inc[count[inc] < width])
    below_ok = gain(suspect, lo + np.maximum(count[suspect] - 1, 0)) >= lam
    above_ok = gain(suspect, lo + np.minimum(count[suspect], width - 1)) < lam
    below_ok |= count[suspect] == 0
    above_ok |= count[suspect] == width
    active = suspect[~(below_ok & above_ok)]
    low = np.zeros(values.size, dtype=np.int64)
    high = np.full(values.size, width, dtype=np.int64)
    while active.size:  # rare: rounding or p near 0 or 1
      mid = (low[active] + high[active] + 1) // 2
      ok = gain(active, lo + mid - 1) >= lam
      low[active] = np.where(ok, mid, low[active])
      high[active] = np.where(ok, high[active], mid - 1)
      count[active] = low[active]
      active = active[low[active] < high[active]]
    return count

  top = float(gain(np.arange(values.size), np.full(values.size, lo)).max())
  if top <= 0.0:  # every gain underflowed to 0: all units tie.
    c_lo, c_hi = np.full(values.size, width), np.zeros(values.size, dtype=np.int64)
  else:
    # Stage 1: bisection on log(lambda) with the closed-form count (cheap, approximate).
    bottom = float(gain(np.arange(values.size), np.full(values.size, hi - 1)).min())
    left = math.log(bottom) if bottom > 0.0 else math.log(top) - 800.0
    right = math.log(top) + 1e-9
    for _ in range(64):
      if right - left < 1e-13:
        break
      mid = 0.5 * (left + right)
      if total(estimate(mid), weight_r) >= budget:
        left = mid
      else:
        right = mid
    # Stage 2: exact counts with count(lam_lo) >= budget >= count(lam_hi), narrowed until
    # few units lie between the brackets (or only ties remain).
    step = 1e-9
    log_lo = left - step
    c_lo = exact_count(log_lo)
    while total(c_lo, weight) < budget:
      step *= 16.0
      log_lo = left - step
      c_lo = exact_count(log_lo)
    step, ceiling = 1e-6, math.log(top) + 1e-9  # count(ceiling) = 0
    log_hi = min(right + step, ceiling)
    c_hi = exact_count(log_hi)
    while total(c_hi, weight) > budget:
      step *= 16.0
      log_hi = min(right + step, ceiling)
      c_hi = exact_count(log_hi)
    for _ in range(64):
      if total((c_lo - c_hi), weight) <= 1 << 17 or log_hi - log_lo < 1e-13:
        break
      mid = 0.5 * (log_lo + log_hi)
      c_mid = exact_count(mid)
      if total(c_mid, weight) >= budget:
        log_lo, c_lo = mid, c_mid
      else:
        log_hi, c_hi = mid, c_mid
  # Units (value, m) between the brackets, by gain; each stands for `weight` prompt units.
  n_cand = c_lo - c_hi
  owner = np.repeat(np.arange(values.size), n_cand)
  first = np.repeat(np.cumsum(n_cand) - n_cand, n_cand)
  m = lo + np.repeat(c_hi, n_cand) + (np.arange(owner.size) - first)
  g = gain(owner, m)
  order = np.argsort(-g, kind="stable")
  owner, m, g = owner[order], m[order], g[order]
  ends = np.cumsum(weight[owner])
  rest = budget - int(total(c_hi, weight))
  level_start = np.searchsorted(-g, -g, side="left")  # first candidate of each gain level
  before = np.where(level_start > 0, ends[level_start - 1], 0)
  full = ends[np.searchsorted(-g, -g, side="right") - 1] <= rest  # whole gain level fits
  extra = c_hi + np.bincount(owner[full], minlength=values.size)
  counts = extra[inverse]
  # The gain level that only partly fits goes by prompt index (then m): each prompt in turn
  # takes its units of that level, a run of consecutive m.
  partial = np.flatnonzero(~full)
  if partial.size:
    group = partial[g[partial] == g[partial[0]]]
    need = rest - int(before[group[0]])
    level_units = np.bincount(owner[group], minlength=values.size)[inverse]
    idx = np.flatnonzero(level_units)
    units = level_units[idx]
    taken_before = np.cumsum(units) - units
    counts[idx] += np.clip(need - taken_before, 0, units)
  return counts


def _dp_exact(p: np.ndarray, lo: int, hi: int, budget: int) -> np.ndarray:
  """Plain DP: best[w] = max sum V using at most w extra rollouts over the first prompts."""
  width = hi - lo
  if budget <= 0:
    return np.zeros(p.size, dtype=np.int64)
  values = rollout_value(lo + np.arange(width + 1)[None, :], p[:, None])  # [U, width + 1]
  best = np.zeros(budget + 1)
  choice = np.zeros((p.size, budget + 1), dtype=np.int64)
  padded = np.empty(budget + 1 + width)
  padded[:width] = -np.inf
  for i in range(p.size):
    padded[width:] = best
    windows = np.lib.stride_tricks.sliding_window_view(padded, width + 1)[:, ::-1]
    scores = windows + values[i]  # scores[w, k] = best[w - k] + V(lo + k)
    choice[i] = np.argmax(scores, axis=1)
    best = scores[np.arange(budget + 1), choice[i]]
  extra = np.zeros(p.size, dtype=np.int64)
  w = budget
  for i in range(p.size - 1, -1, -1):
    extra[i] = choice[i, w]
    w -= extra[i]
  return extra


# --- Official `sampling_budget_by_knapsack` (liziniu/KnapsackRL, commit ca5d5f5) -------------


def _official(p, valid, budget, n, min_n, max_n, allow_fallback):
  """Emulates the official allocator with alpha=0.9, cost_estimation="probability" and
  negative_n = positive_n = min_n, with numba installed (as in its vLLM environment)."""
  success_rates = np.where(valid, p, 0.0).astype(np.float32)  # invalid prompts read as 0
  effective = np.flatnonzero(valid & (p > 0.0) & (p < 1.0))
  rollouts = np.where(valid, min_n, n).astype(np.int64)
  remaining = budget - int(rollouts.sum())
  zero = np.flatnonzero(success_rates == 0)
  if remaining > 0 and effective.size == 0:
    if zero.size:
      rollouts[zero] += remaining // zero.size + (np.arange(zero.size) < remaining % zero.size)
    else:
      rollouts[:] = n
  else:
    with np.errstate(divide="ignore"):
      cost = np.log(1 - 0.9) / np.log(np.maximum(p[effective], 1 - p[effective]))
    cost = cost.astype(np.float32)
    estimated = int(np.minimum(cost, np.float32(max_n)).astype(np.int64).sum())
    if estimated < remaining and allow_fallback:
      candidates = zero if zero.size else np.setdiff1d(np.arange(p.size), effective)
      if candidates.size == 0:
        raise ValueError("the official allocator fails its budget assertion here: every "
                         "prompt is useful and its cost estimate is below total_budget, so the "
                         "fallback surplus has no prompt to go to (set allow_fallback=False)")
      surplus = remaining - estimated
      rollouts[candidates] += (surplus // candidates.size
                               + (np.arange(candidates.size) < surplus % candidates.size))
      remaining = estimated
    if remaining > 0:
      rollouts[effective] += _official_dp(success_rates[effective], min_n, max_n - min_n,
                                          remaining)
  if int(rollouts.sum()) != budget:
    raise ValueError(f"the official allocator fails its budget assertion here: it assigns "
                     f"{int(rollouts.sum())} rollouts for total_budget {budget}")
  return rollouts


def _int_power(base: np.ndarray, exponent: np.ndarray) -> np.ndarray:
  """numba's `float ** int`: square-and-multiply in the base's dtype."""
  result = np.ones_like(base)
  exponent = exponent.copy()
  while np.any(exponent):
    result = np.where(exponent & 1, result * base, result)
    exponent >>= 1
    base = base * base
  return result


def _official_values(sr32: np.ndarray, min_n: int, width: int, use_numba: bool) -> np.ndarray:
  """Official `value_gain` for k = 0..width extra rollouts (k = 0 scored as 0)."""
  k = np.arange(1, width + 1)
  n = np.broadcast_to(k + min_n, (sr32.size, width))
  s = sr32.astype(np.float64)[:, None]
  q = 1.0 - s
  if use_numba:  # float32 ** int stays float32; 1 - float32 is float64.
    p_pow = _int_power(np.broadcast_to(sr32[:, None], n.shape), n).astype(np.float64)
    q_pow = _int_power(np.broadcast_to(q, n.shape), n)
  else:  # numpy<2 scalars promote to float64 and call pow.
    p_pow = np.array([[math.pow(x, e) for e in k + min_n] for x in s[:, 0]]).reshape(n.shape)
    q_pow = np.array([[math.pow(x, e) for e in k + min_n] for x in q[:, 0]]).reshape(n.shape)
  values = (1.0 - p_pow - q_pow) * s * (q * q)
  values[(sr32 == 0) | (sr32 == 1)] = 0.0
  return np.concatenate([np.zeros((sr32.size, 1)), values], axis=1)


def _official_dp(sr32: np.ndarray, min_n: int, width: int, budget: int) -> np.ndarray:
  """`solve_by_dp`: exact-budget DP with first-best tie-breaking, then uniform leftover."""
  items = sr32.size
  use_numba = items * budget * width > 50000
  values = _official_values(sr32, min_n, width, use_numba)
  cap = min(width, budget)
  dp = np.full(budget + 1, -np.inf)
  dp[0] = 0.0
  choice = np.zeros((items, budget + 1), dtype=np.int64)
  padded = np.empty(budget + 1 + cap)
  padded[:cap] = -np.inf
  for i in range(items):
    padded[cap:] = dp
    windows = np.lib.stride_tricks.sliding_window_view(padded, cap + 1)[:, ::-1]
    scores = windows + values[i, :cap + 1]  # scores[w, k] = dp[w - k] + value(k)
    choice[i] = np.argmax(scores, axis=1)  # first maximum = official strict '>' in k order
    dp = scores[np.arange(budget + 1), choice[i]]
  extra = np.zeros(items, dtype=np.int64)
  usable = int(np.flatnonzero(np.isfinite(dp)).max())
  w = usable
  for i in range(items - 1, -1, -1):
    extra[i] = choice[i, w]
    w -= extra[i]
  leftover = budget - usable
  extra += leftover // items + (np.arange(items) < leftover % items)
  return extra
