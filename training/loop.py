"""The training loop: lock the run folder, (re)start, step, evaluate, log, checkpoint, summarize.

Metrics of step `t` are fetched after step `t + 1` is dispatched, so the host never waits on
the device inside the loop except after the first step (to time its compilation), at eval, at
logged steps and at the end. A metrics line is written at every multiple of `log.every_steps`,
at every eval step and at the last step; its `step_time` is the mean over the steps since the
previous line, eval excluded (the first line after a start counts from the end of the first
step, so compilation is in no line but a first-step-only one). A run that will train removes a
previous `summary.json` first and writes a new one when it finishes, so a summary always
describes the parameters the run folder ends with.
"""

from __future__ import annotations

import pathlib
import time
from typing import Any, Callable

import jax

from trainlab.algorithms import quantize as qz
from trainlab.training import checkpoint as checkpoint_lib
from trainlab.training import metrics as metrics_lib
from trainlab.training import preemption, resume, rundir
from trainlab.training import workdir as workdir_lib
from trainlab.training.run import Run, build_run
from trainlab.training.state import TrainState
from trainlab.training.trainer import Trainer


class DivergedError(RuntimeError):
  """Too many non-finite steps in a row."""


def _num_params(params: Any) -> int:
  is_q = lambda x: isinstance(x, qz.QuantizedArray)
  return int(sum(x.size for x in jax.tree.leaves(params, is_leaf=is_q)))


Finisher = Callable[[Trainer, TrainState, pathlib.Path], None]


def train(config: Any, workdir: str | pathlib.Path, *, progress: bool = True,
          on_finish: Finisher | None = None) -> dict[str, Any]:
  """Trains `config` in `workdir` and returns the summary (also written to summary.json).
  `on_finish(trainer, final_state, workdir)`, if given, runs after the summary is written,
  with the folder still locked (e.g. extra evaluations of the final parameters)."""
  workdir_lib.check_usable(workdir)  # before anything is built
  return train_run(build_run(config), workdir, progress=progress, on_finish=on_finish)


def train_run(run: Run, workdir: str | pathlib.Path, *, progress: bool = True,
              on_finish: Finisher | None = None) -> dict[str, Any]:
  """Trains a built run in `workdir`, which it holds locked for the whole run; see `train`."""
  with workdir_lib.hold(workdir) as held:
    return _train(run, held, progress, on_finish)


def _train(run: Run, workdir: pathlib.Path, progress: bool,
           on_finish: Finisher | None) -> dict[str, Any]:
  start_time = time.time()
  is_main = jax.process_index() == 0
  trainer = Trainer(run)
  checkpoints = resume.own_checkpoints(trainer, workdir)
  try:
    state, origin = resume.restore_or_init(trainer, checkpoints)
  except BaseException:
    checkpoints.close()
    raise
  start_step = int(state.step)
  loop = run.loop
  if is_main and start_step < loop.total_steps:  # a run in progress has no summary
    (workdir / "summary.json").unlink(missing_ok=True)
  resumed = rundir.drop_records_after(workdir / "metrics.jsonl", start_step) if is_main else None
  rundir.write_json(workdir / "config.json", rundir.as_json(run.config))  # the checkpoint fits
  console = metrics_lib.Console(loop.total_steps, run.tokens_per_step,
                                "tok" if run.dataset.kind == "lm" else "ex",
                                enabled=is_main and progress)
  console.say(f"{workdir}: {origin}; training to step {loop.total_steps}")
  checkpoint_meta = checkpoint_lib.run_metadata(run.config)
  writer = metrics_lib.MetricWriter(workdir, enabled=is_main)

  last_metrics: dict[str, float] = dict(resumed or {})
  done_at_start = start_step >= loop.total_steps
  eval_metrics: dict[str, float] = trainer.evaluate(state.params) if done_at_start else {}
  if done_at_start and "eval_loss" in eval_metrics:
    console.say(f"already trained to step {start_step}; eval {eval_metrics['eval_loss']:.4f}")
  eval_step_done = -1
  pending = None
  window = {"time": time.perf_counter(), "step": start_step, "eval_s": 0.0, "first_s": 0.0}

  def finish_step(step: int, device_metrics: Any) -> None:
    nonlocal last_metrics
    last_metrics = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
    if last_metrics["nonfinite_in_a_row"] >= loop.max_nonfinite_steps:
      raise DivergedError(
          f"{int(last_metrics['nonfinite_in_a_row'])} non-finite steps in a row at step {step}; "
          "lower optimizer.learning_rate or enable optimizer.grad_clip_norm")
    done = step + 1
    console.advance()
    if done % loop.log_every == 0 or done == loop.total_steps or eval_step_done == done:
      now = time.perf_counter()
      steps = done - window["step"]  # 0 for a line at the first step: its time, compile and all
      step_time = (now - window["time"] - window["eval_s"]) / steps if steps else window["first_s"]
      window.update(time=now, step=done, eval_s=0.0)
      record = {k: v for k, v in last_metrics.items() if k != "nonfinite_in_a_row"}
      evaluated_now = eval_metrics if eval_step_done == done else {}
      writer.write(done, {**record, "step_time": step_time, **evaluated_now})
      console.log(done, {**record, **evaluated_now}, step_time)

  with preemption.PreemptionWatch() as watch:
    try:
      for step in range(start_step, loop.total_steps):
        batch = trainer.step_batch(step)
        if step == start_step:
          console.compiling()
          compile_start = time.perf_counter()
          state, device_metrics = trainer.train_step(state, batch)
          jax.block_until_ready(device_metrics)
          window.update(time=time.perf_counter(), step=step + 1,
                        first_s=time.perf_counter() - compile_start)
          console.compiled(window["first_s"], step + 1)
        else:
          state, device_metrics = trainer.train_step(state, batch)
        if pending is not None:
          finish_step(*pending)
        pending = (step, device_metrics)
        done = step + 1
        is_last = done == loop.total_steps
        if loop.eval_every and done % loop.eval_every == 0 or is_last:
          eval_start = time.perf_counter()
          eval_metrics, eval_step_done = trainer.evaluate(state.params), done
          window["eval_s"] += time.perf_counter() - eval_start
        if done % loop.log_every == 0 or is_last or eval_step_done == done:
          finish_step(*pending)
          pending = None
        if checkpoints.should_save(done) or is_last:
          checkpoints.save(done, state, checkpoint_meta)
        if watch.requested(done) and not is_last:
          if pending is not None:
            finish_step(*pending)
          checkpoints.save(done, state, checkpoint_meta)
          raise preemption.Preempted(done, watch.signum)
    finally:
      checkpoints.wait()
      checkpoints.close()
      console.close()
      writer.close()
  summary = {
      "steps": int(state.step),
      "final_train_loss": last_metrics.get("train_loss"),
      "final_eval_loss": eval_metrics.get("eval_loss"),
      "final_eval_loss_se": eval_metrics.get("eval_loss_se"),
      "baseline_loss": run.dataset.baseline_loss,
      "skipped_steps": int(jax.device_get(state.opt_state.total_notfinite)),
      "num_params": _num_params(state.params),
      "wall_time_s": time.time() - start_time,
      "params_sha256": metrics_lib.params_sha256(state.params),
  }
  summary.update({f"final_{k}": v for k, v in eval_metrics.items()
                  if k == "eval_accuracy" or k.startswith("test_")})
  rundir.write_json(workdir / "summary.json", summary)
  if on_finish is not None:
    on_finish(trainer, state, workdir)
  return summary
