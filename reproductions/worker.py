"""Trains planned runs in their own process: `python -m reproductions.worker RUN_DIR...`.

`RUN_DIR/spec.json` holds the run's kind and resolved config (written by `Context.run`); a rerun
on the same folder resumes the run from its checkpoints. Several folders train one after
another in this one process (`Context.run(..., runs_per_process=K)`); the first failure stops it.
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

import ml_collections
import numpy as np

from trainlab.training import continual, grpo, loop
from trainlab.training.state import TrainState
from trainlab.training.trainer import Trainer


def save_final_evals(trainer: Trainer, state: TrainState, run_dir: pathlib.Path) -> None:
  """`RUN/final_test.json` (the final parameters' test loss, its standard error, accuracy) and
  `RUN/final_examples.npz` (their loss on every validation and test example, for paired
  comparisons between runs on the same examples)."""
  splits = ["eval"] + (["test"] if trainer.run.dataset.test_batches is not None else [])
  (run_dir / "final_test.json").write_text(json.dumps(trainer.test_metrics(state.params)))
  np.savez(run_dir / "final_examples.npz",
           **{split: trainer.example_losses(state.params, split) for split in splits})


def train(kind: str, config: Any, run_dir: pathlib.Path) -> None:
  if kind == "train":
    loop.train(config, run_dir, progress=False, on_finish=save_final_evals)
  elif kind == "stream":
    continual.run_stream(config, run_dir, progress=False)
  elif kind == "rl":
    grpo.train(config, run_dir, progress=False)
  else:
    raise ValueError(f"unknown run kind {kind!r}")


def main(argv: list[str]) -> int:
  for run_dir in map(pathlib.Path, argv[1:]):
    spec = json.loads((run_dir / "spec.json").read_text())
    train(spec["kind"], ml_collections.ConfigDict(spec["config"]), run_dir)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
