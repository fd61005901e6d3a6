"""Optimizers by name, for configs: `builder(learning_rate, **kwargs) -> GradientTransformation`.

`learning_rate` is a float or an `optax.Schedule`. Builders are plain optax aliases (or
trainlab's own, registered by their modules); configs pass `optimizer.*` as keyword
arguments, so a key a builder does not take is a config error.
"""

from __future__ import annotations

from typing import Callable

import optax

OptimizerBuilder = Callable[..., optax.GradientTransformation]
OPTIMIZERS: dict[str, OptimizerBuilder] = {}


def register_optimizer(name: str) -> Callable[[OptimizerBuilder], OptimizerBuilder]:
  """Registers `builder(learning_rate, **kwargs)` under `name` for configs."""

  def decorate(builder: OptimizerBuilder) -> OptimizerBuilder:
    if name in OPTIMIZERS:
      raise ValueError(f"optimizer {name!r} is registered twice")
    OPTIMIZERS[name] = builder
    return builder

  return decorate


register_optimizer("adamw")(optax.adamw)
register_optimizer("lion")(optax.lion)


@register_optimizer("sgd")
def sgd(learning_rate: optax.ScalarOrSchedule, momentum: float | None = None, nesterov: bool = False,
        weight_decay: float = 0.0) -> optax.GradientTransformation:
  """SGD with optional heavy-ball or Nesterov momentum and decoupled weight decay."""
  return optax.chain(
      optax.add_decayed_weights(weight_decay),
      optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov),
  )
