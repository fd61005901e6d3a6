"""GRPO with uniform or Knapsack-RL rollout allocation:
`python -m launch.rl [--config experiments/rl.py[:size=default,allocation=knapsack,
allocator=exact|official,estimator=last_epoch|recent]] [--config.KEY=VALUE] [--workdir DIR]
[--print_config]`.

The default (`size=default`, uniform allocation) warm-starts a 2-layer GPT on integer
arithmetic (800 supervised steps, a few minutes on 2 CPU cores) and runs 64 GRPO steps of 256
rollouts. The run saves its full state to WORKDIR/checkpoints (after the warm start, every
`checkpoint.every_steps` steps, at the end, on SIGTERM/SIGINT); rerunning the same command
continues it exactly, and rerunning a finished run only rewrites its summary.
"""

from __future__ import annotations

from launch import cli
from trainlab.training import grpo


def main(argv: list[str]) -> int:
  command = cli.parse(argv, "rl.py", "launch.rl", __doc__)
  workdir, summary = cli.run_training(grpo.train, command, "rl")
  cli.print_result({"workdir": str(workdir), **summary})
  return 0


if __name__ == "__main__":
  cli.run(main)
