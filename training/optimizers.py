"""The optimizers a config can name: one explicit table, each with the trainer support it needs.

`config.optimizer.name` picks an entry; `Optimizer.build(learning_rate, **kwargs)` is its optax
builder and takes every `optimizer.*` key except `name`, `learning_rate`, the keys every run has
(`COMMON_KEYS`) and the entry's trainer keys (read by its `TrainerSupport`). The run's update is
`guard(chain(clip_by_global_norm, build(schedule, **kwargs)))`: a non-finite gradient skips the
whole update (and is counted), clipping comes before the optimizer, and the schedule is the
optimizer's learning rate.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable

import optax

from trainlab.algorithms import eco, optimizers, sophia
from trainlab.errors import UsageError
from trainlab.training import eco_support, sophia_support
from trainlab.training.support import TrainerSupport

# optimizer.* keys that every run has and the trainer reads.
COMMON_KEYS = ("name", "learning_rate", "grad_clip_norm", "accumulation_steps")


@dataclasses.dataclass(frozen=True)
class Optimizer:
  build: Callable[..., optax.GradientTransformation]  # build(learning_rate, **kwargs)
  support: type[TrainerSupport] = TrainerSupport


OPTIMIZERS: dict[str, Optimizer] = {
    "adamw": Optimizer(optax.adamw),
    "lion": Optimizer(optax.lion),
    "sgd": Optimizer(optimizers.sgd),
    # ECO's baseline: AdamW on float32 master weights, the forward pass on a quantized copy.
    "adamw_master": Optimizer(optax.adamw, eco_support.MasterWeightsSupport),
    "sophia": Optimizer(sophia.sophia, sophia_support.SophiaSupport),
    "eco_adamw": Optimizer(eco.eco_adamw, eco_support.EcoSupport),
    "eco_sgdm": Optimizer(eco.eco_sgdm, eco_support.EcoSgdmSupport),
}


def builder_kwargs(optimizer_config: Any, support: type[TrainerSupport]) -> dict[str, Any]:
  """The `optimizer.*` keys that go to the builder."""
  skip = set(COMMON_KEYS) | set(support.trainer_keys)
  return {k: v for k, v in optimizer_config.items() if k not in skip}


def check_arguments(section: str, name: str, builder: Callable[..., Any],
                    keys: set[str]) -> None:
  """A `UsageError` naming the first config key `builder` does not take."""
  parameters = inspect.signature(builder).parameters
  if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
    return
  unknown = sorted(keys - set(parameters))
  if unknown:
    takes = ", ".join(p for p in parameters if p not in ("learning_rate", "peak_value",
                                                         "total_steps"))
    raise UsageError(f"{section}.{unknown[0]} is not an argument of {section} {name!r} "
                     f"(it takes {takes}); remove it from the config")
