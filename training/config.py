"""Config validation: every check runs before anything is compiled.

A failed check raises `UsageError` whose message names the key and the fix; the entry points
print it as one line and exit with code 2.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable

import jax

from trainlab.algorithms.optimizers import OPTIMIZERS
from trainlab.algorithms.schedules import SCHEDULES
from trainlab.data import DATASET_NAMES, UsageError
from trainlab.models import MODELS
from trainlab.training import optimizer as optimizer_lib

TEXT_MODELS = ("gpt",)
# Model fields the trainer fills from the dataset.
DERIVED_MODEL_FIELDS = ("vocab_size", "num_classes", "parent", "name")


def require(ok: bool, message: str) -> None:
  if not ok:
    raise UsageError(message)


def int_at_least(config: Any, key: str, minimum: int) -> int:
  """`config[key]` (dotted), or `UsageError` unless it is an integer >= `minimum`."""
  value = config
  for part in key.split("."):
    value = value[part]
  require(isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
          f"{key}={value!r} must be an integer >= {minimum}; set --config.{key}")
  return value


def _accepted_kwargs(builder: Callable[..., Any]) -> tuple[set[str], bool]:
  parameters = inspect.signature(builder).parameters.values()
  takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
  return {p.name for p in parameters}, takes_any


def _check_kwargs(section: str, name: str, builder: Callable[..., Any], keys: set[str]) -> None:
  accepted, takes_any = _accepted_kwargs(builder)
  unknown = sorted(keys - accepted)
  require(takes_any or not unknown,
          f"{section}.{unknown[0] if unknown else ''} is not an argument of {section} "
          f"{name!r} (it takes {', '.join(sorted(accepted))}); remove it from the config")


def _validate_checkpoint(c: Any) -> None:
  require(isinstance(c.get("keep", 1), int) and c.get("keep", 1) >= 1,
          f"checkpoint.keep={c.get('keep')!r} must be an integer >= 1; set --config.checkpoint.keep")
  sources = [k for k in ("resume_from", "branch_from", "init_from") if c.get(k, "")]
  if len(sources) > 1:
    raise UsageError(f"checkpoint.{sources[0]} and checkpoint.{sources[1]} are both set; "
                     "keep only one")
  branch_step = c.get("branch_step", -1)
  if c.get("branch_from", ""):
    require(isinstance(branch_step, int) and branch_step >= 0,
            f"checkpoint.branch_step={branch_step!r} must name a saved step >= 0 when "
            "checkpoint.branch_from is set; set --config.checkpoint.branch_step")


def validate(config: Any, num_devices: int | None = None) -> None:
  """Raises `UsageError` on the first problem found in `config`."""
  for key in ("seed",):
    int_at_least(config, key, 0)
  for key in ("total_steps", "batch_size", "log.every_steps", "max_nonfinite_steps"):
    int_at_least(config, key, 1)
  for key in ("eval.every_steps", "checkpoint.every_steps", "checkpoint.keep_every"):
    int_at_least(config, key, 0)
  _validate_checkpoint(config.checkpoint)
  int_at_least(config, "eval.num_batches", 1)

  require(config.data.name in DATASET_NAMES,
          f"data.name={config.data.name!r} is unknown; use one of {', '.join(DATASET_NAMES)}")
  require(config.model.name in MODELS,
          f"model.name={config.model.name!r} is unknown; use one of {', '.join(sorted(MODELS))}")
  is_text = config.data.name in ("stdlib-code", "pydoc-english", "c-headers")
  require(is_text == (config.model.name in TEXT_MODELS),
          f"model.name={config.model.name!r} cannot train on data.name={config.data.name!r}; "
          "use gpt for text corpora and mlp or cnn for images")
  fields = {f.name for f in dataclasses.fields(MODELS[config.model.name])}
  for key in config.model:
    require(key == "name" or (key in fields and key not in DERIVED_MODEL_FIELDS),
            f"model.{key} is not a field of model {config.model.name!r} (fields: "
            f"{', '.join(sorted(fields - set(DERIVED_MODEL_FIELDS)))}); remove it")
  if is_text:
    int_at_least(config, "data.seq_len", 1)
    context = config.model.get("context_len", config.data.seq_len)
    require(context >= config.data.seq_len,
            f"model.context_len={context} is shorter than data.seq_len={config.data.seq_len}; "
            "raise model.context_len or lower data.seq_len")
    d_model, heads = config.model.get("d_model", 1), config.model.get("num_heads", 1)
    require(heads > 0 and d_model % heads == 0,
            f"model.d_model={d_model} is not divisible by model.num_heads={heads}; change one")

  name = config.optimizer.name
  require(name in OPTIMIZERS,
          f"optimizer.name={name!r} is unknown; use one of {', '.join(sorted(OPTIMIZERS))}")
  lr = config.optimizer.learning_rate
  require(isinstance(lr, (int, float)) and lr > 0,
          f"optimizer.learning_rate={lr!r} must be a positive number")
  clip = config.optimizer.get("grad_clip_norm", 0.0)
  require(clip is None or clip >= 0,
          f"optimizer.grad_clip_norm={clip!r} must be >= 0 (0 disables clipping)")
  _check_kwargs("optimizer", name, OPTIMIZERS[name],
                set(optimizer_lib.optimizer_kwargs(config.optimizer)))

  schedule_name = config.schedule.name
  require(schedule_name in SCHEDULES,
          f"schedule.name={schedule_name!r} is unknown; use one of {', '.join(sorted(SCHEDULES))}")
  schedule_keys = set(config.schedule) - {"name"}
  _check_kwargs("schedule", schedule_name, SCHEDULES[schedule_name], schedule_keys)
  warmup = config.schedule.get("warmup_steps", 0)
  require(warmup <= config.total_steps,
          f"schedule.warmup_steps={warmup} is longer than total_steps={config.total_steps}; "
          "shorten the warmup or train longer")
  try:
    optimizer_lib.schedule_from_config(config)
  except (ValueError, TypeError) as e:
    raise UsageError(f"schedule {schedule_name!r}: {e}; fix schedule.* in the config") from None
  try:
    optimizer_lib.build_optimizer(config)
  except (ValueError, TypeError) as e:
    raise UsageError(f"optimizer {name!r}: {e}; fix optimizer.* in the config") from None

  num_devices = jax.device_count() if num_devices is None else num_devices
  require(config.batch_size % num_devices == 0,
          f"batch_size={config.batch_size} is not divisible by the {num_devices} devices; "
          f"use a multiple of {num_devices}")
  hessian_rows = config.optimizer.get("hessian_batch_size", 0)
  require(hessian_rows % num_devices == 0,
          f"optimizer.hessian_batch_size={hessian_rows} is not divisible by the {num_devices} "
          f"devices; use a multiple of {num_devices}")
