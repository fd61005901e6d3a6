"""The training loop: build, (re)start, step, evaluate, log, summarize.

Metrics of step `t` are fetched after step `t + 1` is dispatched, so the host never waits on
the device inside the loop except at eval and at the end.
"""

from __future__ import annotations

import functools
import json
import pathlib
import sys
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from trainlab.algorithms import quantize as qz
from trainlab.data import Dataset, make_dataset
from trainlab.models import make_model
from trainlab.training import checkpoint as checkpoint_lib
from trainlab.training import config as config_lib
from trainlab.training import metrics as metrics_lib
from trainlab.training import sharding
from trainlab.training.optimizer import (build_optimizer, compute_params_fn, hessian_refresh,
                                quantize_params)
from trainlab.training.state import TrainState
from trainlab.training.step import HESSIAN_BATCH, make_eval_step, make_train_step


# Sophia's fresh Hessian batches: train_batch(_HESSIAN_STREAM + step), never a training batch.
_HESSIAN_STREAM = 2**40


class DivergedError(RuntimeError):
  """Too many non-finite steps in a row."""


def build_dataset(config: Any) -> Dataset:
  dataset = make_dataset(config.data.name, seed=config.seed, batch_size=config.batch_size,
                         seq_len=config.data.get("seq_len", 0),
                         eval_batches=config.eval.num_batches, path=config.data.get("path", ""),
                         split_seed=config.data.get("split_seed", 0))
  if config.data.get("replay", ""):  # continual pre-training: mix in earlier domains
    from trainlab.training import continual  # pylint: disable=import-outside-toplevel
    dataset = continual.with_replay(dataset, config)
  return dataset


def build_model(config: Any, dataset: Dataset) -> nn.Module:
  kwargs = {k: v for k, v in config.model.items() if k != "name"}
  if dataset.kind == "lm":
    kwargs["vocab_size"] = dataset.num_classes
  else:
    kwargs["num_classes"] = dataset.num_classes
  return make_model(config.model.name, **kwargs)


class Trainer:
  """Everything compiled for one config: model, optimizer, mesh, jitted steps."""

  def __init__(self, config: Any, devices: list[jax.Device] | None = None):
    self.config = config
    self.dataset = build_dataset(config)
    self.model = build_model(config, self.dataset)
    self.tx = build_optimizer(config)
    self.hessian = hessian_refresh(config)
    self.compute_params = compute_params_fn(config)
    self.mesh = sharding.make_mesh(config.mesh, devices)  # default: all devices
    input_dtype = jnp.int32 if self.dataset.kind == "lm" else jnp.float32
    self._example = jnp.zeros((1, *self.dataset.input_shape), input_dtype)

    init_rng, self._train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    boxed = jax.eval_shape(self.model.init, init_rng, self._example)
    abstract = jax.eval_shape(self._init_state, init_rng)
    params_sh = sharding.param_shardings(
        sharding.logical_specs(boxed)["params"], abstract.params, self.mesh)
    replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
    if _holds_quantized(abstract.params):
      params_sh, opt_state_sh = _quantized_shardings(params_sh, abstract, self.mesh)
    else:
      opt_state_sh = sharding.opt_state_shardings(self.tx, abstract.opt_state, params_sh, self.mesh)
    self.state_sharding = TrainState(step=replicated, params=params_sh, opt_state=opt_state_sh,
                                     rng=replicated)
    self.abstract_state = jax.tree.map(
        lambda leaf, sh: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sh),
        abstract, self.state_sharding)
    self.batch_sharding = sharding.batch_sharding(self.mesh)
    self._init_rng = init_rng
    self.train_step = jax.jit(make_train_step(self.model.apply, self.tx, self.hessian,
                                              self.compute_params),
                              in_shardings=(self.state_sharding, self.batch_sharding),
                              out_shardings=(self.state_sharding, replicated),
                              donate_argnums=0)
    self.eval_step = jax.jit(make_eval_step(self.model.apply, self.compute_params),
                             in_shardings=(params_sh, self.batch_sharding))

  def _init_state(self, init_rng: jax.Array) -> TrainState:
    params = nn.meta.unbox(self.model.init(init_rng, self._example))["params"]
    params = quantize_params(self.config, params)  # ECO: matrices as codes + scales
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.tx.init(params), rng=self._train_rng)

  def init_state(self) -> TrainState:
    """A fresh state, created directly in its sharded layout."""
    return jax.jit(self._init_state, out_shardings=self.state_sharding)(self._init_rng)

  def device_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """The global batch as sharded arrays; each process feeds only its own rows."""
    return {k: sharding.global_batch_array(v, self.batch_sharding) for k, v in batch.items()}

  def step_batch(self, step: int) -> dict[str, Any]:
    """The train step's input at `step`; with Sophia it also carries a fresh Hessian batch.

    The fresh batch (the first `hessian.batch_size` examples of a batch no step trains on) is
    drawn only on refresh steps; other steps pass a batch of the same shape that is never read
    (the training batch itself, or one placeholder) so that the step keeps one signature.
    """
    batch = self.device_batch(self.dataset.train_batch(step))
    if self.hessian is None:
      return batch
    if self.hessian.is_due(step):
      fresh = self._hessian_rows(_HESSIAN_STREAM + step)
    elif self.hessian.batch_size == self.config.batch_size:
      fresh = batch
    else:
      fresh = self._unread_hessian_batch
    return {**batch, HESSIAN_BATCH: fresh}

  def _hessian_rows(self, index: int) -> dict[str, jax.Array]:
    host_batch = self.dataset.train_batch(index)
    return self.device_batch({k: v[:self.hessian.batch_size] for k, v in host_batch.items()})

  @functools.cached_property
  def _unread_hessian_batch(self) -> dict[str, jax.Array]:
    return self._hessian_rows(_HESSIAN_STREAM)

  def evaluate(self, params: Any) -> dict[str, float]:
    sums = [self.eval_step(params, self.device_batch(b)) for b in self.dataset.eval_batches()]
    loss_sum, correct, weight = (float(sum(x)) for x in zip(*jax.device_get(sums)))
    result = {"eval_loss": loss_sum / weight}
    if self.dataset.kind == "image":
      result["eval_accuracy"] = correct / weight
    return result


def _is_quantized(x: Any) -> bool:
  return isinstance(x, qz.QuantizedArray)


def _holds_quantized(params: Any) -> bool:
  return any(map(_is_quantized, jax.tree.leaves(params, is_leaf=_is_quantized)))


def _fit(named: jax.sharding.NamedSharding, shape: tuple[int, ...]) -> jax.sharding.NamedSharding:
  """`named`'s spec on an array of `shape`: axes that do not divide a dimension are dropped."""
  spec = tuple(named.spec) + (None,) * (len(shape) - len(named.spec))
  axes = [a if a is not None and d % named.mesh.shape[a] == 0 else None
          for a, d in zip(spec, shape)]
  return jax.sharding.NamedSharding(named.mesh, jax.sharding.PartitionSpec(*axes))


def _quantized_shardings(params_sh: Any, abstract: TrainState, mesh: Any) -> tuple[Any, Any]:
  """ECO state: codes and scales follow their weight's sharding (where it divides them);
  optimizer-state leaves follow the weight whose path ends theirs (`mu['mlp']['kernel']`)."""
  params = jax.tree.map(lambda sh, leaf: jax.tree.map(lambda x: _fit(sh, x.shape), leaf),
                        params_sh, abstract.params, is_leaf=_is_quantized)
  by_path = dict(jax.tree_util.tree_flatten_with_path(params_sh)[0])
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def follow(path, leaf):
    matches = [by_path[path[i:]] for i in range(len(path)) if path[i:] in by_path]
    return _fit(matches[0], leaf.shape) if matches else replicated

  return params, jax.tree_util.tree_map_with_path(follow, abstract.opt_state)


def _write_json(path: pathlib.Path, obj: Any) -> None:
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
  tmp.replace(path)


def train(config: Any, workdir: str | pathlib.Path, *, progress: bool = True) -> dict[str, Any]:
  """Trains `config` in `workdir` and returns the summary (also written to summary.json)."""
  config_lib.validate(config)
  workdir = pathlib.Path(workdir)
  is_main = jax.process_index() == 0
  if is_main:
    workdir.mkdir(parents=True, exist_ok=True)

  start_time = time.time()
  trainer = Trainer(config)
  checkpoints = checkpoint_lib.open_for(config, workdir)
  state, origin = checkpoint_lib.restore_or_init(trainer, config, checkpoints)
  start_step = int(state.step)
  resumed = checkpoint_lib.drop_records_after(workdir / "metrics.jsonl", start_step) \
      if is_main else None
  if is_main:  # only once the checkpoint is known to fit this config
    _write_json(workdir / "config.json", config.to_dict())
  if is_main and progress:
    print(f"{origin}; training to step {config.total_steps}", file=sys.stderr, flush=True)
  checkpoint_meta = checkpoint_lib.run_metadata(config)
  watch = checkpoint_lib.PreemptionWatch().__enter__()
  dataset, total = trainer.dataset, config.total_steps
  tokens_per_step = config.batch_size * int(np.prod(dataset.input_shape)) if dataset.kind == "lm" \
      else config.batch_size
  writer = metrics_lib.MetricWriter(workdir, enabled=is_main)
  bar = metrics_lib.Progress(total, start_step, tokens_per_step, enabled=is_main and progress)

  last_metrics: dict[str, float] = dict(resumed or {})
  eval_metrics: dict[str, float] = trainer.evaluate(state.params) if start_step >= total else {}
  eval_step_done = -1
  pending = None
  last_log_time, last_log_step = time.time(), start_step

  def finish_step(step: int, device_metrics: Any) -> None:
    nonlocal last_metrics, last_log_time, last_log_step
    last_metrics = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
    if last_metrics["nonfinite_in_a_row"] >= config.max_nonfinite_steps:
      raise DivergedError(
          f"{int(last_metrics['nonfinite_in_a_row'])} non-finite steps in a row at step {step}; "
          "lower optimizer.learning_rate or enable optimizer.grad_clip_norm")
    done = step + 1
    log_now = done % config.log.every_steps == 0 or done == total
    bar.update(1, last_metrics if log_now else None)
    if log_now:
      now = time.time()
      step_time = (now - last_log_time) / max(done - last_log_step, 1)
      last_log_time, last_log_step = now, done
      record = {k: v for k, v in last_metrics.items() if k != "nonfinite_in_a_row"}
      evaluated_now = eval_metrics if eval_step_done == done else {}
      writer.write(done, {**record, "step_time": step_time, **evaluated_now})

  try:
    for step in range(start_step, total):
      batch = trainer.step_batch(step)
      state, device_metrics = trainer.train_step(state, batch)
      if pending is not None:
        finish_step(*pending)
      pending = (step, device_metrics)
      done = step + 1
      if config.eval.every_steps and done % config.eval.every_steps == 0 or done == total:
        eval_metrics, eval_step_done = trainer.evaluate(state.params), done
      if done % config.log.every_steps == 0 or done == total:
        finish_step(*pending)
        pending = None
      if checkpoints.should_save(done) or done == total:
        checkpoints.save(done, state, checkpoint_meta)
      if watch.requested(done) and done < total:
        if pending is not None:
          finish_step(*pending)
        checkpoints.save(done, state, checkpoint_meta)
        raise checkpoint_lib.Preempted(done, watch.signum)
  finally:
    watch.__exit__()
    checkpoints.wait()
    checkpoints.close()
    bar.close()
    writer.close()

  summary = {
      "steps": int(state.step),
      "final_train_loss": last_metrics.get("train_loss"),
      "final_eval_loss": eval_metrics.get("eval_loss"),
      "baseline_loss": dataset.baseline_loss,
      "skipped_steps": int(jax.device_get(state.opt_state.total_notfinite)),
      "num_params": int(sum(x.size for x in jax.tree.leaves(state.params, is_leaf=_is_quantized))),
      "wall_time_s": time.time() - start_time,
      "params_sha256": metrics_lib.params_sha256(state.params),
  }
  if "eval_accuracy" in eval_metrics:
    summary["final_eval_accuracy"] = eval_metrics["eval_accuracy"]
  if is_main:
    _write_json(workdir / "summary.json", summary)
  return summary
