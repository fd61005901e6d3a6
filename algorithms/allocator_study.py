"""Offline allocator study (Knapsack RL, Li et al., 2025, arXiv 2509.25849): the allocators
replayed on a GRPO run's logged prompt schedule, apart from the training noise.

A run's log gives, per step t, the pool prompts it visited and each one's rollouts and
successes. Each prompt's "true" success rate is taken as its success rate over ALL its logged
rollouts, p_i = successes_i / rollouts_i (stationary: the policy's drift is ignored). Each
allocator then replays the run step by step: it visits the same prompts at the same steps,
allocates the step's budget from its own estimator state (`rollout_history`), and draws its
rewards as Bernoulli(p_i), so its estimates evolve as they would have under that allocator.
Rollout k of prompt i at step t draws the same uniform number under every allocator (common
random numbers, a counter-based hash of (seed, t, i, k)), so allocators that agree see the same
rewards.

Per step it records, with N_i the allocation and p_i the true rate:
  expected effective prompts  sum_i 1 - p_i^N_i - (1 - p_i)^N_i  (groups with non-zero advantage)
  expected effective rollouts sum_i N_i (1 - p_i^N_i - (1 - p_i)^N_i)
  sampled effective prompts / rollouts: the same counted on the drawn rewards
  spend on p = 0, p = 1 and 0 < p < 1 prompts, and the rollouts used.
Pure NumPy; a run of 80 steps of 32 prompts replays in well under a second per allocator.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from trainlab.algorithms import allocators as allocators_lib
from trainlab.algorithms import rollout_history as rh


class Replay(NamedTuple):
  """One allocator's replay: per-step arrays over T steps, and the allocations' counts."""
  expected_effective_prompts_T: np.ndarray
  expected_effective_rollouts_T: np.ndarray
  sampled_effective_prompts_T: np.ndarray
  sampled_effective_rollouts_T: np.ndarray
  spend_unsolved_T: np.ndarray  # rollouts on prompts with true p = 0
  spend_solved_T: np.ndarray  # ... p = 1
  spend_mixed_T: np.ndarray  # ... 0 < p < 1
  rollouts_T: np.ndarray
  fallback_skipped_T: np.ndarray  # steps the official fallback had no prompt to go to
  allocations_TxM: np.ndarray  # the rollouts given to each logged prompt


def true_success_rates(pool_TxM: np.ndarray, rollouts_TxM: np.ndarray,
                       successes_TxM: np.ndarray, num_prompts: int | None = None) -> np.ndarray:
  """Each pool prompt's success rate over all its logged rollouts (NaN if never visited)."""
  pool = np.asarray(pool_TxM).ravel()
  size = int(pool.max()) + 1 if num_prompts is None else num_prompts
  rollouts = np.bincount(pool, weights=np.asarray(rollouts_TxM, np.float64).ravel(),
                         minlength=size)
  successes = np.bincount(pool, weights=np.asarray(successes_TxM, np.float64).ravel(),
                          minlength=size)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(rollouts > 0, successes / rollouts, np.nan)


def _mix(x: np.ndarray) -> np.ndarray:
  """splitmix64's finalizer (uint64, wrapping)."""
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def uniforms(seed: int, step: int, prompts_G: np.ndarray, counts_G: np.ndarray) -> np.ndarray:
  """U(0, 1) for rollout k = 0..n-1 of each prompt, a pure function of (seed, step, prompt, k),
  groups back to back."""
  golden = np.uint64(0x9E3779B97F4A7C15)
  with np.errstate(over="ignore"):
    key = _mix(np.uint64(seed) * golden + np.uint64(step))
    key_G = _mix(key ^ (np.asarray(prompts_G, np.uint64) * golden))
    counts_G = np.asarray(counts_G, np.int64)
    first_R = np.repeat(np.cumsum(counts_G) - counts_G, counts_G)
    k_R = (np.arange(counts_G.sum()) - first_R).astype(np.uint64)
    bits = _mix(np.repeat(key_G, counts_G) + (k_R + np.uint64(1)) * golden)
  return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


def replay(pool_TxM: np.ndarray, rollouts_TxM: np.ndarray, successes_TxM: np.ndarray, *,
           rollouts_per_prompt: int, min_rollouts: int, max_rollouts: int,
           total_budget: int | None = None,
           allocators: Sequence[str] = allocators_lib.ALLOCATORS,
           estimator: str = "recent", seed: int = 0) -> dict[str, Replay]:
  """Replays each allocator on the logged schedule `pool_TxM` (pool index of each step's
  prompts; `rollouts_TxM`, `successes_TxM` what the run drew, used only for the true rates).

  `total_budget` defaults to `M * rollouts_per_prompt`, as in the trainer. `estimator`:
  "recent" (the authors'), "last_epoch", or "oracle" (the allocator is told the true rates,
  every prompt valid from the start: the allocator alone).
  """
  pool_TxM = np.asarray(pool_TxM, np.int64)
  num_steps, per_step = pool_TxM.shape
  p_true = true_success_rates(pool_TxM, rollouts_TxM, successes_TxM)
  budget = per_step * rollouts_per_prompt if total_budget is None else total_budget
  results = {}
  for name in allocators:
    history = rh.empty(p_true.size)
    rows = {key: np.zeros(num_steps) for key in Replay._fields[:-1]}
    allocations = np.zeros((num_steps, per_step), np.int64)
    for t in range(num_steps):
      prompts = pool_TxM[t]
      p = p_true[prompts]
      if estimator == "oracle":
        estimate, valid = p, np.ones(per_step, bool)
      else:
        estimate, valid = rh.success_rates(history, prompts, estimator)
      counts, skipped = allocators_lib.allocate(
          name, estimate, valid, budget, rollouts_per_prompt=rollouts_per_prompt,
          min_rollouts=min_rollouts, max_rollouts=max_rollouts)
      rewards = (uniforms(seed, t, prompts, counts) < np.repeat(p, counts)).astype(np.float32)
      history = rh.record(history, prompts, counts, rewards)
      mixed_prob = 1.0 - p**counts - (1.0 - p)**counts
      successes = np.bincount(np.repeat(np.arange(per_step), counts), weights=rewards,
                              minlength=per_step)
      mixed = (successes > 0) & (successes < counts)
      rows["expected_effective_prompts_T"][t] = mixed_prob.sum()
      rows["expected_effective_rollouts_T"][t] = (counts * mixed_prob).sum()
      rows["sampled_effective_prompts_T"][t] = mixed.sum()
      rows["sampled_effective_rollouts_T"][t] = counts[mixed].sum()
      rows["spend_unsolved_T"][t] = counts[p == 0].sum()
      rows["spend_solved_T"][t] = counts[p == 1].sum()
      rows["spend_mixed_T"][t] = counts[(p > 0) & (p < 1)].sum()
      rows["rollouts_T"][t] = counts.sum()
      rows["fallback_skipped_T"][t] = skipped
      allocations[t] = counts
    results[name] = Replay(**rows, allocations_TxM=allocations)
  return results


def summarize(result: Replay, from_step: int = 0) -> dict[str, float | list[int]]:
  """Means per step from `from_step` on, shares of the rollouts spent, and the allocation
  histogram (`histogram[n]`: how many prompt visits got n rollouts)."""
  s = slice(from_step, None)
  rollouts = result.rollouts_T[s].sum()
  per_step = {key.removesuffix("_T"): float(getattr(result, key)[s].mean())
              for key in Replay._fields[:-1]}
  return {**per_step,
          "effective_prompt_share": per_step["expected_effective_prompts"]
                                    / result.allocations_TxM.shape[1],
          "effective_rollout_share": float(result.expected_effective_rollouts_T[s].sum()
                                           / rollouts),
          "unsolved_share": float(result.spend_unsolved_T[s].sum() / rollouts),
          "solved_share": float(result.spend_solved_T[s].sum() / rollouts),
          "mixed_share": float(result.spend_mixed_T[s].sum() / rollouts),
          "histogram": np.bincount(result.allocations_TxM[s].ravel()).tolist()}
