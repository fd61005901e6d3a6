"""The optimizer of a run, built from `config.optimizer` and `config.schedule`.

The chain is `apply_if_finite(chain(clip_by_global_norm, inject_hyperparams(optimizer)))`: a
non-finite gradient skips the whole update (and is counted in the state), clipping happens
before the optimizer, and the learning rate actually used sits in the state for logging.
"""

from __future__ import annotations

from typing import Any

import optax

import algorithms  # registers every optimizer and schedule
from algorithms import sophia
from algorithms.optimizers import OPTIMIZERS
from algorithms.schedules import build_schedule
from training.step import HessianRefresh

# Config keys of `optimizer` that belong to the trainer, not to the optimizer builder.
TRAINER_KEYS = ("name", "learning_rate", "grad_clip_norm", "hessian_clip_norm")
_NEVER_GIVES_UP = 2**31 - 1  # the loop stops the run; apply_if_finite must never apply NaNs


def schedule_from_config(config: Any) -> optax.Schedule:
  schedule_kwargs = {k: v for k, v in config.schedule.items() if k != "name"}
  return build_schedule(config.schedule.name, config.optimizer.learning_rate,
                        config.total_steps, **schedule_kwargs)


def optimizer_kwargs(optimizer_config: Any) -> dict[str, Any]:
  return {k: v for k, v in optimizer_config.items() if k not in TRAINER_KEYS}


def global_batch_tokens(config: Any) -> int:
  """Tokens (text) or examples (images) in one global batch: Sophia's `batch_size`."""
  return config.batch_size * max(config.data.get("seq_len", 0), 1)


def _sophia_kwargs(config: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
  """Fills Sophia's `batch_size` (0 or unset: derived) or checks a given one."""
  tokens = global_batch_tokens(config)
  given = kwargs.get("batch_size") or tokens
  if given != tokens:
    raise ValueError(f"optimizer.batch_size={given} must be the {tokens} tokens of the global "
                     "batch (batch_size * data.seq_len); set it to 0 to derive it")
  return {**kwargs, "batch_size": tokens}


def hessian_refresh(config: Any) -> HessianRefresh | None:
  """The train step's Hessian refresh for `optimizer.name="sophia"`, else None."""
  clip = config.optimizer.get("hessian_clip_norm", 0.0)
  if config.optimizer.name != "sophia":
    if clip:
      raise ValueError("optimizer.hessian_clip_norm is only used by sophia; remove it")
    return None
  if not isinstance(clip, (int, float)) or clip < 0:
    raise ValueError(f"optimizer.hessian_clip_norm={clip!r} must be >= 0 (0 disables clipping)")
  interval = config.optimizer.get("update_interval", 10)
  if not isinstance(interval, int) or isinstance(interval, bool) or interval < 1:
    raise ValueError(f"optimizer.update_interval={interval!r} must be an integer >= 1")
  estimator = config.optimizer.get("estimator", "gnb")
  if estimator not in sophia.ESTIMATORS:
    raise ValueError(f"optimizer.estimator={estimator!r} must be one of {sophia.ESTIMATORS}")
  return HessianRefresh(interval=interval, estimator=estimator, clip_norm=clip)


def _is_static(value: Any) -> bool:
  return value is None or isinstance(value, (bool, str, tuple, list))


def build_optimizer(config: Any) -> optax.GradientTransformation:
  """The full update rule of a run (clipping, optimizer, schedule, non-finite guard)."""
  kwargs = optimizer_kwargs(config.optimizer)
  hessian_refresh(config)  # validates the Sophia trainer keys
  if config.optimizer.name == "sophia":
    kwargs = _sophia_kwargs(config, kwargs)
  static = tuple(k for k, v in kwargs.items() if _is_static(v))
  inner = optax.inject_hyperparams(OPTIMIZERS[config.optimizer.name], static_args=static)(
      learning_rate=schedule_from_config(config), **kwargs)
  clip = config.optimizer.grad_clip_norm
  clipped = optax.chain(optax.clip_by_global_norm(clip), inner) if clip else inner
  return optax.apply_if_finite(clipped, max_consecutive_errors=_NEVER_GIVES_UP)
