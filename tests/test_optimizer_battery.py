"""Every optimizer a config can name, through optax's own test batteries.

Parametrized over the keys of `trainlab.training.optimizers.OPTIMIZERS`: a newly registered
optimizer gets every check by being registered. The checks are ported from the optax 0.2.8
wheel (`optax/contrib/_common_test.py`, `optax/_src/alias_test.py`,
`optax/_src/sharding_test.py`), with optax's targets and tolerances; learning rates (and the
odd setting) per optimizer come from `SETTINGS`, like optax's own tables, `DEFAULT` otherwise.
ECO runs on float params here (its quantizer then runs on every step), and once on
`QuantizedArray` params for `optax.apply_updates`' exactness.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax._src import test_utils

from trainlab.algorithms import quantize as qz
from trainlab.algorithms import sophia
from trainlab.training.optimizers import OPTIMIZERS

NAMES = sorted(OPTIMIZERS)
DEFAULT = {"learning_rate": 1e-2}
SETTINGS = {  # optax's alias_test values for these two
    "sgd": {"learning_rate": 1e-3, "momentum": 0.9},
    "lion": {"learning_rate": 1e-2, "weight_decay": 1e-4},
}
CONVERGENCE = {
    **SETTINGS,
    # Sophia-H with its Hessian refreshed every 10 steps (`TRAINER_SIDE`), as optax's sophia;
    # weight decay at optax's 1e-4: the default 0.1 moves the minimizer by more than 3e-2.
    "sophia": {"learning_rate": 1e-2, "weight_decay": 1e-4, "estimator": "hutchinson"},
    # fp8 e4m3's grid is 1/14 of the absmax wide near it, coarser than optax's 3e-2; int8's is
    # 1/127. The stored (quantized) params are what is compared with the target.
    "eco_adamw": {"learning_rate": 1e-2, "quantizer": "int8"},
    "eco_sgdm": {"learning_rate": 1e-2, "quantizer": "int8"},
}
# Entries whose own parameter representation is `QuantizedArray` leaves (ECO's memory saving),
# with the quantizer the test uses (power-of-two scales: float-held params then land exactly).
QUANTIZED = {"eco_adamw": qz.fp8_e4m3(pow2_scales=True), "eco_sgdm": qz.int4(pow2_scales=True)}
DTYPE_GROUPS = [(jnp.bfloat16, jnp.float16, jnp.float32), (jnp.float64,)]
STEPS = 10_000  # alias_test's count


def build(name: str, table: dict = SETTINGS, **overrides) -> optax.GradientTransformation:
  kwargs = {**table.get(name, DEFAULT), **overrides}
  return OPTIMIZERS[name].build(kwargs.pop("learning_rate"), **kwargs)


# ------------------------------------------------------------------ optax's targets

def _abs_sq(x):
  return jnp.real(x * jnp.conj(x))


def parabola(dtype):
  initial = jnp.array([-1.0, 10.0, 1.0], dtype)
  final = jnp.array([1.0, -1.0, 1.0], dtype)
  if jnp.issubdtype(dtype, jnp.complexfloating):
    final = final * (1 + 1j)
  return initial, final, lambda p: jnp.sum(_abs_sq(p - final))


def rosenbrock(dtype):
  a, b = 1.0, 100.0
  initial = jnp.array([0.0, 0.0], dtype)
  final = jnp.array([a, a**2], dtype)
  return initial, final, lambda p: _abs_sq(a - p[0]) + b * _abs_sq(p[1] - p[0] ** 2)


def matrix_parabola(dtype):
  initial = jnp.zeros((2, 2), dtype)
  final = jnp.array([[3.0, -2.0], [1.0, 4.0]], dtype)
  return initial, final, lambda p: jnp.sum(_abs_sq(p - final))


def mixed_tensors(dtype):
  final = (jnp.array([1.0, -1.0, 2.0], dtype), jnp.array([[1.0, 0.0], [-1.0, 1.0]], dtype))
  initial = (jnp.zeros((3,), dtype), jnp.zeros((2, 2), dtype))
  objective = lambda p: sum(jnp.sum(_abs_sq(x - y)) for x, y in zip(p, final))
  return initial, final, objective


def _refresh_sophia(state, params, objective, t):
  """What Sophia's trainer side does beside `update` (training/sophia_support.py), with the
  Hutchinson estimator: these targets have no logits for Gauss-Newton-Bartlett."""
  def refresh(state):
    estimate = sophia.hutchinson_hessian_diag(objective, params,
                                              jax.random.fold_in(jax.random.key(0), t))
    return sophia.update_hessian(state, estimate, estimator="hutchinson")
  return jax.lax.cond(t % 10 == 9, refresh, lambda s: s, state)


TRAINER_SIDE = {"sophia": _refresh_sophia}


def _run(opt, name, target, dtype, steps=STEPS, conjugate=False):
  """`steps` updates from `target`'s start under one `jax.lax.scan`: final params."""
  initial, _, objective = target(dtype)
  after = TRAINER_SIDE.get(name, lambda state, *_: state)

  def step(carry, t):
    params, state = carry
    grads = jax.grad(objective)(params)
    if conjugate:  # complex gradients are conjugated before they are added (alias_test)
      grads = jax.tree.map(jnp.conj, grads)
    updates, state = opt.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    return (params, after(state, params, objective, t)), None

  state = opt.init(initial)
  (params, _), _ = jax.jit(lambda c: jax.lax.scan(step, c, jnp.arange(steps)))((initial, state))
  return params


# ------------------------------------------------------------------ the battery

def test_the_registry_is_covered():
  assert {"adamw", "adamw_master", "lion", "sgd", "sophia", "eco_adamw", "eco_sgdm"} <= set(NAMES)
  assert set(SETTINGS) | set(CONVERGENCE) | set(QUANTIZED) <= set(NAMES)


@pytest.mark.parametrize("target", [parabola, rosenbrock, matrix_parabola, mixed_tensors],
                         ids=lambda f: f.__name__)
@pytest.mark.parametrize("name", NAMES)
def test_converges(name, target):
  """contrib `test_optimizers`: optax's targets to rtol = atol = 3e-2 (here in 10k steps)."""
  params = _run(build(name, CONVERGENCE), name, target, jnp.float32)
  test_utils.assert_trees_all_close(params, target(jnp.float32)[1], rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("name", NAMES)
def test_extra_args_and_no_recompilation(name):
  """`test_optimizers_accept_extra_args`: an unexpected keyword reaches `update` harmlessly,
  and the second call of the jitted step neither retraces nor compiles."""
  opt = build(name)
  initial, _, objective = rosenbrock(jnp.float32)
  traces = []

  @jax.jit
  def step(params, state):
    traces.append(None)  # runs only while tracing
    grads = jax.grad(objective)(params)
    updates, state = opt.update(grads, state, params,
                                unexpected_extra_args_your_optimizer_doesnt_expect=1)
    return optax.apply_updates(params, updates), state

  params, state = step(initial, opt.init(initial))
  with test_utils.log_compilations() as compilation_logs:
    params, state = step(params, state)
  assert not compilation_logs, "the optimizer recompiles on the second call"
  assert len(traces) == 1
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))


@pytest.mark.parametrize("name", NAMES)
def test_inject_hyperparams_equivalence(name):
  """`test_optimizers_can_be_wrapped_in_inject_hyperparams`: the same update and state; the
  string, bool and None arguments stay static."""
  kwargs = dict(SETTINGS.get(name, DEFAULT))
  factory = OPTIMIZERS[name].build
  static = tuple(k for k, v in kwargs.items() if isinstance(v, (str, bool)) or v is None)
  opt = factory(**kwargs)
  opt_inject = optax.inject_hyperparams(factory, static_args=static)(**kwargs)
  params = [jnp.negative(jnp.ones((2, 3))), jnp.ones((2, 5, 2))]
  grads = [jnp.ones((2, 3)), jnp.negative(jnp.ones((2, 5, 2)))]
  updates, state = jax.jit(opt.update)(grads, opt.init(params), params)
  updates_inject, state_inject = jax.jit(opt_inject.update)(grads, opt_inject.init(params), params)
  test_utils.assert_trees_all_close(updates_inject, updates, rtol=1e-5)
  test_utils.assert_trees_all_close(state_inject.inner_state, state, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtypes", DTYPE_GROUPS,
                         ids=lambda group: "-".join(jnp.dtype(d).name for d in group))
@pytest.mark.parametrize("name", NAMES)
def test_updates_keep_the_params_dtype_and_state_types(name, dtypes):
  """`test_preserve_dtype` (bf16 and f32 in optax; f16 and f64 too) and
  `test_state_shape_dtype_shard_stability`: `lax.cond` between the update and the identity
  traces only if the updates have the params' dtype and the state keeps its types. One
  parabola per dtype in one tree (float64 with x64 on, the rest with it off)."""
  with jax.enable_x64(jnp.float64 in dtypes):
    opt = build(name)
    targets = {jnp.dtype(d).name: parabola(d) for d in dtypes}
    initial = {k: t[0] for k, t in targets.items()}
    objective = lambda p: sum(t[2](p[k]) for k, t in targets.items())
    updates, _ = jax.eval_shape(opt.update, jax.grad(objective)(initial), opt.init(initial),
                                initial)
    assert {k: u.dtype.name for k, u in updates.items()} == {k: k for k in targets}

    @jax.jit
    def step(params, state):
      grads = jax.grad(objective)(params)
      cond = jax.random.randint(jax.random.key(0), (), 0, 2) == 0  # defeats constant folding
      updates, state = jax.lax.cond(cond, lambda: opt.update(grads, state, params),
                                    lambda: (params, state))
      return optax.apply_updates(params, updates), state

    params, state = initial, opt.init(initial)
    for _ in range(2):
      params, new_state = step(params, state)
      assert {k: p.dtype.name for k, p in params.items()} == {k: k for k in targets}
      cond = jax.random.randint(jax.random.key(0), (), 0, 2) == 0
      state = jax.lax.cond(cond, lambda old, _: old, lambda _, new: new, state, new_state)


@pytest.mark.parametrize("name", NAMES)
def test_map_params(name):
  """`optax.tree.map_params` finds the params-shaped state leaves (optax's no-op map works,
  and a real map changes exactly those)."""
  opt = build(name)
  params = {"w": jnp.ones((3, 5)), "b": jnp.ones((5,))}
  state = opt.init(params)
  same = optax.tree.map_params(opt, lambda v: v, state)
  test_utils.assert_trees_all_equal(same, state)
  mapped = optax.tree.map_params(opt, lambda v: v + 7.0, state)
  changed = [(a.shape, a.dtype) for a, b in zip(jax.tree.leaves(mapped), jax.tree.leaves(state))
             if not np.array_equal(np.asarray(a), np.asarray(b))]
  assert changed and all(shape in ((3, 5), (5,)) for shape, _ in changed)


@pytest.mark.parametrize("name", NAMES)
def test_multisteps_gives_zero_updates_before_k(name):
  """`test_gradient_accumulation` (bf16 and f32 params, here in one tree): under
  `optax.MultiSteps(every_k_schedule=4)` the first update is exactly zero."""
  opt = optax.MultiSteps(build(name), every_k_schedule=4)
  params = {d: jnp.array([1.0, 2.0], d) for d in ("bfloat16", "float32")}
  grads = jax.grad(lambda p: sum(jnp.sum(x.astype(jnp.float32)**2) for x in p.values()))(params)
  updates, _ = jax.jit(opt.update)(grads, opt.init(params), params)
  test_utils.assert_trees_all_equal(updates, optax.tree.zeros_like(grads))


@pytest.mark.parametrize("name", NAMES)
def test_chain_after_global_norm_clipping(name):
  """`chain(clip_by_global_norm(1), opt)` is `opt` on the clipped gradients."""
  chained = optax.chain(optax.clip_by_global_norm(1.0), build(name))
  opt = build(name)
  params = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.ones((3,))}
  grads = {"w": jnp.full((2, 3), 4.0), "b": jnp.array([1.0, -2.0, 3.0])}
  assert optax.global_norm(grads) > 1.0

  @jax.jit
  def both(grads):
    clipped, _ = optax.clip_by_global_norm(1.0).update(grads, optax.EmptyState())
    return (chained.update(grads, chained.init(params), params)[0],
            opt.update(clipped, opt.init(params), params)[0])

  updates, expected = both(grads)
  test_utils.assert_trees_all_close(updates, expected, rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_schedule_as_learning_rate_equals_the_constant(name):
  """`test_optimizers_accept_learning_rate_schedule...`: 10 steps with
  `constant_schedule(1e-3)` land where 10 steps with 1e-3 do."""
  initial, _, objective = parabola(jnp.float32)
  results = []
  for learning_rate in (optax.constant_schedule(1e-3), 1e-3):
    opt = build(name, learning_rate=learning_rate)
    step = jax.jit(lambda p, s, opt=opt: opt.update(jax.grad(objective)(p), s, p))
    params, state = initial, opt.init(initial)
    for _ in range(10):
      updates, state = step(params, state)
      params = optax.apply_updates(params, updates)
    results.append(params)
  test_utils.assert_trees_all_close(results[0], results[1])
  assert not np.allclose(results[0], initial)


@pytest.mark.parametrize("name", NAMES)
def test_init_with_abstract_input(name):
  """sharding_test `test_init_with_abstract_input`."""
  state = build(name).init(jax.ShapeDtypeStruct(shape=(2, 4, 8), dtype=jnp.float32))
  assert state is not None


@pytest.mark.parametrize("name", NAMES)
def test_empty_leaves(name):
  """A `zeros((0,))` leaf beside a real one: init, update and apply work; the other leaf moves."""
  opt = build(name)
  params = {"empty": jnp.zeros((0,)), "w": jnp.ones((2, 3))}
  grads = {"empty": jnp.zeros((0,)), "w": jnp.full((2, 3), 0.5)}
  updates, state = jax.jit(opt.update)(grads, opt.init(params), params)
  new = optax.apply_updates(params, updates)
  assert new["empty"].shape == (0,) and updates["empty"].shape == (0,)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves((new, state)))
  assert np.all(np.asarray(new["w"]) < 1.0)


@pytest.mark.parametrize("name", NAMES)
def test_complex_params_work_or_raise_clearly(name):
  """alias_test's complex64 parabola converges, or `init` refuses complex params with a
  ValueError that says so (no silent loss of the imaginary part)."""
  opt = build(name)
  initial, final, _ = parabola(jnp.complex64)
  try:
    opt.init(initial)
  except ValueError as e:
    assert "complex64" in str(e)
    return
  params = _run(opt, name, parabola, jnp.complex64, conjugate=True)
  test_utils.assert_trees_all_close(params, final, rtol=3e-2, atol=3e-2)


# XLA's default CPU compile, in place of the suite's fast one (conftest.FAST_COMPILE):
# bit-exactness between two different programs is a property of that compile.
XLA_DEFAULT_CPU = {"xla_backend_optimization_level": 3, "xla_cpu_use_fusion_emitters": True}


@pytest.mark.parametrize("name", NAMES)
def test_apply_updates_on_own_parameter_representation(name):
  """`optax.apply_updates(params, updates)` applies the step to the params as the optimizer
  keeps them. Float params: `p + u` in the params' dtype. `QuantizedArray` params (ECO): the
  codes and scales land bit for bit where the same run holding float params lands (exact
  there with power-of-two scales), the state agrees, and a zero update (a rejected step)
  leaves them unchanged."""
  key = jax.random.PRNGKey(0)
  grads_at = lambda t: {"w": jax.random.normal(jax.random.fold_in(key, t), (8, 16)),
                        "b": jnp.full((16,), 0.5 - t)}
  dense = {"w": jax.random.normal(key, (8, 16)), "b": jnp.linspace(-1.0, 1.0, 16)}
  if name not in QUANTIZED:
    params, grads = (jax.tree.map(lambda x: x.astype(jnp.bfloat16), tree)
                     for tree in (dense, grads_at(0)))
    opt = build(name)
    updates, _ = jax.jit(opt.update)(grads, opt.init(params), params)
    new = optax.apply_updates(params, updates)
    for p, u, n in zip(*(jax.tree.leaves(t) for t in (params, updates, new))):
      assert n.dtype == jnp.bfloat16
      np.testing.assert_array_equal(np.asarray(n), np.asarray(p + u))
    return
  quantizer = QUANTIZED[name]
  opt = build(name, quantizer=quantizer)
  held = {"quantized": qz.quantize_tree(dense, quantizer)}
  held["float"] = qz.dequantize_tree(held["quantized"])
  states = {k: opt.init(p) for k, p in held.items()}
  update = jax.jit(opt.update, compiler_options=XLA_DEFAULT_CPU)
  storage = [(x.shape, x.dtype) for x in jax.tree.leaves(held["quantized"])]
  for t in range(3):
    for k in held:
      updates, states[k] = update(grads_at(t), states[k], held[k])
      held[k] = optax.apply_updates(held[k], updates)
    assert isinstance(held["quantized"]["w"], qz.QuantizedArray)
    assert [(x.shape, x.dtype) for x in jax.tree.leaves(held["quantized"])] == storage
    test_utils.assert_trees_all_equal(qz.dequantize_tree(held["quantized"]), held["float"])
    test_utils.assert_trees_all_equal(states["quantized"], states["float"])
  assert not np.array_equal(np.asarray(held["float"]["w"]), np.asarray(
      qz.dequantize_tree(qz.quantize_tree(dense, quantizer))["w"]))  # the weights did move
  updates, _ = update(grads_at(3), states["quantized"], held["quantized"])
  kept = optax.apply_updates(held["quantized"], optax.tree.zeros_like(updates))
  test_utils.assert_trees_all_equal(kept, held["quantized"])


_SHARDING_SCRIPT = textwrap.dedent("""
  import json, sys
  import jax, jax.numpy as jnp
  from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
  from trainlab.training.optimizers import OPTIMIZERS
  assert jax.device_count() == 8, jax.devices()
  settings, default = json.loads(sys.argv[1]), json.loads(sys.argv[2])
  mesh = jax.make_mesh((8,), ("x",), axis_types=(AxisType.Explicit,))
  types = lambda tree: jax.tree.map(lambda x: str(jax.typeof(x)), tree)
  results = {}
  for name, entry in sorted(OPTIMIZERS.items()):
    kwargs = dict(settings.get(name, default))
    opt = entry.build(kwargs.pop("learning_rate"), **kwargs)
    try:
      with jax.set_mesh(mesh):
        params = jnp.zeros((2, 8, 4), jnp.float16, out_sharding=NamedSharding(mesh, P(None, "x")))
        state0 = opt.init(params)
        _, state1 = opt.update(params, state0, params)
        _, state3 = jax.jit(opt.update)(params, state0, params)
        checks = {"init -> update": (types(state0), types(state1)),
                  "init -> jit(init)": (types(state0), types(jax.jit(opt.init)(params))),
                  "update -> jit(update)": (types(state1), types(state3))}
      bad = {k: v for k, v in checks.items() if v[0] != v[1]}
      results[name] = "ok" if not bad else repr(bad)[:2000]
    except Exception as e:  # reported per optimizer by the test
      results[name] = f"{type(e).__name__}: {e}"[:2000]
  print("RESULTS " + json.dumps(results))
""")


def test_state_sharding_stable_on_8_devices():
  """sharding_test `test_state_sharding_type_init_match_update` and `..._preserved_with_jit`
  for every entry, in one subprocess with 8 host devices: f16 params `(2, 8, 4)` sharded
  `P(None, 'x')` on an explicit mesh; the state's types (shape, dtype, sharding) from
  `init` equal those after `update`, eager and jitted."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count=8")
  root = pathlib.Path(__file__).resolve().parents[1]
  out = subprocess.run([sys.executable, "-c", _SHARDING_SCRIPT, json.dumps(SETTINGS),
                        json.dumps(DEFAULT)], env=env, cwd=root, capture_output=True, text=True,
                       timeout=600, check=False)
  lines = [l for l in out.stdout.splitlines() if l.startswith("RESULTS ")]
  assert out.returncode == 0 and lines, out.stderr[-3000:]
  results = json.loads(lines[-1][len("RESULTS "):])
  assert set(results) == set(NAMES)
  assert {n: r for n, r in results.items() if r != "ok"} == {}
