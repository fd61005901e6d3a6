"""Train one config: `python -m launch.train [--config FILE[:ARG]] [--config.KEY=VALUE] [--workdir DIR]`.

With no flags it trains the embedded default (`experiments/lm.py`, size `tiny`): a small GPT
on the standard library's source, about 2 minutes on 2 CPU cores.
"""

from __future__ import annotations

import json

from absl import flags

from launch import cli

cli.define_config_flags("lm.py")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.usage_error(f"unexpected arguments {argv[1:]}; use --config.KEY=VALUE to override")
  from trainlab.training import loop  # pylint: disable=import-outside-toplevel
  workdir, summary = cli.run_training(loop.train, "train")
  print(json.dumps({"workdir": str(workdir), **summary}, indent=2))


if __name__ == "__main__":
  cli.run(main)
