"""Pure train and eval steps. The trainer jits each once, with the train state donated."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from trainlab.training import losses
from trainlab.training.state import TrainState
from trainlab.training.support import ModelFns, TrainerSupport

Batch = dict[str, jax.Array]
BATCH_KEYS = ("inputs", "targets", "weights")


def model_fns(model: Any, loss_chunk: int = 0) -> ModelFns:
  """Logits and the mean float32 training loss of the params the forward pass runs on.

  With `loss_chunk > 0` (language models) the loss is `losses.chunked_cross_entropy` over the
  final hidden states, so the whole batch's [B, L, V] logits never exist at once.
  """

  def logits(params, inputs, rng):
    return model.apply({"params": params}, inputs, rngs={"dropout": rng})

  def loss(params, batch, rng):
    if loss_chunk:
      hidden_BxLxD = model.apply({"params": params}, batch["inputs"], return_hidden=True,
                                 rngs={"dropout": rng})
      return losses.chunked_cross_entropy(hidden_BxLxD, model.unembedding_DxV(params),
                                          batch["targets"], batch["weights"], loss_chunk)[0]
    return losses.cross_entropy(logits(params, batch["inputs"], rng), batch["targets"],
                                batch["weights"])[0]

  return ModelFns(logits, loss)


def _microbatches(batch: Batch, count: int) -> Batch:
  """[B, ...] -> [count, B / count, ...] with microbatch j holding rows j, j + count, ...:
  every device's contiguous share of the batch holds rows of every microbatch."""
  return {k: batch[k].reshape(-1, count, *batch[k].shape[1:]).swapaxes(0, 1) for k in BATCH_KEYS}


def _loss_and_grads(loss_fn, params: Any, batch: Batch, rng: jax.Array, accumulation_steps: int):
  """The mean loss over `batch` and its gradient; with accumulation, summed over microbatches
  (each weighted by its share of the batch's weight) in a scan, so one microbatch is live."""
  if accumulation_steps == 1:
    return jax.value_and_grad(loss_fn)(params, batch, rng)
  total_weight = jnp.maximum(jnp.sum(batch["weights"]), 1.0)

  def add(carry, micro):
    loss, grads = jax.value_and_grad(loss_fn)(params, micro, rng)
    share = jnp.sum(micro["weights"]) / total_weight
    return jax.tree.map(lambda acc, x: acc + share * x, carry, (loss, grads)), None

  zeros = jax.tree.map(jnp.zeros_like, (jnp.zeros((), jnp.float32), params))
  (loss, grads), _ = jax.lax.scan(add, zeros, _microbatches(batch, accumulation_steps))
  return loss, grads


def make_train_step(model: Any, tx: optax.GradientTransformation, support: TrainerSupport,
                    schedule: optax.Schedule, accumulation_steps: int = 1,
                    loss_chunk: int = 0) -> Callable[[TrainState, Batch], Any]:
  """`train_step(state, batch) -> (state, metrics)`; metrics are device scalars.

  `batch` holds `inputs`, `targets`, `weights` and whatever `support.step_inputs` adds. The
  gradient is taken w.r.t. `support.compute_params(state.params)`, the values the forward pass
  sees. `lr` is the learning rate of this update: the schedule at the number of updates applied
  so far (skipped non-finite steps do not count, as in the optimizer's own step counter).
  """
  fns = model_fns(model, loss_chunk)

  def train_step(state: TrainState, batch: Batch):
    rng = jax.random.fold_in(state.rng, state.step)
    forward = support.compute_params(state.params)
    loss, grads = _loss_and_grads(fns.loss, forward, batch, rng, accumulation_steps)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "train_loss": loss,
        "grad_norm": optax.global_norm(grads),
        "update_norm": support.update_norm(state.params, params, updates),
        "lr": schedule(state.step - state.opt_state.total_notfinite),
        "nonfinite_in_a_row": opt_state.notfinite_count,
    }
    compute_fns = ModelFns(lambda p, x, r: fns.logits(support.compute_params(p), x, r),
                           lambda p, b, r: fns.loss(support.compute_params(p), b, r))
    opt_state, extra = support.after_update(state.step, opt_state, params, batch, rng,
                                            compute_fns)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), \
        {**metrics, **extra}

  return train_step


def make_eval_step(model: Any, support: TrainerSupport) -> Callable[[Any, Batch], Any]:
  """`eval_step(params, batch) -> (loss_sum, correct_sum, weight_sum, example_losses)`.

  Sums allow exact averaging over eval batches; `example_losses` (one mean loss per example,
  NaN for padding) give the eval's standard error.
  """

  def eval_step(params, batch: Batch):
    logits = model.apply({"params": support.compute_params(params)}, batch["inputs"])
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                             batch["targets"])
    weights = batch["weights"]
    correct = (jnp.argmax(logits, -1) == batch["targets"]) * weights
    per_example_axes = tuple(range(1, losses.ndim))
    example_weight = jnp.sum(weights, axis=per_example_axes)
    example_loss = jnp.sum(losses * weights, axis=per_example_axes) / jnp.maximum(
        example_weight, 1.0)
    example_loss = jnp.where(example_weight > 0, example_loss, jnp.nan)
    return jnp.sum(losses * weights), jnp.sum(correct), jnp.sum(weights), example_loss

  return eval_step
