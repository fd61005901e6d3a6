"""What a run leaves behind: metrics.jsonl, TensorBoard events, summary.json, a progress bar.

Only process 0 writes. `params_sha256` hashes the final parameters: for every leaf in the
order of `jax.tree_util.tree_flatten_with_path` (dict keys sorted), the UTF-8 key path, the
dtype name, the shape and the leaf's raw C-order bytes are fed to one SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import math
import pathlib
from typing import Any

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
