"""Statistics the reproduction pages share: seed means, paired differences, grid choices.

Differences are always paired: arm A minus arm B for the same seed (the same data order and
initialization where the arms allow it), and, for the eval's own noise, for the same eval
examples. Standard errors are sample standard deviations (ddof=1) over sqrt(n).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np


def se(values: Sequence[float]) -> float:
  values = np.asarray(values, np.float64)
  return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan


@dataclasses.dataclass(frozen=True)
class Paired:
  """Per-seed differences A - B, their mean and standard error."""
  diffs: tuple[float, ...]

  @property
  def mean(self) -> float:
    return float(np.mean(self.diffs))

  @property
  def se(self) -> float:
    return se(self.diffs)

  @property
  def n(self) -> int:
    return len(self.diffs)

  def __str__(self) -> str:
    return f"{self.mean:+.4f} ± {self.se:.4f} (n={self.n})"


def paired(a: Sequence[float], b: Sequence[float]) -> Paired:
  if len(a) != len(b):
    raise ValueError("paired differences need the same seeds on both sides")
  return Paired(tuple(float(x) - float(y) for x, y in zip(a, b)))


def paired_example_se(a: np.ndarray, b: np.ndarray) -> float:
  """The eval's own standard error of a difference of two runs' mean losses on the same eval
  examples (per-example differences): the noise the eval set adds to one paired comparison."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape:
    raise ValueError("runs were evaluated on different example sets")
  return se(a - b)


def best_inside(grid: Sequence[float], scores: dict[float, float]) -> tuple[float, bool]:
  """The grid value with the lowest score, and whether it lies strictly inside the grid."""
  ordered = sorted(grid)
  best = min(ordered, key=lambda v: scores[v])
  return best, ordered[0] < best < ordered[-1]


def spacing_ok(grid: Sequence[float], max_ratio: float = 2.0) -> bool:
  ordered = sorted(grid)
  return all(b / a <= max_ratio * (1 + 1e-9) for a, b in zip(ordered, ordered[1:]))


def verdict(diff: Paired, margin: float, lower_is_better: bool = True) -> str:
  """The pre-stated rule every page uses for "A matches or beats B" on a paired difference
  A - B (lower is better): with d = mean, s = 2 standard errors (about a 95% interval for
  normal errors; wider, and so more cautious, would need more seeds than 3),
    beats:        d + s < 0            matches: |d| + s <= margin
    trails:       d - s > 0 and not within the margin   inconclusive: otherwise.
  `margin` is the page's equivalence margin (stated on the page before the runs)."""
  d, s = (diff.mean, 2 * diff.se) if lower_is_better else (-diff.mean, 2 * diff.se)
  if d + s < 0:
    return "beats"
  if abs(d) + s <= margin:
    return "matches"
  if d - s > 0:
    return "trails"
  return "inconclusive"
