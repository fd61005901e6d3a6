"""Learning-rate schedules as pure `optax.Schedule`s, and the name registry configs use.

Conventions (shared/reference/algorithms.md): `t` counts optimizer updates already applied,
so `schedule(0)` is the learning rate of the first update; past `total_steps` a schedule
holds the value it reached at `total_steps`; bad arguments raise `ValueError` at
construction, never inside jit.

A registered builder has the signature `builder(peak_value, total_steps, **kwargs)`; configs
call it as `build_schedule(schedule.name, optimizer.learning_rate, total_steps, **schedule)`.
"""

from __future__ import annotations

from typing import Callable

import optax

ScheduleBuilder = Callable[..., optax.Schedule]
SCHEDULES: dict[str, ScheduleBuilder] = {}


def register_schedule(name: str) -> Callable[[ScheduleBuilder], ScheduleBuilder]:
  """Registers `builder(peak_value, total_steps, **kwargs)` under `name` for configs."""

  def decorate(builder: ScheduleBuilder) -> ScheduleBuilder:
    if name in SCHEDULES:
      raise ValueError(f"schedule {name!r} is registered twice")
    SCHEDULES[name] = builder
    return builder

  return decorate


def build_schedule(name: str, peak_value: float, total_steps: int, **kwargs) -> optax.Schedule:
  """The registered schedule `name` peaking at `peak_value` over `total_steps` updates."""
  if name not in SCHEDULES:
    raise ValueError(f"unknown schedule {name!r}; known: {', '.join(sorted(SCHEDULES))}")
  return SCHEDULES[name](peak_value, total_steps, **kwargs)


def _check_steps(**steps: int) -> None:
  for arg, value in steps.items():
    if value < 0:
      raise ValueError(f"{arg} must be >= 0, got {value}")


@register_schedule("constant")
def constant(peak_value: float, total_steps: int, warmup_steps: int = 0,
             init_value: float = 0.0) -> optax.Schedule:
  """Linear warmup from `init_value`, then `peak_value` for the rest of the run."""
  _check_steps(total_steps=total_steps, warmup_steps=warmup_steps)
  if warmup_steps > total_steps:
    raise ValueError(f"warmup_steps ({warmup_steps}) > total_steps ({total_steps})")
  if warmup_steps == 0:
    return optax.constant_schedule(peak_value)
  return optax.warmup_constant_schedule(init_value, peak_value, warmup_steps)


@register_schedule("warmup_cosine")
def warmup_cosine(peak_value: float, total_steps: int, warmup_steps: int = 0,
                  init_value: float = 0.0, end_value: float = 0.0) -> optax.Schedule:
  """Linear warmup, then a half cosine from `peak_value` to `end_value` at `total_steps`."""
  _check_steps(total_steps=total_steps, warmup_steps=warmup_steps)
  if warmup_steps >= total_steps:
    raise ValueError(f"warmup_steps ({warmup_steps}) must be < total_steps ({total_steps})")
  return optax.warmup_cosine_decay_schedule(
      init_value, peak_value, warmup_steps, decay_steps=total_steps, end_value=end_value)
