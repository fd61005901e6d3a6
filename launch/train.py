"""Train one config: `python -m launch.train [--config FILE[:ARG]] [--config.KEY=VALUE] [--workdir DIR]`.

With no flags it trains the embedded default (`experiments/lm.py`, size `tiny`): a small GPT
on the standard library's source, about 2 minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import sys

from absl import flags

from launch import cli

cli.define_config_flags("lm.py")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.usage_error(f"unexpected arguments {argv[1:]}; use --config.KEY=VALUE to override")
  from training import distributed  # pylint: disable=import-outside-toplevel
  distributed.maybe_initialize()
  from training import checkpoint, loop  # pylint: disable=import-outside-toplevel
  workdir = FLAGS.workdir or cli.default_workdir("train")
  try:
    summary = loop.train(FLAGS.config, workdir)
  except loop.DivergedError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  except checkpoint.Preempted as e:  # rerunning the same command resumes
    print(f"stopped: {e}", file=sys.stderr)
    sys.exit(128 + e.signum)
  print(json.dumps({"workdir": str(workdir), **summary}, indent=2))


if __name__ == "__main__":
  cli.run(main)
