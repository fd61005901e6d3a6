"""Where a run starts: its own newest checkpoint, another run's state, or scratch.

Precedence: the run folder's own newest readable checkpoint (auto-resume), then
`checkpoint.resume_from` (another run's newest full state), `checkpoint.branch_from` at
`checkpoint.branch_step` (another run's full state and step counter at that step),
`checkpoint.init_from` (another run's parameters at `checkpoint.init_step`, default its newest;
fresh optimizer, step 0), else a fresh
state. Other runs' folders are opened read-only: nothing there is ever written or pruned.
"""

from __future__ import annotations

import pathlib
import sys
from typing import Any

import jax

from trainlab.errors import UsageError
from trainlab.training import rundir
from trainlab.training.checkpoint import Checkpoints
from trainlab.training.trainer import Trainer


def own_checkpoints(trainer: Trainer, workdir: str | pathlib.Path) -> Checkpoints:
  """The run folder's own checkpoints, with the run's cadence and retention."""
  c = trainer.run.checkpoint
  return Checkpoints(workdir, every_steps=c.every_steps, keep=c.keep, keep_every=c.keep_every)


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
  if isinstance(a, dict) and isinstance(b, dict):
    return [k for key in set(a) | set(b)
            for k in _diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")]
  return [] if a == b else [prefix.rstrip(".")]


def _warn_if_config_changed(own: Checkpoints, step: int, config: Any) -> None:
  try:
    saved = own.meta(step).get("config")
  except Exception:  # noqa: BLE001  (an unreadable meta item only loses this warning)
    return
  current = rundir.as_json(config)
  if saved is not None and saved != current and jax.process_index() == 0:
    changed = sorted(_diff_keys(saved, current))
    print(f"warning: resuming step {step} of {own.directory} with a changed config "
          f"({', '.join(changed[:5])}{', ...' if len(changed) > 5 else ''})", file=sys.stderr)


def restore_or_init(trainer: Trainer, own: Checkpoints) -> tuple[Any, str]:
  """The state to start from, and a phrase saying where it came from."""
  settings = trainer.run.checkpoint
  state = own.restore_latest(trainer.abstract_state)
  if state is not None:
    step = int(state.step)
    _warn_if_config_changed(own, step, trainer.run.config)
    return state, f"resumed from {own.directory} at step {step}"
  for key in ("resume_from", "branch_from"):
    source = getattr(settings, key)
    if not source:
      continue
    other = Checkpoints(source, read_only=True)
    at_step = settings.branch_step if key == "branch_from" else None
    state = other.restore_latest(trainer.abstract_state, at_step=at_step)
    other.close()
    if state is None:
      raise UsageError(f"checkpoint.{key}={source!r} has no readable checkpoint; point it at a "
                       "run folder with checkpoints/")
    return state, f"{key.split('_')[0]} from {other.directory} at step {int(state.step)}"
  if settings.init_from:
    other = Checkpoints(settings.init_from, read_only=True)
    steps = other.steps()
    if not steps:
      raise UsageError(f"checkpoint.init_from={settings.init_from!r} has no checkpoint; point "
                       "it at a run folder with checkpoints/")
    step = steps[-1] if settings.init_step < 0 else settings.init_step
    if step not in steps:
      raise UsageError(f"checkpoint.init_step={step} is not saved in {other.directory} (it has "
                       f"{steps}); pick one of those steps")
    params = other.restore_params(step, trainer.abstract_state.params)
    other.close()
    fresh = trainer.init_state()
    state = fresh.replace(params=params, opt_state=trainer.init_opt_state(params))
    return state, f"initialized parameters from {other.directory} step {step}"
  return trainer.init_state(), "started from scratch"
