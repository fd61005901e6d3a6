"""Ahead-of-time compiles of a run's real train and eval steps for a TPU or GPU slice, from a host
that does not own it (the idea of MaxText's `train_compile`).

`target(topology)` makes compile-only devices for `v5e:4x4` (also `v4`, `v5p`, `v6e` and any
name the installed libtpu knows; the `[tpu]` extra) or `8xH100` / `2x8xH100` (hosts x GPUs per
host, `H100` or `A100`; the `[cuda]` extra). `compile_run(config, target)` builds the run exactly
as training does (`build_run(config, devices=...)`, then `Trainer`), lowers both jitted steps
with `jax.ShapeDtypeStruct` inputs that carry the run's shardings, compiles them and reports
per-chip memory, FLOPs, the compiler's step-time estimate, the implied MFU and the collectives.

Step time and MFU. XLA's cost analysis counts the body of a loop once, so a scanned model
(`model.scan_layers`), a chunked loss and gradient accumulation report a fraction of their
FLOPs; `flops` adds back the matmul FLOPs of the uncounted iterations, counted on the step's
jaxpr with every `scan` multiplied by its length (`matmul_flops`), and scales the compiler's HBM
bytes by the same factor. `estimated_step_s` is the roofline max(FLOPs / peak, bytes /
bandwidth) of those counts: a lower bound that leaves out collectives and latency, so
`mfu_estimate` (6 N tokens / chips / peak / step time) is an upper bound. The compiler's own
`optimal_seconds` is kept in the report but not used: libtpu 0.0.42.1 returns negative values
for programs of this size. GPU compiles report memory but no cost model: no step time or MFU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import time
from typing import Any

import jax
import numpy as np
from jax.extend import core as jax_core

from trainlab.data import Dataset
from trainlab.errors import UsageError
from trainlab.training.run import build_run
from trainlab.training.sharding import MESH_AXES, batch_shards
from trainlab.training.trainer import Trainer

GIB = 2**30
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
# An HLO instruction's opcode follows its shape: `... = bf16[8,32]{...} all-gather(%p), ...`; a
# name (`%all-gather.3`) or a computation (`%all-reduce-scatter (...)`) starts with `%`.
_COLLECTIVE_RE = re.compile(r"(?<![%\w.-])(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")


@dataclasses.dataclass(frozen=True)
class Chip:
  """Peak dense bf16 FLOP/s, HBM bytes and HBM bytes/s of one chip, from the vendor's spec
  page (`source`)."""
  name: str
  peak_flops: float
  hbm_bytes: int
  hbm_bandwidth: float
  source: str


CHIPS = {
    "v4": Chip("TPU v4", 275e12, 32 * GIB, 1200e9, "https://cloud.google.com/tpu/docs/v4"),
    "v5e": Chip("TPU v5e", 197e12, 16 * GIB, 819e9, "https://cloud.google.com/tpu/docs/v5e"),
    "v5p": Chip("TPU v5p", 459e12, 95 * GIB, 2765e9, "https://cloud.google.com/tpu/docs/v5p"),
    "v6e": Chip("TPU v6e", 918e12, 32 * GIB, 1640e9, "https://cloud.google.com/tpu/docs/v6e"),
    "H100": Chip("NVIDIA H100 SXM 80GB", 989e12, 80 * 10**9, 3350e9,
                 "https://www.nvidia.com/en-us/data-center/h100/ (1,979 TFLOPS bf16 with "
                 "sparsity; dense is half)"),
    "A100": Chip("NVIDIA A100 SXM 80GB", 312e12, 80 * 10**9, 2039e9,
                 "https://www.nvidia.com/en-us/data-center/a100/"),
}
# libtpu's chip configuration: v4 and v5p chips hold two TensorCores that JAX drives as one
# device ("megacore"), as on a real slice.
_TPU_CHIP_CONFIG = {"v4": "megacore", "v5p": "megacore"}
# The facts XLA's GPU compiler needs about a device it cannot see (GpuTargetConfigProto), from
# NVIDIA's data sheets and the CUDA C++ Programming Guide's table for compute capability 9.0/8.0.
_GPU_FACTS = {
    "H100": dict(sm=(9, 0), cores=132, fpus=128, smem_core=233472, smem_optin=232448,
                 l2=52428800, bandwidth=3350e9, clock=1.98, memory=80 * 10**9,
                 description="NVIDIA H100 80GB HBM3"),
    "A100": dict(sm=(8, 0), cores=108, fpus=64, smem_core=167936, smem_optin=166912,
                 l2=41943040, bandwidth=2039e9, clock=1.41, memory=80 * 10**9,
                 description="NVIDIA A100-SXM4-80GB"),
}
_TPU_RE = re.compile(r"^(v\d+[a-z]*):(\d+(?:x\d+)+)$")
_GPU_RE = re.compile(r"^(?:(\d+)x)?(\d+)x(" + "|".join(_GPU_FACTS) + r")$")
TOPOLOGY_HELP = ("a TPU slice as libtpu names it (v5e:4x4, v4:2x2x4, v5p:2x2x2, v6e:4x4) or GPUs "
                 f"as [HOSTSx]GPUSx{'|'.join(_GPU_FACTS)} (8xH100, 2x8xH100)")


@dataclasses.dataclass(frozen=True)
class Target:
  """Compile-only devices of one slice."""
  topology: str
  platform: str  # "tpu" or "gpu"
  chip: Chip
  devices: list
  hosts: int


@contextlib.contextmanager
def _quiet_stderr():
  """libtpu's start-up warnings (no TPU metadata server here) go to the C-level stderr."""
  saved = os.dup(2)
  try:
    with open(os.devnull, "w") as null:
      os.dup2(null.fileno(), 2)
      yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)


def _require(module: str, extra: str, what: str) -> None:
  try:
    __import__(module)
  except ImportError:
    raise UsageError(f"compiling for {what} needs the {extra} extra, which is not installed; "
                     f"run pip install -e '.[{extra}]'") from None


def _gpu_target_config(kind: str) -> str:
  f = _GPU_FACTS[kind]
  return (
      "gpu_device_info { threads_per_block_limit: 1024 threads_per_warp: 32 "
      f"shared_memory_per_block: 49152 shared_memory_per_core: {f['smem_core']} "
      f"threads_per_core_limit: 2048 core_count: {f['cores']} fpus_per_core: {f['fpus']} "
      "block_dim_limit_x: 2147483647 block_dim_limit_y: 65535 block_dim_limit_z: 65535 "
      f"memory_bandwidth: {int(f['bandwidth'])} l2_cache_size: {f['l2']} "
      f"clock_rate_ghz: {f['clock']} device_memory_size: {f['memory']} "
      f"shared_memory_per_block_optin: {f['smem_optin']} "
      f"cuda_compute_capability {{ major: {f['sm'][0]} minor: {f['sm'][1]} }} "
      "registers_per_core_limit: 65536 registers_per_block_limit: 65536 } "
      f'platform_name: "CUDA" dnn_version_info {{ major: 9 minor: 8 }} '
      f'device_description_str: "{f["description"]}"')


def target(topology: str) -> Target:
  """Compile-only devices for `topology`; a `UsageError` for a bad name or a missing extra."""
  from jax.experimental import topologies
  tpu, gpu = _TPU_RE.match(topology), _GPU_RE.match(topology)
  if tpu:
    _require("libtpu", "tpu", f"TPU {topology}")
    generation = tpu.group(1)
    # A compile-only client never touches a chip, so it may share the host with a running one.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
      with _quiet_stderr():
        devices = topologies.get_topology_desc(
            topology_name=topology, platform="tpu",
            chip_config_name=_TPU_CHIP_CONFIG.get(generation, "default")).devices
    except Exception as e:  # noqa: BLE001  (libtpu reports a bad name as several error types)
      detail = " ".join(str(e).split())[:300]
      raise UsageError(f"--topology {topology}: libtpu cannot make this slice ({detail}); use "
                       f"{TOPOLOGY_HELP}") from None
    chip = CHIPS.get(generation) or Chip(devices[0].device_kind, float("nan"), 0, float("nan"),
                                         "not in trainlab.training.aot.CHIPS")
    return Target(topology, "tpu", chip, list(devices), len({d.process_index for d in devices}))
  if gpu:
    hosts, per_host, kind = int(gpu.group(1) or 1), int(gpu.group(2)), gpu.group(3)
    _require("jax_cuda12_plugin", "cuda", f"GPUs {topology}")
    if jax.config.jax_platforms != "cpu":  # else the CUDA plugin looks for a local GPU
      raise UsageError("compiling for GPUs needs JAX_PLATFORMS=cpu (no GPU is used); set it "
                       "before JAX starts")
    devices = topologies.get_topology_desc(
        platform="cuda", topology=f"1x{hosts}x{per_host}",
        target_config=_gpu_target_config(kind)).devices
    return Target(topology, "gpu", CHIPS[kind], list(devices), hosts)
  raise UsageError(f"--topology {topology!r} is not a slice name; use {TOPOLOGY_HELP}")


def shapes_only_dataset(config: Any) -> Dataset:
  """`data.name=tokens` without its shards: batches of zeros with the shapes the shards would
  give (`batch_size` x `data.seq_len` tokens below `data.vocab_size`). Compiling needs only
  shapes, so a check of a pod run does not need the corpus on this host."""
  vocab, seq_len, rows = config.data.get("vocab_size", 0), config.data.get("seq_len", 0), \
      config.batch_size
  for key, value in (("data.vocab_size", vocab), ("data.seq_len", seq_len)):
    if not isinstance(value, int) or value <= 0:
      raise UsageError(f"{key}={value!r} must be a positive integer for data.name=tokens; set "
                       f"--config.{key}")

  def batch(_: int = 0) -> dict[str, np.ndarray]:
    zeros = np.zeros((rows, seq_len), np.int32)
    return {"inputs": zeros, "targets": zeros, "weights": np.ones((rows, seq_len), np.float32)}

  return Dataset("tokens", "lm", vocab, (seq_len,), batch, lambda: [batch()])


def _structs(tree: Any, sharding: Any) -> Any:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype,
                                                     sharding=sharding), tree)


def _sub_jaxprs(eqn: Any) -> list[Any]:
  found = []
  for value in eqn.params.values():
    for item in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(item, (jax_core.Jaxpr, jax_core.ClosedJaxpr)):
        found.append(item)
  return found


def matmul_flops(jaxpr: Any, loops: bool = True) -> int:
  """FLOPs of the `dot_general`s in `jaxpr` (2 per multiply-add), every `scan` body counted
  `length` times (with `loops=False` once, as XLA's cost analysis counts a loop), a `cond` as
  its costliest branch, a `while` of unknown trip count once."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (lhs_contracting, _), _ = eqn.params["dimension_numbers"]
      lhs_shape = eqn.invars[0].aval.shape
      contracted = math.prod(lhs_shape[i] for i in lhs_contracting)
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * contracted
      continue
    inner = [matmul_flops(j, loops) for j in _sub_jaxprs(eqn)]
    if eqn.primitive.name == "cond":
      total += max(inner, default=0)
    elif eqn.primitive.name == "while":
      total += sum(matmul_flops(eqn.params[k], loops) for k in ("body_jaxpr",))
    else:
      total += sum(inner) * (eqn.params["length"] if eqn.primitive.name == "scan" and loops
                             else 1)
  return total


def count_collectives(hlo_text: str) -> dict[str, int]:
  """Collective instructions in compiled HLO text (a loop body's counted once)."""
  counts = dict.fromkeys(COLLECTIVES, 0)
  for match in _COLLECTIVE_RE.finditer(hlo_text):
    counts[match.group(1)] += 1
  return counts


def memory_report(stats: Any, hbm_bytes: int) -> dict[str, int]:
  """Per-chip bytes of a compiled step. Donated arguments alias outputs, so they count once:
  total = arguments + outputs - aliased + temporaries + generated code."""
  total = (stats.argument_size_in_bytes + stats.output_size_in_bytes -
           stats.alias_size_in_bytes + stats.temp_size_in_bytes +
           stats.generated_code_size_in_bytes)
  return {"arguments": stats.argument_size_in_bytes, "outputs": stats.output_size_in_bytes,
          "aliased": stats.alias_size_in_bytes, "temporaries": stats.temp_size_in_bytes,
          "generated_code": stats.generated_code_size_in_bytes, "total": total,
          "hbm": hbm_bytes}


# "... the total memory required for HLO temporaries (37.41G) exceeds available HBM (15.75G)"
_OOM_RE = re.compile(r"\(([0-9.]+)([KMGT])\) exceeds available HBM \(([0-9.]+)([KMGT])\)")


def _bytes(number: str, unit: str) -> int:
  return int(float(number) * 1024 ** "_KMGT".index(unit))


def _compile(fn: Any, args: tuple, hbm_bytes: int) -> dict[str, Any]:
  """Lowers and compiles `fn(*args)`; memory, cost and HLO, or the compiler's out-of-memory."""
  start = time.perf_counter()
  lowered = fn.lower(*args)
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    text = " ".join(str(e).split())
    found = _OOM_RE.search(text)
    needed = _bytes(*found.group(1, 2)) if found else None
    limit = _bytes(*found.group(3, 4)) if found else None
    return {"compile_s": time.perf_counter() - start, "resource_exhausted": text[:300],
            "per_chip_bytes": {"arguments": None, "outputs": None, "temporaries": needed,
                               "total": needed, "hbm": hbm_bytes, "compiler_limit": limit}}
  seconds = time.perf_counter() - start
  cost = compiled.cost_analysis() or {}
  cost = cost[0] if isinstance(cost, list) else cost
  return {"compile_s": seconds,
          "per_chip_bytes": memory_report(compiled.memory_analysis(), hbm_bytes),
          "flops": cost.get("flops"), "bytes_accessed": cost.get("bytes accessed"),
          "optimal_seconds": cost.get("optimal_seconds"), "hlo": compiled.as_text()}


def roofline(compiler_flops: float | None, compiler_bytes: float | None, matmul_all: float,
             matmul_once: float, chip: Chip) -> dict[str, float]:
  """Per-chip FLOPs and HBM bytes of one step with every loop iteration counted, and the
  step-time lower bound max(FLOPs / peak, bytes / bandwidth).

  XLA counts a loop body once; the matmuls of the other iterations (`matmul_all -
  matmul_once`, per chip) are added to its FLOPs and its byte count is scaled by the same
  factor. Without a compiler cost (GPU) the FLOPs are the matmuls alone and there is no bound.
  """
  if not compiler_flops:
    return {"flops": matmul_all, "hbm_bytes_accessed": None, "step_s": None}
  flops = compiler_flops + matmul_all - matmul_once
  hbm_bytes = (compiler_bytes or 0.0) * flops / compiler_flops
  return {"flops": flops, "hbm_bytes_accessed": hbm_bytes,
          "step_s": max(flops / chip.peak_flops, hbm_bytes / chip.hbm_bandwidth)}


def mfu(params: int, tokens_per_step: int, chips: int, peak_flops: float, step_s: float) -> float:
  """Model-FLOPs utilisation: 6 N D of the step (Kaplan et al., arXiv 2001.08361, C = 6 N D)
  over the chips' peak for `step_s` seconds."""
  return 6 * params * tokens_per_step / chips / peak_flops / step_s


def step_inputs(trainer: Trainer) -> dict[str, Any]:
  """The train step's batch as the loop feeds it (with what the support adds, e.g. Sophia's
  Hessian batch), as sharded `ShapeDtypeStruct`s."""
  run = trainer.run
  batch = run.dataset.train_batch(0)
  draw = lambda index, rows: {k: v[:rows] for k, v in run.dataset.train_batch(index).items()}
  return _structs({**batch, **run.support.step_inputs(0, batch, draw)}, trainer.batch_sharding)


def compile_run(config: Any, tgt: Target) -> dict[str, Any]:
  """Builds the run for `tgt`'s devices, compiles its train and eval steps: the report."""
  dataset = shapes_only_dataset(config) if config.data.name == "tokens" else None
  run = build_run(config, devices=tgt.devices, dataset=dataset)
  trainer = Trainer(run)
  chips, hbm = len(tgt.devices), tgt.chip.hbm_bytes
  params = sum(math.prod(x.shape) for x in jax.tree.leaves(
      jax.eval_shape(lambda: run.support.compute_params(trainer.abstract_state.params))))
  batch = step_inputs(trainer)
  train = _compile(trainer.train_step, (trainer.abstract_state, batch), hbm)
  eval_batch = _structs(run.dataset.eval_batches()[0], trainer.batch_sharding)
  evaluation = _compile(trainer.eval_step, (trainer.abstract_state.params, eval_batch), hbm)
  jaxpr = jax.make_jaxpr(trainer.train_step)(trainer.abstract_state, batch)
  matmul_all, matmul_once = matmul_flops(jaxpr) / chips, matmul_flops(jaxpr, loops=False) / chips

  report = {
      "topology": tgt.topology, "platform": tgt.platform,
      "device_kind": tgt.devices[0].device_kind, "chips": chips, "hosts": tgt.hosts,
      "mesh": {a: int(run.mesh.shape[a]) for a in MESH_AXES},
      "params": params, "tokens_per_step": run.tokens_per_step,
      "per_chip_batch": run.batch_size // batch_shards(run.mesh),
      "accumulation_steps": run.accumulation_steps,
      "model": {k: config.model[k] for k in ("name", "dtype", "remat", "scan_layers")
                if k in config.model},
      "chip": dataclasses.asdict(tgt.chip),
      "per_chip_bytes": train["per_chip_bytes"], "compile_s": train["compile_s"],
      "matmul_flops": matmul_all, "model_flops": 6 * params * run.tokens_per_step / chips,
      "eval": {k: evaluation[k] for k in ("per_chip_bytes", "compile_s", "resource_exhausted")
               if k in evaluation},
      "flops": None, "estimated_step_s": None, "mfu_estimate": None, "collectives": None,
  }
  if "resource_exhausted" in train:
    report["resource_exhausted"] = train["resource_exhausted"]
  else:
    cost = roofline(train["flops"], train["bytes_accessed"], matmul_all, matmul_once, tgt.chip)
    report.update(
        flops=cost["flops"], hbm_bytes_accessed=cost["hbm_bytes_accessed"],
        estimated_step_s=cost["step_s"],
        mfu_estimate=mfu(params, run.tokens_per_step, chips, tgt.chip.peak_flops,
                         cost["step_s"]) if cost["step_s"] else None,
        compiler={"flops": train["flops"], "bytes_accessed": train["bytes_accessed"],
                  "optimal_seconds": train["optimal_seconds"]},
        collectives=count_collectives(train["hlo"]))
  report["fits"] = fits(report)
  return report


def fits(report: dict[str, Any]) -> bool:
  """The train and eval steps each compiled and need at most the chip's HBM."""
  return all("resource_exhausted" not in step and step["per_chip_bytes"]["total"] <=
             step["per_chip_bytes"]["hbm"] for step in (report, report["eval"]))


def levers(config: Any, report: dict[str, Any], step: str = "train") -> list[str]:
  """Config changes that lower the per-chip memory of `step` and are not in use yet."""
  if step == "eval":  # the eval step runs one whole batch, with float32 logits
    return [f"a smaller --config.batch_size (the eval step holds all {report['per_chip_batch']} "
            "rows per chip at once)"]
  found = []
  if config.model.get("remat", "none") != "full":
    found.append("--config.model.remat=full")
  if config.model.get("dtype", "float32") == "float32":
    found.append("--config.model.dtype=bfloat16")
  if "loss" in config and not config.loss.get("chunk_size", 0):
    found.append("--config.loss.chunk_size=256")
  if report["per_chip_batch"] // report["accumulation_steps"] > 1:
    found.append("a smaller per-chip batch (--config.optimizer.accumulation_steps="
                 f"{report['accumulation_steps'] * 2}, the same tokens per step)")
  if report["mesh"]["fsdp"] < report["chips"]:
    found.append(f"more fsdp (--config.mesh.fsdp={report['chips']} --config.mesh.data=1)")
  return found


def does_not_fit(config: Any, report: dict[str, Any]) -> str:
  """One line: which step exceeds HBM, by how much, and what would fix it."""
  for name, step in (("train", report), ("eval", report["eval"])):
    used = step["per_chip_bytes"]
    if "resource_exhausted" in step:
      limit = used.get("compiler_limit") or used["hbm"]
      need = (f"{used['temporaries'] / GIB:.1f} GiB of temporaries per chip alone, "
              f"{(used['temporaries'] - limit) / GIB:.1f} GiB over the {limit / GIB:.2f} GiB "
              "the compiler may use" if used["temporaries"] else "more HBM than a chip has")
    elif used["total"] > used["hbm"]:
      need = (f"{used['total'] / GIB:.1f} GiB per chip, {(used['total'] - used['hbm']) / GIB:.1f}"
              f" GiB over the {used['hbm'] / GIB:.1f} GiB HBM")
    else:
      continue
    fixes = ", ".join(levers(config, report, name)) or "a bigger slice"
    return f"does not fit {report['topology']}: the {name} step needs {need}; try {fixes}"
  return ""
