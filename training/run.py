"""A config built into everything a run needs, once: `build_run(config) -> Run`.

Building validates by construction: each section is read by the code that uses it, and whatever
that code rejects becomes a `UsageError` naming the key and the fix (the entry points print it as
one line and exit 2). Nothing downstream reads the config again, except to record it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from trainlab.algorithms import schedules
from trainlab.data import Dataset, make_dataset, replay
from trainlab.errors import UsageError
from trainlab.models import MODELS
from trainlab.training import optimizers, sharding
from trainlab.training.support import TrainerSupport


@dataclasses.dataclass(frozen=True)
class LoopSettings:
  total_steps: int
  log_every: int
  eval_every: int  # 0: only at the end
  max_nonfinite_steps: int  # non-finite steps in a row that stop the run


@dataclasses.dataclass(frozen=True)
class CheckpointSettings:
  """Saved at multiples of `every_steps` and `keep_every` and at the end (0: only at the end);
  the last `keep` survive, plus every multiple of `keep_every`. At most one of `resume_from`,
  `branch_from` (+ `branch_step`) and `init_from` names another run folder to start from."""
  every_steps: int = 0
  keep: int = 2
  keep_every: int = 0
  resume_from: str = ""
  branch_from: str = ""
  branch_step: int = -1
  init_from: str = ""
  init_step: int = -1  # which of init_from's steps (-1: its newest)


@dataclasses.dataclass(frozen=True)
class Run:
  """Everything a run needs, built from one config."""
  config: Any  # the resolved config, kept to be recorded (config.json, checkpoint meta)
  seed: int
  batch_size: int
  dataset: Dataset
  model: nn.Module
  variables: Any  # abstract `model.init` output, with the parameters' logical axis names
  schedule: optax.Schedule
  tx: optax.GradientTransformation  # guard(chain(clip, optimizer(schedule)))
  support: TrainerSupport
  mesh: Mesh
  accumulation_steps: int  # microbatches per step, gradients summed (optimizer.accumulation_steps)
  loss_chunk: int  # positions per chunk of the training loss (loss.chunk_size; 0: whole)
  loop: LoopSettings
  checkpoint: CheckpointSettings

  @property
  def input_dtype(self) -> Any:
    return jnp.int32 if self.dataset.kind == "lm" else jnp.float32

  @property
  def tokens_per_step(self) -> int:
    """Tokens (language models) or examples (classifiers) per step."""
    per_example = math.prod(self.dataset.input_shape) if self.dataset.kind == "lm" else 1
    return self.batch_size * per_example


def _get(config: Any, key: str) -> Any:
  value = config
  for part in key.split("."):
    value = value[part]
  return value


def integer(config: Any, key: str, minimum: int, default: Any = None) -> int:
  """`config[key]` (dotted) as an integer >= `minimum`, else a `UsageError`."""
  try:
    value = _get(config, key)
  except KeyError:
    if default is None:
      raise UsageError(f"{key} is missing from the config; set --config.{key}") from None
    value = default
  if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
    raise UsageError(f"{key}={value!r} must be an integer >= {minimum}; set --config.{key}")
  return value


def positive_number(key: str, value: Any) -> float:
  if (not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0
      or not math.isfinite(value)):
    raise UsageError(f"{key}={value!r} must be a positive finite number; set --config.{key}")
  return value


def _building(what: str, section: str, fn: Callable[[], Any]) -> Any:
  """`fn()`, with a builder's ValueError/TypeError turned into a one-line `UsageError`."""
  try:
    return fn()
  except (ValueError, TypeError) as e:
    detail = " ".join(str(e).split())
    raise UsageError(f"{what}: {detail}; fix {section}.* in the config") from None


def _checkpoint_settings(c: Any) -> CheckpointSettings:
  settings = CheckpointSettings(
      every_steps=integer(c, "every_steps", 0, 0), keep=integer(c, "keep", 1, 2),
      keep_every=integer(c, "keep_every", 0, 0), resume_from=c.get("resume_from", ""),
      branch_from=c.get("branch_from", ""), branch_step=c.get("branch_step", -1),
      init_from=c.get("init_from", ""), init_step=c.get("init_step", -1))
  sources = [k for k in ("resume_from", "branch_from", "init_from") if getattr(settings, k)]
  if len(sources) > 1:
    raise UsageError(f"checkpoint.{sources[0]} and checkpoint.{sources[1]} are both set; "
                     "keep only one")
  if settings.branch_from:
    integer(c, "branch_step", 0)
  return settings


def _dataset(config: Any, batch_size: int, seed: int) -> Dataset:
  data = config.data
  kwargs = dict(seed=seed, batch_size=batch_size, seq_len=data.get("seq_len", 0),
                eval_batches=integer(config, "eval.num_batches", 1, 4),
                path=data.get("path", ""), split_seed=data.get("split_seed", 0))
  for key in ("vocab_size", "holdout"):
    if key in data:
      kwargs[key] = data[key]
  dataset = make_dataset(data.name, **kwargs)
  sources = [n for n in data.get("replay", "").split(",") if n]
  if sources:
    fraction = data.get("replay_fraction", 0.0)
    rows = replay.replay_rows(fraction, batch_size)
    per_source = -(-rows // len(sources))
    earlier = [make_dataset(n, **{**kwargs, "batch_size": per_source}) for n in sources]
    dataset = replay.with_replay(dataset, earlier, rows)
  return dataset


def _model(config: Any, dataset: Dataset, seed: int, mesh: Mesh) -> tuple[nn.Module, Any]:
  name = config.model.name
  if name not in MODELS:
    raise UsageError(f"model.name={name!r} is unknown; use one of {', '.join(sorted(MODELS))}")
  model_class = MODELS[name]
  fields = {f.name for f in dataclasses.fields(model_class)} - {"parent", "name"}
  placed = {}
  if "activation_sharding" in fields:  # set from the mesh, not by the config
    fields.remove("activation_sharding")
    placed["activation_sharding"] = sharding.batch_sharding(mesh) if mesh.size > 1 else None
  derived = "vocab_size" if "vocab_size" in fields else "num_classes"
  if (derived == "vocab_size") != (dataset.kind == "lm"):
    raise UsageError(f"model.name={name!r} cannot train on data.name={dataset.name!r}; use a "
                     "language model (gpt, llama) for text and a classifier (mlp, cnn) for images")
  kwargs = {k: v for k, v in config.model.items() if k != "name"}
  for key in kwargs:
    if key not in fields or key == derived:
      raise UsageError(f"model.{key} is not a field of model {name!r} (fields: "
                       f"{', '.join(sorted(fields - {derived}))}); remove it")
  if dataset.kind == "lm" and "context_len" in fields:
    context = kwargs.get("context_len", dataset.input_shape[0])
    if context < dataset.input_shape[0]:
      raise UsageError(f"model.context_len={context} is shorter than data.seq_len="
                       f"{dataset.input_shape[0]}; raise model.context_len or lower data.seq_len")
  model = _building(f"model {name!r}", "model",
                    lambda: model_class(**kwargs, **placed, **{derived: dataset.num_classes}))
  dtype = jnp.int32 if dataset.kind == "lm" else jnp.float32
  example = jax.ShapeDtypeStruct((1, *dataset.input_shape), dtype)
  variables = _building(f"model {name!r}", "model", lambda: jax.eval_shape(
      model.init, jax.random.PRNGKey(seed), example))
  return model, variables


def schedule_from_config(config: Any, total_steps: int, learning_rate: float) -> optax.Schedule:
  name = config.schedule.name
  if name not in schedules.SCHEDULES:
    raise UsageError(f"schedule.name={name!r} is unknown; use one of "
                     f"{', '.join(sorted(schedules.SCHEDULES))}")
  kwargs = {k: v for k, v in config.schedule.items() if k != "name"}
  builder = schedules.SCHEDULES[name]
  optimizers.check_arguments("schedule", name, builder, set(kwargs))
  return _building(f"schedule {name!r}", "schedule",
                   lambda: builder(learning_rate, total_steps, **kwargs))


def update_rule_from_config(config: Any, schedule: optax.Schedule,
                            mesh: Mesh) -> tuple[optax.GradientTransformation, TrainerSupport]:
  name = config.optimizer.name
  if name not in optimizers.OPTIMIZERS:
    raise UsageError(f"optimizer.name={name!r} is unknown; use one of "
                     f"{', '.join(sorted(optimizers.OPTIMIZERS))}")
  entry = optimizers.OPTIMIZERS[name]
  support = entry.support(config, mesh)
  kwargs = optimizers.builder_kwargs(config.optimizer, entry.support)
  optimizers.check_arguments("optimizer", name, entry.build, set(kwargs))
  tx = _building(f"optimizer {name!r}", "optimizer",
                 lambda: support.optimizer(entry.build, schedule, kwargs))
  clip = config.optimizer.get("grad_clip_norm", 0.0)
  if clip is not None and (not isinstance(clip, (int, float)) or clip < 0):
    raise UsageError(f"optimizer.grad_clip_norm={clip!r} must be >= 0 (0 disables clipping)")
  if clip:
    tx = optax.chain(optax.clip_by_global_norm(clip), tx)
  return support.guard(tx), support


def build_run(config: Any, devices: list[jax.Device] | None = None,
              dataset: Dataset | None = None) -> Run:
  """Builds `config` for `devices` (default: all), raising `UsageError` on the first bad key;
  `dataset` stands in for `config.data` (an ahead-of-time compile needs only its shapes)."""
  seed = integer(config, "seed", 0)
  total_steps = integer(config, "total_steps", 1)
  batch_size = integer(config, "batch_size", 1)
  loop = LoopSettings(total_steps=total_steps,
                      log_every=integer(config, "log.every_steps", 1),
                      eval_every=integer(config, "eval.every_steps", 0, 0),
                      max_nonfinite_steps=integer(config, "max_nonfinite_steps", 1, 10))
  checkpoint = _checkpoint_settings(config.checkpoint)
  mesh = sharding.make_mesh(config.mesh, devices)
  accumulation = integer(config, "optimizer.accumulation_steps", 1, 1)
  shards = sharding.batch_shards(mesh)
  if batch_size % (shards * accumulation):
    raise UsageError(f"batch_size={batch_size} is not divisible by the {shards} batch shards "
                     f"(devices) x optimizer.accumulation_steps={accumulation}; use a multiple "
                     f"of {shards * accumulation}")
  learning_rate = positive_number("optimizer.learning_rate", config.optimizer.learning_rate)
  dataset = dataset or _dataset(config, batch_size, seed)
  model, variables = _model(config, dataset, seed, mesh)
  loss_chunk = integer(config, "loss.chunk_size", 0, 0)
  if loss_chunk and not hasattr(model, "unembedding_DxV"):
    raise UsageError(f"loss.chunk_size={loss_chunk} needs a language model (gpt, llama); set "
                     "it to 0")
  schedule = schedule_from_config(config, total_steps, learning_rate)
  tx, support = update_rule_from_config(config, schedule, mesh)
  return Run(config=config, seed=seed, batch_size=batch_size, dataset=dataset, model=model,
             variables=variables, schedule=schedule, tx=tx, support=support, mesh=mesh,
             accumulation_steps=accumulation, loss_chunk=loss_chunk, loop=loop,
             checkpoint=checkpoint)
