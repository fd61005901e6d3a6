"""Shared machinery of the paper reproductions: a resumable sweep runner, run records, pages.

A reproduction (`reproductions/NAME.py`) defines `run(ctx: Context) -> None`. It plans its runs
as `RunSpec`s, gets their records from `ctx.run(specs)`, computes its tables and verdicts and
writes its page with `ctx.write_page(values)` from the hand-written template
`reproductions/templates/NAME.md` (prose is edited there, never read back from the page).

Records: every finished run leaves one JSON line in `docs/results/NAME/runs.jsonl` (the run's
final numbers and its eval curve, never checkpoints), keyed by run name and checked against its
resolved config (stored with it: a key added to the configs later, at the value the runs had
implicitly, does not invalidate a record). `ctx.run` trains only the runs without a record, so
the page regenerates from the committed records without retraining, and a killed sweep
continues where it stopped (an interrupted run also resumes from its own checkpoints in
`runs/reproduce-NAME/`). Runs train in `workers` parallel single-threaded processes; `--quick`
smoke runs train in this process and write their records and page beside each other in the
output folder.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import pathlib
import pkgutil
import platform
import re
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np

from trainlab.errors import UsageError
from trainlab.training import rundir

REPO = pathlib.Path(__file__).resolve().parent.parent
TEMPLATES = pathlib.Path(__file__).resolve().parent / "templates"
KINDS = ("train", "stream", "rl")  # loop.train, continual.run_stream, grpo.train


def available() -> list[str]:
  return sorted(m.name for m in pkgutil.iter_modules(__path__)
                if not m.name.startswith("_") and m.name not in ("stats", "worker"))


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One planned run: a unique name within the reproduction, its config and how it trains."""
  name: str
  config: Any
  kind: str = "train"
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)  # arm, lr, seed, ... for tables

  @property
  def steps(self) -> int:
    """The updates it trains: a stream's tasks together, else the run's `total_steps`."""
    if self.kind == "stream":
      from trainlab.training import continual
      return sum(t.end_step - t.start_step for t in continual.plan(self.config, "/unused"))
    return self.config.total_steps


def covers(stored: Any, current: Any) -> bool:
  """Whether the config `stored` with a record equals `current` but for keys added to the
  configs after the record was made (present in `current` only)."""
  if isinstance(stored, dict) and isinstance(current, dict):
    return all(k in current and covers(v, current[k]) for k, v in stored.items())
  return stored == current


SOURCE_KEYS = ("resume_from", "branch_from", "init_from")


def identity(config: Any) -> Any:
  """The config as JSON with the run folders it starts from (`checkpoint.branch_from`, ...)
  named from inside the `reproduce-NAME` runs folder, so a record made in another checkout
  (a sweep worktree) still matches the same run planned here."""
  config = rundir.as_json(config)
  checkpoint = config.get("checkpoint") if isinstance(config, dict) else None
  if not isinstance(checkpoint, dict):
    return config
  named = dict(checkpoint)
  for key in SOURCE_KEYS:
    parts = pathlib.PurePath(named.get(key) or "").parts
    inside = [i for i, p in enumerate(parts) if re.fullmatch(r"(reproduce|runs)-.+", p)]
    if inside:
      named[key] = "/".join(parts[inside[-1] + 1:])
  return {**config, "checkpoint": named}


def config_sha(config: Any) -> str:
  return hashlib.sha256(json.dumps(identity(config), sort_keys=True).encode()).hexdigest()


def _curve(run_dir: pathlib.Path) -> dict[str, list[float]]:
  """Every logged metric as a series over steps (eval metrics only where evaluated)."""
  path = run_dir / "metrics.jsonl"
  records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
  keys = sorted({k for r in records for k in r if k != "step"})
  return {"step": [r["step"] for r in records],
          **{k: [r.get(k) for r in records] for k in keys}}


def default_record(spec: RunSpec, run_dir: pathlib.Path) -> dict[str, Any]:
  """What a finished run leaves in the records: its summary, its curves and the spec's meta."""
  if spec.kind == "stream":
    summary = json.loads((run_dir / "loss_matrix.json").read_text())
    curve: dict[str, Any] = {}
  else:
    summary = json.loads((run_dir / "summary.json").read_text())
    curve = _curve(run_dir)
  final_test = run_dir / "final_test.json"
  if final_test.exists():
    summary.update({f"final_{k}": v for k, v in json.loads(final_test.read_text()).items()})
  record = {"summary": summary, "curve": curve}
  examples = run_dir / "final_examples.npz"
  if examples.exists():
    with np.load(examples) as saved:
      record["examples"] = {k: np.round(saved[k], 5).tolist() for k in saved.files}
  return record


@dataclasses.dataclass(frozen=True)
class Tuning:
  """One arm's grid, the mean validation score of each value, and the choice."""
  grid: tuple[float, ...]
  means: dict[float, float]
  best: float
  inside: bool  # strictly inside the grid (False only if the extensions ran out)
  records: dict[float, list[dict[str, Any]]]

  def row(self, fmt: str = "{:g}") -> str:
    """The grid as a table cell: every value with its mean score, the choice in bold."""
    cells = [f"**{fmt.format(v)}: {self.means[v]:.4f}**" if v == self.best
             else f"{fmt.format(v)}: {self.means[v]:.4f}" for v in self.grid]
    return " · ".join(cells) + ("" if self.inside else " (edge: not inside the grid)")


class _Stopped(Exception):
  def __init__(self, signum: int):
    super().__init__(signum)
    self.signum = signum


@dataclasses.dataclass
class Context:
  """What a reproduction gets: where to write, how big to run, and the sweep runner."""
  name: str
  out_dir: pathlib.Path
  quick: bool
  seeds: int | None
  command: str
  workers: int = 2
  plan_only: bool = False

  @property
  def page_path(self) -> pathlib.Path:
    return self.out_dir / f"{self.name}.md"

  @property
  def records_path(self) -> pathlib.Path:
    return self.out_dir / self.name / "runs.jsonl"

  @property
  def runs_dir(self) -> pathlib.Path:
    """Run folders: `runs/reproduce-NAME`, or beside the page for `--quick` smoke runs."""
    if self.quick:
      return self.out_dir / f"runs-{self.name}"
    return REPO / "runs" / f"reproduce-{self.name}"

  def enable_compilation_cache(self) -> None:
    """Seeds of one config compile to the same programs; a disk cache compiles them once."""
    import jax
    cache = (REPO / "runs" / "jax-cache").resolve()
    cache.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

  def num_seeds(self, default: int) -> int:
    return 1 if self.quick and self.seeds is None else (self.seeds or default)

  # -- records ---------------------------------------------------------------------------------

  def records(self) -> dict[str, dict[str, Any]]:
    if not self.records_path.exists():
      return {}
    found = {}
    for line in self.records_path.read_text().splitlines():
      if line.strip():
        record = json.loads(line)
        found[record["name"]] = record
    return found

  def _append(self, record: dict[str, Any]) -> None:
    self.records_path.parent.mkdir(parents=True, exist_ok=True)
    with open(self.records_path, "a", encoding="utf-8") as f:
      f.write(json.dumps(record, sort_keys=True) + "\n")

  # -- running ---------------------------------------------------------------------------------

  def run(self, specs: Sequence[RunSpec],
          record_fn: Callable[[RunSpec, pathlib.Path], dict[str, Any]] = default_record,
          runs_per_process: int = 1) -> dict[str, dict[str, Any]]:
    """The record of every spec, training those that have none (in parallel workers).

    `runs_per_process` > 1 trains up to that many runs one after another in each worker
    process, so runs of seconds do not pay the process start-up (imports, JAX) each; a worker
    that fails or is stopped records none of its runs (a rerun resumes them from their
    folders). A record whose config differs from the spec's is a `UsageError`: delete that
    line from the records file (or rename the run) to train it again.
    """
    if runs_per_process < 1:
      raise ValueError(f"runs_per_process must be >= 1, got {runs_per_process}")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
      raise ValueError("run names must be unique within a reproduction")
    have = self.records()
    todo = []
    for spec in specs:
      record = have.get(spec.name)
      if record is not None and record["config_sha256"] != config_sha(spec.config) and not (
          "config" in record and covers(identity(record["config"]), identity(spec.config))):
        raise UsageError(f"{self.records_path} holds run {spec.name!r} of a different config; "
                         "delete its line (or rename the run) to train it again")
      if spec.name not in have:
        todo.append(spec)
    if self.plan_only and todo:
      steps = sum(s.steps for s in todo)
      print(f"[{self.name}] {len(specs) - len(todo)} of {len(specs)} runs of this phase have "
            f"records; to train ({len(todo)} runs, {steps} steps): "
            f"{', '.join(s.name for s in todo)}; later phases are planned from these runs' "
            "results", file=sys.stderr)
      sys.exit(0)
    if todo:
      self._train(todo, record_fn, runs_per_process)
    have = self.records()
    return {s.name: have[s.name] for s in specs}

  def _finish(self, spec: RunSpec, run_dir: pathlib.Path, seconds: float,
              record_fn: Callable[[RunSpec, pathlib.Path], dict[str, Any]]) -> dict[str, Any]:
    record = {"name": spec.name, "config_sha256": config_sha(spec.config),
              "config": rundir.as_json(spec.config), "meta": spec.meta,
              "date": datetime.date.today().isoformat(), "git_commit": _git_commit(),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "train_minutes": round(seconds / 60, 2), **record_fn(spec, run_dir)}
    self._append(record)
    return record

  def _train(self, todo: list[RunSpec], record_fn, runs_per_process: int = 1) -> None:
    self.runs_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    done = 0

    def report(spec: RunSpec, seconds: float, record: dict[str, Any]) -> None:
      nonlocal done
      done += 1
      summary = record["summary"]
      value = summary.get("final_eval_loss", summary.get("final_heldout_pass_rate"))
      shown = f"{value:.4f}" if isinstance(value, float) else "done"
      left = len(todo) - done
      eta = (time.time() - started) / done * left / 60
      print(f"[{self.name}] {done}/{len(todo)} {spec.name}: {shown} ({seconds / 60:.1f} min); "
            f"{left} left, about {eta:.0f} min", file=sys.stderr, flush=True)

    if self.workers == 0 or self.quick:
      for spec in todo:
        t0 = time.time()
        run_dir = self.runs_dir / spec.name
        _train_in_process(spec, run_dir)
        report(spec, time.time() - t0, self._finish(spec, run_dir, time.time() - t0, record_fn))
      return
    self._train_in_workers(todo, record_fn, report, runs_per_process)

  def _train_in_workers(self, todo: list[RunSpec], record_fn, report,
                        runs_per_process: int = 1) -> None:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO),
           "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
           "JAX_COMPILATION_CACHE_DIR": str(REPO / "runs" / "jax-cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    queue, running, failed = list(todo), {}, []

    def stop(signum, frame):
      del frame
      raise _Stopped(signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
      while queue or running:
        while queue and len(running) < self.workers:
          chunk = [queue.pop(0) for _ in range(min(runs_per_process, len(queue)))]
          run_dirs = [self.runs_dir / spec.name for spec in chunk]
          for spec, run_dir in zip(chunk, run_dirs):
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "spec.json").write_text(json.dumps(
                {"kind": spec.kind, "config": rundir.as_json(spec.config)}, sort_keys=True))
          log = open(run_dirs[0] / "log.txt", "a", encoding="utf-8")  # the process's output
          process = subprocess.Popen(
              [sys.executable, "-m", "reproductions.worker", *map(str, run_dirs)],
              cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
          running[process] = (chunk, run_dirs, time.time(), log)
        time.sleep(1.0)
        for process in [p for p in running if p.poll() is not None]:
          chunk, run_dirs, t0, log = running.pop(process)
          log.close()
          seconds = (time.time() - t0) / len(chunk)  # a process's time, shared by its runs
          for spec, run_dir in zip(chunk, run_dirs):
            if process.returncode == 0:
              report(spec, seconds, self._finish(spec, run_dir, seconds, record_fn))
            else:
              failed.append(f"{spec.name} (exit {process.returncode}, "
                            f"log {run_dirs[0] / 'log.txt'})")
    except (KeyboardInterrupt, _Stopped) as e:
      signum = e.signum if isinstance(e, _Stopped) else signal.SIGINT
      for process in running:  # each saves its state and stops; the rerun resumes it
        process.send_signal(signum)
      for process in running:
        process.wait()
      print(f"stopped: {len(running)} unfinished run(s) saved their state; the "
            f"{len(self.records())} finished are in {self.records_path}; rerun the same "
            "command to continue", file=sys.stderr)
      sys.exit(128 + signum)
    finally:
      signal.signal(signal.SIGTERM, previous)
    if failed:
      raise RuntimeError(f"{len(failed)} run(s) failed: {'; '.join(failed)}")

  def tune(self, arms: dict[str, tuple], seeds: Sequence[int], extra: Sequence[RunSpec] = (),
           max_extensions: int = 3,
           score: Callable[[dict[str, Any]], float] = lambda r: r["summary"]["final_eval_loss"],
           record_fn: Callable[[RunSpec, pathlib.Path], dict[str, Any]] = default_record,
           runs_per_process: int = 1) -> dict[str, "Tuning"]:
    """Tunes every arm, `arms[name] = (make, grid)` or `(make, grid, arm_seeds)` with
    `make(value, seed) -> RunSpec`, on its grid with `seeds` (or its own `arm_seeds`), choosing
    the value with the lowest mean validation score. A choice on the grid's edge
    extends the grid by one step of the grid's spacing in that direction and trains again (at
    most `max_extensions` times), so every chosen value lies strictly inside its grid. `extra`
    specs train alongside the first round. Choices read validation scores only. `record_fn`
    and `runs_per_process` are passed to `run`.
    """
    grids = {arm: sorted(spec[1]) for arm, spec in arms.items()}
    arm_seeds = {arm: tuple(spec[2]) if len(spec) > 2 else tuple(seeds)
                 for arm, spec in arms.items()}
    results: dict[str, Tuning] = {}
    for round_ in range(max_extensions + 1):
      specs = [arms[arm][0](value, seed) for arm, grid in grids.items() if arm not in results
               for value in grid for seed in arm_seeds[arm]]
      records = self.run([*specs, *(extra if round_ == 0 else ())], record_fn, runs_per_process)
      for arm, grid in list(grids.items()):
        if arm in results:
          continue
        by_value = {v: [records[arms[arm][0](v, s).name] for s in arm_seeds[arm]] for v in grid}
        means = {v: float(np.mean([score(r) for r in rs])) for v, rs in by_value.items()}
        best = min(grid, key=means.get)
        inside = grid[0] < best < grid[-1]
        if inside or round_ == max_extensions or self.quick:
          results[arm] = Tuning(tuple(grid), means, best, inside, by_value)
        else:
          ratio = grid[1] / grid[0]
          grids[arm] = [*grid, grid[-1] * ratio] if best == grid[-1] else [grid[0] / ratio, *grid]
      if len(results) == len(arms):
        break
    return results

  # -- pages -----------------------------------------------------------------------------------

  def plot_path(self, suffix: str) -> pathlib.Path:
    self.out_dir.mkdir(parents=True, exist_ok=True)
    return self.out_dir / f"{self.name}_{suffix}.png"

  def save_figure(self, fig: Any, suffix: str, dpi: int = 120) -> pathlib.Path:
    """Lays out, writes and closes a matplotlib figure as `NAME_suffix.png`; returns its path."""
    import matplotlib.pyplot as plt
    path = self.plot_path(suffix)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, metadata={"Software": None})
    plt.close(fig)
    return path

  def write_page(self, values: dict[str, Any], records: dict[str, dict[str, Any]]) -> None:
    """Fills `templates/NAME.md`'s `{{key}}` placeholders and writes the page with its header:
    the command, when the records were made and on what, and the training time they cost.
    With `--plan` it only says that every run has its record."""
    if self.plan_only:
      print(f"[{self.name}] every run has a record: the page regenerates without training",
            file=sys.stderr)
      return
    template = (TEMPLATES / f"{self.name}.md").read_text()
    dates = sorted({r["date"] for r in records.values()})
    machines = sorted({r["machine"] for r in records.values()})
    minutes = sum(r["train_minutes"] for r in records.values())
    path = self.records_path.resolve()
    shown = self.records_path.name if self.quick or not path.is_relative_to(REPO) else (
        path.relative_to(REPO))
    header = (f"Command: `{self.command}` (regenerates this page from the run records in "
              f"`{shown}`;"
              f" runs without a record are trained first)  \n"
              f"Records: {len(records)} runs, {dates[0] if dates else '-'} to "
              f"{dates[-1] if dates else '-'}, {', '.join(machines) or '-'}; "
              f"{minutes / 60:.1f} hours of training"
              f"{' (QUICK smoke run: numbers are not results)' if self.quick else ''}\n\n")
    values = {"header": header, **values}
    missing = set(re.findall(r"\{\{(\w+)\}\}", template)) - set(values)
    if missing:
      raise KeyError(f"templates/{self.name}.md needs values for {sorted(missing)}")
    page = re.sub(r"\{\{(\w+)\}\}", lambda m: str(values[m.group(1)]), template)
    self.out_dir.mkdir(parents=True, exist_ok=True)
    self.page_path.write_text(page.strip() + "\n")


def _git_commit() -> str | None:
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                          text=True, check=True, timeout=30).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None


def _train_in_process(spec: RunSpec, run_dir: pathlib.Path) -> None:
  from reproductions import worker
  worker.train(spec.kind, spec.config, run_dir)


def mean_std(values: Sequence[float], digits: int = 4) -> str:
  """`mean ± std` (sample std, ddof=1; `± n/a` for one value)."""
  values = np.asarray(values, dtype=np.float64)
  if len(values) < 2:
    return f"{values.mean():.{digits}f} ± n/a"
  return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)
