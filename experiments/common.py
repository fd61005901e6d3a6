"""Shared config blocks and the `get_config(arg)` argument parser.

Values derived from other keys (warmup = 10% of `total_steps`, the eval cadence, an end learning
rate relative to the peak, ...) are `FieldReference`s, so a command-line override of the key they
derive from carries into them: `--config.total_steps=30` gives a 3-step warmup. Overriding a
derived key itself (`--config.schedule.warmup_steps=5`) replaces the derivation.
"""

from __future__ import annotations

import math
from typing import Any

import ml_collections

from trainlab.errors import UsageError

LIST_SEPARATOR = "+"  # `:domains=stdlib-code+pydoc-english`: commas separate the arguments


def _convert(key: str, value: str, default: Any) -> Any:
  """`value` as the type of `default`; a `UsageError` naming `key` when it is not one."""
  if isinstance(default, bool):
    if value.lower() not in ("true", "false"):
      raise UsageError(f"config argument {key}={value!r} must be true or false")
    return value.lower() == "true"
  if isinstance(default, (tuple, list)):
    return tuple(v for v in value.split(LIST_SEPARATOR) if v)
  if isinstance(default, (int, float)):
    try:
      number = type(default)(value)
    except ValueError:
      kind = "an integer" if isinstance(default, int) else "a number"
      raise UsageError(f"config argument {key}={value!r} must be {kind}") from None
    if isinstance(number, float) and not math.isfinite(number):
      raise UsageError(f"config argument {key}={value!r} must be a finite number")
    return number
  return value


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses `"size=tiny,opt=sgd"` over `defaults`, converting each value to its default's type.

  Booleans are spelled `true`/`false`; lists (tuple defaults) join items with `+`. An unknown
  key or a value of the wrong type is a `UsageError` that names the key.
  """
  parsed = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if not sep or key not in defaults:
      raise UsageError(f"config argument {item!r} is not one of "
                       f"{', '.join(f'{k}=...' for k in defaults)}; fix the ':' part of --config")
    parsed[key] = _convert(key, value, defaults[key])
  return ml_collections.ConfigDict(parsed)


OPTIMIZER_DEFAULTS = {
    "adamw": dict(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1),
    "sgd": dict(momentum=0.9, nesterov=False, weight_decay=0.0),
    "lion": dict(b1=0.9, b2=0.99, weight_decay=0.1),
    # ECO (arXiv 2601.22101): weight matrices stored quantized, no float32 master copy; mode
    # "naive" drops the error injection. quantizer: fp8_e4m3, int8 or int4.
    "eco_adamw": dict(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, quantizer="fp8_e4m3",
                      rounding="stochastic", mode="eco"),
    "eco_sgdm": dict(momentum=0.9, quantizer="fp8_e4m3", rounding="stochastic", mode="eco"),
    # ECO's baseline: AdamW on float32 master weights, forward pass on a quantized copy.
    "adamw_master": dict(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1,
                         master_weights_quantizer="fp8_e4m3"),
    # SophiaG's official defaults; batch_size=0 derives the Hessian batch's tokens, the trainer
    # refreshes the Hessian every update_interval steps and clips the estimate like the official
    # loop (grad_clip=1). Sophia-H: --config.optimizer.estimator=hutchinson. hessian_batch_size
    # > 0 estimates on that many examples instead of a whole batch: a cheaper refresh.
    "sophia": dict(b1=0.965, b2=0.99, rho=0.04, weight_decay=0.1, batch_size=0,
                   update_interval=10, estimator="gnb", hessian_clip_norm=1.0,
                   hessian_batch_size=0),
}


def optimizer_config(name: str, learning_rate: float,
                     grad_clip_norm: float = 1.0) -> ml_collections.ConfigDict:
  if name not in OPTIMIZER_DEFAULTS:
    raise UsageError(f"opt={name!r} has no config defaults; use one of "
                     f"{', '.join(OPTIMIZER_DEFAULTS)} or set --config.optimizer.* by hand")
  return ml_collections.ConfigDict(dict(name=name, learning_rate=learning_rate,
                                        grad_clip_norm=grad_clip_norm, accumulation_steps=1,
                                        **OPTIMIZER_DEFAULTS[name]))


def base_config(total_steps: int = 100) -> ml_collections.ConfigDict:
  """Keys every experiment family shares; families fill data, model, optimizer and schedule."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_steps = total_steps
  config.batch_size = 16
  config.max_nonfinite_steps = 10
  config.eval = ml_collections.ConfigDict(dict(every_steps=0, num_batches=4))
  config.log = ml_collections.ConfigDict(dict(every_steps=10))
  # Saved at multiples of every_steps and keep_every and at the end (0: only at the end);
  # the last `keep` survive, plus every multiple of keep_every (0: none). At most one of
  # resume_from / branch_from (+ branch_step) / init_from (+ init_step, -1: its newest) names
  # another run folder.
  config.checkpoint = ml_collections.ConfigDict(dict(
      every_steps=500, keep=2, keep_every=0, resume_from="", init_from="", init_step=-1,
      branch_from="", branch_step=-1))
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  return config


def fraction_of(config: ml_collections.ConfigDict, key: str, divisor: int) -> Any:
  """`config[key] // divisor` as a reference that follows overrides of the top-level integer
  `key` (e.g. `total_steps`)."""
  return config.get_ref(key) // divisor
