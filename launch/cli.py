"""Shared entry-point plumbing: the config flags, one-line usage errors with exit code 2.

Every entry point that takes a config accepts `--config FILE[:ARG]` (default: its own
experiment file), `--config.KEY=VALUE` overrides, `--workdir DIR` and `--print_config`. A user
mistake anywhere (an unknown key, a value of the wrong type, a missing file, a bad `:arg`, a
config its builder rejects, a workdir that cannot be written or is in use) ends in one line on
stderr and exit code 2; Ctrl-C ends in one line and 130, SIGTERM in one line and 143 (inside
a training loop after the run has saved its state), each saying to rerun the same command.

Without `--workdir` a run goes to `runs/<prefix>-<config>-<hash of the resolved config>` under
the checkout, or under `$TRAINLAB_RUNS_DIR` when that is set.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import hashlib
import json
import pathlib
import os
import re
import signal
import sys
from typing import Any, Callable, NoReturn

from absl import flags, logging
from ml_collections import config_flags

from trainlab.errors import UsageError

REPO = pathlib.Path(__file__).resolve().parent.parent
EXPERIMENTS_DIR = REPO / "experiments"
USAGE_EXIT_CODE = 2
_OVERRIDE = re.compile(r"^--?config\.([^=]+)")


@dataclasses.dataclass(frozen=True)
class Command:
  """A parsed command line."""
  config: Any
  config_arg: str  # FILE[:ARG] as given, or the default
  workdir: pathlib.Path | None


class ArgumentParser(argparse.ArgumentParser):
  """`argparse` whose mistakes are a `UsageError` (one line, exit 2) instead of its usage dump."""

  def error(self, message: str) -> NoReturn:
    raise UsageError(f"{message} (see {self.prog} --help)")


class Terminated(KeyboardInterrupt):
  """SIGTERM outside a training loop, raised like Ctrl-C's KeyboardInterrupt (the loop itself
  notes both signals, saves and raises `Preempted` instead)."""
  signum = signal.SIGTERM


def _terminate(signum: int, frame: Any) -> NoReturn:
  del signum, frame
  raise Terminated()


def is_main() -> bool:
  """Process 0, or no JAX at all (the only process): the one that prints."""
  jax = sys.modules.get("jax")
  return jax is None or not jax.distributed.is_initialized() or jax.process_index() == 0


def usage_error(message: str) -> NoReturn:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(USAGE_EXIT_CODE)


def print_result(result: dict[str, Any]) -> None:
  """A finished run's result as JSON on stdout, by process 0 only."""
  if is_main():
    print(json.dumps(result, indent=2))


def stop(message: str, code: int) -> NoReturn:
  """Exits with `code` after one line (on process 0) saying why and how to continue."""
  if is_main():
    print(f"stopped: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def _interrupted(error: KeyboardInterrupt) -> tuple[str, int]:
  signum = getattr(error, "signum", signal.SIGINT)
  what = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted (Ctrl-C)"
  return f"{what}; rerun the same command to continue", 128 + signum


def _help(prog: str, default_config: str, doc: str) -> str:
  return (f"{doc.strip()}\n\nusage: python -m {prog} [--config FILE[:ARG]] "
          "[--config.KEY=VALUE ...] [--workdir DIR] [--print_config]\n\n"
          f"  --config FILE[:ARG]  experiment config (default {default_config}); ARG picks a "
          "variant, e.g. experiments/lm.py:size=tiny,opt=sophia\n"
          "  --config.KEY=VALUE   override one key of the config (repeatable)\n"
          "  --workdir DIR        run folder (default: runs/<config>-<hash of the resolved "
          "config>, so rerunning the same command continues the same run; the runs/ root is "
          "$TRAINLAB_RUNS_DIR if set)\n"
          "  --print_config       print the resolved config (every KEY) and exit\n")


def _key_exists(config: Any, path: str) -> str | None:
  """None if `path` names a key of `config`, else the closest keys (for a "did you mean")."""
  node = config
  for depth, part in enumerate(path.split(".")):
    keys = list(node.keys()) if hasattr(node, "keys") else []
    if part not in keys:
      prefix = ".".join(path.split(".")[:depth])
      close = difflib.get_close_matches(part, keys, n=3)
      return ", ".join(f"{prefix + '.' if prefix else ''}{c}" for c in close)
    node = node[part]
  return None


def _load(config_arg: str, argv: list[str]) -> tuple[flags.FlagValues, Any]:
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", config_arg, flag_values=flag_values,
                                  lock_config=True, sys_argv=argv)
  flags.DEFINE_string("workdir", None, "run folder", flag_values=flag_values)
  flags.DEFINE_bool("print_config", False, "print the resolved config and exit",
                    flag_values=flag_values)
  return flag_values, flag_values(argv)


def _innermost(error: BaseException) -> BaseException:
  while error.__cause__ is not None or error.__context__ is not None:
    error = error.__cause__ or error.__context__
  return error


def _explain(error: Exception, config_arg: str, argv: list[str], base: Any = None) -> str:
  """One line for a flag or config-loading error; `base` is the config before overrides."""
  inner = _innermost(error)
  if isinstance(inner, UsageError):
    return str(inner)
  if isinstance(inner, (KeyError, AttributeError)):
    if base is None:
      try:  # the config without the overrides, to name the key that does not exist
        base = _load(config_arg, [argv[0]])[0].config
      except Exception:  # noqa: BLE001  (the config itself fails: report that below)
        base = None
    for arg in argv[1:]:
      match = _OVERRIDE.match(arg)
      if base is not None and match:
        close = _key_exists(base, match.group(1))
        if close is not None:
          hint = f" (did you mean {close}?)" if close else ""
          return (f"--config.{match.group(1)} is not a key of the config{hint}; list the keys "
                  "with --print_config")
  if isinstance(inner, OSError) or "Failed loading config file" in str(error):
    reason = str(inner).strip().splitlines()[-1].strip()
    return f"cannot load --config {config_arg}: {reason}"
  text = " ".join(str(error).split())
  return f"{text} (see --help)"


def parse(argv: list[str], default_config: str, prog: str = "", doc: str = "") -> Command:
  """Parses `argv` (argv[0] is the program) into a `Command`; a `UsageError` on any mistake.

  `default_config` is a file name in `experiments/` used when `--config` is absent. `--help`
  and `--print_config` print and exit 0 here.
  """
  if "--help" in argv[1:] or "-h" in argv[1:] or "--helpfull" in argv[1:]:
    print(_help(prog or argv[0], f"experiments/{default_config}", doc))
    sys.exit(0)
  config_arg = str(EXPERIMENTS_DIR / default_config)
  for i, arg in enumerate(argv):
    if arg == "--config" and i + 1 < len(argv):
      config_arg = argv[i + 1]
    elif arg.startswith("--config="):
      config_arg = arg.split("=", 1)[1]
  try:
    flag_values, rest = _load(config_arg, argv)
    config = flag_values.config
    config.to_dict()  # a config file loads lazily: surface its errors here
  except Exception as e:  # noqa: BLE001  (absl and ml_collections raise many kinds)
    raise UsageError(_explain(e, config_arg, argv)) from None
  unknown = [a for a in rest[1:] if a.startswith("-")]
  if unknown:
    raise UsageError(f"unknown flag {unknown[0]} (see --help)")
  if rest[1:]:
    raise UsageError(f"unexpected arguments {rest[1:]}; use --config.KEY=VALUE to override")
  if flag_values.print_config:
    print(config)
    sys.exit(0)
  workdir = flag_values.workdir
  return Command(config=config, config_arg=config_arg,
                 workdir=pathlib.Path(workdir) if workdir else None)


def override(config: Any, overrides: list[str]) -> Any:
  """`config` with `--config.KEY=VALUE` `overrides` applied (the same checks as `parse`)."""
  argv = ["override", *overrides]
  flag_values = flags.FlagValues()
  try:
    config_flags.DEFINE_config_dict("config", config, flag_values=flag_values,
                                    lock_config=True, sys_argv=argv)
    rest = flag_values(argv)
  except Exception as e:  # noqa: BLE001
    raise UsageError(_explain(e, "", argv, base=config)) from None
  if rest[1:]:
    raise UsageError(f"unexpected arguments {rest[1:]}; only --config.KEY=VALUE may follow")
  return flag_values.config


def runs_root() -> pathlib.Path:
  """Where default workdirs go: `$TRAINLAB_RUNS_DIR`, else `runs/` in the checkout."""
  return pathlib.Path(os.environ.get("TRAINLAB_RUNS_DIR") or REPO / "runs")


def default_workdir(command: Command, prefix: str) -> pathlib.Path:
  """`runs/<prefix>-<config file stem>-<8 hex of the resolved config>`: the same command gives
  the same folder (so a rerun continues it), a different config a different one."""
  resolved = json.dumps(command.config.to_dict(), sort_keys=True, default=str)
  digest = hashlib.sha256(resolved.encode()).hexdigest()[:8]
  stem = pathlib.Path(command.config_arg.split(":", 1)[0]).stem
  return runs_root() / f"{prefix}-{stem}-{digest}"


def run(main: Callable[[list[str]], Any]) -> NoReturn:
  """Runs `main(sys.argv)`: a `UsageError` is one line and exit code 2; Ctrl-C, SIGTERM and a
  training loop's `Preempted` are one line saying to rerun the command, and 128 + signal."""
  flags.FLAGS.mark_as_parsed()  # libraries read absl flags; ours are parsed by `parse`
  logging.set_verbosity(logging.WARNING)
  signal.signal(signal.SIGTERM, _terminate)
  try:
    result = main(sys.argv)
  except UsageError as e:
    usage_error(" ".join(str(e).split()))
  except KeyboardInterrupt as e:
    stop(*_interrupted(e))
  except Exception as e:
    preemption = sys.modules.get("trainlab.training.preemption")  # loaded if a loop ran
    if preemption is not None and isinstance(e, preemption.Preempted):
      stop(str(e), 128 + e.signum)
    raise
  sys.exit(result or 0)


def run_training(train_fn: Callable[[Any, pathlib.Path], Any], command: Command,
                 prefix: str) -> tuple[pathlib.Path, Any]:
  """Checks the workdir, starts the distributed runtime, then `train_fn(config, workdir)`.

  A workdir that is a file or cannot be written is a `UsageError` before anything is built. A
  diverged run exits 1; a preempted or interrupted one (SIGTERM/SIGINT) exits 128 + signal,
  and the same command resumes it. The workdir is printed first (by the loop) and in every
  stop message.
  """
  from trainlab.training import distributed, loop, preemption, workdir as workdir_lib
  workdir = command.workdir or default_workdir(command, prefix)
  workdir_lib.check_usable(workdir)
  distributed.maybe_initialize()
  try:
    return workdir, train_fn(command.config, workdir)
  except loop.DivergedError as e:
    if is_main():
      print(f"error: {e} (workdir {workdir})", file=sys.stderr)
    sys.exit(1)
  except preemption.Preempted as e:
    stop(f"{e} (workdir {workdir})", 128 + e.signum)
  except KeyboardInterrupt as e:
    message, code = _interrupted(e)
    stop(f"{message} (workdir {workdir})", code)
