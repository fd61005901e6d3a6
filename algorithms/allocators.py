"""The rollout allocators a GRPO step can use, behind one call (Knapsack RL, Li et al., 2025,
arXiv 2509.25849).

  "uniform":  `rollouts_per_prompt` for every prompt.
  "exact":    `knapsack.allocate_rollouts(method="exact")`, the optimum of the paper's
              objective; budget left once every useful prompt is full goes to p = 0 prompts.
  "official": `knapsack.allocate_rollouts(method="official")`, the authors' allocator with its
              cost-based fallback: when the useful prompts' cost estimate
              `log(1 - 0.9) / log(max(p, 1 - p))` is below the budget, the surplus goes to the
              p = 0 prompts (deliberately spending on unsolved prompts) before the DP runs.

Invalid prompts (too little history) get `rollouts_per_prompt` under every allocator. One
departure from the official code: where every prompt of the step is useful and their cost
estimate is below the budget, the official fallback has no prompt to hand the surplus to and
divides by zero (`exploration_utils.py` of liziniu/KnapsackRL at ca5d5f5); here that step is
allocated without the fallback (the DP spreads the whole budget), and the call says so.
"""

from __future__ import annotations

import numpy as np

from trainlab.algorithms import knapsack

ALLOCATORS = ("uniform", "exact", "official")


def allocate(allocator: str, success_rates_M: np.ndarray, valid_M: np.ndarray,
             total_budget: int, *, rollouts_per_prompt: int, min_rollouts: int,
             max_rollouts: int) -> tuple[np.ndarray, bool]:
  """(rollouts per prompt as int64, whether the official fallback had to be skipped)."""
  success_rates_M = np.asarray(success_rates_M, np.float64)
  if allocator == "uniform":
    return np.full(success_rates_M.shape, rollouts_per_prompt, np.int64), False
  if allocator not in ALLOCATORS:
    raise ValueError(f"allocator must be one of {ALLOCATORS}, got {allocator!r}")
  kwargs = dict(min_rollouts=min_rollouts, max_rollouts=max_rollouts,
                default_rollouts=rollouts_per_prompt, valid=valid_M, method=allocator)
  if allocator == "exact":
    return knapsack.allocate_rollouts(success_rates_M, total_budget, **kwargs), False
  useful = np.asarray(valid_M) & (success_rates_M > 0) & (success_rates_M < 1)
  try:
    return knapsack.allocate_rollouts(success_rates_M, total_budget, **kwargs), False
  except ValueError:
    if not useful.all():
      raise
  return knapsack.allocate_rollouts(success_rates_M, total_budget, allow_fallback=False,
                                    **kwargs), True
