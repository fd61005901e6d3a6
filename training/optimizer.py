"""The optimizer of a run, built from `config.optimizer` and `config.schedule`.

The chain is `apply_if_finite(chain(clip_by_global_norm, inject_hyperparams(optimizer)))`: a
non-finite gradient skips the whole update (and is counted in the state), clipping happens
before the optimizer, and the learning rate actually used sits in the state for logging.
"""

from __future__ import annotations

from typing import Any

import optax

import algorithms  # registers every optimizer and schedule
from algorithms.optimizers import OPTIMIZERS
from algorithms.schedules import build_schedule

# Config keys of `optimizer` that belong to the trainer, not to the optimizer builder.
TRAINER_KEYS = ("name", "learning_rate", "grad_clip_norm")
_NEVER_GIVES_UP = 2**31 - 1  # the loop stops the run; apply_if_finite must never apply NaNs


def schedule_from_config(config: Any) -> optax.Schedule:
  schedule_kwargs = {k: v for k, v in config.schedule.items() if k != "name"}
  return build_schedule(config.schedule.name, config.optimizer.learning_rate,
                        config.total_steps, **schedule_kwargs)


def optimizer_kwargs(optimizer_config: Any) -> dict[str, Any]:
  return {k: v for k, v in optimizer_config.items() if k not in TRAINER_KEYS}


def _is_static(value: Any) -> bool:
  return value is None or isinstance(value, (bool, str, tuple, list))


def build_optimizer(config: Any) -> optax.GradientTransformation:
  """The full update rule of a run (clipping, optimizer, schedule, non-finite guard)."""
  kwargs = optimizer_kwargs(config.optimizer)
  static = tuple(k for k, v in kwargs.items() if _is_static(v))
  inner = optax.inject_hyperparams(OPTIMIZERS[config.optimizer.name], static_args=static)(
      learning_rate=schedule_from_config(config), **kwargs)
  clip = config.optimizer.grad_clip_norm
  clipped = optax.chain(optax.clip_by_global_norm(clip), inner) if clip else inner
  return optax.apply_if_finite(clipped, max_consecutive_errors=_NEVER_GIVES_UP)
