"""ECO's trainer side: weight matrices held quantized, with no float32 master copy.

ECO (Nikdan et al., arXiv 2601.22101): the train state holds every matrix (ndim >= 2) as a
`QuantizedArray` (codes + scales) of `optimizer.quantizer`; the forward pass dequantizes on
the fly; vectors (norms, biases) stay float32 under the same base optimizer (`optax.partition`).
ECO's update of a quantized leaf is a `QuantizedArray` that `optax.apply_updates` applies
exactly, so a rejected (non-finite) step must give zeros of that structure, which
`optax.apply_if_finite` cannot (it returns zeros shaped like the gradients).

Its baseline, `adamw_master` (`MasterWeightsSupport`): float32 master weights, the forward pass on
a quantized copy (`optimizer.master_weights_quantizer`, round to nearest) rebuilt every step and
never stored.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from trainlab.algorithms import quantize as qz
from trainlab.errors import UsageError
from trainlab.training import support


def _is_quantized(x: Any) -> bool:
  return isinstance(x, qz.QuantizedArray)


def _quantizer(config: Any, key: str, default: str) -> qz.Quantizer:
  name = config.optimizer.get(key, default)
  try:
    return qz.get_quantizer(name)
  except ValueError as e:
    raise UsageError(f"optimizer.{key}: {e}; set --config.optimizer.{key}") from None


def _labels(tree: Any) -> Any:
  """"eco" for the matrices the state quantizes, "float" for the rest; the same labels on the
  params and on their gradients (`optax.partition` labels the gradients in `update`)."""
  return jax.tree.map(lambda p: "eco" if p.ndim >= 2 else "float", tree, is_leaf=_is_quantized)


def _zeros_like_output(fn, *args):
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(fn, *args))


def apply_if_finite_any_update(inner: optax.GradientTransformation,
                               max_consecutive_errors: int) -> optax.GradientTransformation:
  """`optax.apply_if_finite` whose rejected step returns zeros shaped like `inner`'s updates
  (not like the gradients); the same state as optax's."""
  init = optax.apply_if_finite(inner, max_consecutive_errors).init

  def update(updates, state, params=None, **extra_args):
    finite = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(updates)]))
    notfinite_count = jnp.where(finite, jnp.zeros([], jnp.int32),
                                optax.safe_increment(state.notfinite_count))
    apply = lambda _: inner.update(updates, state.inner_state, params, **extra_args)
    reject = lambda _: (_zeros_like_output(apply, None)[0], state.inner_state)
    new_updates, inner_state = jax.lax.cond(
        jnp.logical_or(finite, notfinite_count > max_consecutive_errors), apply, reject, None)
    return new_updates, optax.ApplyIfFiniteState(
        notfinite_count=notfinite_count, last_finite=finite,
        total_notfinite=jnp.where(finite, state.total_notfinite,
                                  optax.safe_increment(state.total_notfinite)),
        inner_state=inner_state)

  return optax.GradientTransformationExtraArgs(init, update)


def _fit(named: NamedSharding, shape: tuple[int, ...]) -> NamedSharding:
  """`named`'s spec on an array of `shape`: axes that do not divide a dimension are dropped."""
  spec = tuple(named.spec) + (None,) * (len(shape) - len(named.spec))
  axes = [a if a is not None and d % named.mesh.shape[a] == 0 else None
          for a, d in zip(spec, shape)]
  return NamedSharding(named.mesh, P(*axes))


def adamw_twin(learning_rate, kwargs) -> optax.GradientTransformation:
  return optax.adamw(learning_rate, kwargs.get("b1", 0.9), kwargs.get("b2", 0.999),
                     kwargs.get("eps", 1e-8), weight_decay=kwargs.get("weight_decay", 0.0))


def sgdm_twin(learning_rate, kwargs) -> optax.GradientTransformation:
  """EMA momentum, as `eco_sgdm`'s own."""
  return optax.chain(optax.ema(kwargs.get("momentum", 0.9), debias=False),
                     optax.scale_by_learning_rate(learning_rate))


class EcoSupport(support.TrainerSupport):
  """Quantized matrices in the state; ECO on them, `float_twin` (the base optimizer ECO wraps,
  in float32) on the vectors. `EcoSupport` serves eco_adamw, `EcoSgdmSupport` eco_sgdm."""

  float_twin = staticmethod(adamw_twin)

  def __init__(self, config: Any, mesh: Mesh):
    super().__init__(config, mesh)
    self.quantizer = _quantizer(config, "quantizer", "fp8_e4m3")
    self.seed = config.seed

  def optimizer(self, build, learning_rate, kwargs):
    eco_tx = build(learning_rate, **{"seed": self.seed, **kwargs})
    return optax.partition({"eco": eco_tx, "float": self.float_twin(learning_rate, kwargs)},
                           _labels)

  def guard(self, tx):
    return apply_if_finite_any_update(tx, support.NEVER_GIVES_UP)

  def store_params(self, params):
    return qz.quantize_tree(params, self.quantizer)

  def compute_params(self, stored):
    return qz.dequantize_tree(stored)

  def update_norm(self, old, new, updates):
    return optax.global_norm(jax.tree.map(jnp.subtract, qz.dequantize_tree(new),
                                          qz.dequantize_tree(old)))

  def state_shardings(self, tx, abstract_state, params_sharding, mesh):
    """Codes and scales follow their weight's sharding (where it divides them); optimizer-state
    leaves follow the weight whose key path ends theirs (`mu['mlp']['kernel']`)."""
    params = jax.tree.map(lambda sh, leaf: jax.tree.map(lambda x: _fit(sh, x.shape), leaf),
                          params_sharding, abstract_state.params, is_leaf=_is_quantized)
    by_path = dict(jax.tree_util.tree_flatten_with_path(params_sharding)[0])
    replicated = NamedSharding(mesh, P())

    def follow(path, leaf):
      matches = [by_path[path[i:]] for i in range(len(path)) if path[i:] in by_path]
      return _fit(matches[0], leaf.shape) if matches else replicated

    return params, jax.tree_util.tree_map_with_path(follow, abstract_state.opt_state)


class EcoSgdmSupport(EcoSupport):
  float_twin = staticmethod(sgdm_twin)


class MasterWeightsSupport(support.TrainerSupport):
  """Float32 master weights; the forward pass runs on a quantized copy of the matrices."""

  trainer_keys = ("master_weights_quantizer",)

  def __init__(self, config: Any, mesh: Mesh):
    super().__init__(config, mesh)
    self.quantizer = _quantizer(config, "master_weights_quantizer", "fp8_e4m3")

  def compute_params(self, stored):
    return qz.dequantize_tree(qz.quantize_tree(stored, self.quantizer))
