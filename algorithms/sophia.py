"""Sophia: clipped diagonal-Hessian preconditioning (Liu et al., arXiv 2305.14342, Algorithm 3).

SophiaG exactly as the official code runs it (`Liuhong99/Sophia` `sophia.py`), with no bias
correction anywhere:

  theta <- theta * (1 - lr * wd)                                    # decoupled, first
  m     <- b1 * m + (1 - b1) * g
  theta <- theta - lr * sign(m) * min(|m| / (rho * B * h + eps), clip_threshold)

and, every `update_interval` steps, `h <- b2 * h + (1 - b2) * ghat**2` (`update_hessian`), where
`ghat` is the gradient of the mean loss on labels sampled from the model's own softmax
(`gnb_hessian_grads`, the Gauss-Newton-Bartlett estimator, paper Algorithm 2). `B` is the number
of tokens (or examples) in the global batch: `E[ghat**2] = diag(GN) / B`, so `B * h` estimates
the Gauss-Newton diagonal and `rho` is the paper's `gamma`.

Sophia-H (`estimator="hutchinson"`, paper Algorithm 1) feeds `u * (H u)` into the EMA unsquared
(`hutchinson_hessian_diag`, an unbiased estimate of diag(H) itself, possibly negative) and divides
by `max(gamma * h, eps)` as in the paper and `optax.contrib.sophia`; `rho` and `batch_size` are
unused then.

Who refreshes `h`: the train step, not `update`. Every `update_interval` steps it computes
`hessian_grads` (inside the same jitted step, under `jax.lax.cond`) and calls
`update_hessian(opt_state, hessian_grads)`. Under data parallelism, compute `hessian_grads` from
the mean loss over the *global* batch inside the sharded jit, so the estimate is averaged across
devices before it is squared.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from trainlab.algorithms.optimizers import register_optimizer

ESTIMATORS = ("gnb", "hutchinson")
_INJECT_STATES = (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)


class SophiaState(NamedTuple):
  """`count`: updates applied; `mu`: momentum; `hessian`: EMA of the diagonal estimate."""
  count: jax.Array
  mu: optax.Updates
  hessian: optax.Updates


def _check(name: str, value: Any, ok: Callable[[float], bool], want: str) -> None:
  """Checks Python numbers only: schedules and `inject_hyperparams` arrays pass through."""
  if isinstance(value, (int, float)) and not isinstance(value, bool) and not ok(value):
    raise ValueError(f"{name} must be {want}, got {value}")


def _hessian_dtype(param_dtype) -> jnp.dtype:
  return jnp.promote_types(param_dtype, jnp.float32)


def scale_by_sophia(
    b1: float = 0.965,
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
  (Sophia-H). `h` starts at zero and only `update_hessian` changes it; it is kept in at least
  float32 whatever the parameter dtype. `mu` is stored in `mu_dtype` (default: the parameter
  dtype, as the official code does).
  """
  _check("b1", b1, lambda v: 0 <= v < 1, "in [0, 1)")
  _check("rho", rho, lambda v: v >= 0, ">= 0")
  _check("batch_size", batch_size, lambda v: v > 0, "> 0 (tokens in the global batch)")
  _check("eps", eps, lambda v: v >= 0, ">= 0")
  _check("clip_threshold", clip_threshold, lambda v: v > 0, "> 0")
  _check("gamma", gamma, lambda v: v > 0, "> 0")
  if estimator not in ESTIMATORS:
    raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
  mu_dtype = None if mu_dtype is None else jnp.dtype(mu_dtype)  # a dtype is always truthy

  def init_fn(params):
    return SophiaState(
        count=jnp.zeros([], jnp.int32),
        mu=jax.tree.map(lambda p: jnp.zeros_like(p, dtype=mu_dtype or p.dtype), params),
        hessian=jax.tree.map(lambda p: jnp.zeros_like(p, dtype=_hessian_dtype(p.dtype)), params))

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
    return updates, SophiaState(count=count, mu=mu, hessian=state.hessian)

  return optax.GradientTransformation(init_fn, update_fn)


@register_optimizer("sophia")
def sophia(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.965,
    b2: float = 0.99,
    rho: float = 0.04,
    weight_decay: optax.ScalarOrSchedule = 0.1,
    batch_size: int = 1,
    eps: float = 1e-15,
    clip_threshold: float = 1.0,
    update_interval: int = 10,
    weight_decay_mask: Any = None,
    estimator: str = "gnb",
    gamma: float = 0.01,
    mu_dtype: Any = None,
) -> optax.GradientTransformation:
  """SophiaG (default) or Sophia-H with decoupled weight decay: the official update rule.

  `update = -lr * (sophia_direction + weight_decay * theta)`, which is the official
  `theta * (1 - lr * wd) - lr * direction`. `b2` and `update_interval` do not enter `update`:
  `b2` is read by `update_hessian` (from the `inject_hyperparams` state, or pass it there) and
  the trainer reads `update_interval`. Wrap in `optax.inject_hyperparams` to schedule any
  numeric hyperparameter; `learning_rate` and `weight_decay` accept schedules directly. Under
  `inject_hyperparams`, give `mu_dtype` as a string ("float32"): a dtype class is callable and
  would be taken for a schedule.
  """
  _check("b2", b2, lambda v: 0 <= v < 1, "in [0, 1)")
  _check("weight_decay", weight_decay, lambda v: v >= 0, ">= 0")
  _check("update_interval", update_interval, lambda v: v >= 1 and v == int(v), "an integer >= 1")
  return optax.chain(
      scale_by_sophia(b1=b1, rho=rho, batch_size=batch_size, eps=eps,
                      clip_threshold=clip_threshold, estimator=estimator, gamma=gamma,
                      mu_dtype=mu_dtype),
      optax.add_decayed_weights(weight_decay, weight_decay_mask),
      optax.scale_by_learning_rate(learning_rate),
  )


def _map_sophia_states(fn: Callable[[SophiaState, dict], SophiaState], opt_state: Any,
                       hyperparams: dict | None = None) -> Any:
  """Replaces every `SophiaState` in `opt_state` by `fn(state, hyperparams)`.

  `hyperparams` are those of the innermost enclosing `inject_hyperparams` state. Chains,
  `masked`, `apply_if_finite`, `MultiSteps` and other wrappers are walked as plain pytrees.
  """
  hyperparams = hyperparams or {}
  is_node = lambda x: isinstance(x, (SophiaState, *_INJECT_STATES))

  def visit(node):
    if isinstance(node, SophiaState):
      return fn(node, hyperparams)
    inner = _map_sophia_states(fn, node.inner_state, {**hyperparams, **node.hyperparams})
    return node._replace(inner_state=inner)

  return jax.tree.map(lambda x: visit(x) if is_node(x) else x, opt_state, is_leaf=is_node)


def _hyperparam(name: str, given: Any, hyperparams: dict) -> Any:
  if given is not None:
    return given
  if name in hyperparams:
    return hyperparams[name]
  raise ValueError(f"{name} is not in the optimizer state (no inject_hyperparams around sophia); "
                   f"pass {name}= explicitly")


def _skip_masked(fn: Callable[..., Any], *trees: Any) -> Any:
  is_masked = lambda x: isinstance(x, optax.MaskedNode)
  return jax.tree.map(lambda x, *rest: x if is_masked(x) else fn(x, *rest), *trees,
                      is_leaf=is_masked)


def update_hessian(opt_state: Any, hessian_grads: optax.Updates, b2: float | None = None,
                   estimator: str = "gnb") -> Any:
  """The official `SophiaG.update_hessian()`: `h <- b2 * h + (1 - b2) * hessian_grads**2`.

  Applied to every `SophiaState` inside `opt_state` (chained, injected, masked, wrapped in
  `apply_if_finite`, ...); `hessian_grads` has the parameters' structure. `b2` defaults to the
  value in the enclosing `inject_hyperparams` state; without one, pass it. With
  `estimator="hutchinson"`, `hessian_grads` is the estimate `u * (H u)` and enters unsquared.
  The step count is untouched, as in the official code.
  """
  if estimator not in ESTIMATORS:
    raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")

  def ema(state: SophiaState, hyperparams: dict) -> SophiaState:
    decay = _hyperparam("b2", b2, hyperparams)

    def leaf(h, g):
      g = g.astype(h.dtype)
      estimate = g * g if estimator == "gnb" else g
      return (decay * h + (1 - decay) * estimate).astype(h.dtype)

    return state._replace(hessian=_skip_masked(leaf, state.hessian, hessian_grads))

  return _map_sophia_states(ema, opt_state)


def _collect(opt_state: Any) -> list[tuple[SophiaState, dict]]:
  found = []
  _map_sophia_states(lambda s, hp: found.append((s, hp)) or s, opt_state)
  if not found:
    raise ValueError("opt_state holds no SophiaState")
  return found


def win_rate(opt_state: Any, rho: float | None = None, batch_size: int | None = None,
             clip_threshold: float | None = None, gamma: float | None = None,
             estimator: str = "gnb") -> jax.Array:
  """Share of coordinates not clipped, the health metric (ideally 0.1 to 0.5).

  SophiaG: `|m| < clip_threshold * rho * batch_size * h`, as `train_sophiag.py` logs it
  (`clip_threshold` = 1 there); Sophia-H: `|m| < clip_threshold * max(gamma * h, eps)`.
  Hyperparameters left `None` come from the enclosing `inject_hyperparams` state.
  """
  hits, total = 0, 0
  for state, hp in _collect(opt_state):
    c = clip_threshold if clip_threshold is not None else hp.get("clip_threshold", 1.0)
    if estimator == "gnb":
      scale = _hyperparam("rho", rho, hp) * _hyperparam("batch_size", batch_size, hp)
      bound = lambda h: c * scale * h
    else:
      g, e = _hyperparam("gamma", gamma, hp), hp.get("eps", 1e-15)  # eps: sophia's default
      bound = lambda h: c * jnp.maximum(g * h, e)
    wins = _skip_masked(lambda m, h: jnp.sum(jnp.abs(m) < bound(h)), state.mu, state.hessian)
    for leaf in jax.tree.leaves(wins):
      hits += leaf
    total += sum(m.size for m in jax.tree.leaves(state.mu))
  return jnp.asarray(hits, jnp.float32) / max(total, 1)


def hessian_norm(opt_state: Any) -> jax.Array:
  """Global L2 norm of the Hessian EMA `h` (the official loop logs it as `hessian_norm2`)."""
  leaves = [h for s, _ in _collect(opt_state) for h in jax.tree.leaves(s.hessian)]
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
