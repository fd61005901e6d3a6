"""Schedules against float64 NumPy transcriptions and the authors' own code.

Expected values come from (a) the `_np_*` functions below, written per step from the
formulas in shared/reference/algorithms.md and the papers, and (b) numbers produced by the
official code in tests/testdata/schedules_*.json (repository, commit and command inside).
Exact comparisons run with x64 enabled so that 1e-6 relative is meaningful.
"""

from __future__ import annotations

import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trainlab.algorithms import schedules

TESTDATA = pathlib.Path(__file__).parent / "testdata"
RTOL = 1e-6


def _load(name: str) -> dict:
  return json.loads((TESTDATA / name).read_text())


def _probe_steps(boundaries, total):
  """Every boundary, the step before and after, a coarse grid, and steps past the end."""
  steps = set(range(0, total + 1, max(1, total // 10)))
  for b in list(boundaries) + [total]:
    steps.update({b - 1, b, b + 1})
  steps.update({total + 7, 3 * total})
  return sorted(s for s in steps if s >= 0)


def _values64(make_schedule, steps):
  """Builds and evaluates a schedule with x64 on, so float64 all the way."""
  with jax.enable_x64(True):
    schedule = make_schedule()
    return np.array([float(schedule(s)) for s in steps])


def _curve(schedule):
  """The schedule over an array of steps, compiled once."""
  return jax.jit(jax.vmap(schedule))


def _assert_close(actual, expected, scale):
  np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=1e-12 * scale)


# ---------------------------------------------------------------- NumPy transcriptions


def _np_wsd(t, peak, total, warmup, decay, shape, init, end, half_life):
  t = min(t, total)
  stable_end = total - decay
  if t < warmup:
    return init + (peak - init) * t / warmup
  if t < stable_end:
    return peak
  x = (t - stable_end) / decay
  if shape == "exponential":
    return end + (peak - end) * 0.5 ** ((t - stable_end) / half_life)
  f = {
      "linear": 1.0 - x,
      "cosine": 0.5 * (1.0 + math.cos(math.pi * x)),
      "1-sqrt": 1.0 - math.sqrt(x),
      "square": 1.0 - x * x,
      "mirror-cosine": 2.0 * (1.0 - x) - 0.5 * (1.0 + math.cos(math.pi * x)),
  }[shape]
  return end + (peak - end) * f


def _np_power(t, max_value, a, b, batch_size, tokens_per_step, total, warmup, decay):
  def eta(n):
    return max_value if n == 0 else min(max_value, batch_size * a * float(n) ** b)

  t = min(t, total)
  if t < warmup:
    return t / warmup * eta(warmup * tokens_per_step)
  if t < total - decay:
    return eta(t * tokens_per_step)
  x = (t - (total - decay)) / decay
  f = math.e / (math.e - 1.0) * math.exp(-x) - 1.0 / (math.e - 1.0)
  return f * eta((total - decay) * tokens_per_step)


def _np_infinite(t, peak, const, end, total, warmup, cooldown, anneal, shape, timescale):
  if t >= total:
    return end if anneal else const
  if t < warmup:
    return peak * t / warmup
  if t < warmup + cooldown:
    x = (t - warmup) / cooldown
    if shape == "cosine":
      return const + (peak - const) * (1.0 + math.cos(math.pi * x)) / 2.0
    if shape == "linear":
      return peak + (const - peak) * x
    h = lambda y: 1.0 / math.sqrt(1.0 + timescale * y) - 1.0
    return peak + (const - peak) * h(x) / h(1.0)
  if t < total - anneal:
    return const
  return const * (end / const) ** ((t - (total - anneal)) / anneal)


def _np_repeated_cosine(t, peak, end, per_cycle, warmup, cycles, rewarm_from):
  if t >= per_cycle * cycles:
    return end
  cycle, local = divmod(t, per_cycle)
  if local < warmup:
    start = end if rewarm_from == "end" and cycle > 0 else 0.0
    return start + (peak - start) * local / warmup
  x = (local - warmup) / (per_cycle - warmup)
  return end + (peak - end) * 0.5 * (1.0 + math.cos(math.pi * x))


def _np_uba(t, peak, total, phi, warmup, init, end):
  """The tan^2 form of the UBA formula (algebraically equal to the 2u / (phi + (2 - phi)u) form)."""
  if t < warmup:
    return init + (peak - init) * t / warmup
  if t >= total:
    return end
  p = (t - warmup) / (total - warmup)
  return end + (peak - end) / (1.0 + 0.5 * phi * math.tan(math.pi * p / 2.0) ** 2)


# ---------------------------------------------------------------- WSD

WSD_SHAPES = ["linear", "cosine", "1-sqrt", "square", "mirror-cosine", "exponential"]


@pytest.mark.parametrize("shape", WSD_SHAPES)
@pytest.mark.parametrize("total,warmup,decay_kwargs,decay,init,end,half_life", [
    (1000, 100, {"decay_steps": 200}, 200, 0.01, 0.0, None),
    (997, 0, {"decay_fraction": 0.15}, 150, 0.0, 0.1, None),  # round(149.55) = 150
    (50, 5, {"decay_steps": 45}, 45, 0.0, 0.05, 7.5),  # no stable phase
])
def test_wsd_matches_numpy(shape, total, warmup, decay_kwargs, decay, init, end, half_life):
  if shape != "exponential":
    half_life_arg, half_life = None, None
  else:
    half_life_arg = half_life
    half_life = decay / 5 if half_life is None else half_life
  steps = _probe_steps([warmup, total - decay], total)
  actual = _values64(lambda: schedules.wsd_schedule(
      2.5, total, warmup_steps=warmup, decay_shape=shape, init_value=init, end_value=end,
      half_life=half_life_arg, **decay_kwargs), steps)
  expected = [_np_wsd(t, 2.5, total, warmup, decay, shape, init, end, half_life) for t in steps]
  _assert_close(actual, expected, 2.5)


def test_wsd_decay_steps_win_over_fraction_and_holds():
  with jax.enable_x64(True):
    by_steps = schedules.wsd_schedule(1.0, 100, decay_steps=30, decay_fraction=0.5,
                                      decay_shape="linear")
    assert float(by_steps(69)) == 1.0 and float(by_steps(70)) == 1.0
    assert float(by_steps(85)) == pytest.approx(0.5, rel=RTOL)
    exponential = schedules.wsd_schedule(1.0, 100, decay_steps=50, decay_shape="exponential")
    at_end = float(exponential(100))
    assert at_end == pytest.approx(0.5**5, rel=RTOL)  # default half-life D / 5
    assert [float(exponential(t)) for t in (101, 1000, 10**6)] == [at_end] * 3


EPFML_SHAPES = {"linear": "linear", "cosine": "cosine", "miror_cosine": "mirror-cosine",
                "square": "square", "sqrt": "1-sqrt"}


def test_wsd_matches_epfml_official_code():
  data = _load("schedules_epfml_wsd.json")
  assert data["commit"] == "17e78d600a7054bc6609a5ca6d050d141d4ad79e"
  cases = data["cases"]["epfml_wsd"]
  assert len(cases) == 15
  for case in cases:
    n, fract = case["n_iterations"], case["fract_decay"]
    make = lambda: schedules.wsd_schedule(
        1.0, n, warmup_steps=case["n_warmup"], decay_steps=case["n_anneal_steps"],
        decay_shape=EPFML_SHAPES[case["decay_type"]], init_value=1.0 / case["init_div_factor"],
        end_value=case["final_lr_factor"])
    _assert_close(_values64(make, case["steps"]), case["values"], 1.0)
    if round(fract * n) == case["n_anneal_steps"]:  # Same decay length via the fraction.
      make_fraction = lambda: schedules.wsd_schedule(
          1.0, n, warmup_steps=case["n_warmup"], decay_fraction=fract,
          decay_shape=EPFML_SHAPES[case["decay_type"]], init_value=1.0 / case["init_div_factor"],
          end_value=case["final_lr_factor"])
      _assert_close(_values64(make_fraction, case["steps"]), case["values"], 1.0)


# ---------------------------------------------------------------- Power


@pytest.mark.parametrize("total,warmup,decay,batch_size,tokens_per_step", [
    (1000, 100, 100, 16, 16 * 1024),  # crosses from max_value into the power law
    (600, 0, 300, 512, 512 * 2048),  # starts at step 0 with n = 0, tokens**b = inf
    (300, 50, 250, 4, 4096),  # no stable phase
])
def test_power_matches_numpy(total, warmup, decay, batch_size, tokens_per_step):
  args = dict(max_value=0.02, a=4.0, b=-0.51, batch_size=batch_size,
              tokens_per_step=tokens_per_step)
  steps = _probe_steps([warmup, total - decay], total)
  actual = _values64(lambda: schedules.power_schedule(
      total_steps=total, warmup_steps=warmup, decay_steps=decay, **args), steps)
  expected = [_np_power(t, total=total, warmup=warmup, decay=decay, **args) for t in steps]
  _assert_close(actual, expected, 0.02)
  assert actual[-1] == 0.0  # exponential decay reaches 0 at total_steps and holds it


def test_power_registered_peak_is_max_value():
  kwargs = dict(a=4.0, b=-0.51, batch_size=16, tokens_per_step=16384, warmup_steps=100,
                decay_steps=100)
  built = schedules.build_schedule("power", 0.01, 1000, **kwargs)
  direct = schedules.power_schedule(0.01, total_steps=1000, **kwargs)
  steps = jnp.arange(0, 1100, 7)
  np.testing.assert_array_equal(_curve(built)(steps), _curve(direct)(steps))
  assert float(built(150)) == pytest.approx(0.01, rel=1e-6)  # clipped at max_value


# ---------------------------------------------------------------- Infinite LR

INFINITE_SHAPES = ["cosine", "inv-sqrt", "linear"]


@pytest.mark.parametrize("shape", INFINITE_SHAPES)
@pytest.mark.parametrize("total,warmup,cooldown,anneal", [
    (1000, 10, 300, 190), (500, 0, 0, 100), (400, 40, 360, 0), (200, 20, 80, 100)])
def test_infinite_lr_matches_numpy(shape, total, warmup, cooldown, anneal):
  args = (3e-4, 1.65e-4, 3e-5)
  steps = _probe_steps([warmup, warmup + cooldown, total - anneal], total)
  actual = _values64(lambda: schedules.infinite_lr_schedule(
      *args, total, warmup, cooldown, anneal, cooldown_shape=shape, timescale=10.0), steps)
  expected = [_np_infinite(t, *args, total, warmup, cooldown, anneal, shape, 10.0) for t in steps]
  _assert_close(actual, expected, 3e-4)


NEOX_SHAPES = {"cosine_cooldown_infinite": "cosine", "inverse_sqrt_infinite": "inv-sqrt",
               "constant_infinite": "linear"}


def test_infinite_lr_matches_gpt_neox_official_code():
  data = _load("schedules_gpt_neox_inf_lr.json")
  assert data["commit"] == "93552df8373df034b39573cf71d02772c868f5e9"
  cases = data["cases"]["neox_infinite"]
  assert len(cases) == 6
  for case in cases:
    kw, total = case["kwargs"], case["kwargs"]["total_iters"]
    warmup = kw["warmup_iter"]
    # gpt-neox counts both percentages from the end of warmup.
    make = lambda: schedules.infinite_lr_schedule(
        kw["start_lr"], kw["constant_lr"], kw["min_lr"], total, warmup,
        cooldown_steps=case["cooldown_iter"], anneal_steps=total - warmup - case["constant_iter"],
        cooldown_shape=NEOX_SHAPES[kw["decay_style"]], timescale=kw["timescale"])
    steps = np.array(case["steps"])
    official = np.array(case["values"])
    ours = _values64(make, steps)
    inside = steps < total
    _assert_close(ours[inside], official[inside], kw["start_lr"])
    # Official code wraps around (step % total_iters) past the end; we hold end_value.
    assert np.all(official[~inside] > 2 * kw["min_lr"])
    np.testing.assert_allclose(ours[~inside], kw["min_lr"], rtol=RTOL)


MAE_SHAPES = NEOX_SHAPES


def test_infinite_lr_matches_mae1_official_code():
  data = _load("schedules_mae1_infinite.json")
  assert data["commit"] == "36ed4511887ea255853a59cecb6223b935138d2b"
  cases = data["cases"]["mae_infinite"]
  assert len(cases) == 8
  for case in cases:
    kw, total = case["kwargs"], case["kwargs"]["total_iters"]
    first_task = kw["current_task"] == 0
    warmup = case["warmup_iters"] if first_task else 0
    cooldown = case["cooldown_end"] - warmup if first_task else 0  # MAE-1's ends are absolute
    make = lambda: schedules.infinite_lr_schedule(
        kw["start_lr"], kw["constant_lr"], kw["min_lr"], total, warmup, cooldown,
        anneal_steps=total - case["constant_end"], cooldown_shape=MAE_SHAPES[kw["decay_style"]],
        timescale=kw["timescale"])
    steps = np.array(case["steps"])
    official = np.array(case["values"])
    ours = _values64(make, steps)
    inside = steps <= total
    _assert_close(ours[inside], official[inside], kw["start_lr"])
    # MAE-1 keeps decaying below min_lr past the end; we hold it.
    assert np.all(official[~inside] < kw["min_lr"])
    np.testing.assert_allclose(ours[~inside], kw["min_lr"], rtol=RTOL)


# ---------------------------------------------------------------- Repeated cosine


@pytest.mark.parametrize("rewarm_from", ["zero", "end"])
@pytest.mark.parametrize("per_cycle,warmup,cycles", [(400, 40, 3), (250, 0, 2), (100, 99, 1)])
def test_repeated_cosine_matches_numpy(rewarm_from, per_cycle, warmup, cycles):
  total = per_cycle * cycles
  bounds = [c * per_cycle + o for c in range(cycles) for o in (0, warmup)]
  steps = _probe_steps(bounds, total)
  actual = _values64(lambda: schedules.repeated_cosine_schedule(
      1e-3, 1e-5, per_cycle, warmup, cycles, rewarm_from), steps)
  expected = [_np_repeated_cosine(t, 1e-3, 1e-5, per_cycle, warmup, cycles, rewarm_from)
              for t in steps]
  _assert_close(actual, expected, 1e-3)


def test_repeated_cosine_matches_gpt_neox_cosine_inf():
  cases = _load("schedules_gpt_neox_inf_lr.json")["cases"]["neox_cosine_inf"]
  assert len(cases) == 2
  for case in cases:
    kw, total = case["kwargs"], case["kwargs"]["total_iters"]
    make = lambda: schedules.repeated_cosine_schedule(
        kw["start_lr"], kw["min_lr"], case["steps_per_cycle"], kw["warmup_iter"],
        kw["num_repeats"], rewarm_from="end")
    steps = np.array(case["steps"])
    ours = _values64(make, steps)
    inside = steps < total
    _assert_close(ours[inside], np.array(case["values"])[inside], kw["start_lr"])
    # Past the end gpt-neox starts a new cycle; we hold min_lr.
    np.testing.assert_allclose(ours[~inside], kw["min_lr"], rtol=RTOL)


def test_repeated_cosine_matches_mae1_per_task_cosine():
  cases = _load("schedules_mae1_infinite.json")["cases"]["mae_cosine_per_task"]
  assert len(cases) == 2
  for case in cases:
    make = lambda: schedules.repeated_cosine_schedule(
        case["lr"], case["lr"] * case["min_lr_ratio"], case["steps_per_cycle"],
        case["warmup_steps"], case["num_tasks"], rewarm_from="zero")
    _assert_close(_values64(make, case["steps"]), case["values"], case["lr"])


def test_repeated_cosine_builder_derives_cycle_length():
  built = schedules.build_schedule("repeated_cosine", 1.0, 900, num_cycles=3, warmup_steps=30,
                                   end_value=0.1, rewarm_from="end")
  direct = schedules.repeated_cosine_schedule(1.0, 0.1, 300, 30, 3, "end")
  steps = jnp.arange(0, 1000, 3)
  np.testing.assert_array_equal(_curve(built)(steps), _curve(direct)(steps))
  with pytest.raises(ValueError, match="multiple of num_cycles"):
    schedules.build_schedule("repeated_cosine", 1.0, 1000, num_cycles=3)


# ---------------------------------------------------------------- UBA


@pytest.mark.parametrize("phi", [0.1, 0.5, 1.0, 2.0, 5.0, 50.0])
@pytest.mark.parametrize("total,warmup,init,end", [(1000, 0, 0.0, 0.0), (300, 30, 0.1, 0.05)])
def test_uba_matches_numpy(phi, total, warmup, init, end):
  steps = _probe_steps([warmup], total)
  actual = _values64(lambda: schedules.uba_schedule(
      2.0, total, phi, warmup_steps=warmup, init_value=init, end_value=end), steps)
  expected = [_np_uba(t, 2.0, total, phi, warmup, init, end) for t in steps]
  _assert_close(actual, expected, 2.0)


def test_uba_phi_2_is_optax_cosine_at_every_step():
  steps = jnp.arange(0, 1200)
  uba = _curve(schedules.uba_schedule(0.3, 1000, phi=2.0))(steps)
  cosine = _curve(optax.cosine_decay_schedule(0.3, 1000))(steps)
  np.testing.assert_array_equal(uba, cosine)  # bitwise: the budget study relies on it
  uba = _curve(schedules.uba_schedule(0.3, 1000, phi=2.0, end_value=0.03))(steps)
  cosine = _curve(optax.cosine_decay_schedule(0.3, 1000, alpha=0.1))(steps)
  np.testing.assert_array_equal(uba, cosine)
  uba = _curve(schedules.uba_schedule(0.3, 1000, 2.0, warmup_steps=100, init_value=0.01,
                                        end_value=0.03))(steps)
  cosine = _curve(optax.warmup_cosine_decay_schedule(0.01, 0.3, 100, 1000, end_value=0.03))(
      steps)
  np.testing.assert_allclose(uba, cosine, rtol=1e-6, atol=1e-7 * 0.3)


@pytest.mark.parametrize("warmup", [0, 50])
def test_uba_monotone_and_ordered_around_cosine(warmup):
  total, end = 500, 0.01
  with jax.enable_x64(True):
    steps = jnp.arange(warmup, total + 1)
    values = {phi: np.asarray(_curve(schedules.uba_schedule(
        1.0, total, phi, warmup_steps=warmup, end_value=end))(steps)) for phi in
              (0.2, 0.5, 1.0, 2.0, 3.0, 5.0)}
  for phi, v in values.items():
    assert np.all(np.diff(v) < 0), phi  # strictly decreasing after warmup
    assert v[0] == pytest.approx(1.0) and v[-1] == pytest.approx(end, rel=RTOL)
  inner = slice(1, -1)
  cosine = values[2.0][inner]
  for phi in (0.2, 0.5, 1.0):
    assert np.all(values[phi][inner] > cosine), phi
  for phi in (3.0, 5.0):
    assert np.all(values[phi][inner] < cosine), phi
  assert np.all(values[0.2][inner] > values[1.0][inner])  # smaller phi, closer to constant


def test_uba_holds_end_value():
  schedule = schedules.uba_schedule(1.0, 100, 5.0, warmup_steps=10, end_value=0.02)
  for t in (100, 101, 1000, 2**30):
    assert float(schedule(t)) == pytest.approx(0.02, rel=1e-6)


# ---------------------------------------------------------------- Bad arguments


@pytest.mark.parametrize("make,match", [
    (lambda: schedules.uba_schedule(1.0, 100, phi=0.0), "phi"),
    (lambda: schedules.uba_schedule(1.0, 100, phi=-1.0), "phi"),
    (lambda: schedules.uba_schedule(1.0, 100, 1.0, warmup_steps=100), "warmup_steps"),
    (lambda: schedules.wsd_schedule(1.0, 100, warmup_steps=50, decay_steps=60), "total_steps"),
    (lambda: schedules.wsd_schedule(1.0, 100, decay_shape="sqrt"), "decay_shape"),
    (lambda: schedules.wsd_schedule(1.0, 100, decay_steps=0), "decay_steps"),
    (lambda: schedules.wsd_schedule(1.0, 100, decay_fraction=1.5), "decay_fraction"),
    (lambda: schedules.wsd_schedule(1.0, 100, warmup_steps=-1), "warmup_steps"),
    (lambda: schedules.wsd_schedule(1.0, 100, decay_shape="exponential", half_life=0), "half_life"),
    (lambda: schedules.wsd_schedule(1.0, 100, decay_shape="linear", half_life=5), "half_life"),
    (lambda: schedules.power_schedule(0.02, 4, -0.5, 8, 8, 100, 60, 50), "total_steps"),
    (lambda: schedules.power_schedule(-0.02, 4, -0.5, 8, 8, 100, 10, 10), "max_value"),
    (lambda: schedules.power_schedule(0.02, 4, -0.5, 0, 8, 100, 10, 10), "batch_size"),
    (lambda: schedules.power_schedule(0.02, 4, -0.5, 8, 8, 100, 10, 10, "step"), "decay_shape"),
    (lambda: schedules.infinite_lr_schedule(1.0, 0.5, 0.1, 100, 10, 50, 50), "total_steps"),
    (lambda: schedules.infinite_lr_schedule(1.0, 0.5, 0.0, 100, 10, 20, 20), "end_value"),
    (lambda: schedules.infinite_lr_schedule(1.0, 0.5, 0.1, 100, 10, 20, 20, "exp"),
     "cooldown_shape"),
    (lambda: schedules.infinite_lr_schedule(1.0, 0.5, 0.1, 100, -1, 20, 20), "warmup_steps"),
    (lambda: schedules.repeated_cosine_schedule(1.0, 0.0, 100, 100, 2), "warmup_steps"),
    (lambda: schedules.repeated_cosine_schedule(1.0, 0.0, 100, 10, 0), "num_cycles"),
    (lambda: schedules.repeated_cosine_schedule(1.0, 0.0, 100, 10, 2, "peak"), "rewarm_from"),
    (lambda: schedules.build_schedule("wsd_typo", 1.0, 100), "unknown schedule"),
])
def test_bad_arguments_raise_at_construction(make, match):
  with pytest.raises(ValueError, match=match):
    make()


# ---------------------------------------------------------------- jit, step types, retracing

EXAMPLES = {
    "wsd": dict(warmup_steps=20, decay_fraction=0.2, init_value=0.01, end_value=0.05),
    "power": dict(a=4.0, b=-0.51, batch_size=16, tokens_per_step=16384, warmup_steps=20,
                  decay_steps=40),
    "infinite_lr": dict(constant_value=0.5, end_value=0.05, warmup_steps=10, cooldown_steps=60,
                        anneal_steps=50, cooldown_shape="inv-sqrt"),
    "repeated_cosine": dict(num_cycles=2, warmup_steps=10, end_value=0.1, rewarm_from="end"),
    "uba": dict(phi=0.5, warmup_steps=10, end_value=0.02),
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_jit_agrees_and_step_types(name):
  schedule = schedules.build_schedule(name, 1.0, 200, **EXAMPLES[name])
  jitted = jax.jit(schedule)
  for t in (0, 1, 9, 10, 11, 99, 100, 101, 159, 160, 199, 200, 201, 5000):
    eager = float(schedule(t))
    assert np.isfinite(eager)
    assert float(schedule(np.int64(t))) == eager
    assert float(schedule(jnp.int32(t))) == eager
    np.testing.assert_allclose(float(jitted(jnp.int32(t))), eager, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_no_retrace_across_steps(name):
  schedule = schedules.build_schedule(name, 1.0, 200, **EXAMPLES[name])
  traces = []

  @jax.jit
  def learning_rate(step):
    traces.append(step)  # Runs only while tracing.
    return schedule(step)

  for t in (0, 7, 55, 123, 200, 999):
    learning_rate(jnp.int32(t))
  assert len(traces) == 1
  for t in (3, 150, 4000):
    learning_rate(t)  # Python ints: one (weakly typed) trace for all of them.
  assert len(traces) == 2


def test_inject_hyperparams_accepts_schedules():
  schedule = schedules.build_schedule("wsd", 0.1, 10, decay_steps=5, decay_shape="linear")
  opt = optax.inject_hyperparams(optax.sgd)(learning_rate=schedule)
  params = jnp.ones(3)
  state = opt.init(params)
  lrs = []
  for _ in range(8):
    _, state = opt.update(jnp.ones(3), state, params)
    lrs.append(float(state.hyperparams["learning_rate"]))  # The rate this update used.
  np.testing.assert_allclose(lrs, [0.1] * 6 + [0.08, 0.06], rtol=1e-6)


def test_gallery_draws_every_registered_schedule(tmp_path):
  from launch import plot_schedules

  out = tmp_path / "schedules.png"
  skipped = plot_schedules.plot_all(out, total_steps=100)
  assert skipped == []
  assert set(plot_schedules.EXAMPLES) >= set(schedules.SCHEDULES)
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------- step decay, linear, OneCycle (UBA baselines)


def _np_step_decay(t, peak, total, boundaries, factor, warmup, init):
  t = min(t, total)
  if t < warmup:
    return init + (peak - init) * t / warmup
  return peak * factor ** sum(t >= round(b * total) for b in boundaries)


def _np_linear(t, peak, total, warmup, init, end):
  t = min(t, total)
  if t < warmup:
    return init + (peak - init) * t / warmup
  return peak + (end - peak) * (t - warmup) / (total - warmup)


def _np_onecycle(t, peak, total, pct_start, div_factor, final_div_factor):
  """Smith & Topin (arXiv 1708.07120): cosine rise over int(pct_start T) steps, cosine fall."""
  t = min(t, total)
  start, low = peak / div_factor, peak / (div_factor * final_div_factor)
  anneal = lambda a, b, x: b + (a - b) * 0.5 * (1.0 + math.cos(math.pi * x))
  rise = int(pct_start * total)
  if t <= rise:
    return anneal(start, peak, t / rise)
  return anneal(peak, low, (t - rise) / (total - rise))


@pytest.mark.parametrize("total,boundaries,factor,warmup,init", [
    (100, (0.5, 0.75), 0.1, 0, 0.0),
    (37, (0.5, 0.75), 0.1, 5, 0.01),
    (200, (0.3,), 0.5, 20, 0.0),
    (10, (0.52, 0.55), 0.1, 0, 0.0),  # Both boundaries round to step 5: x0.01 there.
])
def test_step_decay_matches_numpy(total, boundaries, factor, warmup, init):
  steps = _probe_steps([warmup] + [round(b * total) for b in boundaries], total)
  actual = _values64(lambda: schedules.build_schedule(
      "step_decay", 2.0, total, boundaries=boundaries, factor=factor, warmup_steps=warmup,
      init_value=init), steps)
  expected = [_np_step_decay(t, 2.0, total, boundaries, factor, warmup, init) for t in steps]
  _assert_close(actual, expected, 2.0)


@pytest.mark.parametrize("total,warmup,init,end", [(100, 0, 0.0, 0.0), (37, 5, 0.01, 0.1)])
def test_linear_matches_numpy(total, warmup, init, end):
  steps = _probe_steps([warmup], total)
  actual = _values64(lambda: schedules.build_schedule(
      "linear", 2.0, total, warmup_steps=warmup, init_value=init, end_value=end), steps)
  expected = [_np_linear(t, 2.0, total, warmup, init, end) for t in steps]
  _assert_close(actual, expected, 2.0)


@pytest.mark.parametrize("total,pct_start,div_factor,final_div_factor", [
    (100, 0.3, 25.0, 1e4), (37, 0.25, 10.0, 100.0)])
def test_onecycle_matches_numpy(total, pct_start, div_factor, final_div_factor):
  steps = _probe_steps([int(pct_start * total)], total)
  actual = _values64(lambda: schedules.build_schedule(
      "onecycle", 2.0, total, pct_start=pct_start, div_factor=div_factor,
      final_div_factor=final_div_factor), steps)
  expected = [_np_onecycle(t, 2.0, total, pct_start, div_factor, final_div_factor)
              for t in steps]
  _assert_close(actual, expected, 2.0)


@pytest.mark.parametrize("make,arg", [
    (lambda: schedules.step_decay_schedule(1.0, 100, boundaries=(0.75, 0.5)), "boundaries"),
    (lambda: schedules.step_decay_schedule(1.0, 100, boundaries=(1.0,)), "boundaries"),
    (lambda: schedules.step_decay_schedule(1.0, 100, factor=0.0), "factor"),
    (lambda: schedules.step_decay_schedule(1.0, 100, warmup_steps=60), "warmup_steps"),
    (lambda: schedules.linear_schedule(1.0, 100, warmup_steps=100), "warmup_steps"),
    (lambda: schedules.onecycle_schedule(1.0, 100, pct_start=1.0), "pct_start"),
    (lambda: schedules.onecycle_schedule(1.0, 0), "total_steps"),
])
def test_baseline_schedules_reject_bad_arguments(make, arg):
  with pytest.raises(ValueError, match=arg):
    make()


# ------------------------------------------------ giant step counts (optax's own test)

GIANT = 10**10  # total_steps; optax's `test_with_giant_int_steps` uses decay_steps=int(1e10)
E8 = 10**8
GIANT_CASES = {  # name: (builder kwargs, float64 NumPy value at step t)
    "constant": (dict(warmup_steps=4 * 10**9, init_value=0.1),
                 lambda t: 0.1 + 0.9 * min(t, 4e9) / 4e9),
    "warmup_cosine": (dict(warmup_steps=5 * E8, end_value=0.1),
                      lambda t: t / 5e8 if t < 5e8 else 0.1 + 0.9 * 0.5 * (
                          1 + math.cos(math.pi * (min(t, GIANT) - 5e8) / (GIANT - 5e8)))),
    "wsd": (dict(warmup_steps=5 * E8, decay_fraction=0.95, decay_shape="1-sqrt"),
            lambda t: _np_wsd(t, 1.0, GIANT, 5 * E8, 95 * E8, "1-sqrt", 0.0, 0.0, None)),
    "power": (dict(a=4.0, b=-0.51, batch_size=16, tokens_per_step=16384, warmup_steps=E8,
                   decay_steps=80 * E8),
              lambda t: _np_power(t, 1.0, 4.0, -0.51, 16, 16384, GIANT, E8, 80 * E8)),
    "infinite_lr": (dict(constant_value=0.5, end_value=0.05, warmup_steps=E8,
                         cooldown_steps=30 * E8, anneal_steps=30 * E8),
                    lambda t: _np_infinite(t, 1.0, 0.5, 0.05, GIANT, E8, 30 * E8, 30 * E8,
                                           "cosine", 10.0)),
    "repeated_cosine": (dict(num_cycles=2, warmup_steps=E8, end_value=0.1),
                        lambda t: _np_repeated_cosine(t, 1.0, 0.1, GIANT // 2, E8, 2, "zero")),
    "uba": (dict(phi=0.5, warmup_steps=E8),
            lambda t: _np_uba(t, 1.0, GIANT, 0.5, E8, 0.0, 0.0)),
    "step_decay": (dict(boundaries=(0.05, 0.5), warmup_steps=E8),
                   lambda t: _np_step_decay(t, 1.0, GIANT, (0.05, 0.5), 0.1, E8, 0.0)),
    "linear": (dict(warmup_steps=E8, end_value=0.1),
               lambda t: _np_linear(t, 1.0, GIANT, E8, 0.0, 0.1)),
    "onecycle": (dict(), lambda t: _np_onecycle(t, 1.0, GIANT, 0.3, 25.0, 1e4)),
}


def test_giant_cases_cover_every_registered_schedule():
  assert set(GIANT_CASES) == set(schedules.SCHEDULES)


@pytest.mark.parametrize("name", sorted(GIANT_CASES))
def test_giant_step_counts(name):
  """`total_steps = 10**10` (and phases past 2**31) build without OverflowError. Under jit
  at step `int(1e9)` in float32, as optax's `test_with_giant_int_steps`, and with x64 at steps
  past 2**31 and past the end, the values are the float64 NumPy ones."""
  kwargs, expected = GIANT_CASES[name]
  schedule = schedules.build_schedule(name, 1.0, GIANT, **kwargs)
  got = float(jax.jit(schedule)(int(1e9)))
  np.testing.assert_allclose(got, expected(10**9), rtol=2e-6)
  steps = [0, 3 * 10**9, 7 * 10**9, GIANT - 1, GIANT, 3 * GIANT]
  ours = _values64(lambda: schedules.build_schedule(name, 1.0, GIANT, **kwargs), steps)
  np.testing.assert_allclose(ours, [expected(t) for t in steps], rtol=RTOL, atol=1e-12)
