"""Continual pre-training through a stream of domains.

`python -m launch.continual [--config experiments/continual.py[:ARG]] [--config.KEY=VALUE]
[--workdir DIR]` trains one model on `stream.domains` one after another (default
`stdlib-code`, `pydoc-english`, `c-headers`), each task in `DIR/task_<i>_<domain>/`, and writes
the loss matrix (task x domain) to `DIR/loss_matrix.json` and `DIR/loss_matrix.md`. Rerunning
the same command skips finished tasks and resumes an interrupted one.
"""

from __future__ import annotations

import json
import sys

from absl import flags

from launch import cli

cli.define_config_flags("continual.py")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.usage_error(f"unexpected arguments {argv[1:]}; use --config.KEY=VALUE to override")
  from trainlab.training import continual  # pylint: disable=import-outside-toplevel
  workdir, record = cli.run_training(continual.run_stream, "continual")
  print(continual.matrix_markdown(record), file=sys.stderr)
  print(json.dumps({"workdir": str(workdir), **record}, indent=2))


if __name__ == "__main__":
  cli.run(main)
