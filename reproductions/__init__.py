"""Shared machinery of reproductions: train a config, aggregate seeds, write the report."""

from __future__ import annotations

import dataclasses
import datetime
import json
import pathlib
import pkgutil
import platform
from typing import Any, Callable, Sequence

import numpy as np

from trainlab.training import loop, rundir


def available() -> list[str]:
  return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def mean_std(values: Sequence[float]) -> str:
  """`mean ± std` (sample std, ddof=1; `± n/a` for one seed)."""
  values = np.asarray(values, dtype=np.float64)
  if len(values) < 2:
    return f"{values.mean():.4f} ± n/a"
  return f"{values.mean():.4f} ± {values.std(ddof=1):.4f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


@dataclasses.dataclass
class Context:
  """What a reproduction gets: where to write, how big to run, and a trainer."""
  name: str
  out_dir: pathlib.Path
  quick: bool
  seeds: int | None
  command: str

  @property
  def report_path(self) -> pathlib.Path:
    return self.out_dir / f"{self.name}.md"

  @property
  def runs_dir(self) -> pathlib.Path:
    """Run folders: `runs/reproduce-NAME`, or beside the report for `--quick` smoke runs."""
    if self.quick:
      return self.out_dir / f"runs-{self.name}"
    return pathlib.Path("runs") / f"reproduce-{self.name}"

  def enable_compilation_cache(self) -> None:
    """Seeds of one config compile to the same programs; a disk cache compiles them once."""
    import jax
    cache = (self.runs_dir / "jax_cache").resolve()
    cache.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

  def num_seeds(self, default: int) -> int:
    return 1 if self.quick and self.seeds is None else (self.seeds or default)

  def train(self, config: Any, run_name: str,
            train_fn: Callable[..., dict[str, Any]] | None = None) -> dict[str, Any]:
    """Trains `config` in `runs/reproduce-NAME/run_name`; returns summary plus metric history.

    `train_fn(config, workdir, progress=False)` defaults to `training.loop.train`. A finished
    run of the same config (its summary.json exists) is not trained again, so an interrupted
    reproduction continues where it stopped.
    """
    workdir = self.runs_dir / run_name
    summary = rundir.finished(workdir, config)
    if summary is None:
      summary = (train_fn or loop.train)(config, workdir, progress=False)
    history = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {**summary, "history": history, "workdir": str(workdir)}

  def plot_path(self, suffix: str) -> pathlib.Path:
    self.out_dir.mkdir(parents=True, exist_ok=True)
    return self.out_dir / f"{self.name}_{suffix}.png"

  def save_figure(self, fig: Any, suffix: str, dpi: int = 120) -> pathlib.Path:
    """Lays out, writes and closes a matplotlib figure as `NAME_suffix.png`; returns its path."""
    import matplotlib.pyplot as plt
    path = self.plot_path(suffix)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path

  def write_report(self, title: str, body: str) -> None:
    """Writes the report with its command, date and machine above `body`."""
    self.out_dir.mkdir(parents=True, exist_ok=True)
    header = (f"# {title}\n\n"
              f"Command: `{self.command}`  \n"
              f"Date: {datetime.date.today().isoformat()}; machine: {platform.machine()}, "
              f"{platform.processor() or 'CPU'}, Python {platform.python_version()}"
              f"{' (QUICK smoke run: numbers are not results)' if self.quick else ''}\n\n")
    self.report_path.write_text(header + body.strip() + "\n")
