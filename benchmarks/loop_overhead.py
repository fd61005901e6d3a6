"""Loop overhead: the step time of `launch.train`'s loop over a bare jitted step loop.

Both run in this process on the same config (the embedded default, `experiments/lm.py`
size tiny), the same jitted train step and the same batches (`dataset.train_batch(step)`,
built on the host in both). The trainer's step time comes from its own `metrics.jsonl`
(`step_time` per logging window, the first window (compile) and the last (final eval)
dropped); the bare loop is timed over the same steps. Rounds alternate the two to spread
machine noise over both. Goal: ratio <= 1.03.

    python -m benchmarks.loop_overhead [--steps 60] [--rounds 3]

`--steps` must be at least 30 (three logging windows); a bad flag is one line and exit 2.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time

import jax

from experiments import lm
from launch import cli
from trainlab.errors import UsageError
from trainlab.training import loop
from trainlab.training.run import build_run
from trainlab.training.trainer import Trainer


def bare_step_time(config, steps: int, log_every: int) -> float:
  trainer = Trainer(build_run(config))
  state = trainer.init_state()
  dataset = trainer.run.dataset
  for step in range(log_every):  # compile and warm up, like the trainer's first window
    state, _ = trainer.train_step(state, trainer.device_batch(dataset.train_batch(step)))
  jax.block_until_ready(state)
  start = time.perf_counter()
  for step in range(log_every, steps - log_every):
    state, _ = trainer.train_step(state, trainer.device_batch(dataset.train_batch(step)))
  jax.block_until_ready(state)
  return (time.perf_counter() - start) / (steps - 2 * log_every)


def trainer_step_time(config, workdir: str) -> float:
  loop.train(config, workdir, progress=True)
  records = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  windows = [r["step_time"] for r in records[1:-1]]
  return statistics.fmean(windows)


def main(argv: list[str]) -> int:
  parser = cli.ArgumentParser(prog="python -m benchmarks.loop_overhead",
                              description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=60)
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args(argv[1:])
  log_every = 10
  if args.steps < 3 * log_every:
    raise UsageError(f"--steps {args.steps} must be >= {3 * log_every}: the first logging "
                     f"window of {log_every} steps (compile) and the last (final eval) are not "
                     "timed, so at least one more must be")
  if args.rounds < 1:
    raise UsageError(f"--rounds {args.rounds} must be >= 1")
  config = lm.get_config("size=tiny")
  config.total_steps = args.steps
  config.eval.every_steps = 0
  config.log.every_steps = log_every
  bare, trained = [], []
  for r in range(args.rounds):
    bare.append(bare_step_time(config, args.steps, config.log.every_steps))
    with tempfile.TemporaryDirectory() as workdir:
      trained.append(trainer_step_time(config, workdir))
    print(f"round {r}: bare {bare[-1] * 1e3:.1f} ms, launch.train {trained[-1] * 1e3:.1f} ms, "
          f"ratio {trained[-1] / bare[-1]:.3f}", flush=True)
  ratios = [t / b for t, b in zip(trained, bare)]
  print(f"\nload average at end: {os.getloadavg()}")
  print("| measurement | median over rounds |\n|---|---|")
  print(f"| bare jitted step loop | {statistics.median(bare) * 1e3:.1f} ms/step |")
  print(f"| launch.train loop | {statistics.median(trained) * 1e3:.1f} ms/step |")
  print(f"| ratio (goal <= 1.03) | {statistics.median(ratios):.3f} |")
  return 0


if __name__ == "__main__":
  cli.run(main)
