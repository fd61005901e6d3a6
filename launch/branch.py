"""Branch a decay off a run: `python -m launch.branch --from RUN --at STEP --decay-steps D`.

Loads `RUN/config.json`, switches the schedule to WSD (same peak learning rate and warmup,
`decay_steps=D`, `total_steps=STEP + D`), sets `checkpoint.branch_from=RUN` and
`checkpoint.branch_step=STEP`, and trains in a new workdir (default `RUN-branchSTEP-decayD`)
from the full state RUN saved at STEP. The result is a finished model for the budget STEP + D
(Hägele et al., arXiv 2405.18392, Sec. 3: one stable run, many cheap cooldowns). Keep RUN's
checkpoints at the branch steps with `--config.checkpoint.keep_every`. Extra
`--config.KEY=VALUE` flags override the branch's config; a rerun resumes the branch.
"""

from __future__ import annotations

import argparse
import json
import pathlib

from launch import cli
from trainlab.errors import UsageError
from trainlab.training import loop
from trainlab.training.branch import branch_config


def main(argv: list[str]) -> int:
  parser = cli.ArgumentParser(prog="python -m launch.branch", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--from", dest="run_dir", required=True, help="the run to branch off")
  parser.add_argument("--at", dest="step", type=int, required=True, help="its saved step")
  parser.add_argument("--decay-steps", type=int, required=True, help="length of the decay")
  parser.add_argument("--workdir", type=pathlib.Path, default=None,
                      help="default: RUN-branchSTEP-decayD")
  args, overrides = parser.parse_known_args(argv[1:])
  run_dir = args.run_dir = pathlib.Path(args.run_dir)
  try:
    source = json.loads((run_dir / "config.json").read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise UsageError(f"--from {run_dir}: cannot read config.json ({type(e).__name__}); "
                     "pass a run folder written by launch.train") from None
  if args.step < 0 or args.decay_steps < 1:
    raise UsageError(f"--at {args.step} must be >= 0 and --decay-steps {args.decay_steps} >= 1")
  config = cli.override(branch_config(source, str(run_dir), args.step, args.decay_steps),
                        overrides)
  workdir = args.workdir or run_dir.parent / f"{run_dir.name}-branch{args.step}-decay" \
      f"{args.decay_steps}"
  command = cli.Command(config=config, config_arg=str(run_dir / "config.json"), workdir=workdir)
  workdir, summary = cli.run_training(loop.train, command, "branch")
  cli.print_result({"workdir": str(workdir), **summary})
  return 0


if __name__ == "__main__":
  cli.run(main)
