"""Run-folder I/O: atomic JSON files, the metrics log after a resume, "is this run finished".

Only process 0 writes. A finished run is one whose `summary.json` exists; it is finished *with a
config* when its `config.json` equals that config.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax

from trainlab.errors import UsageError


def write_json(path: pathlib.Path, obj: Any) -> None:
  """Writes `obj` to `path` atomically (a temporary file renamed over it), on process 0."""
  if jax.process_index() != 0:
    return
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
  tmp.replace(path)


def as_json(config: Any) -> Any:
  """A config as the plain JSON value `config.json` stores."""
  return json.loads(json.dumps(config.to_dict() if hasattr(config, "to_dict") else config))


def finished(run_dir: pathlib.Path, config: Any) -> dict[str, Any] | None:
  """The summary of the finished run of `config` in `run_dir`, or None if it has not finished.

  A finished run of a different config is a `UsageError`: it is never overwritten.
  """
  summary = run_dir / "summary.json"
  if not summary.exists():
    return None
  stored = json.loads((run_dir / "config.json").read_text())
  if stored != as_json(config):
    raise UsageError(f"{run_dir} holds a finished run of a different config; use another "
                     "--workdir or move that folder away")
  return json.loads(summary.read_text())


def drop_records_after(metrics_path: pathlib.Path, step: int) -> dict[str, Any] | None:
  """Removes metric lines with `step` beyond `step` (a resumed run rewrites them).

  Returns the last remaining record, or `None`.
  """
  if not metrics_path.exists():
    return None
  kept = []
  for line in metrics_path.read_text().splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:  # a line cut short by a kill
      continue
    if record.get("step", 0) <= step:
      kept.append(record)
  tmp = metrics_path.with_suffix(".tmp")
  tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
  tmp.replace(metrics_path)
  return kept[-1] if kept else None


