"""Run a named paper reproduction: `python -m launch.reproduce NAME [--quick] [--seeds K]`.

Each reproduction is a module `reproductions/NAME.py` with `run(ctx: reproductions.Context)`
that trains its configs through `ctx.train` and writes `NAME.md` (claim, protocol, tables,
verdict) and PNG plots through `ctx`. Full runs write to `docs/results/`; `--quick` (a smoke
version for CI) writes to `runs/reproduce-quick/` so it never overwrites committed results.
"""

from __future__ import annotations

import importlib
import pathlib

import reproductions
from launch import cli
from trainlab.errors import UsageError


def main(argv: list[str]) -> int:
  names = reproductions.available()
  parser = cli.ArgumentParser(prog="python -m launch.reproduce", description=__doc__)
  parser.add_argument("name", choices=names, help="the reproduction")
  parser.add_argument("--quick", action="store_true",
                      help="smoke version: tiny budgets, one seed, seconds")
  parser.add_argument("--seeds", type=int, default=None,
                      help="number of seeds (default: the reproduction's own)")
  parser.add_argument("--out", type=pathlib.Path, default=None,
                      help="output folder (default: docs/results, or runs/reproduce-quick "
                      "with --quick)")
  parser.add_argument("--workers", type=int, default=2,
                      help="parallel single-threaded training processes (default 2)")
  parser.add_argument("--plan", action="store_true",
                      help="list the runs without a record and exit; trains nothing")
  args = parser.parse_args(argv[1:])
  if args.seeds is not None and args.seeds < 1:
    raise UsageError(f"--seeds={args.seeds} must be >= 1")
  if args.workers < 0:
    raise UsageError(f"--workers={args.workers} must be >= 0 (0: train in this process)")
  out = args.out or pathlib.Path("runs/reproduce-quick" if args.quick else "docs/results")
  ctx = reproductions.Context(name=args.name, out_dir=out, quick=args.quick, seeds=args.seeds,
                              command=f"python -m launch.reproduce {args.name}"
                              + (" --quick" if args.quick else ""), workers=args.workers,
                              plan_only=args.plan)
  ctx.enable_compilation_cache()
  importlib.import_module(f"reproductions.{args.name}").run(ctx)
  if not args.plan:
    print(f"wrote {ctx.page_path}")
  return 0


if __name__ == "__main__":
  cli.run(main)
