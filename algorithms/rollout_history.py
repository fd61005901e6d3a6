"""Per-prompt reward histories and the success rates a rollout allocator reads from them.

`RewardHistory` holds, for every prompt of a pool, its latest `window` rewards (in the order
they were drawn), how many rewards it has had in all, and the size and sum of its latest visit
(one visit = the prompt's group in one step). `record` adds a step's groups; `success_rates`
turns the history into the estimate `p` and a "valid" flag (enough history to allocate from;
invalid prompts get the default number of rollouts). Estimators:

  "last_epoch": the success rate of the prompt's latest visit (with a pool visited once per
      epoch, its previous epoch), as a float32 mean; valid once visited.
  "recent":     the Knapsack-RL authors' estimator (Li et al., 2025, arXiv 2509.25849), read
      from `liziniu/KnapsackRL` `verl/utils/dataset/rl_dataset.py` (`update_sample_state` and
      `get_sample_state`, commit ca5d5f5b7e933378d916d05d1aeb4ae9de929ee5) with the settings of
      its `examples/knapsack_trainer/run_knapsack_grpo_7b.sh` (`epoch_estimation` and
      `robust_epoch_estimation` true, `reward_buffer_length=16`, `min_buffer_length=8`):
      p = the mean of the latest visit's rewards if that visit had at least 16, else the mean
      of the latest 16 rewards across visits (the latest visit's and then the most recent
      earlier ones; all of them if there are fewer than 16); valid once the prompt has had at
      least 8 rewards in all (the count includes the latest visit).

Where the code is more precise than the reference notes (`algorithms.md`: "the latest
epoch's success rate, or the mean of the last 16 rewards when that epoch had fewer than 16; a
prompt is valid only after at least 8 rewards"), this follows the code: an "epoch" there is
one call of `update_sample_state`, i.e. one visit (one batch's rewards of that prompt), not a
pass over the data; a visit of 16 or more rewards is averaged whole, not cut to 16; and with
fewer than 16 rewards in all the mean is over those that exist. The official code maps reward
-1 to 0 and accepts only -1, 0, 1; here rewards are 0/1 already. Prompts never visited are
invalid with p = 0, as there. All functions are pure NumPy and return new arrays.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

ESTIMATORS = ("last_epoch", "recent")
WINDOW = 16  # reward_buffer_length
MIN_REWARDS = 8  # min_buffer_length


class RewardHistory(NamedTuple):
  """Per pool prompt (`M` of them, `K = window` recent rewards each)."""
  recent_MxK: np.ndarray  # float32: the latest K rewards, oldest first, right-aligned
  count_M: np.ndarray  # int32: rewards seen in all
  last_count_M: np.ndarray  # int32: rewards of the latest visit
  last_sum_M: np.ndarray  # float32: their sum


def empty(num_prompts: int, window: int = WINDOW) -> RewardHistory:
  """The history of a pool no prompt of which has been visited."""
  return RewardHistory(recent_MxK=np.zeros((num_prompts, window), np.float32),
                       count_M=np.zeros(num_prompts, np.int32),
                       last_count_M=np.zeros(num_prompts, np.int32),
                       last_sum_M=np.zeros(num_prompts, np.float32))


def record(history: RewardHistory, prompts_G: np.ndarray, counts_G: np.ndarray,
           rewards_R: np.ndarray) -> RewardHistory:
  """The history after one step: group g, of prompt `prompts_G[g]`, drew the next
  `counts_G[g] >= 1` rewards of `rewards_R` (groups back to back, each in rollout order).
  A step visits each prompt at most once."""
  prompts_G = np.asarray(prompts_G, np.int64)
  counts_G = np.asarray(counts_G, np.int64)
  rewards_R = np.asarray(rewards_R, np.float32)
  if prompts_G.shape != counts_G.shape or counts_G.sum() != rewards_R.size:
    raise ValueError(f"groups of {counts_G.tolist()} rollouts need {counts_G.sum()} rewards; "
                     f"got {rewards_R.size}")
  if np.any(counts_G < 1) or np.unique(prompts_G).size != prompts_G.size:
    raise ValueError("every group needs a reward, and a step visits each prompt at most once")
  window = history.recent_MxK.shape[1]
  ends_G = np.cumsum(counts_G)
  column_K = np.arange(window)
  fresh_G = np.minimum(counts_G, window)
  # The new window: the group's last min(n, K) rewards on the right, the old window's newest
  # K - min(n, K) on the left (column j of a full window is K - 1 - j rewards from the end).
  tail_GxK = rewards_R[np.maximum(ends_G[:, None] - window + column_K[None, :], 0)]
  old_GxK = history.recent_MxK[prompts_G]
  shifted_GxK = np.take_along_axis(
      old_GxK, np.minimum(column_K[None, :] + fresh_G[:, None], window - 1), axis=1)
  is_fresh_GxK = column_K[None, :] >= window - fresh_G[:, None]
  recent = history.recent_MxK.copy()
  recent[prompts_G] = np.where(is_fresh_GxK, tail_GxK, shifted_GxK)
  sums_G = np.bincount(np.repeat(np.arange(prompts_G.size), counts_G), weights=rewards_R,
                       minlength=prompts_G.size)
  count, last_count, last_sum = (history.count_M.copy(), history.last_count_M.copy(),
                                 history.last_sum_M.copy())
  count[prompts_G] += counts_G.astype(np.int32)
  last_count[prompts_G] = counts_G
  last_sum[prompts_G] = sums_G
  return RewardHistory(recent, count, last_count, last_sum)


def success_rates(history: RewardHistory, prompts_M: np.ndarray, estimator: str,
                  min_rewards: int = MIN_REWARDS) -> tuple[np.ndarray, np.ndarray]:
  """(p, valid) of the prompts `prompts_M`: float64 rates (0 where invalid) and bools."""
  prompts_M = np.asarray(prompts_M, np.int64)
  last_count = history.last_count_M[prompts_M]
  last_sum = history.last_sum_M[prompts_M]
  if estimator == "last_epoch":
    valid = last_count > 0
    with np.errstate(invalid="ignore", divide="ignore"):
      rate = (last_sum / last_count.astype(np.float32)).astype(np.float64)
    return np.where(valid, rate, 0.0), valid
  if estimator != "recent":
    raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
  window = history.recent_MxK.shape[1]
  count = history.count_M[prompts_M]
  kept = np.minimum(count, window)
  in_window = np.arange(window)[None, :] >= window - kept[:, None]
  recent_sum = (history.recent_MxK[prompts_M].astype(np.float64) * in_window).sum(axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    rate = np.where(last_count >= window, last_sum.astype(np.float64) / last_count,
                    recent_sum / kept)
  return np.where(count > 0, rate, 0.0), count >= min_rewards
