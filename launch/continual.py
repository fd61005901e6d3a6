"""Continual pre-training through a stream of domains.

`python -m launch.continual [--config experiments/continual.py[:ARG]] [--config.KEY=VALUE]
[--workdir DIR] [--print_config]` trains one model on `stream.domains` one after another
(default `stdlib-code`, `pydoc-english`, `c-headers`), each task in `DIR/task_<i>_<domain>/`,
and writes the loss matrix (task x domain) to `DIR/loss_matrix.json` and `DIR/loss_matrix.md`.
Rerunning the same command skips finished tasks and resumes an interrupted one.
"""

from __future__ import annotations

import sys

from launch import cli
from trainlab.training import continual


def main(argv: list[str]) -> int:
  command = cli.parse(argv, "continual.py", "launch.continual", __doc__)
  workdir, record = cli.run_training(continual.run_stream, command, "continual")
  if cli.is_main():
    print(continual.matrix_markdown(record), file=sys.stderr)
  cli.print_result({"workdir": str(workdir), **record})
  return 0


if __name__ == "__main__":
  cli.run(main)
