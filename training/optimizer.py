"""The optimizer of a run, built from `config.optimizer` and `config.schedule`.

The chain is `apply_if_finite(chain(clip_by_global_norm, inject_hyperparams(optimizer)))`: a
non-finite gradient skips the whole update (and is counted in the state), clipping happens
before the optimizer, and the learning rate actually used sits in the state for logging.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

import trainlab.algorithms  # registers every optimizer and schedule
from trainlab.algorithms import quantize as qz
from trainlab.algorithms import sophia
from trainlab.algorithms.optimizers import OPTIMIZERS
from trainlab.algorithms.schedules import build_schedule
from trainlab.training.step import HessianRefresh

# Config keys of `optimizer` that belong to the trainer, not to the optimizer builder.
TRAINER_KEYS = ("name", "learning_rate", "grad_clip_norm", "hessian_clip_norm",
                "hessian_batch_size", "master_weights_quantizer")
_NEVER_GIVES_UP = 2**31 - 1  # the loop stops the run; apply_if_finite must never apply NaNs


def schedule_from_config(config: Any) -> optax.Schedule:
  schedule_kwargs = {k: v for k, v in config.schedule.items() if k != "name"}
  return build_schedule(config.schedule.name, config.optimizer.learning_rate,
                        config.total_steps, **schedule_kwargs)


def optimizer_kwargs(optimizer_config: Any) -> dict[str, Any]:
  return {k: v for k, v in optimizer_config.items() if k not in TRAINER_KEYS}


def hessian_batch_tokens(config: Any) -> int:
  """Tokens (or examples) Sophia's Hessian estimate averages over: its `batch_size`.

  The training batch in the official loop; `optimizer.hessian_batch_size` examples when set.
  Then `E[ghat**2] = diag(GN) / batch_size` still holds, so `rho` keeps its meaning.
  """
  examples = config.optimizer.get("hessian_batch_size", 0) or config.batch_size
  return examples * max(config.data.get("seq_len", 0), 1)


def _sophia_kwargs(config: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
  """Fills Sophia's `batch_size` (0 or unset: derived) or checks a given one."""
  tokens = hessian_batch_tokens(config)
  given = kwargs.get("batch_size") or tokens
  if given != tokens:
    raise ValueError(f"optimizer.batch_size={given} must be the {tokens} tokens of the batch "
                     "the Hessian is estimated on ((hessian_batch_size or batch_size) * "
                     "data.seq_len); set it to 0 to derive it")
  return {**kwargs, "batch_size": tokens}


def hessian_refresh(config: Any) -> HessianRefresh | None:
  """The train step's Hessian refresh for `optimizer.name="sophia"`, else None."""
  clip = config.optimizer.get("hessian_clip_norm", 0.0)
  examples = config.optimizer.get("hessian_batch_size", 0)
  if config.optimizer.name != "sophia":
    for key, value in (("hessian_clip_norm", clip), ("hessian_batch_size", examples)):
      if value:
        raise ValueError(f"optimizer.{key} is only used by sophia; remove it")
    return None
  if (not isinstance(examples, int) or isinstance(examples, bool)
      or not 0 <= examples <= config.batch_size):
    raise ValueError(f"optimizer.hessian_batch_size={examples!r} must be an integer in "
                     f"[1, batch_size={config.batch_size}], or 0 for the whole batch")
  if not isinstance(clip, (int, float)) or clip < 0:
    raise ValueError(f"optimizer.hessian_clip_norm={clip!r} must be >= 0 (0 disables clipping)")
  interval = config.optimizer.get("update_interval", 10)
  if not isinstance(interval, int) or isinstance(interval, bool) or interval < 1:
    raise ValueError(f"optimizer.update_interval={interval!r} must be an integer >= 1")
  estimator = config.optimizer.get("estimator", "gnb")
  if estimator not in sophia.ESTIMATORS:
    raise ValueError(f"optimizer.estimator={estimator!r} must be one of {sophia.ESTIMATORS}")
  return HessianRefresh(interval=interval, estimator=estimator, clip_norm=clip,
                        batch_size=examples or config.batch_size)


def _is_static(value: Any) -> bool:
  return value is None or isinstance(value, (bool, str, tuple, list))


def build_optimizer(config: Any) -> optax.GradientTransformation:
  """The full update rule of a run (clipping, optimizer, schedule, non-finite guard)."""
  kwargs = optimizer_kwargs(config.optimizer)
  hessian_refresh(config)  # validates the Sophia trainer keys
  if config.optimizer.name == "sophia":
    kwargs = _sophia_kwargs(config, kwargs)
  master_weights_quantizer(config)  # validates the key
  builder, guard = OPTIMIZERS[config.optimizer.name], optax.apply_if_finite
  dtype = None  # the params' (float8 codes have no promotion path: ECO says float32)
  if config.optimizer.name in ECO_OPTIMIZERS:
    builder, guard = _eco_partition(config.optimizer.name), _apply_if_finite_quantized
    kwargs, dtype = {"seed": config.seed, **kwargs}, jnp.float32
    builder(config.optimizer.learning_rate, **kwargs)  # bad arguments raise here, not in jit
  static = tuple(k for k, v in kwargs.items() if _is_static(v) or k == "seed")
  inner = optax.inject_hyperparams(builder, static_args=static, hyperparam_dtype=dtype)(
      learning_rate=schedule_from_config(config), **kwargs)
  clip = config.optimizer.grad_clip_norm
  clipped = optax.chain(optax.clip_by_global_norm(clip), inner) if clip else inner
  return guard(clipped, max_consecutive_errors=_NEVER_GIVES_UP)


# ECO (Nikdan et al., arXiv 2601.22101): the train state holds the weight matrices as
# `QuantizedArray`s (codes + scales, no float32 copy); vectors (norms, biases) stay float32.
ECO_OPTIMIZERS = ("eco_adamw", "eco_sgdm")


def param_quantizer(config: Any) -> qz.Quantizer | None:
  """The quantizer the train state stores the matrices with (ECO runs), else None."""
  if config.optimizer.name not in ECO_OPTIMIZERS:
    return None
  return qz.get_quantizer(config.optimizer.get("quantizer", "fp8_e4m3"))


def master_weights_quantizer(config: Any) -> qz.Quantizer | None:
  """`optimizer.master_weights_quantizer`: float32 params, forward pass on a quantized copy."""
  name = config.optimizer.get("master_weights_quantizer", "")
  if not name:
    return None
  if config.optimizer.name in ECO_OPTIMIZERS:
    raise ValueError("optimizer.master_weights_quantizer is for float32 master weights; ECO "
                     "stores the weights quantized already (use optimizer.quantizer)")
  return qz.get_quantizer(name)


def compute_params_fn(config: Any) -> Callable[[Any], Any] | None:
  """What the forward pass runs on, from the params the state holds (None: the params).

  ECO: the stored `QuantizedArray`s dequantized on the fly. Master weights: a quantized copy
  (round to nearest) of the float32 matrices, rebuilt every step and never stored.
  """
  if param_quantizer(config) is not None:
    return qz.dequantize_tree
  quantizer = master_weights_quantizer(config)
  if quantizer is None:
    return None
  return lambda params: qz.dequantize_tree(qz.quantize_tree(params, quantizer))


def quantize_params(config: Any, params: Any) -> Any:
  """The params as the train state holds them: ECO quantizes the matrices (ndim >= 2)."""
  quantizer = param_quantizer(config)
  return params if quantizer is None else qz.quantize_tree(params, quantizer)


def _is_quantized(x: Any) -> bool:
  return isinstance(x, qz.QuantizedArray)


def _eco_labels(tree: Any) -> Any:
  """"eco" for the matrices `quantize_params` quantizes; the same on params and gradients
  (`optax.masked` labels the gradients in `update`)."""
  return jax.tree.map(lambda p: "eco" if p.ndim >= 2 else "float", tree, is_leaf=_is_quantized)


def _eco_partition(name: str):
  """ECO on the `QuantizedArray` leaves, the same base optimizer in float32 on the rest.

  (Explicit signatures: `optax.inject_hyperparams` binds its arguments by name.)
  """

  def partition(eco_tx, float_tx):
    return optax.partition({"eco": eco_tx, "float": float_tx}, _eco_labels)

  def eco_adamw(learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
                quantizer="fp8_e4m3", rounding="stochastic", mode="eco", exact=False, seed=0):
    return partition(
        OPTIMIZERS[name](learning_rate, b1, b2, eps, weight_decay, quantizer=quantizer,
                         rounding=rounding, mode=mode, exact=exact, seed=seed),
        optax.adamw(learning_rate, b1, b2, eps, weight_decay=weight_decay))

  def eco_sgdm(learning_rate, momentum=0.9, quantizer="fp8_e4m3", rounding="stochastic",
               mode="eco", exact=False, seed=0):
    return partition(
        OPTIMIZERS[name](learning_rate, momentum, quantizer=quantizer, rounding=rounding,
                         mode=mode, exact=exact, seed=seed),
        optax.chain(optax.ema(momentum, debias=False),  # EMA momentum, as eco_sgdm
                    optax.scale_by_learning_rate(learning_rate)))

  return eco_adamw if name == "eco_adamw" else eco_sgdm


def _apply_if_finite_quantized(inner: optax.GradientTransformation,
                               max_consecutive_errors: int) -> optax.GradientTransformation:
  """`optax.apply_if_finite` for params holding `QuantizedArray`s.

  ECO's update of such a leaf is the new `QuantizedArray` (see `algorithms.eco`), so a
  rejected step returns the old one where optax would return zeros. Same state as optax's.
  """
  init = optax.apply_if_finite(inner, max_consecutive_errors).init

  def update(updates, state, params=None, **extra_args):
    finite = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(updates)]))
    notfinite_count = jnp.where(finite, jnp.zeros([], jnp.int32),
                                optax.safe_increment(state.notfinite_count))

    def reject(_):
      kept = jax.tree.map(lambda g, p: p if _is_quantized(p) else jnp.zeros_like(g),
                          updates, params, is_leaf=_is_quantized)
      return kept, state.inner_state

    new_updates, inner_state = jax.lax.cond(
        jnp.logical_or(finite, notfinite_count > max_consecutive_errors),
        lambda _: inner.update(updates, state.inner_state, params, **extra_args), reject, None)
    return new_updates, optax.ApplyIfFiniteState(
        notfinite_count=notfinite_count, last_finite=finite,
        total_notfinite=jnp.where(finite, state.total_notfinite,
                                  optax.safe_increment(state.total_notfinite)),
        inner_state=inner_state)

  return optax.GradientTransformationExtraArgs(init, update)
