"""What an optimizer needs from the trainer beyond `tx.update`: the base class adds nothing.

An optimizer family that needs more (Sophia's Hessian refresh, ECO's quantized parameters)
subclasses `TrainerSupport` and is named next to its builder in `training.optimizers.OPTIMIZERS`;
the trainer calls these hooks and never asks which optimizer it runs.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import optax
from jax.sharding import Mesh

from trainlab.errors import UsageError
from trainlab.training import sharding

# The loop stops a run after `max_nonfinite_steps`; the guard itself must never apply NaNs.
NEVER_GIVES_UP = 2**31 - 1


class TrainerSupport:
  """The plain case: params stored as they are, `optax.apply_if_finite` around the update.

  `trainer_keys` are the `optimizer.*` config keys a support reads itself; the rest go to the
  optimizer's builder. A support is built once per run, from the config and the mesh.
  """

  trainer_keys: tuple[str, ...] = ()

  def __init__(self, config: Any, mesh: Mesh):
    del config, mesh

  def optimizer(self, build: Callable[..., optax.GradientTransformation],
                learning_rate: optax.ScalarOrSchedule,
                kwargs: dict[str, Any]) -> optax.GradientTransformation:
    """The optimizer proper, from its registered builder."""
    return build(learning_rate, **kwargs)

  def guard(self, tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """Skips updates with non-finite gradients (counted in the state)."""
    return optax.apply_if_finite(tx, max_consecutive_errors=NEVER_GIVES_UP)

  def store_params(self, params: Any) -> Any:
    """The parameters as the train state holds them."""
    return params

  def compute_params(self, stored: Any) -> Any:
    """The parameters the forward pass runs on, from the stored ones."""
    return stored

  def update_norm(self, old: Any, new: Any, updates: Any) -> jax.Array:
    del old, new
    return optax.global_norm(updates)

  def state_shardings(self, tx: optax.GradientTransformation, abstract_state: Any,
                      params_sharding: Any, mesh: Mesh) -> tuple[Any, Any]:
    """(params, opt_state) shardings: state leaves shaped like params follow them."""
    return params_sharding, sharding.opt_state_shardings(
        tx, abstract_state.opt_state, params_sharding, mesh)

  def step_inputs(self, step: int, batch: dict[str, Any],
                  draw: Callable[[int, int], dict[str, Any]]) -> dict[str, Any]:
    """Extra train-step inputs for `step` besides its device `batch`; `draw(index, rows)` gives
    the first `rows` rows of training batch `index` on the devices."""
    del step, batch, draw
    return {}

  def after_update(self, step: jax.Array, opt_state: Any, params: Any, inputs: dict[str, Any],
                   rng: jax.Array, model: "ModelFns") -> tuple[Any, dict[str, jax.Array]]:
    """Runs inside the jitted step after the update: (opt_state, extra metrics)."""
    del step, params, inputs, rng, model
    return opt_state, {}


class ModelFns:
  """The model as the train step sees it: logits and the training loss of compute params."""

  def __init__(self, logits: Callable[[Any, Any, jax.Array], jax.Array],
               loss: Callable[[Any, dict, jax.Array], jax.Array]):
    self.logits, self.loss = logits, loss


def read_key(config: Any, key: str, default: Any, ok: Callable[[Any], bool], want: str) -> Any:
  """`config.optimizer[key]` (or `default`); a `UsageError` unless `ok(value)`."""
  value = config.optimizer.get(key, default)
  if not ok(value):
    raise UsageError(f"optimizer.{key}={value!r} must be {want}; set --config.optimizer.{key}")
  return value


def is_int(value: Any, minimum: int) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value >= minimum
