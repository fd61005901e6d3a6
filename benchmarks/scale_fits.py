"""Compile every paper-scale config of `experiments/scale.py` for its slices and table the fits.

Each (model, slice) of `scale.FITS`, plus the variants below, is compiled by `python -m
launch.compile` in its own process into `DIR/NAME/compile_report.json`; the table (markdown,
the body of docs/scale.md) is printed from those reports, so `--table-only` rebuilds it without
compiling. Needs the `[tpu]` extra (and `[cuda]` for GPU slices; those are skipped without it).

    python -m benchmarks.scale_fits [--dir runs/scale-fits] [--only NAME ...] [--table-only]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import subprocess
import sys
import time

from experiments import scale

GIB = 2**30
# name -> (model arguments, extra launch.compile flags) on the model's first slice: the levers.
VARIANTS = {
    "gpt2-124m-sophia": ("gpt2-124m,opt=sophia", []),
    "gpt2-124m-fsdp": ("gpt2-124m", ["--config.mesh.data=4", "--config.mesh.fsdp=4"]),
    "gpt2-124m-noremat": ("gpt2-124m", ["--config.model.remat=none"]),
    "gpt2-124m-unscanned": ("gpt2-124m", ["--config.model.scan_layers=false"]),
}


def jobs() -> dict[str, list[str]]:
  """name -> launch.compile arguments."""
  out = {}
  for model, fits in scale.FITS.items():
    for i, topology in enumerate(fits):
      name, arg = (model, model) if i == 0 else (f"{model}-{topology.replace(':', '-')}",
                                                  f"{model},topology={topology}")
      out[name] = ["--config", f"experiments/scale.py:model={arg}", "--topology", topology]
  for name, (arg, extra) in VARIANTS.items():
    topology = next(iter(scale.FITS[arg.split(",")[0]]))
    out[name] = ["--config", f"experiments/scale.py:model={arg}", "--topology", topology, *extra]
  return out


def compile_all(root: pathlib.Path, names: list[str]) -> None:
  has_cuda = importlib.util.find_spec("jax_cuda12_plugin") is not None
  for name in names:
    args = jobs()[name]
    if "H100" in args[args.index("--topology") + 1] and not has_cuda:
      print(f"{name}: skipped (GPU slice; pip install -e '.[cuda]')", flush=True)
      continue
    start = time.time()
    log = root / f"{name}.log"
    root.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
      code = subprocess.call([sys.executable, "-m", "launch.compile", *args, "--workdir",
                              str(root / name)], stdout=f, stderr=subprocess.STDOUT)
    print(f"{name}: exit {code} after {time.time() - start:.0f} s", flush=True)


def table(root: pathlib.Path) -> str:
  lines = ["| config | slice | params | mesh (data x fsdp x tensor) | remat, layers | per-chip "
           "batch x microbatches | per-chip bytes: total (temporaries) / HBM | eval step | "
           "est. step (roofline) | MFU est. | compile: train + eval | collectives | fits |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for name, args in jobs().items():
    command = " ".join(args)
    report_path, log_path = root / name / "compile_report.json", root / f"{name}.log"
    if not log_path.exists():
      continue
    report = json.loads(report_path.read_text()) if report_path.exists() else None
    if report is None or not report["fits"]:
      error = [line for line in log_path.read_text().splitlines() if line.startswith("error:")]
      reason = error[-1].removeprefix("error: ") if error else "no report (see the log)"
      lines.append(f"| `{command}` | | | | | | exit 2: {reason.replace('|', '/')} | | | | | | "
                   "no |")
      continue
    b, e = report["per_chip_bytes"], report["eval"]["per_chip_bytes"]
    mesh = "x".join(str(report["mesh"][k]) for k in ("data", "fsdp", "tensor"))
    model = report["model"]
    collectives = ", ".join(f"{k} {v}" for k, v in (report["collectives"] or {}).items() if v)
    step = report["estimated_step_s"]
    lines.append(
        f"| `{command}` | {report['chips']} x {report['chip']['name']} | "
        f"{report['params'] / 1e6:.1f}M | {mesh} | {model['remat']}, "
        f"{'scanned' if model['scan_layers'] else 'unrolled'} | {report['per_chip_batch']} x "
        f"{report['accumulation_steps']} | {b['total'] / GIB:.2f} GiB "
        f"({b['temporaries'] / GIB:.2f}) / {b['hbm'] / GIB:.0f} GiB | {e['total'] / GIB:.2f} GiB | "
        + (f"{step:.3f} s | {report['mfu_estimate']:.1%}" if step else "- | -")
        + f" | {report['compile_s']:.0f} s + {report['eval']['compile_s']:.0f} s | "
        f"{collectives or '-'} | yes |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dir", type=pathlib.Path, default=pathlib.Path("runs/scale-fits"))
  parser.add_argument("--only", nargs="*", default=None, help="names (default: all)")
  parser.add_argument("--table-only", action="store_true")
  args = parser.parse_args()
  names = args.only or list(jobs())
  unknown = sorted(set(names) - set(jobs()))
  if unknown:
    parser.error(f"unknown names {unknown}; known: {', '.join(jobs())}")
  if not args.table_only:
    compile_all(args.dir, names)
  print(table(args.dir))


if __name__ == "__main__":
  main()
