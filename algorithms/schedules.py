"""Learning-rate schedules as pure `optax.Schedule`s, and the name table configs use.

Conventions (shared/reference/algorithms.md): `t` counts optimizer updates already applied,
so `schedule(0)` is the learning rate of the first update; past `total_steps` a schedule
holds the value it reached at `total_steps`; bad arguments raise `ValueError` at
construction, never inside jit. Step counts of any size work (`total_steps >= 2**31`
included, as optax's own schedules allow): a count that an int32 cannot hold enters the
traced computation as a float.

`SCHEDULES`, at the end of the module, names every builder, with the signature
`builder(peak_value, total_steps, **kwargs)`; configs call it as
`build_schedule(schedule.name, optimizer.learning_rate, total_steps, **schedule)`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

ScheduleBuilder = Callable[..., optax.Schedule]


def build_schedule(name: str, peak_value: float, total_steps: int, **kwargs) -> optax.Schedule:
  """The schedule `SCHEDULES[name]` peaking at `peak_value` over `total_steps` updates."""
  if name not in SCHEDULES:
    raise ValueError(f"unknown schedule {name!r}; known: {', '.join(sorted(SCHEDULES))}")
  return SCHEDULES[name](peak_value, total_steps, **kwargs)


def _check_steps(**steps: int) -> None:
  for arg, value in steps.items():
    if value < 0:
      raise ValueError(f"{arg} must be >= 0, got {value}")


def _count(steps: int) -> int | float:
  """A step count as traced code takes it: a Python int while an int32 holds it (exact
  comparisons with int32 steps), else a float (`jnp` cannot make an int32 of 10**10)."""
  return steps if -2**31 <= steps < 2**31 else float(steps)


def _hold_after(total_steps: int, schedule: optax.Schedule) -> optax.Schedule:
  """`schedule` up to `total_steps`, then the value it reached at `total_steps`."""
  return lambda step: schedule(jnp.minimum(step, _count(total_steps)))


def _phases(total_steps: int, phases: list[tuple[int, optax.Schedule]]) -> optax.Schedule:
  """Joins `(num_steps, schedule)` phases, each seeing steps counted from its start.

  Zero-length phases are dropped; the last phase is evaluated at its own end for every
  step at or past `total_steps` (the hold convention).
  """
  kept = [(n, fn) for n, fn in phases if n > 0]
  boundaries = [_count(int(b)) for b in np.cumsum([n for n, _ in kept], dtype=np.int64)[:-1]]
  return _hold_after(total_steps, optax.join_schedules([fn for _, fn in kept], boundaries))


def _progress(count: jax.typing.ArrayLike, num_steps: int) -> jax.Array:
  """`count / num_steps` as a float clipped to [0, 1]."""
  return jnp.clip(jnp.asarray(count) / float(num_steps), 0.0, 1.0)


def _linear(start: float, end: float, num_steps: int) -> optax.Schedule:
  return lambda count: start + (end - start) * _progress(count, num_steps)




def _check_positive(**values: float) -> None:
  for arg, value in values.items():
    if not value > 0:
      raise ValueError(f"{arg} must be > 0, got {value}")


def _cosine_shape(x: jax.Array) -> jax.Array:
  return 0.5 * (1.0 + jnp.cos(jnp.pi * x))


def constant(peak_value: float, total_steps: int, warmup_steps: int = 0,
             init_value: float = 0.0) -> optax.Schedule:
  """Linear warmup from `init_value`, then `peak_value` for the rest of the run."""
  _check_steps(total_steps=total_steps, warmup_steps=warmup_steps)
  if warmup_steps > total_steps:
    raise ValueError(f"warmup_steps ({warmup_steps}) > total_steps ({total_steps})")
  if warmup_steps == 0:
    return optax.constant_schedule(peak_value)
  return optax.warmup_constant_schedule(init_value, peak_value, _count(warmup_steps))


def warmup_cosine(peak_value: float, total_steps: int, warmup_steps: int = 0,
                  init_value: float = 0.0, end_value: float = 0.0) -> optax.Schedule:
  """Linear warmup, then a half cosine from `peak_value` to `end_value` at `total_steps`
  (`optax.warmup_cosine_decay_schedule` with `decay_steps=total_steps`)."""
  _check_steps(total_steps=total_steps, warmup_steps=warmup_steps)
  if warmup_steps >= total_steps:
    raise ValueError(f"warmup_steps ({warmup_steps}) must be < total_steps ({total_steps})")
  return optax.warmup_cosine_decay_schedule(init_value, peak_value, _count(warmup_steps),
                                            decay_steps=_count(total_steps), end_value=end_value)


# Decay shapes f(x), x in [0, 1] the fraction of the decay done, f(0) = 1, f(1) = 0.
# Hägele et al. (arXiv 2405.18392) and their `wsd_schedule` (epfml/schedules-and-scaling).
DECAY_SHAPES: dict[str, Callable[[jax.Array], jax.Array]] = {
    "linear": lambda x: 1.0 - x,
    "cosine": _cosine_shape,
    "1-sqrt": lambda x: 1.0 - jnp.sqrt(x),
    "square": lambda x: 1.0 - x**2,
    "mirror-cosine": lambda x: 2.0 * (1.0 - x) - _cosine_shape(x),
}


def _pick(arg: str, name: str, options: dict[str, Callable]) -> Callable:
  """`options[name]`, or a ValueError naming `arg` and the valid names."""
  if name not in options:
    raise ValueError(f"{arg} must be one of {', '.join(options)}; got {name!r}")
  return options[name]


def wsd_schedule(peak_value: float, total_steps: int, warmup_steps: int = 0,
                 decay_steps: int | None = None, decay_fraction: float = 0.1,
                 decay_shape: str = "1-sqrt", init_value: float = 0.0, end_value: float = 0.0,
                 half_life: float | None = None) -> optax.Schedule:
  """Warmup-stable-decay (MiniCPM, arXiv 2404.06395; Hägele et al., arXiv 2405.18392).

  Linear warmup from `init_value` over `warmup_steps`, `peak_value` until `S = T - D`, then
  `end_value + (peak_value - end_value) * f(x)` with `x = (t - S) / D` over the last
  `D = decay_steps` updates (`D = round(decay_fraction * total_steps)` when `decay_steps` is
  None). Shapes `f`: `linear` 1 - x, `cosine` (1 + cos(pi x)) / 2, `1-sqrt` 1 - sqrt(x) (Hägele's
  best), `square` 1 - x^2, `mirror-cosine` 2(1 - x) - (1 + cos(pi x)) / 2, and `exponential`
  0.5 ** ((t - S) / half_life) (MiniCPM's form; `half_life` defaults to D / 5), which does not
  reach `end_value`: its value at `total_steps` is held. Hägele's code warms up from
  `peak / 100`; pass `init_value` for that.
  """
  _check_steps(total_steps=total_steps, warmup_steps=warmup_steps)
  if decay_steps is None:
    if not 0.0 < decay_fraction <= 1.0:
      raise ValueError(f"decay_fraction must be in (0, 1], got {decay_fraction}")
    decay_steps = round(decay_fraction * total_steps)
  if decay_steps < 1:
    raise ValueError(f"decay_steps must be >= 1, got {decay_steps} (use 'constant' for no decay)")
  if warmup_steps + decay_steps > total_steps:
    raise ValueError(f"warmup_steps + decay_steps ({warmup_steps} + {decay_steps}) > total_steps "
                     f"({total_steps})")
  if decay_shape != "exponential" and half_life is not None:
    raise ValueError(f"half_life is only used by decay_shape='exponential', not {decay_shape!r}")
  half_life = decay_steps / 5 if half_life is None else half_life
  _check_positive(half_life=half_life)
  f = _pick("decay_shape", decay_shape,
            {**DECAY_SHAPES, "exponential": lambda x: 0.5 ** (x * decay_steps / half_life)})
  return _phases(total_steps, [
      (warmup_steps, _linear(init_value, peak_value, warmup_steps)),
      (total_steps - warmup_steps - decay_steps, optax.constant_schedule(peak_value)),
      (decay_steps, lambda count: end_value + (peak_value - end_value)
       * f(_progress(count, decay_steps))),
  ])


def _power_exponential(x: jax.Array) -> jax.Array:
  """(e exp(-x) - 1) / (e - 1), written so that it is exactly 0 at x = 1."""
  return jnp.expm1(1.0 - x) / (np.e - 1.0)


def power_schedule(max_value: float, a: float, b: float, batch_size: int, tokens_per_step: int,
                   total_steps: int, warmup_steps: int, decay_steps: int,
                   decay_shape: str = "exponential") -> optax.Schedule:
  """Power scheduler (Shen et al., arXiv 2408.13359).

  `eta(n) = min(max_value, batch_size * a * n**b)` with `n = t * tokens_per_step` tokens seen.
  Warmup `(t / W) * eta(W * tokens_per_step)`, then `eta(n)`, then over the last
  `decay_steps` updates `f(x) * eta((T - D) * tokens_per_step)`, `x = (t - (T - D)) / D`. The
  paper decays exponentially to 0; `exponential` is `f(x) = (e exp(-x) - 1) / (e - 1)` (1 at
  x = 0, 0 at x = 1); the WSD shapes (`linear`, `1-sqrt`, ...) are also accepted. Paper defaults
  (muP): a = 4, b = -0.51, max_value = 0.02, last 10% decayed.
  """
  _check_steps(total_steps=total_steps, warmup_steps=warmup_steps, decay_steps=decay_steps)
  _check_positive(max_value=max_value, a=a, batch_size=batch_size, tokens_per_step=tokens_per_step)
  if warmup_steps + decay_steps > total_steps:
    raise ValueError(f"warmup_steps + decay_steps ({warmup_steps} + {decay_steps}) > total_steps "
                     f"({total_steps})")
  f = _pick("decay_shape", decay_shape, {"exponential": _power_exponential, **DECAY_SHAPES})

  def eta(steps):  # n = 0 gives max_value when b < 0 (0 ** b = inf).
    tokens = jnp.maximum(jnp.asarray(steps, dtype=float), 0.0) * tokens_per_step
    return jnp.minimum(max_value, batch_size * a * tokens**b)

  def eta_at(steps: int) -> float:  # Construction-time constants, in float64.
    with np.errstate(divide="ignore"):
      return float(np.minimum(max_value, batch_size * a * np.float64(steps * tokens_per_step)**b))

  stable_steps = total_steps - warmup_steps - decay_steps
  warmup_end_value = eta_at(warmup_steps)
  decay_start_value = eta_at(warmup_steps + stable_steps)
  return _phases(total_steps, [
      (warmup_steps, lambda count: _progress(count, warmup_steps) * warmup_end_value),
      (stable_steps, lambda count: eta(jnp.asarray(count) + _count(warmup_steps))),
      (decay_steps, lambda count: f(_progress(count, decay_steps)) * decay_start_value),
  ])


def _power_builder(peak_value: float, total_steps: int, **kwargs) -> optax.Schedule:
  """`power_schedule` with `peak_value` as its `max_value`."""
  return power_schedule(peak_value, total_steps=total_steps, **kwargs)


def _inv_sqrt_cooldown(timescale: float) -> Callable[[jax.Array], jax.Array]:
  """h(x) / h(1), h(x) = 1 / sqrt(1 + timescale x) - 1: 0 at x = 0, 1 at x = 1."""
  h = lambda x: 1.0 / jnp.sqrt(1.0 + timescale * x) - 1.0
  return lambda x: h(x) / h(1.0)


def infinite_lr_schedule(peak_value: float, constant_value: float, end_value: float,
                         total_steps: int, warmup_steps: int, cooldown_steps: int,
                         anneal_steps: int, cooldown_shape: str = "cosine",
                         timescale: float = 10.0) -> optax.Schedule:
  """Infinite learning-rate schedule (Ibrahim et al., arXiv 2403.08763; Singh et al.,
  arXiv 2503.02844), as in `bentherien/gpt-neox` (inf_lr) and `Pauljanson002/MAE-1`.

  Phases (W = warmup_steps, C = cooldown_steps, A = anneal_steps, T = total_steps):
  warmup `peak * t / W` on [0, W); cooldown to `constant_value` on [W, W + C) with
  `x = (t - W) / C`: `cosine` const + (peak - const)(1 + cos(pi x)) / 2, `inv-sqrt`
  peak + (const - peak) h(x) / h(1) with h(x) = 1 / sqrt(1 + timescale x) - 1, `linear`
  peak + (const - peak) x; `constant_value` until T - A; exponential anneal
  const * (end / const) ** ((t - (T - A)) / A) on [T - A, T); `end_value` from T on (the
  official code wraps around or keeps decaying there). With `warmup_steps = cooldown_steps = 0`
  it is the schedule of a later task in a stream; with `anneal_steps = 0` it holds
  `constant_value` forever.
  """
  _check_steps(total_steps=total_steps, warmup_steps=warmup_steps, cooldown_steps=cooldown_steps,
               anneal_steps=anneal_steps)
  if warmup_steps + cooldown_steps + anneal_steps > total_steps:
    raise ValueError(f"warmup_steps + cooldown_steps + anneal_steps ({warmup_steps} + "
                     f"{cooldown_steps} + {anneal_steps}) > total_steps ({total_steps})")
  if anneal_steps > 0:
    _check_positive(constant_value=constant_value, end_value=end_value)
  _check_positive(timescale=timescale)
  shapes = {
      "cosine": lambda x: 1.0 - _cosine_shape(x),
      "inv-sqrt": _inv_sqrt_cooldown(timescale),
      "linear": lambda x: x,
  }
  g = _pick("cooldown_shape", cooldown_shape, shapes)  # 0 -> 1 over the cooldown
  ratio = end_value / constant_value if anneal_steps > 0 else 1.0
  return _phases(total_steps, [
      (warmup_steps, _linear(0.0, peak_value, warmup_steps)),
      (cooldown_steps, lambda count: peak_value + (constant_value - peak_value)
       * g(_progress(count, cooldown_steps))),
      (total_steps - warmup_steps - cooldown_steps - anneal_steps,
       optax.constant_schedule(constant_value)),
      (anneal_steps, lambda count: constant_value * ratio ** _progress(count, anneal_steps)),
  ])


def _infinite_lr_builder(peak_value: float, total_steps: int, **kwargs) -> optax.Schedule:
  """`infinite_lr_schedule` peaking at `peak_value`."""
  return infinite_lr_schedule(peak_value, total_steps=total_steps, **kwargs)


def repeated_cosine_schedule(peak_value: float, end_value: float, steps_per_cycle: int,
                             warmup_steps: int, num_cycles: int,
                             rewarm_from: str = "zero") -> optax.Schedule:
  """Re-warm and re-decay every cycle: the continual pre-training baseline (Gupta et al., arXiv
  2308.04014; `bentherien/gpt-neox` `cosine-inf`; MAE-1's per-task cosine).

  Cycle `c` covers [c S, (c + 1) S), S = steps_per_cycle: linear warmup over `warmup_steps` to
  `peak_value`, then a half cosine to `end_value` at the cycle's end. The warmup starts at 0 in
  every cycle (`rewarm_from="zero"`, MAE-1), or at 0 in the first cycle and at `end_value` in
  later ones (`"end"`, gpt-neox `cosine-inf`). `end_value` is held from S * num_cycles on.
  """
  _check_steps(warmup_steps=warmup_steps)
  if steps_per_cycle < 1 or num_cycles < 1:
    raise ValueError(f"steps_per_cycle and num_cycles must be >= 1, got {steps_per_cycle}, "
                     f"{num_cycles}")
  if warmup_steps >= steps_per_cycle:
    raise ValueError(f"warmup_steps ({warmup_steps}) must be < steps_per_cycle ({steps_per_cycle})")
  if rewarm_from not in ("zero", "end"):
    raise ValueError(f"rewarm_from must be 'zero' or 'end', got {rewarm_from!r}")
  total_steps = steps_per_cycle * num_cycles
  decay_steps = steps_per_cycle - warmup_steps

  def schedule(step):
    cycle, local = jnp.divmod(jnp.minimum(step, _count(total_steps)), _count(steps_per_cycle))
    start = end_value if rewarm_from == "end" else 0.0
    start = jnp.where(cycle > 0, start, 0.0)
    warmup = start + (peak_value - start) * local / float(max(warmup_steps, 1))
    decay = end_value + (peak_value - end_value) * _cosine_shape(
        _progress(local - _count(warmup_steps), decay_steps))
    value = jnp.where(local < _count(warmup_steps), warmup, decay)
    return jnp.where(cycle >= num_cycles, end_value, value)

  return schedule


def _repeated_cosine_builder(peak_value: float, total_steps: int, num_cycles: int,
                             warmup_steps: int = 0, end_value: float = 0.0,
                             rewarm_from: str = "zero") -> optax.Schedule:
  """`repeated_cosine_schedule` with `steps_per_cycle = total_steps / num_cycles`.

  `total_steps` must be a multiple of `num_cycles` (as gpt-neox asserts); configs give the run
  length and the number of tasks, never the cycle length.
  """
  if num_cycles < 1 or total_steps % num_cycles:
    raise ValueError(f"total_steps ({total_steps}) must be a positive multiple of num_cycles "
                     f"({num_cycles})")
  return repeated_cosine_schedule(peak_value, end_value, total_steps // num_cycles, warmup_steps,
                                  num_cycles, rewarm_from)


def uba_schedule(peak_value: float, total_steps: int, phi: float, warmup_steps: int = 0,
                 init_value: float = 0.0, end_value: float = 0.0) -> optax.Schedule:
  """Unified Budget-Aware schedule (Tang et al., "Stepsize anything", arXiv 2505.24452,
  NeurIPS 2025).

  Linear warmup from `init_value`, then with `p = (t - W) / (T - W)` and
  `u = (1 + cos(pi p)) / 2`:

      lr = end + (peak - end) * 2u / (phi + (2 - phi) u)
         = end + (peak - end) / (1 + (phi / 2) tan^2(pi p / 2)),

  reaching `end_value` at `total_steps` and holding it. `phi = 2` is cosine decay, bit for bit
  equal to `optax.cosine_decay_schedule` after warmup; `phi < 2` stays above cosine
  (`phi -> 0`: constant), `phi > 2` decays faster.

  Source: one secondary source; the paper's equation was not read. No stored copy of the
  paper's method section (arXiv HTML v1/v2 past the introduction, v3/v4, the NeurIPS page,
  OpenReview) was reachable, and no official code is public. The form is that of one
  unreferenced third-party PyTorch `UBAScheduler`, whose "UBA core formula" is
  eta = (eta_max - eta_min) * 2(1 + cos) / (2 phi + (2 - phi)(1 + cos)) + eta_min (with
  1 + cos = 2u, the form above; it asserts 0 <= phi <= 2, we take any phi > 0). The project's
  reference page states the same form but is not an independent source. It has the properties
  the abstract implies (a single `phi`; a cosine special case); the search and what it found
  are in docs/results/uba.md. The abstract ties `phi` to the condition number; that relation
  was not readable, so `phi` is a plain hyperparameter here.
  """
  _check_steps(total_steps=total_steps, warmup_steps=warmup_steps)
  _check_positive(phi=phi)
  if warmup_steps >= total_steps:
    raise ValueError(f"warmup_steps ({warmup_steps}) must be < total_steps ({total_steps})")
  decay_steps = total_steps - warmup_steps
  alpha = end_value / peak_value if peak_value else 0.0

  def decay(count):
    # `optax.cosine_decay_schedule`'s own operations: at phi = 2, `shape` is `u` bit for bit.
    count = jnp.minimum(count, float(decay_steps))
    u = 0.5 * (1 + jnp.cos(jnp.pi * count / float(decay_steps)))
    shape = 2.0 * u / (phi + (2.0 - phi) * u)
    if not peak_value:
      return end_value * (1 - shape)
    return peak_value * ((1 - alpha) * shape + alpha)

  return _phases(total_steps, [
      (warmup_steps, _linear(init_value, peak_value, warmup_steps)),
      (decay_steps, decay),
  ])


def step_decay_schedule(peak_value: float, total_steps: int,
                        boundaries: tuple[float, ...] = (0.5, 0.75), factor: float = 0.1,
                        warmup_steps: int = 0, init_value: float = 0.0) -> optax.Schedule:
  """Piecewise-constant step decay (He et al., arXiv 1512.03385: x0.1 at fixed epochs).

  Linear warmup from `init_value`, then `peak_value * factor**k` after the k-th boundary, the
  boundaries given as fractions of `total_steps` (default x0.1 at 50% and 75%).
  """
  _check_steps(total_steps=total_steps, warmup_steps=warmup_steps)
  _check_positive(factor=factor)
  if any(not 0.0 < b < 1.0 for b in boundaries) or list(boundaries) != sorted(boundaries):
    raise ValueError(f"boundaries must be increasing fractions in (0, 1), got {boundaries}")
  scales: dict[int, float] = {}  # Boundaries that round to the same step multiply.
  for b in boundaries:
    step = round(b * total_steps) - warmup_steps
    scales[step] = scales.get(step, 1.0) * factor
  if min(scales, default=0) < 0:
    raise ValueError(f"warmup_steps ({warmup_steps}) must end before the first boundary")
  decay = optax.piecewise_constant_schedule(peak_value,
                                           {_count(s): f for s, f in scales.items()})
  return _phases(total_steps, [
      (warmup_steps, _linear(init_value, peak_value, warmup_steps)),
      (total_steps - warmup_steps, decay),
  ])


def linear_schedule(peak_value: float, total_steps: int, warmup_steps: int = 0,
                    init_value: float = 0.0, end_value: float = 0.0) -> optax.Schedule:
  """Linear warmup from `init_value`, then linear decay to `end_value` at `total_steps`."""
  _check_steps(total_steps=total_steps, warmup_steps=warmup_steps)
  if warmup_steps >= total_steps:
    raise ValueError(f"warmup_steps ({warmup_steps}) must be < total_steps ({total_steps})")
  return _phases(total_steps, [
      (warmup_steps, _linear(init_value, peak_value, warmup_steps)),
      (total_steps - warmup_steps, optax.linear_schedule(peak_value, end_value,
                                                         _count(total_steps - warmup_steps))),
  ])


def onecycle_schedule(peak_value: float, total_steps: int, pct_start: float = 0.3,
                      div_factor: float = 25.0, final_div_factor: float = 1e4) -> optax.Schedule:
  """OneCycle (Smith & Topin, arXiv 1708.07120), as `optax.cosine_onecycle_schedule`.

  Cosine rise from `peak / div_factor` to `peak` over `int(pct_start * total_steps)` updates,
  then cosine fall to `peak / (div_factor * final_div_factor)` at `total_steps`, held after.
  """
  _check_steps(total_steps=total_steps)
  _check_positive(total_steps=total_steps, div_factor=div_factor,
                  final_div_factor=final_div_factor)
  if not 0.0 < pct_start < 1.0:
    raise ValueError(f"pct_start must be in (0, 1), got {pct_start}")
  # `optax.cosine_onecycle_schedule`'s own body, with step counts an int32 may not hold.
  return _hold_after(total_steps, optax.piecewise_interpolate_schedule(
      "cosine", peak_value / div_factor,
      {_count(int(pct_start * total_steps)): div_factor,
       _count(total_steps): 1.0 / (div_factor * final_div_factor)}))


SCHEDULES: dict[str, ScheduleBuilder] = {
    "constant": constant,
    "warmup_cosine": warmup_cosine,
    "wsd": wsd_schedule,
    "power": _power_builder,
    "infinite_lr": _infinite_lr_builder,
    "repeated_cosine": _repeated_cosine_builder,
    "uba": uba_schedule,
    "step_decay": step_decay_schedule,
    "linear": linear_schedule,
    "onecycle": onecycle_schedule,
}
