"""ECO optimizers against closed-form identities and NumPy float64 transcriptions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trainlab.algorithms import eco
from trainlab.algorithms import quantize as qz

QUANTIZERS = {
    "fp8_e4m3": qz.fp8_e4m3(), "int8": qz.int8(), "int4": qz.int4(),
    "int4_tensor": qz.int4(axis=None), "grid": qz.uniform_grid(2.0**-6)}


def f64(x) -> np.ndarray:
  return np.asarray(x, np.float64)


def run(tx, params, grads_fn, steps, quantized=False, jit=False):
  """(params, state) after each step; `grads_fn(t, dequantized params) -> grads`."""
  state = tx.init(params)
  update = jax.jit(tx.update) if jit else tx.update
  history = []
  for t in range(steps):
    dense = qz.dequantize_tree(params)
    updates, state = update(grads_fn(t, dense), state, params)
    params = optax.apply_updates(params, updates)
    assert quantized == any(isinstance(x, qz.QuantizedArray) for x in jax.tree.leaves(
        params, is_leaf=lambda x: isinstance(x, qz.QuantizedArray)))
    history.append((qz.dequantize_tree(params), state))
  return history


def random_grads(shape):
  return lambda t, p: jax.random.normal(jax.random.PRNGKey(100 + t), shape)


IDENTITY_CASES = [(name, rounding, "float") for name in QUANTIZERS
                  for rounding in ("nearest", "stochastic")] + [
                      ("fp8_e4m3", "stochastic", "quantized"), ("int4", "nearest", "quantized")]


@pytest.mark.parametrize("name,rounding,holder", IDENTITY_CASES)
def test_sgdm_virtual_iterate_follows_sgd(name, rounding, holder):
  lr, b, steps = 0.05, 0.9, 6
  theta0 = jax.random.normal(jax.random.PRNGKey(0), (6, 10))
  quantizer = QUANTIZERS[name]
  params = quantizer.quantize(theta0) if holder == "quantized" else theta0
  x0 = f64(qz.dequantize_tree(params))
  grads = random_grads(theta0.shape)
  deviation = {}
  for mode in ("eco", "naive"):
    tx = eco.eco_sgdm(lr, momentum=b, quantizer=quantizer, rounding=rounding, mode=mode)
    history = run(tx, params, grads, steps, quantized=holder == "quantized")
    sgd = x0 - lr * np.cumsum([f64(grads(t, None)) for t in range(steps)], axis=0)
    virtual = np.stack([f64(p) - lr * b / (1 - b) * f64(s.mu) for p, s in history])
    deviation[mode] = np.max(np.abs(virtual - sgd))
  assert deviation["eco"] < 2e-5
  assert deviation["naive"] > 1e-3  # naive removal of master weights breaks the identity


def np_quadratic():
  rng = np.random.default_rng(0)
  h = rng.uniform(0.5, 2.0, 16)
  c = rng.standard_normal(16)
  theta0 = np.round(rng.standard_normal(16) * 64) / 64  # on the 2^-6 grid
  return h, c, theta0


def np_grid(x, step=2.0**-6, check_ties=True):
  y = x / step
  if check_ties:
    frac = np.abs(y - np.floor(y) - 0.5)
    assert np.all(frac > 1e-4), "test data too close to a rounding tie for float32 vs float64"
  return np.round(y) * step


def np_sgdm(mode, lr, b, steps, check_ties=True):
  """NumPy float64 transcription: master weights (`exact`), naive, ECO."""
  grid = lambda x: np_grid(x, check_ties=check_ties)
  h, c, theta = np_quadratic()
  m = np.zeros_like(theta)
  master = theta.copy()
  out = []
  for _ in range(steps):
    if mode == "master":
      g = h * (grid(master) - c)
      m = b * m + (1 - b) * g
      master = master - lr * m
      theta = grid(master)
    else:
      g = h * (theta - c)
      m = b * m + (1 - b) * g
      theta_tilde = theta - lr * m
      theta = grid(theta_tilde)
      if mode == "eco":
        m = m + (1 / lr) * (1 - 1 / b) * (theta_tilde - theta)
    out.append((theta, m))
  return out


def np_adamw(mode, lr, b1, b2, eps, wd, steps):
  h, c, theta = np_quadratic()
  m, v = np.zeros_like(theta), np.zeros_like(theta)
  master = theta.copy()
  out = []
  for t in range(1, steps + 1):
    base = master if mode == "master" else theta
    g = h * (np_grid(base) - c)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    denom = (1 - b1**t) * (np.sqrt(v / (1 - b2**t)) + eps)
    theta_tilde = base - lr * (m / denom + wd * base)
    if mode == "master":
      master = theta_tilde
    theta = np_grid(theta_tilde)
    if mode == "eco":
      m = m + ((1 - b1**t) / lr) * (1 - 1 / b1) * (np.sqrt(v / (1 - b2**t)) + eps) * (
          theta_tilde - theta)
    out.append((theta, m))
  return out


def quadratic_grads():
  h, c, _ = np_quadratic()
  return lambda t, p: jnp.asarray(h, jnp.float32) * (p - jnp.asarray(c, jnp.float32))


MODES = {"master": dict(exact=True), "naive": dict(mode="naive"), "eco": dict()}


@pytest.mark.parametrize("mode", list(MODES))
def test_sgdm_trajectories_match_numpy(mode):
  lr, b, steps = 0.03, 0.8, 25
  tx = eco.eco_sgdm(lr, momentum=b, quantizer=qz.uniform_grid(2.0**-6), rounding="nearest",
                    **MODES[mode])
  theta0 = jnp.asarray(np_quadratic()[2], jnp.float32)
  history = run(tx, theta0, quadratic_grads(), steps)
  expected = np_sgdm(mode, lr, b, steps)
  for (p, s), (theta, m) in zip(history, expected):
    np.testing.assert_array_equal(f64(p), theta)  # grid values: exact
    np.testing.assert_allclose(f64(s.mu), m, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", list(MODES))
def test_adamw_trajectories_match_numpy(mode):
  lr, b1, b2, eps, wd, steps = 0.019, 0.9, 0.99, 1e-8, 0.1, 25
  tx = eco.eco_adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=wd,
                     quantizer=qz.uniform_grid(2.0**-6), rounding="nearest", **MODES[mode])
  theta0 = jnp.asarray(np_quadratic()[2], jnp.float32)
  history = run(tx, theta0, quadratic_grads(), steps)
  expected = np_adamw(mode, lr, b1, b2, eps, wd, steps)
  for (p, s), (theta, m) in zip(history, expected):
    np.testing.assert_array_equal(f64(p), theta)
    np.testing.assert_allclose(f64(s.mu), m, rtol=1e-5, atol=1e-6)


def test_eco_sits_between_master_and_naive():
  """On the quadratic, ECO's final loss is near master weights and naive's is not."""
  h, c, _ = np_quadratic()
  loss = lambda theta: 0.5 * np.sum(h * (theta - c)**2)
  final = {mode: loss(np_sgdm(mode, 0.003, 0.9, 400, check_ties=False)[-1][0])
           for mode in MODES}
  # Sanity of the transcription itself, not of trainlab: naive stalls at lr < grid / |m|.
  assert final["naive"] > 10 * final["master"]
  assert final["eco"] < 2 * final["master"] + 1e-4


@pytest.mark.parametrize("name", ["fp8_e4m3", "int4"])
def test_exact_error_feedback_tracks_master_weights(name):
  """`exact=True`: theta_hat + error is the float32 master iterate, step for step."""
  quantizer = QUANTIZERS[name]
  lr, b, steps = 0.05, 0.9, 8
  theta0 = quantizer.roundtrip(jax.random.normal(jax.random.PRNGKey(0), (4, 8)))
  grads = random_grads(theta0.shape)
  history = run(eco.eco_sgdm(lr, b, quantizer=quantizer, rounding="nearest", exact=True),
                theta0, grads, steps)
  master, m = f64(theta0), 0.0
  for t, (p, s) in enumerate(history):
    g = f64(grads(t, None))
    m = b * m + (1 - b) * g
    master = master - lr * m
    np.testing.assert_allclose(f64(p) + f64(s.error), master, rtol=0, atol=1e-5)
    np.testing.assert_allclose(f64(p), f64(quantizer.roundtrip(jnp.asarray(
        f64(p) + f64(s.error), jnp.float32))), rtol=0, atol=1e-6)


def test_adam_coefficient_cancels_the_quantization_error():
  """One step from a non-trivial state at t = 4: with `c_t = -1 / alpha_t` (NumPy),
  `theta_hat' - c_t m' == theta_tilde - c_t m_tilde`: the error vanishes from the
  Adam virtual iterate whatever the quantizer did."""
  lr, b1, b2, eps = 0.01, 0.9, 0.95, 1e-3
  tx = eco.eco_adamw(lr, b1=b1, b2=b2, eps=eps, quantizer=qz.int4(), rounding="stochastic")
  theta0 = jax.random.normal(jax.random.PRNGKey(0), (4, 8))
  grads = random_grads(theta0.shape)
  (p3, s3), (p4, s4) = run(tx, theta0, grads, 4)[2:]
  t, g = 4, f64(grads(3, None))
  m_tilde = b1 * f64(s3.mu) + (1 - b1) * g
  v = b2 * f64(s3.nu) + (1 - b2) * g * g
  np.testing.assert_allclose(f64(s4.nu), v, rtol=1e-5)
  denom = (1 - b1**t) * (np.sqrt(v / (1 - b2**t)) + eps)
  theta_tilde = f64(p3) - lr * m_tilde / denom
  c = -1 / ((1 / lr) * (1 - 1 / b1) * denom)
  assert np.max(np.abs(f64(p4) - theta_tilde)) > 1e-3  # int4 did move the weights
  np.testing.assert_allclose(f64(p4) - c * f64(s4.mu), theta_tilde - c * m_tilde, atol=2e-5)


@pytest.mark.parametrize("builder", [eco.eco_sgdm, eco.eco_adamw])
def test_injection_skipped_when_learning_rate_is_zero(builder):
  schedule = optax.linear_schedule(0.0, 0.1, 10)  # lr = 0 at the first update
  theta0 = jax.random.normal(jax.random.PRNGKey(0), (4, 8))  # off-grid: e != 0
  grads = random_grads(theta0.shape)
  (p_eco, s_eco), = run(builder(schedule, quantizer="int4"), theta0, grads, 1)
  (p_naive, s_naive), = run(builder(schedule, quantizer="int4", mode="naive"), theta0,
                            grads, 1)
  assert np.all(np.isfinite(f64(s_eco.mu)))
  np.testing.assert_array_equal(f64(s_eco.mu), f64(s_naive.mu))
  np.testing.assert_allclose(f64(s_eco.mu), 0.1 * f64(grads(0, None)), rtol=1e-6)
  np.testing.assert_array_equal(f64(p_eco), f64(p_naive))


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "int8", "int4"])
def test_float_params_land_exactly_on_quantized_iterate_with_pow2_scales(fmt):
  """optax.apply_updates on dequantized params gives bit for bit the values of the same
  run holding the params as codes + scales (no float addition there)."""
  quantizer = qz.QUANTIZERS[fmt](pow2_scales=True)
  theta0 = quantizer.quantize(jax.random.normal(jax.random.PRNGKey(0), (8, 16)))
  grads = random_grads((8, 16))
  tx = eco.eco_adamw(0.01, quantizer=quantizer, rounding="stochastic")
  held_float = run(tx, theta0.dequantize(), grads, 6)
  held_quantized = run(tx, theta0, grads, 6, quantized=True)
  for (pf, sf), (pq, sq) in zip(held_float, held_quantized):
    np.testing.assert_array_equal(np.asarray(pf), np.asarray(pq))
    np.testing.assert_array_equal(np.asarray(sf.mu), np.asarray(sq.mu))


def test_float_params_with_float32_scales_miss_the_grid_by_an_ulp_at_most():
  """With `absmax / 448` scales, float32 `theta_hat + (q - theta_hat)` can miss `q` by the
  rounding of the difference: at most an ulp of the larger of the old and new value; rare."""
  quantizer = qz.fp8_e4m3()
  theta0 = quantizer.quantize(jax.random.normal(jax.random.PRNGKey(0), (64, 64)))
  grads = random_grads((64, 64))
  tx = eco.eco_sgdm(0.5, quantizer=quantizer, rounding="stochastic")
  (pf, _), = run(tx, theta0.dequantize(), grads, 1)
  (pq, _), = run(tx, theta0, grads, 1, quantized=True)
  pf, pq, p0 = np.asarray(pf), np.asarray(pq), np.asarray(theta0.dequantize())
  ulp = np.spacing(np.maximum(np.abs(pq), np.abs(p0)))
  assert np.all(np.abs(pf - pq) <= ulp)
  assert np.mean(pf != pq) < 0.05


def test_identity_survives_float_rounding_in_apply_updates():
  """A constructed step whose float32 `theta_hat + (q - theta_hat)` misses `q`. The miss is
  an ulp of the old value, below what the float32 momentum resolves for a step that large,
  so the SGD identity holds to float tolerance (the optimizer measures `e` against the
  value `apply_updates` produces)."""
  big = 1 + 2.0**-23
  row_max = 7 * 2.0**-15 * (1 + 2.0**-10)  # scale = row_max / 448 = 2^-21 (1 + 2^-10)
  theta0 = jnp.asarray([[big, row_max]], jnp.float32)
  g = jnp.asarray([[2 * (big - 2.0**-21), 0.0]], jnp.float32)  # theta_tilde_0 = 2^-21
  lr, b = 1.0, 0.5
  tx = eco.eco_sgdm(lr, momentum=b, quantizer=qz.fp8_e4m3(), rounding="nearest")
  (p1, s1), = run(tx, theta0, lambda t, p: g, 1)
  q = 2.0**-21 * (1 + 2.0**-10)  # fp8 code 1.0 times the scale
  assert f64(p1)[0, 0] != q  # float addition did miss the quantized value
  assert f64(p1)[0, 1] == row_max
  virtual = f64(p1) - lr * b / (1 - b) * f64(s1.mu)
  np.testing.assert_allclose(virtual, f64(theta0) - lr * f64(g), rtol=0, atol=2.0**-23)


def test_state_has_no_weight_copy_and_bytes_per_param():
  params = qz.quantize_tree({"w": jnp.ones((256, 512))}, qz.fp8_e4m3())
  state = eco.eco_adamw(1e-3, quantizer="fp8_e4m3").init(params)
  assert set(state._fields) == {"count", "key", "mu", "nu", "error"}
  assert state.error is None
  n = 256 * 512
  assert qz.tree_nbytes(params) / n == 1 + 4 / 512  # fp8 codes + row scales
  assert (qz.tree_nbytes(state) - 4 - 8) / n == 8  # fp32 mu + nu (+ count, key)
  sgdm_state = eco.eco_sgdm(1e-3, quantizer="int4").init(
      qz.quantize_tree({"w": jnp.ones((256, 512))}, qz.int4()))
  assert sgdm_state.nu is None and (qz.tree_nbytes(sgdm_state) - 12) / n == 4


def test_inject_hyperparams_and_schedules():
  theta0 = jax.random.normal(jax.random.PRNGKey(0), (4, 8))
  grads = random_grads(theta0.shape)
  schedule = optax.cosine_decay_schedule(0.1, 10)
  for builder in (eco.eco_sgdm, eco.eco_adamw):
    plain = run(builder(schedule, quantizer="int8", rounding="stochastic"), theta0, grads, 3)
    injected = run(optax.inject_hyperparams(builder)(
        learning_rate=schedule, quantizer=qz.int8(), rounding="stochastic"), theta0, grads, 3)
    for (pa, _), (pb, sb) in zip(plain, injected):
      np.testing.assert_allclose(np.asarray(pa), np.asarray(pb), rtol=1e-6, atol=1e-7)
    assert float(sb.hyperparams["learning_rate"]) == pytest.approx(float(schedule(2)))


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="mode"):
    eco.eco_sgdm(0.1, mode="master")
  with pytest.raises(ValueError, match="exact"):
    eco.eco_sgdm(0.1, mode="naive", exact=True)
  with pytest.raises(ValueError, match="rounding"):
    eco.eco_adamw(0.1, rounding="up")
  with pytest.raises(ValueError, match="quantizer"):
    eco.eco_adamw(0.1, quantizer="nf4")
  with pytest.raises(ValueError, match="momentum"):
    eco.eco_sgdm(0.1, momentum=1.0)
  with pytest.raises(ValueError, match="b1"):
    eco.eco_adamw(0.1, b1=0.0)


def test_quantized_params_jit_once_and_keep_their_layout():
  params = qz.quantize_tree({"w": jax.random.normal(jax.random.PRNGKey(0), (16, 8)),
                             "b": jnp.zeros(8)}, qz.int4())
  tx = eco.eco_adamw(1e-2, quantizer=qz.int4())
  state = tx.init(params)
  update = jax.jit(tx.update)
  grads = {"w": jnp.ones((16, 8)), "b": jnp.ones(8)}
  for _ in range(3):
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
  assert update._cache_size() == 1
  assert isinstance(params["w"], qz.QuantizedArray) and params["w"].codes.dtype == jnp.uint8
  assert params["w"].codes.shape == (16, 4) and params["b"].dtype == jnp.float32


def test_partition_keeps_vectors_in_float32_beside_quantized_matrices():
  """The trainer recipe: ECO on `QuantizedArray` matrices, plain AdamW on the rest."""
  params = qz.quantize_tree({"w": jax.random.normal(jax.random.PRNGKey(0), (16, 8)),
                             "b": jnp.full(8, 0.1234567)}, qz.fp8_e4m3())
  tx = optax.partition({"eco": eco.eco_adamw(1e-2), "float": optax.adamw(1e-2, weight_decay=0.5)},
                       {"w": "eco", "b": "float"})
  updates, _ = jax.jit(tx.update)({"w": jnp.ones((16, 8)), "b": jnp.ones(8)},
                                  tx.init(params), params)
  new = optax.apply_updates(params, updates)
  assert isinstance(new["w"], qz.QuantizedArray)
  np.testing.assert_allclose(np.asarray(new["b"]), 0.1234567 - 1e-2 * (1 + 0.5 * 0.1234567),
                             rtol=1e-5)  # AdamW's first step: lr * (sign(g) + wd * p)


def test_adam_virtual_iterate_follows_preconditioned_sgd_when_denominator_is_constant():
  """|g| fixed per coordinate makes v_hat = g^2 exactly, and b1 = 0.5 makes 1 - b1^t = 1
  in float32 after ~25 steps: Adam's denominator D is then constant and
  x = theta_hat - lr b1 / ((1 - b1) D) m must follow x' = x - (lr / D) g exactly."""
  lr, b1, b2, eps, steps = 0.01, 0.5, 0.9, 1e-8, 32
  magnitude = jnp.asarray(np.linspace(0.5, 2.0, 32).reshape(4, 8), jnp.float32)
  signs = lambda t: jnp.sign(jax.random.normal(jax.random.PRNGKey(200 + t), (4, 8)))
  grads = lambda t, p: magnitude * signs(t)
  tx = eco.eco_adamw(lr, b1=b1, b2=b2, eps=eps, quantizer=qz.fp8_e4m3(), rounding="stochastic")
  history = run(tx, jax.random.normal(jax.random.PRNGKey(0), (4, 8)), grads, steps)
  d = f64(magnitude) + eps
  virtual = [f64(p) - lr * b1 / ((1 - b1) * d) * f64(s.mu) for p, s in history]
  for t in range(26, steps - 1):
    np.testing.assert_allclose(virtual[t + 1] - virtual[t], -lr * f64(grads(t + 1, None)) / d,
                               rtol=0, atol=2e-5 * lr)
  naive = run(eco.eco_adamw(lr, b1=b1, b2=b2, eps=eps, quantizer=qz.fp8_e4m3(),
                            rounding="stochastic", mode="naive"),
              jax.random.normal(jax.random.PRNGKey(0), (4, 8)), grads, steps)
  v_naive = [f64(p) - lr * b1 / ((1 - b1) * d) * f64(s.mu) for p, s in naive]
  assert max(np.max(np.abs(v_naive[t + 1] - v_naive[t] + lr * f64(grads(t + 1, None)) / d))
             for t in range(26, steps - 1)) > 1e-3
