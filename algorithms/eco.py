"""ECO: error-compensating optimizers for training without master weights.

Nikdan et al., "ECO", arXiv 2601.22101 (reconstructed; no official code). One step, with
`theta_hat` the stored quantized weights and no float32 master copy:

    theta_tilde, m_tilde = base optimizer step from (theta_hat, m)     # transient
    theta_hat'           = q(theta_tilde)                               # quantize every step
    e                    = theta_tilde - theta_hat'                     # transient
    m'                   = m_tilde + alpha * e                          # inject into momentum

SGD with EMA momentum (`m_tilde = b m + (1 - b) g`, `theta_tilde = theta_hat - lr m_tilde`)
uses `alpha = (1 / lr)(1 - 1 / b)`, which makes the virtual iterate
`x = theta_hat - lr b / (1 - b) * m` follow plain SGD, `x' = x - lr g`, exactly for any
quantizer. Adam: the same argument with the step `lr * m_hat / (sqrt(v_hat) + eps)` read as
SGD-EMA with the per-coordinate rate `lr / D_t`, `D_t = (1 - b1^t)(sqrt(v_tilde / (1 - b2^t))
+ eps)` held fixed, gives `alpha_t = (D_t / lr)(1 - 1 / b1)`; `v` is not touched. (Exact
when D is constant. D_t's bias correction does change: a momentum kick is really spent over
future steps with `1 - b1^(t+k)`, so early on this alpha under-injects: 0.22x the
frozen-`v` value at t = 1, 0.79x at t = 10, 0.997x at t = 50 for b1 = 0.9.) The injection
is skipped when `lr_t = 0` (alpha divides by lr). Schedules: alpha uses `lr_t`, so the SGD
identity is exact for a constant learning rate only.

Params may be held two ways; the optimizer quantizes every leaf it updates either way, and
`optax.apply_updates(params, updates)` applies the step in both:
  * as float arrays (dequantized values, any real float dtype): `updates` are float deltas
    in the params' dtype (computed in at least float32) and `optax.apply_updates` lands on
    `params + updates`, which is `q(theta_tilde)` exactly with `pow2_scales=True` quantizers
    and float32 params. With float32 scales the sum can miss `q` by an ulp of the larger of
    old and new value (only when they differ by more than 2x; ~1% of elements per step for
    fp8), and bf16/f16 params round it to their own precision: the optimizer measures `e`
    against the value the params really take, so the identities above still hold;
  * as `QuantizedArray` leaves (codes + scales: the real memory saving), of the optimizer's
    own quantizer: the update of such a leaf is `quantize.delta(old, new)`, the wrapping
    integer difference of the stored codes and scales, so `optax.apply_updates` lands on the
    new codes and scales bit for bit, and a zero update (a rejected step) keeps them. Chain
    nothing after ECO that rescales updates. Gradients are taken w.r.t.
    `quantize.dequantize_tree(params)`.
Complex params are refused (the quantizers are real); empty leaves are fine.

Trainer recipe (memory saving for real): `params = quantize_tree(params, quantizer)` (matrices
only by default); `optax.partition({"eco": eco_adamw(...), "float": optax.adamw(...)}, labels)`
keeps vectors (norms, biases) in float32; the forward pass uses `dequantize_tree(params)`;
`params = optax.apply_updates(params, updates)`. The state is `count`, `key`, `mu` (`nu`) in
float32: FP8 ECO-AdamW stores 1 + 4/cols + 8 bytes per matrix parameter, against
4 + 1 + 4/cols + 8 with float32 master weights and an FP8 copy.

`mode="naive"` quantizes after each step with no injection (the baseline ECO beats);
`exact=True` instead keeps a float32 error buffer (exact error feedback: the quantized
iterate of master-weight training, for comparison only; it costs the memory ECO saves).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from trainlab.algorithms import quantize as qz

MODES = ("eco", "naive")


class EcoState(NamedTuple):
  """`mu` (and `nu` for Adam) in float32 (float64 for float64 params); `key` for stochastic
  rounding; `error` only when `exact=True`. No copy of the weights."""

  count: jax.Array
  key: jax.Array
  mu: optax.Updates
  nu: optax.Updates
  error: optax.Updates


def _value(hp: optax.ScalarOrSchedule, count: jax.Array) -> jax.Array:
  return jnp.asarray(hp(count) if callable(hp) else hp, jnp.float32)


def _check(mode: str, exact: bool, rounding: str, quantizer: str | qz.Quantizer,
           **betas: Any) -> qz.Quantizer:
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  if exact and mode != "eco":
    raise ValueError("exact=True is error feedback in place of ECO's injection; use mode='eco'")
  if rounding not in qz.ROUNDINGS:
    raise ValueError(f"rounding must be one of {qz.ROUNDINGS}, got {rounding!r}")
  for name, b in betas.items():
    if not callable(b) and isinstance(b, (int, float)) and not 0 < b < 1:
      raise ValueError(f"{name} must be in (0, 1), got {b}")
  return qz.get_quantizer(quantizer)


def _is_quantized(x: Any) -> bool:
  return isinstance(x, qz.QuantizedArray)


def _compute_dtype(param: Any) -> jnp.dtype:
  """float32, or the param's dtype where it is wider (float64)."""
  return jnp.promote_types(param.dtype, jnp.float32)


def _check_params(params: optax.Params, quantizer: qz.Quantizer) -> None:
  """Real float leaves, and `QuantizedArray` leaves of this optimizer's own quantizer."""
  leaves = jax.tree_util.tree_leaves_with_path(params, is_leaf=_is_quantized)
  for path, p in leaves:
    where = jax.tree_util.keystr(path) or "params"
    if _is_quantized(p):
      if p.quantizer != quantizer:
        raise ValueError(f"{where} is quantized by {p.quantizer}, but this ECO optimizer "
                         f"quantizes with {quantizer}: build it with quantizer=the params' one")
    elif not jnp.issubdtype(p.dtype, jnp.floating):
      raise ValueError(f"ECO quantizes real float weights, and {where} is "
                       f"{jnp.dtype(p.dtype).name}; keep complex or integer leaves out of "
                       "ECO (optax.partition)")


def _zeros_like_params(params: optax.Params) -> optax.Updates:
  """Zeros in the compute dtype, shaped and sharded like each param."""
  return jax.tree.map(
      lambda p: jnp.zeros(p.shape, p.dtype) if _is_quantized(p) else jnp.zeros_like(
          p, dtype=_compute_dtype(p)), params, is_leaf=_is_quantized)


def _requantize(quantizer: qz.Quantizer, rounding: str, theta_tilde: jax.Array, param: Any,
                key: jax.Array) -> tuple[Any, jax.Array]:
  """(update leaf, value the param takes after `optax.apply_updates`) for one leaf."""
  key = key if rounding == "stochastic" else None
  if _is_quantized(param):
    new = quantizer.quantize(theta_tilde, rounding, key)
    return qz.delta(param, new), new.dequantize()
  dtype = theta_tilde.dtype
  q = quantizer.roundtrip(theta_tilde, rounding, key).astype(dtype)
  update = (q - param.astype(dtype)).astype(param.dtype)
  landed = jnp.asarray(param + update).astype(param.dtype)  # what optax.apply_updates does
  return update, landed.astype(dtype)


def _eco_transform(step_fn: Callable, alpha_fn: Callable, quantizer: qz.Quantizer,
                   rounding: str, mode: str, exact: bool, seed: int, adam: bool,
                   ) -> optax.GradientTransformationExtraArgs:
  """Shared ECO machinery around a per-leaf base step.

  `step_fn(g, m, v, theta_hat, count) -> (theta_tilde, m_tilde, v_tilde)` and
  `alpha_fn(v_tilde, count) -> alpha` are the base optimizer (hyperparameters bound).
  """

  def init_fn(params):
    _check_params(params, quantizer)
    return EcoState(count=jnp.zeros([], jnp.int32), key=jax.random.PRNGKey(seed),
                    mu=_zeros_like_params(params),
                    nu=_zeros_like_params(params) if adam else None,
                    error=_zeros_like_params(params) if exact else None)

  def update_fn(grads, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError("ECO optimizers need params: update(grads, state, params)")
    _check_params(params, quantizer)
    treedef = jax.tree.structure(grads)
    g_leaves = treedef.flatten_up_to(grads)
    p_leaves = treedef.flatten_up_to(params)
    m_leaves = treedef.flatten_up_to(state.mu)
    v_leaves = treedef.flatten_up_to(state.nu) if adam else [None] * len(g_leaves)
    e_leaves = treedef.flatten_up_to(state.error) if exact else [None] * len(g_leaves)
    key, subkey = jax.random.split(state.key)
    keys = jax.random.split(subkey, max(len(g_leaves), 1))
    outs = []
    for i, (g, p, m, v, err) in enumerate(zip(g_leaves, p_leaves, m_leaves, v_leaves,
                                              e_leaves)):
      dtype = m.dtype  # the compute dtype
      theta_hat = p.dequantize() if _is_quantized(p) else p.astype(dtype)
      if exact:
        theta_hat = theta_hat + err
      theta_tilde, m_tilde, v_tilde = step_fn(g.astype(dtype), m, v, theta_hat, state.count)
      theta_tilde = theta_tilde.astype(dtype)
      update, landed = _requantize(quantizer, rounding, theta_tilde, p, keys[i])
      e = theta_tilde - landed
      if mode == "eco" and not exact:
        m_tilde = m_tilde + alpha_fn(v_tilde, state.count) * e
      outs.append((update, m_tilde.astype(dtype), None if v is None else v_tilde.astype(dtype),
                   e if exact else None))
    updates, mu, nu, error = (treedef.unflatten([o[j] for o in outs]) for j in range(4))
    new_state = EcoState(count=optax.safe_increment(state.count), key=key, mu=mu,
                         nu=nu if adam else None, error=error if exact else None)
    return updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _safe_inverse_lr(lr: jax.Array) -> jax.Array:
  """1 / lr, and 0 where lr == 0 (the injection is skipped there)."""
  return jnp.where(lr == 0, 0.0, 1.0 / jnp.where(lr == 0, 1.0, lr))


def eco_sgdm(learning_rate: optax.ScalarOrSchedule, momentum: optax.ScalarOrSchedule = 0.9,
             quantizer: str | qz.Quantizer = "fp8_e4m3", rounding: str = "stochastic",
             exact: bool = False, mode: str = "eco", seed: int = 0,
             ) -> optax.GradientTransformationExtraArgs:
  """SGD with EMA momentum on quantized weights, ECO error injection (arXiv 2601.22101).

  EMA momentum, `m = b m + (1 - b) g`: at the same `learning_rate` its steps are `(1 - b)`
  times those of `optax.sgd(learning_rate, momentum=b)` (heavy ball, `m = b m + g`), 10x
  smaller at b = 0.9. For the same trajectory as `optax.sgd(lr_sgd, momentum=b)` use
  `eco_sgdm(lr_sgd / (1 - b), momentum=b)`.

  `theta = q(theta - lr m)`, `m += (1 / lr)(1 - 1 / b)(theta_tilde - theta)`. `quantizer` is
  a `QUANTIZERS` name or a `Quantizer`; `seed` seeds the rounding key.
  """
  quantizer = _check(mode, exact, rounding, quantizer, momentum=momentum)

  def step_fn(g, m, v, theta_hat, count):
    b = _value(momentum, count)
    m_tilde = b * m + (1 - b) * g
    return theta_hat - _value(learning_rate, count) * m_tilde, m_tilde, None

  def alpha_fn(v_tilde, count):
    b = _value(momentum, count)
    return _safe_inverse_lr(_value(learning_rate, count)) * (1 - 1 / b)

  return _eco_transform(step_fn, alpha_fn, quantizer, rounding, mode, exact, seed, adam=False)


def eco_adamw(learning_rate: optax.ScalarOrSchedule, b1: optax.ScalarOrSchedule = 0.9,
              b2: optax.ScalarOrSchedule = 0.999, eps: optax.ScalarOrSchedule = 1e-8,
              weight_decay: optax.ScalarOrSchedule = 0.0,
              quantizer: str | qz.Quantizer = "fp8_e4m3", rounding: str = "stochastic",
              exact: bool = False, mode: str = "eco", seed: int = 0,
              ) -> optax.GradientTransformationExtraArgs:
  """AdamW on quantized weights with ECO error injection (arXiv 2601.22101).

  Base step (t = updates applied + 1): `m = b1 m + (1 - b1) g`, `v = b2 v + (1 - b2) g^2`,
  `theta_tilde = theta - lr (m / (1 - b1^t) / (sqrt(v / (1 - b2^t)) + eps) + wd theta)`;
  then `m += alpha_t (theta_tilde - q(theta_tilde))` with
  `alpha_t = ((1 - b1^t) / lr)(1 - 1 / b1)(sqrt(v / (1 - b2^t)) + eps)`.
  """
  quantizer = _check(mode, exact, rounding, quantizer, b1=b1, b2=b2)

  def denominator(v_tilde, count):
    t = (count + 1).astype(jnp.float32)
    beta1, beta2 = _value(b1, count), _value(b2, count)
    return (1 - beta1**t) * (jnp.sqrt(v_tilde / (1 - beta2**t)) + _value(eps, count))

  def step_fn(g, m, v, theta_hat, count):
    beta1, beta2 = _value(b1, count), _value(b2, count)
    m_tilde = beta1 * m + (1 - beta1) * g
    v_tilde = beta2 * v + (1 - beta2) * g * g
    direction = m_tilde / denominator(v_tilde, count) + _value(weight_decay, count) * theta_hat
    return theta_hat - _value(learning_rate, count) * direction, m_tilde, v_tilde

  def alpha_fn(v_tilde, count):
    beta1 = _value(b1, count)
    return (_safe_inverse_lr(_value(learning_rate, count)) * (1 - 1 / beta1)
            * denominator(v_tilde, count))

  return _eco_transform(step_fn, alpha_fn, quantizer, rounding, mode, exact, seed, adam=True)
