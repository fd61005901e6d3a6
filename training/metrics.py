"""What a run leaves behind: metrics.jsonl, TensorBoard events, summary.json, console lines.

Only process 0 writes and prints. `params_sha256` hashes the final parameters: for every leaf in the
order of `jax.tree_util.tree_flatten_with_path` (dict keys sorted), the UTF-8 key path, the
dtype name, the shape and the leaf's raw C-order bytes are fed to one SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import math
import pathlib
import sys
import time
from typing import Any, TextIO

import jax
import numpy as np
import tqdm


def params_sha256(params: Any) -> str:
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    array = np.asarray(jax.device_get(leaf))
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(f"{array.dtype.name}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
  return digest.hexdigest()


def _jsonable(value: Any) -> Any:
  value = value.item() if hasattr(value, "item") else value
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  return value


class MetricWriter:
  """Appends one JSON object per logged step and mirrors scalars to TensorBoard."""

  def __init__(self, workdir: pathlib.Path, enabled: bool = True):
    self.enabled = enabled
    if not enabled:
      return
    from tensorboardX import SummaryWriter
    self._jsonl = open(workdir / "metrics.jsonl", "a", encoding="utf-8")
    self._tensorboard = SummaryWriter(str(workdir / "tensorboard"))

  def write(self, step: int, scalars: dict[str, Any]) -> None:
    if not self.enabled:
      return
    record = {"step": step, **{k: _jsonable(v) for k, v in scalars.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    for key, value in record.items():
      if key != "step" and isinstance(value, (int, float)):
        self._tensorboard.add_scalar(key, value, step)

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tensorboard.close()


class Progress:
  """A tqdm bar showing step, loss, lr, steps/s, tokens/s and the ETA."""

  def __init__(self, total_steps: int, start_step: int, tokens_per_step: int, enabled: bool):
    self._bar = tqdm.tqdm(total=total_steps, initial=start_step, disable=not enabled,
                          unit="step", dynamic_ncols=True, mininterval=0.5)
    self._tokens_per_step = tokens_per_step

  def update(self, steps: int, metrics: dict[str, Any] | None) -> None:
    self._bar.update(steps)
    if metrics is not None:
      rate = self._bar.format_dict.get("rate") or 0.0
      self._bar.set_postfix(loss=f"{metrics['train_loss']:.4f}", lr=f"{metrics['lr']:.2e}",
                            tok_s=f"{rate * self._tokens_per_step:,.0f}", refresh=False)

  def close(self) -> None:
    self._bar.close()


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  if seconds >= 3600:
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
  return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Console:
  """What a run prints on stderr: plain lines that read well in a log file, a bar on a TTY.

  One line per logged step (step, train loss, lr, tokens or examples per second, the eval
  loss ± its standard error when evaluated at that step, the ETA), a line before the first
  step is compiled and one with the time it took. The ETA counts from the end of the first
  step, so compilation is not in it. On a TTY a tqdm bar sits under the lines; elsewhere
  (SLURM, CI, a file) there is no bar and no carriage return.
  """

  def __init__(self, total_steps: int, tokens_per_step: int, unit: str, enabled: bool,
               stream: TextIO | None = None):
    self.enabled, self._stream = enabled, stream or sys.stderr
    self._total, self._tokens_per_step, self._unit = total_steps, tokens_per_step, unit
    self._tty = enabled and self._stream.isatty()
    self._bar: tqdm.tqdm | None = None
    self._clock: tuple[float, int] | None = None  # (time, steps done) at the first step's end

  def say(self, text: str) -> None:
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.write(text, file=self._stream)
    else:
      print(text, file=self._stream, flush=True)

  def compiling(self) -> None:
    self.say("compiling the train step ...")

  def compiled(self, seconds: float, done: int) -> None:
    """The first step (`done` steps now done) took `seconds`, compilation included."""
    self.say(f"compiled the train step in {seconds:.1f} s (its first run included)")
    self._clock = (time.perf_counter(), done)
    if self._tty:
      self._bar = tqdm.tqdm(total=self._total, initial=done - 1, unit="step", dynamic_ncols=True,
                            mininterval=0.5, file=self._stream)

  def advance(self) -> None:
    """One more step's metrics fetched (the first step's too)."""
    if self._bar is not None:
      self._bar.update(1)

  def eta(self, done: int) -> str:
    if self._clock is None or done <= self._clock[1]:
      return "?"
    start, first = self._clock
    return _duration((time.perf_counter() - start) / (done - first) * (self._total - done))

  def log(self, done: int, metrics: dict[str, Any], step_time: float) -> None:
    """The line of a logged step; `metrics` has train_loss and lr, maybe eval_loss(_se)."""
    if not self.enabled:
      return
    parts = [f"step {done}/{self._total}", f"loss {metrics['train_loss']:.4f}",
             f"lr {metrics['lr']:.3e}"]
    if step_time > 0:
      parts.append(f"{self._tokens_per_step / step_time:,.0f} {self._unit}/s")
    if "eval_loss" in metrics:
      se = metrics.get("eval_loss_se")
      parts.append(f"eval {metrics['eval_loss']:.4f}" +
                   (f" ± {se:.4f}" if se is not None and math.isfinite(se) else ""))
    if done < self._total:
      parts.append(f"ETA {self.eta(done)}")
    self.say("  ".join(parts))
    if self._bar is not None:
      self._bar.set_postfix(loss=f"{metrics['train_loss']:.4f}", refresh=False)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None
