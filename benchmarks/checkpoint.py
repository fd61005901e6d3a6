"""Checkpoint speed: save (blocking part and whole async save) and restore against the disk.

  python -m benchmarks.checkpoint [--size tiny] [--scale 1] [--reps 3] [--dir /tmp]

The train state is the default GPT's (`experiments/lm.py`, size `tiny`) with every float leaf
refilled with random normals (Orbax compresses, so zeros would flatter it); `--scale N`
benchmarks a GPT with `d_model` multiplied by N for a larger state. Anchors measured in the
same run, in the same folder: the disk's sequential write (one file of the state's size,
written and fsync'd) and read (read back at once, so from the page cache like Orbax's restore
in this run). Goals (issue 3): the blocking part of a save costs <= 10% of one training step
of the default GPT; restore within 2x of the disk's read time. The stall is the mean step
time while an async save is in flight over the mean step time without one.

Checksums (issue 14): each rep saves and restores once with and once without them
(`Checkpoints(checksums=False)`), alternating which goes first; the save-side cost is in the
whole async save (process 0 hashes in Orbax's background thread), the restore-side cost in the
restore. The two checksum passes are also timed alone on the folder just written.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments import lm
from trainlab.training import checkpoint
from trainlab.training.run import build_run
from trainlab.training.trainer import Trainer


def _random_state(state):
  leaves, treedef = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(0), len(leaves))
  out = [jax.device_put(jax.random.normal(k, x.shape, x.dtype), x.sharding)
         if jnp.issubdtype(x.dtype, jnp.floating) and x.size > 1 else x
         for k, x in zip(keys, leaves)]
  return jax.tree.unflatten(treedef, out)


def _disk(directory: pathlib.Path, nbytes: int) -> tuple[float, float]:
  data = np.random.default_rng(0).bytes(nbytes)
  path = directory / "disk_probe.bin"
  start = time.perf_counter()
  with open(path, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  write = time.perf_counter() - start
  start = time.perf_counter()
  with open(path, "rb") as f:
    while f.read(1 << 24):
      pass
  read = time.perf_counter() - start
  path.unlink()
  return nbytes / write, nbytes / read


def _step_times(trainer, state, steps: int, first: int, during=None):
  times = []
  for step in range(first, first + steps):
    batch = trainer.device_batch(trainer.run.dataset.train_batch(step))
    start = time.perf_counter()
    state, metrics = trainer.train_step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
    if during is not None and not during():
      break
  return state, times


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", default="tiny")
  parser.add_argument("--scale", type=int, default=1)
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--dir", default=tempfile.gettempdir())
  args = parser.parse_args()

  config = lm.get_config(f"size={args.size}")
  config.model.d_model *= args.scale
  trainer = Trainer(build_run(config))
  state = _random_state(trainer.init_state())
  nbytes = sum(x.nbytes for x in jax.tree.leaves(state))
  state, _ = _step_times(trainer, state, 2, 0)  # compile
  state, base = _step_times(trainer, state, 8, 2)
  step_s = statistics.median(base)

  root = pathlib.Path(tempfile.mkdtemp(prefix="ckpt_bench_", dir=args.dir))
  disk_w, disk_r, stall = [], [], []
  block, whole, restore = ({False: [], True: []} for _ in range(3))
  hash_write, hash_check = [], []
  meta = checkpoint.run_metadata(config)
  for rep in range(args.reps):
    w, r = _disk(root, nbytes)
    disk_w.append(w)
    disk_r.append(r)
    for checksums in (rep % 2 == 1, rep % 2 == 0):  # alternate which goes first
      ckpts = checkpoint.Checkpoints(root / f"rep{rep}-{checksums}", keep=1, checksums=checksums)
      step = int(state.step)
      start = time.perf_counter()
      ckpts.save(step, state, meta)
      block[checksums].append(time.perf_counter() - start)
      state, during = _step_times(trainer, state, 50, step, during=ckpts.saving)
      ckpts.wait()
      whole[checksums].append(time.perf_counter() - start)
      if checksums:
        stall.append(statistics.mean(during) / step_s)
      start = time.perf_counter()
      restored = ckpts.restore(step, trainer.abstract_state)
      jax.block_until_ready(restored)
      restore[checksums].append(time.perf_counter() - start)
      ckpts.close()
      del restored
      if checksums:  # the checksum passes alone, on the folder just written (page cache)
        step_dir = ckpts.directory / str(step)
        start = time.perf_counter()
        checkpoint.write_checksums(step_dir)
        hash_write.append(time.perf_counter() - start)
        start = time.perf_counter()
        checkpoint.verify_checksums(step_dir)
        hash_check.append(time.perf_counter() - start)

  med = statistics.median
  mb = nbytes / 1e6
  rows = [
      ("disk sequential write (anchor)", med(disk_w) / 1e6, nbytes / med(disk_w), ""),
      ("disk sequential read (anchor)", med(disk_r) / 1e6, nbytes / med(disk_r), ""),
      ("save, blocking part", nbytes / med(block[True]) / 1e6, med(block[True]),
       f"{med(block[True]) / step_s:.1%} of a step (goal <= 10%)"),
      ("save, whole async, no checksums", nbytes / med(whole[False]) / 1e6, med(whole[False]),
       f"{med(disk_w) / (nbytes / med(whole[False])):.2f}x disk write time"),
      ("save, whole async, with checksums", nbytes / med(whole[True]) / 1e6, med(whole[True]),
       f"{med(whole[True]) / med(whole[False]):.2f}x without"),
      ("restore, unchecked", nbytes / med(restore[False]) / 1e6, med(restore[False]),
       f"{med(restore[False]) / (nbytes / med(disk_r)):.2f}x disk read time (goal <= 2x)"),
      ("restore, checksums verified", nbytes / med(restore[True]) / 1e6, med(restore[True]),
       f"{med(restore[True]) / med(restore[False]):.2f}x unchecked"),
      ("checksums alone: hash the step (save side)", nbytes / med(hash_write) / 1e6,
       med(hash_write), ""),
      ("checksums alone: verify the step (restore side)", nbytes / med(hash_check) / 1e6,
       med(hash_check), ""),
  ]
  print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, jax {jax.__version__} "
        f"{jax.default_backend()}, folder {args.dir}")
  print(f"state: GPT size={args.size} d_model={config.model.d_model}, {mb:.1f} MB random f32; "
        f"train step median {step_s * 1e3:.1f} ms; medians of {args.reps} reps\n")
  print("| operation | MB/s | seconds | vs anchor / goal |")
  print("| --- | --- | --- | --- |")
  for name, rate, seconds, note in rows:
    print(f"| {name} | {rate:.0f} | {seconds:.4f} | {note} |")
  print(f"| step time while a save is in flight | | | {med(stall):.2f}x a normal step |")
  print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
  main()
