"""A decoder-only GPT (Radford et al., 2019): pre-LayerNorm blocks, causal self-attention,
bias-free projections, learned positions and tied input/output embeddings.

Parameters carry logical axis names (`vocab`, `embed`, `heads`, `head_dim`, `mlp`, `seq`, and
`layers` when scanned) through `nn.with_logical_partitioning`; `training/sharding.py` maps
them onto a mesh.

Options (module fields, set under `model.*`): `dtype` compute dtype and `param_dtype` storage
dtype (names or dtypes; norms, softmax statistics and logits stay float32), `attention_impl`
for `jax.nn.dot_product_attention` (None: JAX chooses, in JAX 0.10 its "xla" einsum path,
whose causal mask XLA fuses; "cudnn": the fused kernel on NVIDIA GPUs, bfloat16/float16
only, which skips the masked half), `remat` and `scan_layers` (see `models/stack.py`). With
every option at its default the parameter tree is the one this module has always had.

`model.apply(variables, tokens)` returns float32 logits [B, L, V];
`model.apply(variables, tokens, return_hidden=True)` returns the final-norm hidden states
[B, L, D] in `dtype` instead, and `model.unembedding_DxV(params)` the [D, V] matrix whose
product with them (`layers.unembed`) is the logits: the loss can then be chunked
(`training/losses.py`) without materializing [B, L, V].
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from trainlab.models import layers, stack


class CausalSelfAttention(nn.Module):
  num_heads: int
  dtype: layers.Dtype = "float32"
  param_dtype: layers.Dtype = "float32"
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, x_BxLxD):
    d_model = x_BxLxD.shape[-1]
    head_dim = d_model // self.num_heads
    qkv_axes = ("embed", "heads", "head_dim")
    precision = {"dtype": self.dtype, "param_dtype": self.param_dtype}
    q_BxLxHxK = layers.dense((self.num_heads, head_dim), qkv_axes, "query", **precision)(x_BxLxD)
    k_BxLxHxK = layers.dense((self.num_heads, head_dim), qkv_axes, "key", **precision)(x_BxLxD)
    v_BxLxHxK = layers.dense((self.num_heads, head_dim), qkv_axes, "value", **precision)(x_BxLxD)
    out_BxLxHxK = layers.causal_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, self.attention_impl)
    return layers.dense(d_model, ("heads", "head_dim", "embed"), "out", axis=(-2, -1),
                        **precision)(out_BxLxHxK)


class Block(nn.Module):
  num_heads: int
  mlp_ratio: int
  dtype: layers.Dtype = "float32"
  param_dtype: layers.Dtype = "float32"
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, x_BxLxD):
    d_model = x_BxLxD.shape[-1]
    precision = {"dtype": self.dtype, "param_dtype": self.param_dtype}
    attn = CausalSelfAttention(self.num_heads, attention_impl=self.attention_impl, name="attn",
                               **precision)
    x_BxLxD = x_BxLxD + attn(layers.layer_norm("ln1", **precision)(x_BxLxD))
    h_BxLxF = layers.dense(self.mlp_ratio * d_model, ("embed", "mlp"), "mlp_in", **precision)(
        layers.layer_norm("ln2", **precision)(x_BxLxD))
    return x_BxLxD + layers.dense(d_model, ("mlp", "embed"), "mlp_out", **precision)(
        nn.gelu(h_BxLxF))


class GPT(nn.Module):
  """Maps int32 tokens [B, L] to next-token logits [B, L, vocab_size]; embeddings are tied."""
  vocab_size: int = 256
  num_layers: int = 2
  d_model: int = 128
  num_heads: int = 4
  mlp_ratio: int = 4
  context_len: int = 128
  dtype: layers.Dtype = "float32"
  param_dtype: layers.Dtype = "float32"
  attention_impl: str | None = None
  remat: str = "none"
  scan_layers: bool = False
  activation_sharding: Any = None  # see `stack.apply_blocks`; the run builder sets it

  @nn.compact
  def __call__(self, tokens_BxL, return_hidden: bool = False):
    if self.d_model % self.num_heads:
      raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}")
    dtype, param_dtype = layers.as_dtype(self.dtype), layers.as_dtype(self.param_dtype)
    embed = nn.Embed(self.vocab_size, self.d_model, name="embed", dtype=dtype,
                     param_dtype=param_dtype,
                     embedding_init=layers.normal_init(0.02, ("vocab", "embed")))
    positions_LxD = self.param("positions", layers.normal_init(0.02, ("seq", "embed")),
                               (self.context_len, self.d_model), param_dtype)
    seq_len = tokens_BxL.shape[1]
    x_BxLxD = embed(tokens_BxL) + positions_LxD[:seq_len].astype(dtype)
    block_kwargs = dict(num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, dtype=dtype,
                        param_dtype=param_dtype, attention_impl=self.attention_impl)
    x_BxLxD = stack.apply_blocks(x_BxLxD, Block, block_kwargs, self.num_layers, self.remat,
                                 self.scan_layers,
                                 self.activation_sharding)
    hidden_BxLxD = layers.layer_norm("ln_final", dtype, param_dtype)(x_BxLxD)
    if return_hidden:
      return hidden_BxLxD
    return layers.unembed(hidden_BxLxD, jnp.transpose(embed.embedding))

  def unembedding_DxV(self, params) -> jax.Array:
    """The [D, V] output matrix in the model's `params`: the tied embedding table, transposed."""
    return jnp.transpose(params["embed"]["embedding"])
