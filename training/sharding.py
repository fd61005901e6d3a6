"""Device mesh from config and placement of parameters, optimizer state and batches.

Parameters are placed by rules over their logical axis names (models annotate them): FSDP
shards the `embed` dimension over the `fsdp` mesh axis, tensor parallelism shards `mlp`,
`heads` and `vocab` over `tensor`; batches are split over `("data", "fsdp")`. A dimension
that a mesh axis does not divide is replicated instead.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from trainlab.errors import UsageError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
LOGICAL_RULES = {
    "embed": "fsdp",
    "mlp": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",
    "vocab": "tensor",
    "layers": None,  # the stacked axis of scanned blocks: every device holds every layer
    "conv_out": "tensor",
    "classes": None,
}


def make_mesh(mesh_config: Any, devices: list | None = None) -> Mesh:
  """A `("data", "fsdp", "tensor")` mesh; one size may be -1 ("the rest of the devices")."""
  devices = jax.devices() if devices is None else devices
  sizes = [int(mesh_config[axis]) for axis in MESH_AXES]
  if sizes.count(-1) > 1:
    raise UsageError("at most one of mesh.data, mesh.fsdp, mesh.tensor may be -1")
  known = int(np.prod([s for s in sizes if s != -1]))
  if any(s == 0 or s < -1 for s in sizes) or len(devices) % known:
    raise UsageError(f"mesh sizes {dict(zip(MESH_AXES, sizes))} do not divide the "
                     f"{len(devices)} devices; use -1 for one axis")
  sizes = [len(devices) // known if s == -1 else s for s in sizes]
  if int(np.prod(sizes)) != len(devices):
    raise UsageError(f"mesh {dict(zip(MESH_AXES, sizes))} uses {int(np.prod(sizes))} devices "
                     f"but {len(devices)} are present; set one axis to -1")
  return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def _spec_for(logical: P, shape: tuple[int, ...], mesh: Mesh) -> P:
  axes = []
  for name, dim in zip(tuple(logical) + (None,) * (len(shape) - len(logical)), shape):
    mesh_axis = LOGICAL_RULES.get(name) if name else None
    fits = mesh_axis is not None and dim % mesh.shape[mesh_axis] == 0 and mesh.shape[mesh_axis] > 1
    axes.append(mesh_axis if fits and mesh_axis not in axes else None)  # a mesh axis once
  return P(*axes)


def param_shardings(logical_specs: Any, abstract_params: Any, mesh: Mesh) -> Any:
  """NamedShardings for parameters from their logical `PartitionSpec`s."""
  return jax.tree.map(
      lambda spec, leaf: NamedSharding(mesh, _spec_for(spec, leaf.shape, mesh)),
      logical_specs, abstract_params, is_leaf=lambda x: isinstance(x, P))


def opt_state_shardings(tx: optax.GradientTransformation, abstract_opt_state: Any,
                        params_sharding: Any, mesh: Mesh) -> Any:
  """Optimizer-state leaves shaped like parameters follow them; the rest is replicated."""
  replicated = NamedSharding(mesh, P())
  return optax.tree_map_params(
      tx, lambda _, sharding: sharding, abstract_opt_state, params_sharding,
      transform_non_params=lambda _: replicated)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def batch_shards(mesh: Mesh) -> int:
  """How many ways a batch is split: the product of the batch axes' sizes."""
  return int(np.prod([mesh.shape[axis] for axis in BATCH_AXES]))


def logical_specs(boxed_variables: Any) -> Any:
  """Logical PartitionSpecs of a linen variable tree made with `with_logical_partitioning`."""
  return nn.get_partition_spec(boxed_variables)


def global_batch_array(batch: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """The global `batch` as one array sharded by `sharding`, each process feeding its rows.

  Every process computes the same global batch (it is a pure function of seed and step) and
  hands `jax.make_array_from_process_local_data` only the rows its own devices hold.
  """
  index_map = sharding.addressable_devices_indices_map(batch.shape)
  rows = [index[0].indices(batch.shape[0])[:2] for index in index_map.values()]
  start, stop = min(r[0] for r in rows), max(r[1] for r in rows)
  return jax.make_array_from_process_local_data(sharding, np.asarray(batch[start:stop]),
                                                batch.shape)
