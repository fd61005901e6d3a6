"""Multi-controller start-up: `jax.distributed.initialize` when, and only when, asked.

One Python process per host (TPU) or per GPU (SLURM); every process runs the same program
and JAX's coordination service joins them. `maybe_initialize()` picks the first that applies:

1. `JAX_COORDINATOR_ADDRESS` (`host:port`), `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` set:
   explicit start (any cluster, and the two-process CPU test on 127.0.0.1).
2. `TRAINLAB_TPU_POD=1` (exported by `launch/tpu_pod.sh`) or `TPU_WORKER_HOSTNAMES` naming
   more than one host: a Cloud TPU pod slice; JAX reads the rest from the TPU metadata.
3. Inside `srun` with more than one task (`SLURM_NTASKS` > 1 and `SLURM_STEP_ID` set): JAX's
   SLURM detection reads the node list, task id and local GPU from `SLURM_*`.
4. Otherwise nothing: a single host needs no coordinator. `TRAINLAB_DISTRIBUTED=0` forces
   this case.
"""

from __future__ import annotations

import os
from typing import Mapping

import jax

from trainlab.errors import UsageError

_EXPLICIT = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def detect(env: Mapping[str, str] | None = None) -> str:
  """Which start-up the environment asks for: `explicit`, `tpu_pod`, `slurm` or `none`."""
  env = os.environ if env is None else env
  if env.get("TRAINLAB_DISTRIBUTED", "1") == "0":
    return "none"
  present = [k for k in _EXPLICIT if env.get(k)]
  if present:
    if len(present) != len(_EXPLICIT):
      missing = sorted(set(_EXPLICIT) - set(present))
      raise UsageError(f"{', '.join(present)} set but {', '.join(missing)} missing; set all "
                       f"three of {', '.join(_EXPLICIT)} or none")
    return "explicit"
  hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
  if env.get("TRAINLAB_TPU_POD") == "1" or len(hosts) > 1:
    return "tpu_pod"
  if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_STEP_ID" in env:
    return "slurm"
  return "none"


def maybe_initialize(env: Mapping[str, str] | None = None) -> str:
  """Starts JAX's multi-process runtime if the environment asks for it; returns `detect()`'s answer.

  Call it first, before any other JAX call creates a backend.
  """
  env = os.environ if env is None else env
  kind = detect(env)
  if kind == "none" or jax.distributed.is_initialized():
    return kind
  if kind == "explicit":
    try:
      num_processes, process_id = int(env["JAX_NUM_PROCESSES"]), int(env["JAX_PROCESS_ID"])
    except ValueError:
      raise UsageError("JAX_NUM_PROCESSES and JAX_PROCESS_ID must be integers") from None
    if not 0 <= process_id < num_processes:
      raise UsageError(f"JAX_PROCESS_ID={process_id} must be in [0, JAX_NUM_PROCESSES="
                       f"{num_processes})")
    jax.distributed.initialize(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                               num_processes=num_processes, process_id=process_id)
  else:
    jax.distributed.initialize()  # JAX's own TPU-metadata and SLURM cluster detection
  return kind


def is_main_process() -> bool:
  """Whether this is process 0, the one that prints and writes run files."""
  return jax.process_index() == 0


def describe() -> str:
  """One line: this process, the process count and the devices it sees."""
  return (f"process {jax.process_index()}/{jax.process_count()}: "
          f"{jax.local_device_count()} local of {jax.device_count()} {jax.default_backend()} "
          "devices")
