"""Shared entry-point plumbing: config flags, one-line usage errors with exit code 2."""

from __future__ import annotations

import datetime
import os
import pathlib
import sys
from typing import Any, Callable

from absl import app, flags, logging
from ml_collections import config_flags

from trainlab.errors import UsageError

EXPERIMENTS_DIR = pathlib.Path(__file__).resolve().parent.parent / "experiments"
USAGE_EXIT_CODE = 2


def define_config_flags(default_config: str) -> None:
  config_flags.DEFINE_config_file(
      "config", str(EXPERIMENTS_DIR / default_config),
      "Experiment config file and variant, e.g. experiments/lm.py:size=tiny.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Run folder (default: a fresh folder under runs/).")


def default_workdir(prefix: str) -> pathlib.Path:
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  return pathlib.Path("runs") / f"{prefix}-{stamp}-{os.getpid()}"


def usage_error(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(USAGE_EXIT_CODE)


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    remaining = flags.FLAGS(argv)
    if "config" in flags.FLAGS:
      flags.FLAGS.config.to_dict()  # config files load lazily; surface their errors here
    return remaining
  except (flags.Error, UsageError) as e:
    # absl wraps the config file's own exceptions; show the innermost message only.
    message = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    usage_error(f"{message} (see --help)")
  except Exception as e:  # a config file that fails to load or rejects its argument
    cause = e.__cause__ or e
    if isinstance(cause, UsageError):
      usage_error(str(cause))
    detail = " ".join(str(cause).split())
    usage_error(f"cannot load --config: {detail}; check the path and its ':arg' part")
  return []


def run(main: Callable[[list[str]], Any]) -> None:
  """`app.run(main)` that turns `UsageError` anywhere into one line and exit code 2."""

  def guarded(argv: list[str]) -> Any:
    logging.set_verbosity(logging.WARNING)
    try:
      return main(argv)
    except UsageError as e:
      usage_error(str(e))

  app.run(guarded, flags_parser=_parse_flags)


def run_training(train_fn: Callable[[Any, str], Any], workdir_prefix: str) -> tuple[str, Any]:
  """Starts the distributed runtime, then `train_fn(FLAGS.config, workdir)`.

  A diverged run exits 1; a preempted one (SIGTERM/SIGINT, saved) exits 128 + signal and the
  same command resumes it.
  """
  from trainlab.training import distributed  # pylint: disable=import-outside-toplevel
  distributed.maybe_initialize()
  from trainlab.training import checkpoint, loop  # pylint: disable=import-outside-toplevel
  workdir = flags.FLAGS.workdir or default_workdir(workdir_prefix)
  try:
    return workdir, train_fn(flags.FLAGS.config, workdir)
  except loop.DivergedError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  except checkpoint.Preempted as e:
    print(f"stopped: {e}", file=sys.stderr)
    sys.exit(128 + e.signum)
