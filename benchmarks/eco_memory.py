"""ECO memory: train-state bytes per parameter, peak RSS and step time on the tiny GPT.

`python -m benchmarks.eco_memory [--steps N] [--rounds R]`

Set-ups (all AdamW with float32 m and v, `experiments/lm.py` size tiny):
  adamw          plain float32 AdamW (the step-time anchor);
  master fp8     float32 master weights, forward on an FP8 copy (`master_weights_quantizer`);
  naive fp8      weights stored as FP8 codes + row scales, no error injection;
  eco fp8        ECO (Nikdan et al., arXiv 2601.22101), weights stored as FP8 codes + scales;
  eco int4       ECO with INT4 codes packed two per byte.

Memory: each set-up runs in its own subprocess (fresh interpreter) that builds the trainer,
runs a few train steps and reports the train state's bytes (`quantize.tree_nbytes`: codes +
scales for quantized leaves) over the parameter count and `ru_maxrss`. "Static" adds, for
master weights, the FP8 compute copy that such systems keep beside the float32 weights (our
trainer rebuilds it each step). Step time: one more subprocess builds every set-up and times
the whole jitted train step round-robin (R rounds of N steps each), median per set-up, so all
set-ups see the same machine load; the ratio is to plain AdamW measured there.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time

SETUPS = {
    "adamw": ("adamw", {}),
    "master fp8": ("adamw_master", {"master_weights_quantizer": "fp8_e4m3"}),
    "naive fp8": ("eco_adamw", {"quantizer": "fp8_e4m3", "mode": "naive"}),
    "eco fp8": ("eco_adamw", {"quantizer": "fp8_e4m3"}),
    "eco int4": ("eco_adamw", {"quantizer": "int4"}),
}


def _trainer(setup: str):
  from experiments import lm
  from trainlab.training.run import build_run
  from trainlab.training.trainer import Trainer
  name, extra = SETUPS[setup]
  config = lm.get_config(f"size=tiny,opt={name}")
  config.optimizer.update(extra)
  return Trainer(build_run(config))


def measure_memory(setup: str, steps: int) -> dict[str, float]:
  """In this process: state bytes per parameter and peak RSS after `steps` train steps."""
  import jax
  from trainlab.algorithms import quantize as qz
  trainer = _trainer(setup)
  state = trainer.init_state()
  for step in range(steps):
    state, metrics = trainer.train_step(state, trainer.step_batch(step))
  jax.block_until_ready(metrics)
  is_q = lambda x: isinstance(x, qz.QuantizedArray)
  num_params = sum(x.size for x in jax.tree.leaves(state.params, is_leaf=is_q))
  state_bytes = qz.tree_nbytes(state)
  copy_bytes = 0
  quantizer = trainer.run.config.optimizer.get("master_weights_quantizer", "")
  if quantizer:
    copy_bytes = qz.tree_nbytes(qz.quantize_tree(state.params, qz.get_quantizer(quantizer)))
  return {"num_params": num_params, "state_bpp": state_bytes / num_params,
          "static_bpp": (state_bytes + copy_bytes) / num_params,
          "params_bpp": qz.tree_nbytes(state.params) / num_params,
          "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure_time(steps: int, rounds: int) -> dict[str, float]:
  """In this process: median seconds per train step of every set-up, round-robin."""
  import jax
  import numpy as np
  trainers = {s: _trainer(s) for s in SETUPS}
  states = {s: t.init_state() for s, t in trainers.items()}
  batches = {s: [t.step_batch(i) for i in range(steps)] for s, t in trainers.items()}
  for s, t in trainers.items():  # compile and warm up
    states[s], m = t.train_step(states[s], batches[s][0])
    jax.block_until_ready(m)
  times: dict[str, list[float]] = {s: [] for s in SETUPS}
  for _ in range(rounds):
    for s, t in trainers.items():
      start = time.perf_counter()
      for batch in batches[s]:
        states[s], m = t.train_step(states[s], batch)
      jax.block_until_ready((states[s], m))
      times[s].append((time.perf_counter() - start) / steps)
  return {s: float(np.median(v)) for s, v in times.items()}


def _child(args: list[str]) -> dict:
  env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
  out = subprocess.run([sys.executable, "-m", "benchmarks.eco_memory", *args], env=env,
                       capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--child-memory", help=argparse.SUPPRESS)
  parser.add_argument("--child-time", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child_memory:
    print(json.dumps(measure_memory(args.child_memory, args.steps)))
    return
  if args.child_time:
    print(json.dumps(measure_time(args.steps, args.rounds)))
    return

  memory = {s: _child(["--child-memory", s, "--steps", str(args.steps)]) for s in SETUPS}
  step_time = _child(["--child-time", "--steps", str(args.steps), "--rounds", str(args.rounds)])
  master = memory["master fp8"]
  print(f"tiny GPT, {memory['adamw']['num_params']} parameters; "
        f"{datetime.datetime.now().isoformat(timespec='minutes')}; {platform.machine()}, "
        f"{os.cpu_count()} CPUs (shared, loaded); load average {os.getloadavg()[0]:.1f}\n")
  print("| set-up | params B/param | state B/param | static B/param | static / master fp8 "
        "| peak RSS MiB | step ms | step / adamw |")
  print("|---|---|---|---|---|---|---|---|")
  for s, m in memory.items():
    print(f"| {s} | {m['params_bpp']:.3f} | {m['state_bpp']:.3f} | {m['static_bpp']:.3f} | "
          f"{m['static_bpp'] / master['static_bpp']:.3f} | {m['peak_rss_mib']:.0f} | "
          f"{1e3 * step_time[s]:.1f} | {step_time[s] / step_time['adamw']:.2f} |")


if __name__ == "__main__":
  main()
