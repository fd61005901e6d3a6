"""A stack of identical residual blocks, optionally rematerialized and scanned over layers.

`remat` recomputes each block's activations in the backward pass (Chen et al., arXiv
1604.06174) under a `jax.checkpoint_policies` policy: "none" keeps everything, "full" keeps
only each block's input, "dots_saveable" (alias "minimal") also keeps the matmul outputs.

`scan_layers` runs the blocks under `nn.scan`, so XLA compiles one layer instead of
`num_layers`; their parameters are stacked on a leading axis named `layers` (module "blocks")
instead of living under `block_0` ... `block_{n-1}`. `stack_layers` and `unstack_layers`
convert a parameter tree between the two layouts.

`activation_sharding` (a `jax.sharding.NamedSharding`, or None to leave placement to XLA) pins
the [B, L, D] activations entering and leaving every block, so that under FSDP they stay split
along the batch while the parameters are gathered, instead of whatever sharding propagation
infers from the `embed`-sharded weights (GSPMD, Xu et al., arXiv 2105.04663: a
few annotations on activations steer the partitioner). A dimension that the sharding's mesh
axes do not divide is left unconstrained, so the same model also runs on odd batch sizes.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "minimal": jax.checkpoint_policies.dots_saveable,
}
SCANNED_NAME = "blocks"


def _block_name(i: int) -> str:
  return f"block_{i}"


def constrain(x, sharding: jax.sharding.NamedSharding | None):
  """`x` pinned to `sharding` where its mesh axes divide `x`'s dimensions; else `x` as is."""
  if sharding is None:
    return x
  for dim, axes in zip(x.shape, sharding.spec):
    names = axes if isinstance(axes, tuple) else (axes,) if axes else ()
    if dim % math.prod(sharding.mesh.shape[n] for n in names):
      return x
  return jax.lax.with_sharding_constraint(x, sharding)


def _scan_body(block_cls, activation_sharding):
  """`block_cls` with the `(carry, x) -> (carry, y)` signature that `nn.scan` needs."""

  class ScanBody(block_cls):

    def __call__(self, x_BxLxD, _):
      return constrain(block_cls.__call__(self, x_BxLxD), activation_sharding), None

  ScanBody.__name__ = f"Scanned{block_cls.__name__}"
  return ScanBody


def apply_blocks(x_BxLxD, block_cls, block_kwargs: dict[str, Any], num_layers: int,
                 remat: str = "none", scan_layers: bool = False,
                 activation_sharding: jax.sharding.NamedSharding | None = None):
  """Applies `num_layers` blocks `block_cls(**block_kwargs)` in order; call it inside a
  compact method (the blocks become that module's children)."""
  if remat not in REMAT_POLICIES:
    raise ValueError(f"remat={remat!r}; use one of {', '.join(REMAT_POLICIES)}")
  if remat != "none":  # a scan already keeps XLA from merging recomputation into the forward
    block_cls = nn.remat(block_cls, policy=REMAT_POLICIES[remat], prevent_cse=not scan_layers)
  x_BxLxD = constrain(x_BxLxD, activation_sharding)
  if not scan_layers:
    for i in range(num_layers):
      x_BxLxD = block_cls(**block_kwargs, name=_block_name(i))(x_BxLxD)
      x_BxLxD = constrain(x_BxLxD, activation_sharding)
    return x_BxLxD
  scanned = nn.scan(_scan_body(block_cls, activation_sharding), variable_axes={"params": 0},
                    split_rngs={"params": True, "dropout": True}, length=num_layers,
                    metadata_params={nn.PARTITION_NAME: "layers"})
  x_BxLxD, _ = scanned(**block_kwargs, name=SCANNED_NAME)(x_BxLxD, None)
  return x_BxLxD


def stack_layers(params: dict[str, Any], num_layers: int) -> dict[str, Any]:
  """An unscanned parameter tree (`block_0` ... ) in the scanned layout (`blocks`, stacked)."""
  names = [_block_name(i) for i in range(num_layers)]
  missing = [n for n in names if n not in params]
  if missing or SCANNED_NAME in params:
    raise ValueError(f"not an unscanned tree of {num_layers} blocks (missing {missing})")
  out = {k: v for k, v in params.items() if k not in names}
  out[SCANNED_NAME] = jax.tree.map(lambda *xs: jnp.stack(xs), *[params[n] for n in names])
  return out


def unstack_layers(params: dict[str, Any]) -> dict[str, Any]:
  """A scanned parameter tree back in the unscanned layout (`block_0` ... `block_{n-1}`)."""
  if SCANNED_NAME not in params:
    raise ValueError(f"not a scanned tree: no {SCANNED_NAME!r} entry")
  stacked = params[SCANNED_NAME]
  num_layers = jax.tree.leaves(stacked)[0].shape[0]
  out = {k: v for k, v in params.items() if k != SCANNED_NAME}
  for i in range(num_layers):
    out[_block_name(i)] = jax.tree.map(lambda x, i=i: x[i], stacked)
  return out
