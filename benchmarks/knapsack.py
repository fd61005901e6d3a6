"""Knapsack-RL rollout allocation time: exact water-filling vs the DP reference vs official.

  python -m benchmarks.knapsack [--reps 5]

Official scale (Li et al., 2025): 256 prompts, 2048 rollouts per step, bounds [2, 128]. The
anchor, measured in the same run, is our plain DP for the same objective (`method="dp"`);
"official" is the NumPy emulation of the authors' numba DP (same O(M * B * N_up) work). At
100,000 prompts and 800,000 rollouts only `exact` runs: both DPs would fill a table of
about 90,000 useful prompts x 540,000 budget cells with 126 candidates each (~6e12 updates,
~0.4 TB of choices).

Success rates mix the 17 values k/16 of a 16-reward history (p = 0 and 1 included) with
uniform draws ("mixed"), or are all uniform draws ("distinct", the slowest case for `exact`,
which works on distinct values of p); 10% of the prompts lack history (`valid=False`).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np

from trainlab.algorithms import knapsack


def _problem(num_prompts: int, distinct: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  share = 0.0 if distinct else 0.5
  p = np.where(rng.random(num_prompts) < share, rng.integers(0, 17, num_prompts) / 16,
               rng.random(num_prompts))
  return p, rng.random(num_prompts) > 0.1


def _time(fn, reps: int) -> float:
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--reps", type=int, default=5)
  args = parser.parse_args()
  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}, numpy {np.__version__}")
  rows = []
  for num_prompts, budget, distinct, methods in (
      (256, 2048, False, ("dp", "official", "exact")),
      (100_000, 800_000, False, ("exact",)),
      (100_000, 800_000, True, ("exact",))):
    p, valid = _problem(num_prompts, distinct)
    anchor = None
    for method in methods:
      def run(method=method):
        return knapsack.allocate_rollouts(p, budget, min_rollouts=2, max_rollouts=128,
                                          default_rollouts=8, valid=valid, method=method)
      reps = args.reps if method == "exact" else max(1, args.reps // 2)
      seconds = _time(run, reps)
      out = run()
      useful = valid & (p > 0) & (p < 1)
      value = float(np.sum(knapsack.rollout_value(out[useful], p[useful])))
      anchor = seconds if method == "dp" else anchor
      rows.append((num_prompts, budget, "distinct" if distinct else "mixed", method, seconds,
                   anchor, value, int(out.max())))
  print()
  print("| prompts | budget | p | method | median time | speedup vs dp (anchor) | sum V | max N |")
  print("|---:|---:|---|---|---:|---:|---:|---:|")
  for num_prompts, budget, kind, method, seconds, anchor, value, top in rows:
    ratio = f"{anchor / seconds:.0f}x" if anchor else "dp not run (same DP size)"
    print(f"| {num_prompts:,} | {budget:,} | {kind} | {method} | {seconds * 1e3:.2f} ms | "
          f"{ratio} | "
          f"{value:.6f} | {top} |")
  for num_prompts, budget in ((100_000, 800_000),):
    print(f"| {num_prompts:,} | {budget:,} | any | official | not run | DP of ~6e12 cell updates, "
          "~0.4 TB table | | |")


if __name__ == "__main__":
  main()
