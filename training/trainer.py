"""A built run compiled for its mesh: shardings, the fresh state, the jitted steps, evaluation."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from trainlab.training import sharding
from trainlab.training.run import Run
from trainlab.training.state import TrainState
from trainlab.training.step import make_eval_step, make_train_step


class Trainer:
  """Everything compiled for one run: state layout, jitted train and eval steps."""

  def __init__(self, run: Run):
    self.run = run
    mesh, support = run.mesh, run.support
    self._init_rng, self._train_rng = jax.random.split(jax.random.PRNGKey(run.seed))
    abstract = jax.eval_shape(self._init_state, self._init_rng)
    params_sh = sharding.param_shardings(sharding.logical_specs(run.variables)["params"],
                                         abstract.params, mesh)
    params_sh, opt_state_sh = support.state_shardings(run.tx, abstract, params_sh, mesh)
    replicated = NamedSharding(mesh, P())
    self.state_sharding = TrainState(step=replicated, params=params_sh, opt_state=opt_state_sh,
                                     rng=replicated)
    self.abstract_state = jax.tree.map(
        lambda leaf, sh: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sh),
        abstract, self.state_sharding)
    self.batch_sharding = sharding.batch_sharding(mesh)
    self.train_step = jax.jit(
        make_train_step(run.model, run.tx, support, run.schedule, run.accumulation_steps,
                        run.loss_chunk),
        in_shardings=(self.state_sharding, self.batch_sharding),
        out_shardings=(self.state_sharding, replicated), donate_argnums=0)
    self.eval_step = jax.jit(make_eval_step(run.model, support),
                             in_shardings=(params_sh, self.batch_sharding),
                             out_shardings=replicated)  # every process reads every output

  def _init_state(self, init_rng: jax.Array) -> TrainState:
    example = jnp.zeros((1, *self.run.dataset.input_shape), self.run.input_dtype)
    params = nn.meta.unbox(self.run.model.init(init_rng, example))["params"]
    params = self.run.support.store_params(params)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.run.tx.init(params), rng=self._train_rng)

  def init_state(self) -> TrainState:
    """A fresh state, created directly in its sharded layout."""
    return jax.jit(self._init_state, out_shardings=self.state_sharding)(self._init_rng)

  def init_opt_state(self, params: Any) -> Any:
    """A fresh optimizer state for `params` (laid out as the state holds them)."""
    return jax.jit(self.run.tx.init, out_shardings=self.state_sharding.opt_state)(params)

  def device_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """The global batch as sharded arrays; each process feeds only its own rows."""
    return {k: sharding.global_batch_array(v, self.batch_sharding) for k, v in batch.items()}

  def _draw(self, index: int, rows: int) -> dict[str, jax.Array]:
    host = self.run.dataset.train_batch(index)
    return self.device_batch({k: v[:rows] for k, v in host.items()})

  def step_batch(self, step: int) -> dict[str, Any]:
    """The train step's input at `step`: the training batch and what the support adds."""
    batch = self.device_batch(self.run.dataset.train_batch(step))
    return {**batch, **self.run.support.step_inputs(step, batch, self._draw)}

  def _loss(self, params: Any, batches: list[dict[str, np.ndarray]], kind: str,
            prefix: str) -> dict[str, float]:
    outputs = jax.device_get([self.eval_step(params, self.device_batch(b)) for b in batches])
    loss_sum, correct, weight = (float(sum(o[i] for o in outputs)) for i in range(3))
    example_losses = np.concatenate([o[3] for o in outputs])
    example_losses = example_losses[np.isfinite(example_losses)]
    result = {f"{prefix}_loss": loss_sum / weight,
              f"{prefix}_loss_se": float(example_losses.std(ddof=1) / np.sqrt(len(example_losses)))
              if len(example_losses) > 1 else float("nan")}
    if kind == "image":
      result[f"{prefix}_accuracy"] = correct / weight
    return result

  def example_losses(self, params: Any, split: str = "eval", dataset: Any = None) -> np.ndarray:
    """The mean loss of every eval example (window or image) of the validation (`eval`) or
    test (`test`) set, in a fixed order: paired comparisons between runs use these. (Examples
    of one dataset have equal weight, so their mean is the split's loss.)"""
    dataset = dataset or self.run.dataset
    batches = dataset.eval_batches() if split == "eval" else dataset.test_batches()
    outputs = jax.device_get([self.eval_step(params, self.device_batch(b)) for b in batches])
    losses = np.concatenate([o[3] for o in outputs])
    return losses[np.isfinite(losses)]

  def test_metrics(self, params: Any) -> dict[str, float]:
    """`evaluate`'s test half alone: `test_loss`, `test_loss_se` (and `test_accuracy`)."""
    dataset = self.run.dataset
    if dataset.test_batches is None:
      return {}
    return self._loss(params, dataset.test_batches(), dataset.kind, "test")

  def evaluate(self, params: Any, dataset: Any = None, test: bool = False) -> dict[str, float]:
    """Loss (and accuracy for classifiers) on the fixed validation set of `dataset` (default:
    the run's), with the standard error of the loss over eval examples; with `test`, the same
    on its test set (`test_loss`, ...), if it has one. Nothing is ever chosen on test numbers."""
    dataset = dataset or self.run.dataset
    result = self._loss(params, dataset.eval_batches(), dataset.kind, "eval")
    if test and dataset.test_batches is not None:
      result.update(self._loss(params, dataset.test_batches(), dataset.kind, "test"))
    return result
