"""Pure train and eval steps. The loop jits each once, with the train state donated."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from training.state import TrainState

Batch = dict[str, jax.Array]


def weighted_cross_entropy(logits_BxV: jax.Array, targets_B: jax.Array,
                           weights_B: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean cross-entropy over entries with weight 1 (any leading shape), and that weight sum."""
  losses = optax.softmax_cross_entropy_with_integer_labels(
      logits_BxV.astype(jnp.float32), targets_B)
  total_weight = jnp.sum(weights_B)
  return jnp.sum(losses * weights_B) / jnp.maximum(total_weight, 1.0), total_weight


def make_train_step(apply_fn: Callable[..., jax.Array],
                    tx: optax.GradientTransformation) -> Callable[[TrainState, Batch], Any]:
  """`train_step(state, batch) -> (state, metrics)`; metrics are device scalars."""

  def loss_fn(params, batch, rng):
    logits = apply_fn({"params": params}, batch["inputs"], rngs={"dropout": rng})
    loss, _ = weighted_cross_entropy(logits, batch["targets"], batch["weights"])
    return loss

  def train_step(state: TrainState, batch: Batch):
    step_rng = jax.random.fold_in(state.rng, state.step)
    loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, step_rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "train_loss": loss,
        "grad_norm": optax.global_norm(grads),
        "update_norm": optax.global_norm(updates),
        "lr": optax.tree_utils.tree_get(opt_state, "hyperparams")["learning_rate"],
        "nonfinite_in_a_row": opt_state.notfinite_count,
    }
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


def make_eval_step(apply_fn: Callable[..., jax.Array]) -> Callable[[Any, Batch], Any]:
  """`eval_step(params, batch) -> (loss_sum, correct_sum, weight_sum)` for exact averaging."""

  def eval_step(params, batch: Batch):
    logits = apply_fn({"params": params}, batch["inputs"])
    loss, weight = weighted_cross_entropy(logits, batch["targets"], batch["weights"])
    correct = jnp.sum((jnp.argmax(logits, -1) == batch["targets"]) * batch["weights"])
    return loss * weight, correct, weight

  return eval_step
