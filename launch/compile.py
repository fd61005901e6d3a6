"""Check that a config fits a TPU or GPU slice, from this host, before booking it:
`python -m launch.compile --config FILE[:ARG] [--config.KEY=VALUE] --topology v5e:4x4
[--workdir DIR]`.

Builds the run as `launch.train` would, for the slice's devices (compile-only: no accelerator
is used), compiles the real train and eval steps and prints and writes
`WORKDIR/compile_report.json`: per-chip bytes (arguments, outputs, temporaries, total, HBM),
FLOPs per step, the compiler's step-time estimate, the implied MFU (6 N tokens / chips / peak /
step time), the collectives in the HLO and the compile time. `data.name=tokens` needs no shards
here (only their shapes). Exit 0: it fits; exit 2: it does not (one line: by how much and the
config changes that would fix it), or the input is bad.

--topology: a TPU slice as libtpu names it (v5e:4x4, v4:2x2x4, v5p:2x2x2, v6e:4x4; needs
pip install -e '.[tpu]') or GPUs as [HOSTSx]GPUSxH100|A100 (8xH100; needs '.[cuda]' and
JAX_PLATFORMS=cpu).
"""

from __future__ import annotations

import json

from launch import cli
from trainlab.errors import UsageError


def _pop_topology(argv: list[str]) -> tuple[str, list[str]]:
  """`--topology X` (or `--topology=X`) out of `argv`; the rest goes to `cli.parse`."""
  rest, topology = [argv[0]], None
  args = iter(argv[1:])
  for arg in args:
    if arg == "--topology":
      topology = next(args, None)
      if topology is None:
        raise UsageError("--topology needs a value, e.g. --topology v5e:4x4")
    elif arg.startswith("--topology="):
      topology = arg.split("=", 1)[1]
    else:
      rest.append(arg)
  if not topology and not any(a in ("--help", "-h", "--helpfull", "--print_config")
                              for a in rest):
    raise UsageError("--topology is required, e.g. --topology v5e:4x4 (see --help)")
  return topology, rest


def main(argv: list[str]) -> int:
  topology, rest = _pop_topology(argv)
  command = cli.parse(rest, "lm.py", "launch.compile", __doc__)
  import jax
  jax.config.update("jax_platforms", "cpu")  # compile-only: never claim a local accelerator
  from trainlab.training import aot, rundir
  target = aot.target(topology)
  report = aot.compile_run(command.config, target)
  workdir = command.workdir or cli.default_workdir(command, "compile")
  workdir.mkdir(parents=True, exist_ok=True)
  report["config"] = command.config_arg
  rundir.write_json(workdir / "compile_report.json", report)
  print(json.dumps({"workdir": str(workdir), **report}, indent=2))
  if not report["fits"]:
    raise UsageError(aot.does_not_fit(command.config, report))
  return 0


if __name__ == "__main__":
  cli.run(main)
