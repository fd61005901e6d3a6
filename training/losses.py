"""Next-token cross-entropy in float32, whole or chunked so [B, L, V] logits never exist at once.

`chunked_cross_entropy` takes the final hidden states and the [D, V] unembedding (a model's
`__call__(tokens, return_hidden=True)` and `unembedding_DxV(params)`) and walks the sequence in
chunks of `chunk_size` positions under `jax.lax.scan`. Each chunk's [B, C, V] logits are made,
reduced to a loss sum and dropped; `jax.checkpoint` makes the backward pass recompute them per
chunk instead of keeping every chunk's (the idea of Wijmans et al., "Cut Your Losses in
Large-Vocabulary Language Models", arXiv 2411.09009, at chunk rather than kernel
granularity). Peak logits memory is B x C x V instead of B x L x V.

Chunks run over positions rather than the vocabulary: each chunk is still one full-width
matmul, the batch axis keeps its data/fsdp sharding and the vocabulary its tensor sharding (a
vocabulary chunk would slice a sharded axis), and the target logit is an ordinary gather
instead of a running logsumexp with per-chunk target masks. Both bound the peak the same way.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits_BxLxV: jax.Array, targets_BxL: jax.Array,
                  weights_BxL: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean float32 cross-entropy over entries with weight 1 (any leading shape), and the weight
  sum: sum_i w_i (logsumexp(z_i) - z_i[t_i]) / max(sum_i w_i, 1)."""
  losses = optax.softmax_cross_entropy_with_integer_labels(
      logits_BxLxV.astype(jnp.float32), targets_BxL)
  total_weight = jnp.sum(weights_BxL)
  return jnp.sum(losses * weights_BxL) / jnp.maximum(total_weight, 1.0), total_weight


def chunked_cross_entropy(hidden_BxLxD: jax.Array, unembed_DxV: jax.Array,
                          targets_BxL: jax.Array, weights_BxL: jax.Array,
                          chunk_size: int) -> tuple[jax.Array, jax.Array]:
  """`cross_entropy(hidden @ unembed, targets, weights)` without [B, L, V] logits.

  The logits are `layers.unembed`'s: `unembed` is cast to `hidden`'s (compute) dtype and the
  matmul accumulates in float32. A sequence length that `chunk_size` does not divide is padded
  with weight-0 positions.
  """
  if chunk_size < 1:
    raise ValueError(f"chunk_size={chunk_size} must be at least 1")
  batch, seq_len, width = hidden_BxLxD.shape
  chunk_size = min(chunk_size, seq_len)
  num_chunks = -(-seq_len // chunk_size)
  pad = num_chunks * chunk_size - seq_len
  if pad:
    hidden_BxLxD = jnp.pad(hidden_BxLxD, ((0, 0), (0, pad), (0, 0)))
    targets_BxL = jnp.pad(targets_BxL, ((0, 0), (0, pad)))
    weights_BxL = jnp.pad(weights_BxL, ((0, 0), (0, pad)))

  def by_chunk(x_BxL, *trailing):  # [B, L, ...] -> [N, B, C, ...]
    return jnp.moveaxis(x_BxL.reshape(batch, num_chunks, chunk_size, *trailing), 1, 0)

  @jax.checkpoint
  def chunk_loss_sum(unembed_DxV, hidden_BxCxD, targets_BxC, weights_BxC):
    # Cast inside the chunk, so the scan sums the chunks' gradients in the parameter's dtype.
    logits_BxCxV = jnp.einsum("bcd,dv->bcv", hidden_BxCxD, unembed_DxV.astype(hidden_BxCxD.dtype),
                              preferred_element_type=jnp.float32)
    losses_BxC = optax.softmax_cross_entropy_with_integer_labels(logits_BxCxV, targets_BxC)
    return jnp.sum(losses_BxC * weights_BxC)

  def step(total, chunk):
    return total + chunk_loss_sum(unembed_DxV, *chunk), None

  chunks = (by_chunk(hidden_BxLxD, width), by_chunk(targets_BxL), by_chunk(weights_BxL))
  loss_sum, _ = jax.lax.scan(step, jnp.zeros((), jnp.float32), chunks)
  total_weight = jnp.sum(weights_BxL)
  return loss_sum / jnp.maximum(total_weight, 1.0), total_weight
