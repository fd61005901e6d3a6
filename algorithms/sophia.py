"""Sophia: clipped diagonal-Hessian preconditioning (Liu et al., arXiv 2305.14342, Algorithm 3).

SophiaG exactly as the official code runs it (`Liuhong99/Sophia` `sophia.py`), with no bias
correction anywhere:

  theta <- theta * (1 - lr * wd)                                    # decoupled, first
  m     <- b1 * m + (1 - b1) * g
  theta <- theta - lr * sign(m) * min(|m| / (rho * B * h + eps), clip_threshold)

and, every k steps, `h <- b2 * h + (1 - b2) * ghat**2` (`update_hessian`), where `ghat` is the
gradient of the mean loss on labels sampled from the model's own softmax (`gnb_hessian_grads`,
the Gauss-Newton-Bartlett estimator, paper Algorithm 2). `B` is the number of tokens (or
examples) in the global batch: `E[ghat**2] = diag(GN) / B`, so `B * h` estimates the
Gauss-Newton diagonal and `rho` is the paper's `gamma`.

Sophia-H (`estimator="hutchinson"`, paper Algorithm 1) feeds `u * (H u)` into the EMA unsquared
(`hutchinson_hessian_diag`, an unbiased estimate of diag(H) itself, possibly negative) and divides
by `max(gamma * h, eps)` as in the paper and `optax.contrib.sophia`; `rho` and `batch_size` are
unused then.

Who refreshes `h`: the caller (the train step), not `update`. Every k steps it computes
`hessian_grads` (inside the same jitted step, under `jax.lax.cond`) and calls
`update_hessian(opt_state, hessian_grads)`; `b2` is the one given to `sophia(...)`, which the
state keeps (`SophiaState.hyperparams`). Under data parallelism, compute `hessian_grads` from
the mean loss over the *global* batch inside the sharded jit, so the estimate is averaged across
devices before it is squared.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

ESTIMATORS = ("gnb", "hutchinson")
# The scalars `update_hessian` and `win_rate` read from the state.
STATE_HYPERPARAMS = ("b2", "rho", "batch_size", "eps", "clip_threshold", "gamma")


class SophiaState(NamedTuple):
  """`count`: updates applied; `mu`: momentum; `hessian`: EMA of the diagonal estimate;
  `hyperparams`: `STATE_HYPERPARAMS` as `init` or the last `update` used them (under
  `optax.inject_hyperparams`, the current values), scalars of the default float dtype."""
  count: jax.Array
  mu: optax.Updates
  hessian: optax.Updates
  hyperparams: dict[str, jax.Array]


def _check(name: str, value: Any, ok: Callable[[float], bool], want: str) -> None:
  """Checks Python numbers only: `inject_hyperparams` arrays pass through."""
  if isinstance(value, (int, float)) and not isinstance(value, bool) and not ok(value):
    raise ValueError(f"{name} must be {want}, got {value}")


def _hessian_dtype(param_dtype) -> jnp.dtype:
  return jnp.promote_types(param_dtype, jnp.float32)


def _refuse_complex(params: Any) -> None:
  for path, p in jax.tree_util.tree_leaves_with_path(params):
    if jnp.iscomplexobj(p):
      raise ValueError(f"Sophia's clipped step is defined for real parameters; "
                       f"{jax.tree_util.keystr(path) or 'params'} is {jnp.dtype(p.dtype).name}")


def scale_by_sophia(
    b1: float = 0.965,
    b2: float = 0.99,
    rho: float = 0.04,
    batch_size: int = 1,
    eps: float = 1e-15,
    clip_threshold: float = 1.0,
    estimator: str = "gnb",
    gamma: float = 0.01,
    mu_dtype: Any = None,
) -> optax.GradientTransformation:
  """`sign(m) * min(|m| / denominator, clip_threshold)` with `m` the un-bias-corrected EMA.

  The denominator is `rho * batch_size * h + eps` (SophiaG) or `max(gamma * h, eps)`
  (Sophia-H). `h` starts at zero and only `update_hessian` changes it (with decay `b2`, kept
  in the state); it is kept in at least float32 whatever the parameter dtype. `mu` is stored
  in `mu_dtype` (default: the parameter dtype, as the official code does). Complex parameters
  are refused at `init`.
  """
  _check("b1", b1, lambda v: 0 <= v < 1, "in [0, 1)")
  _check("b2", b2, lambda v: 0 <= v < 1, "in [0, 1)")
  _check("rho", rho, lambda v: v >= 0, ">= 0")
  _check("batch_size", batch_size, lambda v: v > 0, "> 0 (tokens in the global batch)")
  _check("eps", eps, lambda v: v >= 0, ">= 0")
  _check("clip_threshold", clip_threshold, lambda v: v > 0, "> 0")
  _check("gamma", gamma, lambda v: v > 0, "> 0")
  if estimator not in ESTIMATORS:
    raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
  mu_dtype = None if mu_dtype is None else jnp.dtype(mu_dtype)  # a dtype is always truthy
  values = dict(b2=b2, rho=rho, batch_size=batch_size, eps=eps, clip_threshold=clip_threshold,
                gamma=gamma)

  def hyperparams():
    return {k: jnp.asarray(v, jnp.result_type(float)) for k, v in values.items()}

  def init_fn(params):
    _refuse_complex(params)
    return SophiaState(
        count=jnp.zeros([], jnp.int32),
        mu=jax.tree.map(lambda p: jnp.zeros_like(p, dtype=mu_dtype or p.dtype), params),
        hessian=jax.tree.map(lambda p: jnp.zeros_like(p, dtype=_hessian_dtype(p.dtype)), params),
        hyperparams=hyperparams())

  def direction(m, h, g):
    if estimator == "gnb":
      denominator = rho * batch_size * h + eps
    else:
      denominator = jnp.maximum(gamma * h, eps)
    # The official `sign(m) * min(|m| / denominator, 1)`, bit for bit since denominator > 0.
    return jnp.clip(m / denominator, -clip_threshold, clip_threshold).astype(g.dtype)

  def update_fn(updates, state, params=None):
    del params
    mu = jax.tree.map(lambda g, m: b1 * m + (1 - b1) * g, updates, state.mu)
    updates = jax.tree.map(direction, mu, state.hessian, updates)
    mu = jax.tree.map(lambda m, p: m.astype(p.dtype), mu, state.mu)
    count = optax.safe_increment(state.count)
    return updates, SophiaState(count=count, mu=mu, hessian=state.hessian,
                                hyperparams=hyperparams())

  return optax.GradientTransformation(init_fn, update_fn)


def sophia(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.965,
    b2: float = 0.99,
    rho: float = 0.04,
    weight_decay: optax.ScalarOrSchedule = 0.1,
    batch_size: int = 1,
    eps: float = 1e-15,
    clip_threshold: float = 1.0,
    weight_decay_mask: Any = None,
    estimator: str = "gnb",
    gamma: float = 0.01,
    mu_dtype: Any = None,
) -> optax.GradientTransformation:
  """SophiaG (default) or Sophia-H with decoupled weight decay: the official update rule.

  Not `optax.contrib.sophia`, although the name is the same:

    * no bias correction: `m` is used as is (optax divides by `1 - b1^t`);
    * `eps=1e-15`, the official value (optax: 1e-8);
    * decoupled weight decay 0.1 by default, the official value (optax: 1e-4);
    * SophiaG by default: the Gauss-Newton-Bartlett estimate, denominator
      `rho * batch_size * h + eps`; `estimator="hutchinson"` is Sophia-H, optax's only kind,
      with `max(gamma * h, eps)`;
    * the Hessian EMA `h` is refreshed by the caller, never inside `update`: every k steps
      (the trainer's `optimizer.update_interval`), `state = update_hessian(state,
      hessian_grads)` with `hessian_grads` from `gnb_hessian_grads` or
      `hutchinson_hessian_diag`. So `update` takes no `obj_fn`, there is no `update_interval`
      argument, and until the first refresh (`h = 0`) every step is
      `-lr * (clip_threshold * sign(m) + weight_decay * theta)`.

  `update = -lr * (sophia_direction + weight_decay * theta)`, which is the official
  `theta * (1 - lr * wd) - lr * direction`. `b2` is the EMA decay of `update_hessian`; the
  state keeps it, and `rho`, `batch_size`, `eps`, `clip_threshold`, `gamma` for `win_rate`, so
  both work on a plain `sophia(...)` state. `learning_rate` and `weight_decay` accept
  schedules; wrap in `optax.inject_hyperparams` to schedule any other numeric hyperparameter
  (the state then holds the current values). Under `inject_hyperparams`, give `mu_dtype` as a
  string ("float32"): a dtype class is callable and would be taken for a schedule.
  """
  _check("weight_decay", weight_decay, lambda v: v >= 0, ">= 0")
  return optax.chain(
      scale_by_sophia(b1=b1, b2=b2, rho=rho, batch_size=batch_size, eps=eps,
                      clip_threshold=clip_threshold, estimator=estimator, gamma=gamma,
                      mu_dtype=mu_dtype),
      optax.add_decayed_weights(weight_decay, weight_decay_mask),
      optax.scale_by_learning_rate(learning_rate),
  )


def _is_sophia(x: Any) -> bool:
  return isinstance(x, SophiaState)


def _map_sophia_states(fn: Callable[[SophiaState], SophiaState], opt_state: Any) -> Any:
  """Replaces every `SophiaState` in `opt_state` by `fn(state)`; chains, `masked`,
  `inject_hyperparams`, `apply_if_finite`, `MultiSteps` and other wrappers are walked as
  plain pytrees."""
  return jax.tree.map(lambda x: fn(x) if _is_sophia(x) else x, opt_state, is_leaf=_is_sophia)


def _collect(opt_state: Any) -> list[SophiaState]:
  found = [x for x in jax.tree.leaves(opt_state, is_leaf=_is_sophia) if _is_sophia(x)]
  if not found:
    raise ValueError("opt_state holds no SophiaState")
  return found


def _hyperparam(state: SophiaState, name: str, given: Any) -> Any:
  return state.hyperparams[name] if given is None else given


def _skip_masked(fn: Callable[..., Any], *trees: Any) -> Any:
  is_masked = lambda x: isinstance(x, optax.MaskedNode)
  return jax.tree.map(lambda x, *rest: x if is_masked(x) else fn(x, *rest), *trees,
                      is_leaf=is_masked)


def _check_estimator(estimator: str) -> None:
  if estimator not in ESTIMATORS:
    raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")


def update_hessian(opt_state: Any, hessian_grads: optax.Updates, b2: Any = None,
                   estimator: str = "gnb") -> Any:
  """The official `SophiaG.update_hessian()`: `h <- b2 * h + (1 - b2) * hessian_grads**2`.

  Applied to every `SophiaState` inside `opt_state` (chained, injected, masked, wrapped in
  `apply_if_finite`, ...); `hessian_grads` has the parameters' structure. `b2` defaults to the
  state's own (the `b2` given to `sophia(...)`, or its current `inject_hyperparams` value); an
  explicit `b2` overrides it. With `estimator="hutchinson"`, `hessian_grads` is the estimate
  `u * (H u)` and enters unsquared. The step count is untouched, as in the official code.
  """
  _check_estimator(estimator)

  def ema(state: SophiaState) -> SophiaState:
    decay = _hyperparam(state, "b2", b2)

    def leaf(h, g):
      g = g.astype(h.dtype)
      estimate = g * g if estimator == "gnb" else g
      return (decay * h + (1 - decay) * estimate).astype(h.dtype)

    return state._replace(hessian=_skip_masked(leaf, state.hessian, hessian_grads))

  return _map_sophia_states(ema, opt_state)


def win_rate(opt_state: Any, rho: Any = None, batch_size: Any = None,
             clip_threshold: Any = None, gamma: Any = None, eps: Any = None,
             estimator: str = "gnb") -> jax.Array:
  """Share of coordinates not clipped, the health metric (ideally 0.1 to 0.5).

  SophiaG: `|m| < clip_threshold * rho * batch_size * h`, as `train_sophiag.py` logs it
  (`clip_threshold` = 1 there); Sophia-H: `|m| < clip_threshold * max(gamma * h, eps)`.
  Hyperparameters left `None` are the state's own (those `sophia(...)` was given).
  """
  _check_estimator(estimator)
  hits, total = 0, 0
  for state in _collect(opt_state):
    c = _hyperparam(state, "clip_threshold", clip_threshold)
    if estimator == "gnb":
      scale = _hyperparam(state, "rho", rho) * _hyperparam(state, "batch_size", batch_size)
      bound = lambda h: c * scale * h
    else:
      g, e = _hyperparam(state, "gamma", gamma), _hyperparam(state, "eps", eps)
      bound = lambda h: c * jnp.maximum(g * h, e)
    wins = _skip_masked(lambda m, h: jnp.sum(jnp.abs(m) < bound(h)), state.mu, state.hessian)
    for leaf in jax.tree.leaves(wins):
      hits += leaf
    total += sum(m.size for m in jax.tree.leaves(state.mu))
  return jnp.asarray(hits, jnp.float32) / max(total, 1)


def hessian_norm(opt_state: Any) -> jax.Array:
  """Global L2 norm of the Hessian EMA `h` (the official loop logs it as `hessian_norm2`)."""
  leaves = [h for s in _collect(opt_state) for h in jax.tree.leaves(s.hessian)]
  return jnp.sqrt(sum(jnp.sum(jnp.square(h.astype(jnp.float32))) for h in leaves))


def gnb_hessian_grads(logits_fn: Callable[[Any, Any], jax.Array], params: Any, inputs: Any,
                      rng: jax.Array, mask: jax.Array | None = None) -> Any:
  """`ghat` of the Gauss-Newton-Bartlett estimator (paper Algorithm 2), before squaring.

  The gradient of the mean cross-entropy of `logits_fn(params, inputs)` (`[..., V]`) against
  labels sampled from its own softmax at every position; `mask` (`[...]`, 1 = counts) restricts
  the mean, like the official `ignore_index`. One forward and one backward pass.
  """
  logits, pullback = jax.vjp(lambda p: logits_fn(p, inputs), params)
  logits32 = jax.lax.stop_gradient(logits).astype(jnp.float32)
  labels = jax.random.categorical(rng, logits32, axis=-1)
  weights = jnp.ones(labels.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
  weights = weights / jnp.maximum(jnp.sum(weights), 1.0)
  probs = jax.nn.softmax(logits32, axis=-1)
  onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  dlogits = (probs - onehot) * weights[..., None]
  (grads,) = pullback(dlogits.astype(logits.dtype))
  return grads


def hutchinson_hessian_diag(loss_fn: Callable[[Any], jax.Array], params: Any,
                            rng: jax.Array) -> Any:
  """`u * (H u)` with Rademacher `u` and one Hessian-vector product (paper Algorithm 1).

  Unbiased for diag(H): `E[u_i (H u)_i] = H_ii`. Average `loss_fn` over the global batch.
  """
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(rng, len(leaves))
  u = jax.tree.unflatten(treedef, [
      jax.random.rademacher(k, p.shape, jnp.float32).astype(p.dtype) for k, p in zip(keys, leaves)])
  hvp = jax.jvp(jax.grad(loss_fn), (params,), (u,))[1]
  return jax.tree.map(lambda v, hv: v * hv, u, hvp)
