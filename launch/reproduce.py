"""Run a named paper reproduction: `python -m launch.reproduce NAME [--quick] [--seeds K]`.

Each reproduction is a module `reproductions/NAME.py` with
`run(ctx: reproductions.Context) -> None` that trains its configs through `ctx.train`,
and writes `NAME.md` (command, table of mean ± std over seeds, verdict) and PNG plots
through `ctx`. Full runs write to `docs/results/`; `--quick` (a smoke version for CI) writes
to `runs/reproduce-quick/` so it never overwrites committed results.
"""

from __future__ import annotations

import importlib
import pathlib
import sys

from absl import flags

from launch import cli
import reproductions

flags.DEFINE_bool("quick", False, "Smoke version: tiny budgets, one seed, seconds to minutes.")
flags.DEFINE_integer("seeds", None, "Number of seeds (default: the reproduction's own).")
flags.DEFINE_string("out", None, "Output folder (default: docs/results, or "
                    "runs/reproduce-quick with --quick).")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
  names = reproductions.available()
  if len(argv) != 2 or argv[1] not in names:
    cli.usage_error(f"name one reproduction: python -m launch.reproduce NAME; NAME is one of "
                    f"{', '.join(names)}")
  name = argv[1]
  if FLAGS.seeds is not None and FLAGS.seeds < 1:
    cli.usage_error(f"--seeds={FLAGS.seeds} must be >= 1")
  out = pathlib.Path(FLAGS.out or ("runs/reproduce-quick" if FLAGS.quick else "docs/results"))
  command = "python -m launch.reproduce " + " ".join(sys.argv[1:])
  ctx = reproductions.Context(name=name, out_dir=out, quick=FLAGS.quick, seeds=FLAGS.seeds,
                              command=command)
  ctx.enable_compilation_cache()
  importlib.import_module(f"reproductions.{name}").run(ctx)
  print(f"wrote {ctx.report_path}")


if __name__ == "__main__":
  cli.run(main)
