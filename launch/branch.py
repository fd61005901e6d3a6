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
import sys
from typing import Any

import ml_collections

from trainlab.errors import UsageError
from launch import cli

WSD_KEEP = ("warmup_steps", "decay_shape", "init_value", "end_value", "half_life")


def branch_config(source: dict[str, Any], run_dir: str, at_step: int,
                  decay_steps: int) -> ml_collections.ConfigDict:
  """`source` (a run's config.json) turned into the config of a WSD decay branch."""
  config = ml_collections.ConfigDict(source)
  old = dict(source.get("schedule", {}))
  schedule = {"name": "wsd", "decay_steps": decay_steps,
              "warmup_steps": old.get("warmup_steps", 0)}
  if old.get("name") == "wsd":
    schedule.update({k: old[k] for k in WSD_KEEP if k in old})
  config.schedule = ml_collections.ConfigDict(schedule)
  config.total_steps = at_step + decay_steps
  config.checkpoint.update(resume_from="", init_from="", branch_from=str(run_dir),
                           branch_step=at_step)
  return config


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
  parser = argparse.ArgumentParser(prog="python -m launch.branch", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--from", dest="run_dir", required=True, help="the run to branch off")
  parser.add_argument("--at", dest="step", type=int, required=True, help="its saved step")
  parser.add_argument("--decay-steps", type=int, required=True, help="length of the decay")
  parser.add_argument("--workdir", default=None, help="default: RUN-branchSTEP-decayD")
  args, rest = parser.parse_known_args(argv)
  bad = [a for a in rest if not a.startswith("--config.")]
  if bad:
    parser.error(f"unexpected arguments {bad}; only --config.KEY=VALUE may follow")
  return args, rest


def main(argv: list[str]) -> None:
  args, overrides = _parse(argv)
  run_dir = pathlib.Path(args.run_dir)
  try:
    source = json.loads((run_dir / "config.json").read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise UsageError(f"--from {run_dir}: cannot read config.json ({type(e).__name__}); "
                     "pass a run folder written by launch.train") from None
  if args.step < 0 or args.decay_steps < 1:
    raise UsageError(f"--at {args.step} must be >= 0 and --decay-steps {args.decay_steps} >= 1")
  config = branch_config(source, str(run_dir), args.step, args.decay_steps)

  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  config_flags.DEFINE_config_dict("config", config, lock_config=True)
  try:
    flags.FLAGS([sys.argv[0], *overrides])
  except flags.Error as e:
    raise UsageError(f"{str(e).strip().splitlines()[-1]}") from None
  config = flags.FLAGS.config

  from trainlab.training import distributed  # pylint: disable=import-outside-toplevel
  distributed.maybe_initialize()
  from trainlab.training import loop  # pylint: disable=import-outside-toplevel
  workdir = args.workdir or str(run_dir.parent / f"{run_dir.name}-branch{args.step}-decay"
                                f"{args.decay_steps}")
  from trainlab.training import checkpoint  # pylint: disable=import-outside-toplevel
  try:
    summary = loop.train(config, workdir)
  except checkpoint.Preempted as e:  # rerunning the same command resumes the branch
    print(f"stopped: {e}", file=sys.stderr)
    sys.exit(128 + e.signum)
  print(json.dumps({"workdir": workdir, **summary}, indent=2))


if __name__ == "__main__":
  try:
    main(sys.argv[1:])
  except UsageError as e:
    cli.usage_error(str(e))
