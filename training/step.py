"""Pure train and eval steps. The loop jits each once, with the train state donated."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from trainlab.algorithms import eco, quantize, sophia
from trainlab.training.state import TrainState

Batch = dict[str, jax.Array]
HESSIAN_BATCH = "hessian"  # key of the fresh batch in a Sophia step's batch


@dataclasses.dataclass(frozen=True)
class HessianRefresh:
  """Sophia's periodic Hessian EMA refresh (Liu et al., arXiv 2305.14342, Algorithm 3, line 7).

  After the update of step `t` (0-based) with `t % interval == interval - 1`, as the official
  `train_sophiag.py` orders it, the step estimates the diagonal on `batch["hessian"]` (a fresh
  batch) at the new parameters, optionally clips the estimate to global norm `clip_norm` (the
  official loop clips it with `grad_clip`; 0 disables), and folds it into the EMA with
  `sophia.update_hessian`. A non-finite estimate leaves the EMA unchanged. `batch_size`: the
  fresh batch's examples, the training batch's in the official loop; fewer make the refresh
  cheaper (its cost is one forward and backward pass on them).
  """
  interval: int
  estimator: str = "gnb"  # "gnb" (Sophia-G) or "hutchinson" (Sophia-H)
  clip_norm: float = 0.0
  batch_size: int = 0

  def is_due(self, step: Any) -> Any:
    return step % self.interval == self.interval - 1


def weighted_cross_entropy(logits_BxV: jax.Array, targets_B: jax.Array,
                           weights_B: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean cross-entropy over entries with weight 1 (any leading shape), and that weight sum."""
  losses = optax.softmax_cross_entropy_with_integer_labels(
      logits_BxV.astype(jnp.float32), targets_B)
  total_weight = jnp.sum(weights_B)
  return jnp.sum(losses * weights_B) / jnp.maximum(total_weight, 1.0), total_weight


def make_train_step(apply_fn: Callable[..., jax.Array], tx: optax.GradientTransformation,
                    hessian: HessianRefresh | None = None,
                    compute_params: Callable[[Any], Any] | None = None,
                    ) -> Callable[[TrainState, Batch], Any]:
  """`train_step(state, batch) -> (state, metrics)`; metrics are device scalars.

  With `hessian` (Sophia), `batch["hessian"]` holds a fresh batch of `hessian.batch_size`, the
  refresh runs under `jax.lax.cond` (one compiled step for both branches), and the metrics
  gain `win_rate` and `hessian_norm`.
  """

  def loss_fn(params, batch, rng):
    logits = apply_fn({"params": params}, batch["inputs"], rngs={"dropout": rng})
    loss, _ = weighted_cross_entropy(logits, batch["targets"], batch["weights"])
    return loss

  def hessian_estimate(params, fresh: Batch, rng):
    if hessian.estimator == "hutchinson":
      return sophia.hutchinson_hessian_diag(lambda p: loss_fn(p, fresh, rng), params, rng)
    logits_fn = lambda p, x: apply_fn({"params": p}, x, rngs={"dropout": rng})
    return sophia.gnb_hessian_grads(logits_fn, params, fresh["inputs"], rng, fresh["weights"])

  def refresh(opt_state, params, fresh: Batch, rng):
    # Inside the sharded jit the estimate comes from the global-batch mean, so it is averaged
    # across data-parallel devices before it is squared.
    estimate = hessian_estimate(params, fresh, rng)
    if hessian.clip_norm:
      estimate, _ = optax.clip_by_global_norm(hessian.clip_norm).update(estimate, None)
    finite = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(estimate)]))
    updated = sophia.update_hessian(opt_state, estimate, estimator=hessian.estimator)
    return jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, opt_state)

  def train_step(state: TrainState, batch: Batch):
    step_rng = jax.random.fold_in(state.rng, state.step)
    if compute_params is None:
      loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, step_rng)
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
      update_norm = optax.global_norm(updates)
    else:
      loss, grads, updates, opt_state, params, update_norm = _quantized_update(
          loss_fn, tx, compute_params, state, batch, step_rng)
    metrics = {
        "train_loss": loss,
        "grad_norm": optax.global_norm(grads),
        "update_norm": update_norm,
        "lr": optax.tree_utils.tree_get(opt_state, "hyperparams")["learning_rate"],
        "nonfinite_in_a_row": opt_state.notfinite_count,
    }
    if hessian is not None:
      hessian_rng = jax.random.fold_in(step_rng, 1)
      opt_state = jax.lax.cond(
          hessian.is_due(state.step), refresh, lambda o, *_: o,
          opt_state, params, batch[HESSIAN_BATCH], hessian_rng)
      metrics["win_rate"] = sophia.win_rate(opt_state, estimator=hessian.estimator)
      metrics["hessian_norm"] = sophia.hessian_norm(opt_state)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


def _quantized_update(loss_fn, tx, compute_params, state: TrainState, batch: Batch, rng):
  """A step whose forward pass runs on `compute_params(state.params)` (quantized weights).

  Gradients are taken w.r.t. those compute values. ECO (Nikdan et al., arXiv 2601.22101):
  `QuantizedArray` params are dequantized on the fly and replaced by their update, the new
  `QuantizedArray`. Master weights: float32 params, gradients applied straight through.
  """
  forward = compute_params(state.params)
  loss, grads = jax.value_and_grad(loss_fn)(forward, batch, rng)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = eco.apply_updates(state.params, updates)
  delta = jax.tree.map(jnp.subtract, quantize.dequantize_tree(params),
                       quantize.dequantize_tree(state.params))
  return loss, grads, updates, opt_state, params, optax.global_norm(delta)


def make_eval_step(apply_fn: Callable[..., jax.Array],
                   compute_params: Callable[[Any], Any] | None = None,
                   ) -> Callable[[Any, Batch], Any]:
  """`eval_step(params, batch) -> (loss_sum, correct_sum, weight_sum)` for exact averaging."""

  def eval_step(params, batch: Batch):
    params = params if compute_params is None else compute_params(params)
    logits = apply_fn({"params": params}, batch["inputs"])
    loss, weight = weighted_cross_entropy(logits, batch["targets"], batch["weights"])
    correct = jnp.sum((jnp.argmax(logits, -1) == batch["targets"]) * batch["weights"])
    return loss * weight, correct, weight

  return eval_step
