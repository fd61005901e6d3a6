"""The training loop: build, (re)start, step, evaluate, log, checkpoint, summarize.

Metrics of step `t` are fetched after step `t + 1` is dispatched, so the host never waits on
the device inside the loop except at eval, at logged steps and at the end.
"""

from __future__ import annotations

import pathlib
import sys
import time
from typing import Any

import jax

from trainlab.algorithms import quantize as qz
from trainlab.training import checkpoint as checkpoint_lib
from trainlab.training import metrics as metrics_lib
from trainlab.training import preemption, resume, rundir
from trainlab.training.run import Run, build_run
from trainlab.training.trainer import Trainer


class DivergedError(RuntimeError):
  """Too many non-finite steps in a row."""


def _num_params(params: Any) -> int:
  is_q = lambda x: isinstance(x, qz.QuantizedArray)
  return int(sum(x.size for x in jax.tree.leaves(params, is_leaf=is_q)))


def train(config: Any, workdir: str | pathlib.Path, *, progress: bool = True) -> dict[str, Any]:
  """Trains `config` in `workdir` and returns the summary (also written to summary.json)."""
  return train_run(build_run(config), workdir, progress=progress)


def train_run(run: Run, workdir: str | pathlib.Path, *, progress: bool = True) -> dict[str, Any]:
  """Trains a built run in `workdir`; see `train`."""
  start_time = time.time()
  workdir = pathlib.Path(workdir)
  is_main = jax.process_index() == 0
  if is_main:
    workdir.mkdir(parents=True, exist_ok=True)
  trainer = Trainer(run)
  checkpoints = resume.own_checkpoints(trainer, workdir)
  state, origin = resume.restore_or_init(trainer, checkpoints)
  start_step = int(state.step)
  resumed = rundir.drop_records_after(workdir / "metrics.jsonl", start_step) if is_main else None
  rundir.write_json(workdir / "config.json", rundir.as_json(run.config))  # the checkpoint fits
  loop = run.loop
  if is_main and progress:
    print(f"{workdir}: {origin}; training to step {loop.total_steps}", file=sys.stderr,
          flush=True)
  checkpoint_meta = checkpoint_lib.run_metadata(run.config)
  writer = metrics_lib.MetricWriter(workdir, enabled=is_main)
  bar = metrics_lib.Progress(loop.total_steps, start_step, run.tokens_per_step,
                             enabled=is_main and progress)

  last_metrics: dict[str, float] = dict(resumed or {})
  done_at_start = start_step >= loop.total_steps
  eval_metrics: dict[str, float] = (trainer.evaluate(state.params, test=True)
                                    if done_at_start else {})
  eval_step_done = -1
  pending = None
  last_log_time, last_log_step = time.time(), start_step

  def finish_step(step: int, device_metrics: Any) -> None:
    nonlocal last_metrics, last_log_time, last_log_step
    last_metrics = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
    if last_metrics["nonfinite_in_a_row"] >= loop.max_nonfinite_steps:
      raise DivergedError(
          f"{int(last_metrics['nonfinite_in_a_row'])} non-finite steps in a row at step {step}; "
          "lower optimizer.learning_rate or enable optimizer.grad_clip_norm")
    done = step + 1
    log_now = done % loop.log_every == 0 or done == loop.total_steps
    bar.update(1, last_metrics if log_now else None)
    if log_now:
      now = time.time()
      step_time = (now - last_log_time) / max(done - last_log_step, 1)
      last_log_time, last_log_step = now, done
      record = {k: v for k, v in last_metrics.items() if k != "nonfinite_in_a_row"}
      evaluated_now = eval_metrics if eval_step_done == done else {}
      writer.write(done, {**record, "step_time": step_time, **evaluated_now})

  with preemption.PreemptionWatch() as watch:
    try:
      for step in range(start_step, loop.total_steps):
        state, device_metrics = trainer.train_step(state, trainer.step_batch(step))
        if pending is not None:
          finish_step(*pending)
        pending = (step, device_metrics)
        done = step + 1
        is_last = done == loop.total_steps
        if loop.eval_every and done % loop.eval_every == 0 or is_last:
          eval_metrics = trainer.evaluate(state.params, test=is_last)
          eval_step_done = done
        if done % loop.log_every == 0 or is_last:
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
      bar.close()
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
  return summary
