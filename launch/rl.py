"""GRPO with uniform or Knapsack-RL rollout allocation:
`python -m launch.rl [--config experiments/rl.py[:size=default,allocation=knapsack]]
[--config.KEY=VALUE] [--workdir DIR]`.

The default (`size=default`, uniform allocation) warm-starts a 2-layer GPT on integer
arithmetic and runs 64 GRPO steps of 256 rollouts: a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import json

from absl import flags

from launch import cli

cli.define_config_flags("rl.py")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.usage_error(f"unexpected arguments {argv[1:]}; use --config.KEY=VALUE to override")
  from trainlab.training import grpo  # pylint: disable=import-outside-toplevel
  workdir = FLAGS.workdir or cli.default_workdir("rl")
  summary = grpo.train(FLAGS.config, workdir)
  print(json.dumps({"workdir": str(workdir), **summary}, indent=2))


if __name__ == "__main__":
  cli.run(main)
