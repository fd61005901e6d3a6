"""Optimizer aliases that optax lacks. The table configs name is `trainlab.training.optimizers`."""

from __future__ import annotations

import optax


def sgd(learning_rate: optax.ScalarOrSchedule, momentum: float | None = None,
        nesterov: bool = False, weight_decay: float = 0.0) -> optax.GradientTransformation:
  """SGD with optional heavy-ball or Nesterov momentum and weight decay.

  `optax.sgd` of `g + weight_decay * theta` (`optax.add_decayed_weights` first): without
  momentum that is the decoupled `theta <- theta (1 - lr wd) - lr g`; with momentum the decay
  term goes through the momentum like the gradient.
  """
  return optax.chain(
      optax.add_decayed_weights(weight_decay),
      optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov),
  )
