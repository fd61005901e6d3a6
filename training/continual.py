"""Continual pre-training: one model trained through a stream of domains, task after task.

Each task is an ordinary run of `training.loop.train` in `WORKDIR/task_<i>_<domain>/`, chained
to the previous task by `stream.handoff`: `state` (the default) through
`checkpoint.branch_from` + `branch_step` (full state: parameters, optimizer state and step
counter); `weights`, as MAE-1's `mae_pretrain.py` loads the previous task's checkpoint, through
`checkpoint.init_from` + `init_step` (parameters only: a fresh optimizer, the step counter and the
schedule start again at 0). With the infinite learning-rate schedule (Ibrahim et al.,
arXiv 2403.08763, Sec. 4; Singh et al., arXiv 2503.02844, Sec. 3; `Pauljanson002/MAE-1`
`trainer.py`) task 0 runs warmup, cooldown, constant and anneal; task `i > 0` starts from task
`i - 1`'s **pre-anneal** state (constant phase), with no warmup and no cooldown, and runs its
own anneal to give that task's deployable model. With repeated cosine (Gupta et al., arXiv
2308.04014) task `i` starts from task `i - 1`'s final state and re-warms and re-decays. Every
task takes `stream.steps_per_task` updates, so all schedules spend the same compute.

After each task its deployable (final) model is evaluated on the validation split of every
domain seen so far; the rows form the loss matrix (task x domain), written to
`WORKDIR/loss_matrix.json` and `WORKDIR/loss_matrix.md`; `example_losses` gives its cells'
per-window losses, for paired comparisons of two streams. A rerun skips finished tasks and the
loop auto-resumes an interrupted one from its own checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import sys
from typing import Any

import jax
import ml_collections
import numpy as np

from trainlab.data import Dataset, make_dataset
from trainlab.errors import UsageError
from trainlab.training import checkpoint as checkpoint_lib
from trainlab.training import loop, rundir
from trainlab.training import workdir as workdir_lib
from trainlab.training.run import build_run
from trainlab.training.trainer import Trainer

STREAM_SCHEDULES = ("infinite_lr", "repeated_cosine")
HANDOFFS = ("state", "weights")


@dataclasses.dataclass(frozen=True)
class Task:
  """One task of the stream: its run folder, trainer config and step range."""
  index: int
  domain: str
  run_dir: pathlib.Path
  config: ml_collections.ConfigDict
  start_step: int  # the step counter the task starts from (0 for task 0 and with `weights`)
  pre_anneal_step: int | None  # infinite schedule: where the anneal starts (own counter)
  source: tuple[pathlib.Path, int] | None  # the run and step the task starts from

  @property
  def end_step(self) -> int:
    return self.config.total_steps


def domains(config: Any) -> list[str]:
  names = [n.strip() for n in config.stream.domains.split(",") if n.strip()]
  if not names:
    raise UsageError("stream.domains is empty; give comma-separated corpus names")
  return names


def checkpoint_spacing(config: Any) -> int:
  """Checkpoint every this many steps; a multiple of it is every task's pre-anneal step."""
  steps, every = config.stream.steps_per_task, config.stream.get("checkpoint_every", 0)
  anneal = config.schedule.get("anneal_steps", 0) if config.schedule.name == "infinite_lr" else 0
  if every == 0:
    return math.gcd(steps, anneal) if anneal else steps
  if every < 0 or steps % every or (anneal and anneal % every):
    raise UsageError(f"stream.checkpoint_every={every} must divide stream.steps_per_task={steps}"
                     + (f" and schedule.anneal_steps={anneal}" if anneal else "")
                     + "; pick a common divisor or 0")
  return every


def plan(config: Any, workdir: str | pathlib.Path) -> list[Task]:
  """The stream's tasks with the trainer config of each (no I/O)."""
  if config.schedule.name not in STREAM_SCHEDULES:
    raise UsageError(f"schedule.name={config.schedule.name!r} cannot drive a stream; use "
                     f"{' or '.join(STREAM_SCHEDULES)} (experiments/continual.py:schedule=...)")
  steps, fraction = config.stream.steps_per_task, config.stream.replay_fraction
  if not isinstance(steps, int) or steps < 1:
    raise UsageError(f"stream.steps_per_task={steps!r} must be an integer >= 1")
  if not 0.0 <= fraction < 1.0:
    raise UsageError(f"stream.replay_fraction={fraction!r} must be in [0, 1)")
  handoff = config.stream.get("handoff", "state")
  if handoff not in HANDOFFS:
    raise UsageError(f"stream.handoff={handoff!r} must be one of {', '.join(HANDOFFS)}")
  weights_only = handoff == "weights"
  infinite = config.schedule.name == "infinite_lr"
  anneal = config.schedule.get("anneal_steps", 0) if infinite else 0
  spacing = checkpoint_spacing(config)
  names, tasks = domains(config), []
  start, source = 0, None
  for i, domain in enumerate(names):
    task = ml_collections.ConfigDict(config.to_dict())
    del task["stream"]
    start = 0 if weights_only else start
    task.total_steps = start + steps
    task.data.name = domain
    earlier = list(dict.fromkeys(n for n in names[:i] if n != domain))
    if fraction > 0 and earlier:
      task.data.replay = ",".join(earlier)
      task.data.replay_fraction = fraction
    if infinite and i > 0:
      task.schedule.warmup_steps = task.schedule.cooldown_steps = 0
    if not infinite:
      task.schedule.num_cycles = 1 if weights_only else i + 1
    branch = source is not None and not weights_only
    task.checkpoint.update(
        every_steps=spacing, keep_every=spacing, resume_from="",
        init_from=str(source[0]) if source and weights_only else "",
        init_step=source[1] if source and weights_only else -1,
        branch_from=str(source[0]) if branch else "", branch_step=source[1] if branch else -1)
    run_dir = pathlib.Path(workdir) / f"task_{i}_{domain}"
    pre_anneal = task.total_steps - anneal if infinite else None
    tasks.append(Task(i, domain, run_dir, task, start, pre_anneal, source))
    source = (run_dir, pre_anneal if infinite else task.total_steps)
    start = source[1]
  return tasks


class DomainEvaluator:
  """Validation loss of saved parameters on any of the stream's domains."""

  def __init__(self, config: Any):
    self.config = config
    self.trainer = Trainer(build_run(config))
    self._datasets: dict[str, Dataset] = {}
    self._checkpoints: dict[pathlib.Path, checkpoint_lib.Checkpoints] = {}

  def dataset(self, domain: str) -> Dataset:
    if domain not in self._datasets:
      c = self.config
      self._datasets[domain] = make_dataset(
          domain, seed=c.seed, batch_size=c.batch_size, seq_len=c.data.seq_len,
          eval_batches=c.eval.num_batches, split_seed=c.data.get("split_seed", 0))
    return self._datasets[domain]

  def params_at(self, run_dir: pathlib.Path, step: int) -> Any:
    if run_dir not in self._checkpoints:
      self._checkpoints[run_dir] = checkpoint_lib.Checkpoints(run_dir, read_only=True)
    # The full state, not `restore_params`: its PyTreeRestore does not match the manager's
    # StandardCheckpointHandler for "state" (orbax 0.12.8 raises "no registered handler").
    return self._checkpoints[run_dir].restore(step, self.trainer.abstract_state).params

  def close(self) -> None:
    for checkpoints in self._checkpoints.values():
      checkpoints.close()
    self._checkpoints.clear()

  def metrics(self, params: Any, names: list[str]) -> dict[str, dict[str, float]]:
    """`eval_loss` and `eval_loss_se` (over the validation windows) on each domain."""
    return {name: self.trainer.evaluate(params, self.dataset(name)) for name in names}

  def losses(self, params: Any, names: list[str]) -> dict[str, float]:
    return {name: m["eval_loss"] for name, m in self.metrics(params, names).items()}


def _finished(task: Task) -> bool:
  """Whether `task`'s run completed; a finished run of another config is a usage error."""
  summary = rundir.finished(task.run_dir, task.config)
  return summary is not None and summary["steps"] == task.end_step


def matrix_markdown(record: dict[str, Any]) -> str:
  names = record["domains"]
  lines = ["| after task | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
  for row in record["tasks"]:
    cells = [f"{row['losses'][n]:.4f}" if n in row["losses"] else "" for n in names]
    lines.append(f"| {row['task']} ({row['domain']}) | " + " | ".join(cells) + " |")
  return ("Validation loss (nats/byte) of each task's deployable model on every domain seen "
          "so far.\n\n" + "\n".join(lines) + "\n")


def run_stream(config: Any, workdir: str | pathlib.Path, *,
               progress: bool = True) -> dict[str, Any]:
  """Trains the stream in `workdir`, evaluating after every task; returns the loss matrix.

  Every task's config is built first (an unknown domain or a bad key fails before any task
  trains, and before `workdir` is created); the stream folder is held locked throughout.
  """
  workdir = pathlib.Path(workdir).resolve()  # Orbax needs absolute checkpoint paths
  workdir_lib.check_usable(workdir)
  tasks = plan(config, workdir)
  runs = [build_run(task.config) for task in tasks]
  with workdir_lib.hold(workdir):
    return _run_stream(config, workdir, tasks, runs, progress)


def _run_stream(config: Any, workdir: pathlib.Path, tasks: list[Task], runs: list[Any],
                progress: bool) -> dict[str, Any]:
  stream_config = rundir.as_json(config)
  config_path = workdir / "stream_config.json"
  if config_path.exists() and json.loads(config_path.read_text()) != stream_config:
    raise UsageError(f"{workdir} holds a stream of a different config; use another --workdir "
                     "or the config that wrote it")
  rundir.write_json(config_path, stream_config)
  names = [t.domain for t in tasks]
  if progress and jax.process_index() == 0:
    print(f"{workdir}: a stream of {len(tasks)} tasks ({', '.join(names)})", file=sys.stderr)
  matrix_path = workdir / "loss_matrix.json"
  record = json.loads(matrix_path.read_text()) if matrix_path.exists() else {}
  rows = {r["task"]: r for r in record.get("tasks", [])}
  record = {"domains": list(dict.fromkeys(names)), "tasks": []}
  evaluator = None
  for task, run in zip(tasks, runs):
    trained = not _finished(task)
    if trained:
      loop.train_run(run, task.run_dir, progress=progress)
    if trained or task.index not in rows:
      seen = list(dict.fromkeys(names[:task.index + 1]))
      if progress and jax.process_index() == 0:
        print(f"task {task.index} ({task.domain}) is trained; evaluating its final model on "
              f"{', '.join(seen)}", file=sys.stderr, flush=True)
      evaluator = evaluator or DomainEvaluator(tasks[0].config)
      params = evaluator.params_at(task.run_dir, task.end_step)
      metrics = evaluator.metrics(params, seen)
      rows[task.index] = {
          "task": task.index, "domain": task.domain, "run_dir": task.run_dir.name,
          "start_step": task.start_step, "end_step": task.end_step,
          "pre_anneal_step": task.pre_anneal_step,
          "started_from": task.source[0].name if task.source else None,
          "started_from_step": task.source[1] if task.source else None,
          "losses": {n: m["eval_loss"] for n, m in metrics.items()},
          "losses_se": {n: m["eval_loss_se"] for n, m in metrics.items()}}
    if evaluator is not None:
      evaluator.close()  # the next task's training may not see a stale manager
    record["tasks"].append(rows[task.index])
    record["trained"] = record.get("trained", []) + ([task.index] if trained else [])
    rundir.write_json(matrix_path, record)
    if jax.process_index() == 0:
      (workdir / "loss_matrix.md").write_text(matrix_markdown(record))
  return record


def example_losses(config: Any, workdir: str | pathlib.Path) -> dict[str, np.ndarray]:
  """The loss of every validation window, `"TASK/DOMAIN"` -> (windows,), of each task's
  deployable model on every domain seen so far: the loss matrix's cells before averaging, for
  comparisons of two streams on the same windows. Cached in `WORKDIR/loss_matrix_examples.npz`.
  """
  workdir = pathlib.Path(workdir).resolve()
  cache = workdir / "loss_matrix_examples.npz"
  if cache.exists():
    with np.load(cache) as saved:
      return {k: saved[k] for k in saved.files}
  tasks = plan(config, workdir)
  names = [t.domain for t in tasks]
  evaluator = DomainEvaluator(tasks[0].config)
  found = {}
  for task in tasks:
    params = evaluator.params_at(task.run_dir, task.end_step)
    for name in dict.fromkeys(names[:task.index + 1]):
      found[f"{task.index}/{name}"] = evaluator.trainer.example_losses(
          params, dataset=evaluator.dataset(name))
  evaluator.close()
  np.savez(cache, **found)
  return found


def trajectory(config: Any, workdir: str | pathlib.Path) -> list[dict[str, Any]]:
  """Every domain's validation loss at every kept checkpoint along the stream.

  Each record has `task`, `step` (the run's step counter), `stream_step` (updates since the
  start of the stream: `task * steps_per_task + step - task start`) and `losses`. A task's
  first point is the state it started from. Cached in `WORKDIR/trajectory.json`.
  """
  workdir = pathlib.Path(workdir).resolve()
  cache = workdir / "trajectory.json"
  if cache.exists():
    return json.loads(cache.read_text())
  tasks = plan(config, workdir)
  names = list(dict.fromkeys(t.domain for t in tasks))
  evaluator = DomainEvaluator(tasks[0].config)
  steps_per_task = config.stream.steps_per_task
  points = []
  for task in tasks:
    own = checkpoint_lib.Checkpoints(task.run_dir, read_only=True)
    saved = [s for s in own.steps() if s > task.start_step]
    own.close()
    starts = [(task.run_dir, s, s - task.start_step) for s in saved]
    if task.source is not None:
      starts.insert(0, (*task.source, 0))
    for run_dir, step, into_task in starts:
      params = evaluator.params_at(run_dir, step)
      points.append({"task": task.index, "step": step,
                     "stream_step": task.index * steps_per_task + into_task,
                     "losses": evaluator.losses(params, names)})
  evaluator.close()
  rundir.write_json(cache, points)
  return points
