"""A decoder-only GPT (Radford et al., 2019): pre-LayerNorm blocks, causal self-attention,
bias-free projections, learned positions and tied input/output embeddings.

Parameters carry logical axis names (`vocab`, `embed`, `heads`, `head_dim`, `mlp`, `seq`)
through `nn.with_logical_partitioning`; `training/sharding.py` maps them onto a mesh.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

_init = nn.initializers.normal(stddev=0.02)


def _dense(features, kernel_axes, name, axis=-1):
  """A bias-free projection whose kernel carries logical axis names."""
  return nn.DenseGeneral(features, axis=axis, use_bias=False, name=name,
                         kernel_init=nn.with_logical_partitioning(_init, kernel_axes))


def _layer_norm(name):
  return nn.LayerNorm(name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))


class CausalSelfAttention(nn.Module):
  num_heads: int

  @nn.compact
  def __call__(self, x_BxLxD):
    d_model = x_BxLxD.shape[-1]
    head_dim = d_model // self.num_heads
    qkv_axes = ("embed", "heads", "head_dim")
    q_BxLxHxK = _dense((self.num_heads, head_dim), qkv_axes, "query")(x_BxLxD)
    k_BxLxHxK = _dense((self.num_heads, head_dim), qkv_axes, "key")(x_BxLxD)
    v_BxLxHxK = _dense((self.num_heads, head_dim), qkv_axes, "value")(x_BxLxD)
    seq_len = x_BxLxD.shape[1]
    logits_BxHxLxL = jnp.einsum("bqhk,bshk->bhqs", q_BxLxHxK, k_BxLxHxK) / jnp.sqrt(head_dim)
    causal_LxL = jnp.tril(jnp.ones((seq_len, seq_len), bool))
    logits_BxHxLxL = jnp.where(causal_LxL, logits_BxHxLxL, jnp.finfo(logits_BxHxLxL.dtype).min)
    probs_BxHxLxL = nn.softmax(logits_BxHxLxL, axis=-1)
    out_BxLxHxK = jnp.einsum("bhqs,bshk->bqhk", probs_BxHxLxL, v_BxLxHxK)
    return _dense(d_model, ("heads", "head_dim", "embed"), "out", axis=(-2, -1))(out_BxLxHxK)


class Block(nn.Module):
  num_heads: int
  mlp_ratio: int

  @nn.compact
  def __call__(self, x_BxLxD):
    d_model = x_BxLxD.shape[-1]
    x_BxLxD = x_BxLxD + CausalSelfAttention(self.num_heads, name="attn")(_layer_norm("ln1")(x_BxLxD))
    h_BxLxF = _dense(self.mlp_ratio * d_model, ("embed", "mlp"), "mlp_in")(_layer_norm("ln2")(x_BxLxD))
    return x_BxLxD + _dense(d_model, ("mlp", "embed"), "mlp_out")(nn.gelu(h_BxLxF))


class GPT(nn.Module):
  """Maps int32 tokens [B, L] to next-token logits [B, L, vocab_size]; embeddings are tied."""
  vocab_size: int = 256
  num_layers: int = 2
  d_model: int = 128
  num_heads: int = 4
  mlp_ratio: int = 4
  context_len: int = 128

  @nn.compact
  def __call__(self, tokens_BxL):
    if self.d_model % self.num_heads:
      raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}")
    embed = nn.Embed(self.vocab_size, self.d_model, name="embed",
                     embedding_init=nn.with_logical_partitioning(_init, ("vocab", "embed")))
    positions_LxD = self.param("positions", nn.with_logical_partitioning(_init, ("seq", "embed")),
                               (self.context_len, self.d_model))
    seq_len = tokens_BxL.shape[1]
    x_BxLxD = embed(tokens_BxL) + positions_LxD[:seq_len]
    for i in range(self.num_layers):
      x_BxLxD = Block(self.num_heads, self.mlp_ratio, name=f"block_{i}")(x_BxLxD)
    return embed.attend(_layer_norm("ln_final")(x_BxLxD))
