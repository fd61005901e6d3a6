"""The train state: everything a run needs to continue, as one pytree of arrays."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax


class TrainState(flax.struct.PyTreeNode):
  """`step` counts applied train steps; the RNG of step `s` is `fold_in(rng, s)`."""
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
