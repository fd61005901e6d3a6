"""Optimizer-update throughput: parameters/s and effective bandwidth against a copy roofline.

  python -m benchmarks.optimizer_throughput [--params 50_000_000] [--reps 15]

Each optimizer runs one jitted `update + apply_updates` on a float32 pytree, params and state
donated, gradients fixed. Effective bandwidth = bytes the update must read and write / median
time, with 4 bytes per float32 array touched per parameter:

  adamw                 read g, p, m, v; write p, m, v   28 B/param
  sophia (ours, plain)  read g, p, m, h; write p, m      24 B/param
  optax.contrib.sophia  read g, p, m, h; write p, m      24 B/param (plain steps)

The anchor, measured in the same run, is a donated jitted `x + 1` over one array of the same
number of elements (read 4 + write 4 B/param): the bandwidth an elementwise kernel can reach.
A second anchor moves exactly Sophia's arrays (24 B/param) with one multiply-add of math: what
XLA reaches for that memory pattern on this backend. All steps are timed round-robin.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import optax

from trainlab.algorithms import sophia as sophia_lib

LEAVES = 8


def _pytree(num_params: int, key: jax.Array) -> dict[str, jax.Array]:
  size = num_params // LEAVES
  keys = jax.random.split(key, LEAVES)
  return {f"layer{i}": jax.random.normal(k, (size // 1024, 1024), jnp.float32) * 0.02
          for i, k in enumerate(keys)}


def _median_seconds(steps: dict, args: dict, reps: int) -> dict[str, float]:
  """Round-robin timing, so every step sees the same load on the shared machine.

  `steps[name](*args[name])` returns its next arguments (the donated ones fresh, the rest
  passed through); two warm-up calls each compile them.
  """
  for name, fn in steps.items():
    for _ in range(2):
      args[name] = jax.block_until_ready(fn(*args[name]))
  times = {name: [] for name in steps}
  for _ in range(reps):
    for name, fn in steps.items():
      start = time.perf_counter()
      args[name] = jax.block_until_ready(fn(*args[name]))
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}


def _same_arrays_trivial_math() -> optax.GradientTransformation:
  """Sophia's memory traffic (read g, p, m, h; write p, m) with one multiply-add of math."""

  def update(grads, state, params=None):
    del params
    mu = jax.tree.map(lambda g, m: m + g, grads, state[0])
    return jax.tree.map(lambda m, h: m * h, mu, state[1]), (mu, state[1])

  return optax.GradientTransformation(
      lambda p: (jax.tree.map(jnp.zeros_like, p), jax.tree.map(jnp.ones_like, p)), update)


def _optimizer_step(tx, extra=None):
  extra = extra or {}

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params, **extra)
    return optax.apply_updates(params, updates), state, grads

  return jax.jit(step, donate_argnums=(0, 1))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--params", type=lambda s: int(s.replace("_", "")), default=50_000_000)
  parser.add_argument("--reps", type=int, default=15)
  args = parser.parse_args()

  params = _pytree(args.params, jax.random.key(0))
  grads = jax.tree.map(lambda p: jnp.cos(p) * 1e-3, params)
  n = sum(p.size for p in jax.tree.leaves(params))
  load_before = os.getloadavg()

  # batch_size * rho * h sets how many coordinates clip; irrelevant to the bytes moved.
  optimizers = {
      "optax.adamw": (optax.adamw(1e-3, weight_decay=0.1), 28, {}),
      "optax.contrib.sophia": (
          optax.contrib.sophia(1e-3, weight_decay=0.1, update_interval=10**9), 24,
          {"obj_fn": lambda p: sum(jnp.sum(x**2) for x in jax.tree.leaves(p))}),
      "trainlab sophia": (sophia_lib.sophia(1e-3, batch_size=480 * 1024), 24, {}),
  }
  steps = {"copy": jax.jit(lambda x: (x + 1,), donate_argnums=0)}
  step_args = {"copy": (jnp.zeros(n, jnp.float32),)}
  trivial = _same_arrays_trivial_math()
  steps["same arrays"] = _optimizer_step(trivial)
  step_args["same arrays"] = (jax.tree.map(jnp.copy, params), trivial.init(params), grads)
  for name, (tx, _, extra) in optimizers.items():
    p = jax.tree.map(jnp.copy, params)
    state = tx.init(p)
    if name == "trainlab sophia":
      state = sophia_lib.update_hessian(state, grads, b2=0.99)
    steps[name] = _optimizer_step(tx, extra)
    step_args[name] = (p, state, grads)
  del params
  seconds = _median_seconds(steps, step_args, args.reps)
  copy_s = seconds["copy"]
  copy_bw = 8 * n / copy_s
  rows = [(name, bytes_per_param, seconds[name])
          for name, (_, bytes_per_param, _) in optimizers.items()]
  load_after = os.getloadavg()

  adamw_bw = rows[0][1] * n / rows[0][2]
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), host "
        f"{platform.node()}, {os.cpu_count()} CPUs; {n:,} float32 params in {LEAVES} leaves; "
        f"median of {args.reps}; load avg {load_before[0]:.2f} -> {load_after[0]:.2f}\n")
  print("| update | B/param | median ms | Mparams/s | GB/s | vs copy roofline | vs adamw GB/s |")
  print("| --- | --- | --- | --- | --- | --- | --- |")
  print(f"| copy `x + 1` (anchor) | 8 | {copy_s * 1e3:.1f} | {n / copy_s / 1e6:.0f} | "
        f"{copy_bw / 1e9:.1f} | 1.00 | |")
  trivial_bw = 24 * n / seconds["same arrays"]
  print(f"| same arrays, trivial math (anchor 2) | 24 | {seconds['same arrays'] * 1e3:.1f} | "
        f"{n / seconds['same arrays'] / 1e6:.0f} | {trivial_bw / 1e9:.1f} | "
        f"{trivial_bw / copy_bw:.2f} | |")
  for name, bytes_per_param, seconds in rows:
    bw = bytes_per_param * n / seconds
    print(f"| {name} | {bytes_per_param} | {seconds * 1e3:.1f} | {n / seconds / 1e6:.0f} | "
          f"{bw / 1e9:.1f} | {bw / copy_bw:.2f} | {bw / adamw_bw:.2f} |")


if __name__ == "__main__":
  main()
