"""Sophia's trainer side: the periodic Hessian refresh (Liu et al., arXiv 2305.14342, Alg. 3).

After the update of step `t` (0-based) with `t % update_interval == update_interval - 1`, as the
official `train_sophiag.py` orders it, the step estimates the Hessian diagonal on a fresh batch
(never a training batch) at the new parameters, clips the estimate to global norm
`hessian_clip_norm` (the official loop clips it with `grad_clip`; 0 disables), and folds it into
the EMA with `sophia.update_hessian`; a non-finite estimate leaves the EMA unchanged. The refresh
runs under `jax.lax.cond`, so one compiled step serves both branches.

Config keys (`optimizer.*`): `update_interval` (k, default 10), `estimator` (`gnb`: Sophia-G,
`hutchinson`: Sophia-H), `hessian_clip_norm` (1.0 in the experiment configs), and
`hessian_batch_size` (0: a whole batch, as the official loop; fewer examples make the refresh
cheaper). Sophia's own `batch_size` counts the tokens the estimate averages over, so
`rho * batch_size * h` still estimates the Gauss-Newton diagonal; 0 derives it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from trainlab.algorithms import sophia
from trainlab.errors import UsageError
from trainlab.training import sharding, support

# Fresh Hessian batches are `train_batch(HESSIAN_STREAM + step)`: an index no training step uses.
HESSIAN_STREAM = 2**40


class SophiaSupport(support.TrainerSupport):
  """Draws the fresh batch on refresh steps and refreshes the Hessian EMA inside the step."""

  trainer_keys = ("update_interval", "hessian_clip_norm", "hessian_batch_size")

  def __init__(self, config: Any, mesh: Mesh):
    super().__init__(config, mesh)
    self.interval = support.read_key(config, "update_interval", 10,
                                     lambda v: support.is_int(v, 1), "an integer >= 1")
    self.clip_norm = support.read_key(
        config, "hessian_clip_norm", 0.0,
        lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0,
        ">= 0 (0 disables clipping)")
    batch_size = config.batch_size
    rows = support.read_key(
        config, "hessian_batch_size", 0, lambda v: support.is_int(v, 0) and v <= batch_size,
        f"an integer in [1, batch_size={batch_size}], or 0 for the whole batch")
    shards = sharding.batch_shards(mesh)
    if rows % shards:
      raise UsageError(f"optimizer.hessian_batch_size={rows} is not divisible by the {shards} "
                       f"batch shards (devices); use a multiple of {shards}")
    self.rows = rows or batch_size
    self.is_whole_batch = self.rows == batch_size
    self.tokens = self.rows * max(config.data.get("seq_len", 0) or 1, 1)
    self.estimator = config.optimizer.get("estimator", "gnb")
    if self.estimator not in sophia.ESTIMATORS:
      raise UsageError(f"optimizer.estimator={self.estimator!r} must be one of "
                       f"{', '.join(sophia.ESTIMATORS)}")
    self._placeholder: dict[str, Any] | None = None

  def optimizer(self, build, learning_rate, kwargs):
    given = kwargs.get("batch_size") or self.tokens
    if given != self.tokens:
      raise UsageError(f"optimizer.batch_size={given} must be the {self.tokens} tokens of the "
                       "batch the Hessian is estimated on ((hessian_batch_size or batch_size) "
                       "* data.seq_len); set it to 0 to derive it")
    return build(learning_rate, **{**kwargs, "batch_size": self.tokens})

  def is_due(self, step: Any) -> Any:
    return step % self.interval == self.interval - 1

  def step_inputs(self, step, batch, draw):
    """The fresh batch on refresh steps; otherwise one of the same shape that is never read
    (the training batch itself, or a placeholder made once), so the step keeps one signature."""
    if self.is_due(step):
      fresh = draw(HESSIAN_STREAM + step, self.rows)
    elif self.is_whole_batch:
      fresh = batch
    else:
      if self._placeholder is None:
        self._placeholder = draw(HESSIAN_STREAM, self.rows)
      fresh = self._placeholder
    return {"hessian": fresh}

  def _estimate(self, params: Any, fresh: dict, rng: jax.Array, model: support.ModelFns) -> Any:
    if self.estimator == "hutchinson":
      return sophia.hutchinson_hessian_diag(lambda p: model.loss(p, fresh, rng), params, rng)
    return sophia.gnb_hessian_grads(lambda p, x: model.logits(p, x, rng), params,
                                    fresh["inputs"], rng, fresh["weights"])

  def after_update(self, step, opt_state, params, inputs, rng, model):
    def refresh(opt_state, params, fresh, rng):
      # Inside the sharded jit the estimate comes from the global-batch mean, so it is
      # averaged across data-parallel devices before it is squared.
      estimate = self._estimate(params, fresh, rng, model)
      if self.clip_norm:
        estimate, _ = optax.clip_by_global_norm(self.clip_norm).update(estimate, None)
      finite = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(estimate)]))
      updated = sophia.update_hessian(opt_state, estimate, estimator=self.estimator)
      return jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, opt_state)

    opt_state = jax.lax.cond(self.is_due(step), refresh, lambda o, *_: o, opt_state, params,
                             inputs["hessian"], jax.random.fold_in(rng, 1))
    return opt_state, {"win_rate": sophia.win_rate(opt_state, estimator=self.estimator),
                       "hessian_norm": sophia.hessian_norm(opt_state)}

