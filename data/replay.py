"""Replay of earlier domains inside a training batch (continual pre-training).

The last `rows` rows of batch `step` are windows of the earlier domains, interleaved in turn,
each drawn as that domain's own run draws them (`train_batch(step)` with the run's seed), so the
batch stays a pure function of (seed, step). Evaluation stays on the dataset's own split.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from trainlab.data.datasets import Dataset
from trainlab.errors import UsageError


def replay_rows(fraction: float, batch_size: int) -> int:
  """Rows of each batch given to replay: `round(fraction * batch_size)`, at least 1, < batch."""
  rows = round(fraction * batch_size)
  if not 0 < rows < batch_size:
    raise UsageError(f"data.replay_fraction={fraction} replays {rows} of {batch_size} rows; "
                     f"pick a fraction in [1/{batch_size}, {batch_size - 1}/{batch_size}]")
  return rows


def with_replay(dataset: Dataset, earlier: list[Dataset], rows: int) -> Dataset:
  """`dataset` whose training batches end with `rows` rows replayed from `earlier` datasets
  (each built with at least `ceil(rows / len(earlier))` rows per batch)."""

  def train_batch(step: int) -> dict[str, np.ndarray]:
    own = dataset.train_batch(step)
    replayed = [source.train_batch(step) for source in earlier]
    picks = [(j % len(earlier), j // len(earlier)) for j in range(rows)]
    keep = len(own["targets"]) - rows
    return {k: np.concatenate([own[k][:keep], np.stack([replayed[s][k][r] for s, r in picks])])
            for k in own}

  return dataclasses.replace(dataset, train_batch=train_batch)
