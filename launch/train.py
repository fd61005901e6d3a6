"""Train one config: `python -m launch.train [--config FILE[:ARG]] [--config.KEY=VALUE]
[--workdir DIR] [--print_config]`.

With no flags it trains the embedded default (`experiments/lm.py`, size `tiny`): a small GPT
on the standard library's source, about a minute on 2 CPU cores. Without `--workdir` the run
folder is `runs/train-<config>-<hash of the resolved config>` (`runs/` is `$TRAINLAB_RUNS_DIR`
when set): rerunning the same command after an interruption continues the same run, and a run
of another config goes to another folder. The folder is locked while a run uses it.
"""

from __future__ import annotations


from launch import cli
from trainlab.training import loop


def main(argv: list[str]) -> int:
  command = cli.parse(argv, "lm.py", "launch.train", __doc__)
  workdir, summary = cli.run_training(loop.train, command, "train")
  cli.print_result({"workdir": str(workdir), **summary})
  return 0


if __name__ == "__main__":
  cli.run(main)
