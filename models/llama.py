"""A LLaMA-style decoder (Touvron et al., arXiv 2302.13971, section 2.2): pre-norm RMSNorm
blocks, rotary position embeddings, a SwiGLU MLP (Shazeer, arXiv 2002.05202, eq. 6), no biases,
optionally tied embeddings and grouped-query attention (Ainslie et al., arXiv 2305.13245).
This is the decoder the WSD paper's code trains (Hägele et al., arXiv 2405.18392;
epfml/schedules-and-scaling `models/llama.py`): interleaved RoPE, RMSNorm eps 1e-5, weights
drawn from N(0, 0.02^2) with the residual output projections at 0.02 / sqrt(2 num_layers),
tied embeddings.

Fields (set under `model.*`): `mlp_dim` (default 8/3 d_model rounded up to a multiple of 64;
the WSD code rounds to 256), `num_kv_heads` (default `num_heads`; fewer is GQA and must divide
it), `rope_base`, `norm_eps`, `tie_embeddings`, and as for `GPT`: `dtype`, `param_dtype`,
`attention_impl`, `remat`, `scan_layers`.

`model.apply(variables, tokens)` returns float32 logits [B, L, V];
`model.apply(variables, tokens, return_hidden=True)` returns the final-norm hidden states
[B, L, D] in `dtype`, and `model.unembedding_DxV(params)` the [D, V] matrix (tied: the
embedding table transposed; untied: the `head` kernel) whose product with them
(`layers.unembed`) is the logits, so the loss can be chunked (`training/losses.py`).

Logical axis names: `vocab`, `embed`, `heads`, `kv_heads`, `head_dim`, `mlp`, and `layers`
when scanned.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from trainlab.models import layers, stack


def swiglu_width(d_model: int, multiple_of: int = 64) -> int:
  """LLaMA's SwiGLU hidden width: int(2/3 * 4 d_model) rounded up to `multiple_of`."""
  return multiple_of * math.ceil(int(8 * d_model / 3) / multiple_of)


class Attention(nn.Module):
  num_heads: int
  num_kv_heads: int
  rope_base: float
  out_stddev: float
  dtype: layers.Dtype
  param_dtype: layers.Dtype
  attention_impl: str | None

  @nn.compact
  def __call__(self, x_BxLxD):
    d_model = x_BxLxD.shape[-1]
    head_dim = d_model // self.num_heads
    precision = {"dtype": self.dtype, "param_dtype": self.param_dtype}
    q_BxLxHxK = layers.dense((self.num_heads, head_dim), ("embed", "heads", "head_dim"), "query",
                             **precision)(x_BxLxD)
    kv_shape, kv_axes = (self.num_kv_heads, head_dim), ("embed", "kv_heads", "head_dim")
    k_BxLxGxK = layers.dense(kv_shape, kv_axes, "key", **precision)(x_BxLxD)
    v_BxLxGxK = layers.dense(kv_shape, kv_axes, "value", **precision)(x_BxLxD)
    q_BxLxHxK = layers.rotary_embedding(q_BxLxHxK, self.rope_base)
    k_BxLxGxK = layers.rotary_embedding(k_BxLxGxK, self.rope_base)
    out_BxLxHxK = layers.causal_attention(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, self.attention_impl)
    return layers.dense(d_model, ("heads", "head_dim", "embed"), "out", axis=(-2, -1),
                        stddev=self.out_stddev, **precision)(out_BxLxHxK)


class SwiGLU(nn.Module):
  """down(silu(gate x) * up x)."""
  mlp_dim: int
  out_stddev: float
  dtype: layers.Dtype
  param_dtype: layers.Dtype

  @nn.compact
  def __call__(self, x_BxLxD):
    precision = {"dtype": self.dtype, "param_dtype": self.param_dtype}
    gate_BxLxF = layers.dense(self.mlp_dim, ("embed", "mlp"), "gate", **precision)(x_BxLxD)
    up_BxLxF = layers.dense(self.mlp_dim, ("embed", "mlp"), "up", **precision)(x_BxLxD)
    return layers.dense(x_BxLxD.shape[-1], ("mlp", "embed"), "down", stddev=self.out_stddev,
                        **precision)(nn.silu(gate_BxLxF) * up_BxLxF)


class Block(nn.Module):
  num_heads: int
  num_kv_heads: int
  mlp_dim: int
  rope_base: float
  norm_eps: float
  out_stddev: float
  dtype: layers.Dtype
  param_dtype: layers.Dtype
  attention_impl: str | None

  @nn.compact
  def __call__(self, x_BxLxD):
    precision = {"dtype": self.dtype, "param_dtype": self.param_dtype}
    attn = Attention(self.num_heads, self.num_kv_heads, self.rope_base, self.out_stddev,
                     attention_impl=self.attention_impl, name="attn", **precision)
    x_BxLxD = x_BxLxD + attn(layers.RMSNorm(self.norm_eps, name="attn_norm", **precision)(x_BxLxD))
    mlp = SwiGLU(self.mlp_dim, self.out_stddev, name="mlp", **precision)
    return x_BxLxD + mlp(layers.RMSNorm(self.norm_eps, name="mlp_norm", **precision)(x_BxLxD))


class Llama(nn.Module):
  """Maps int32 tokens [B, L] to next-token logits [B, L, vocab_size]."""
  vocab_size: int = 256
  num_layers: int = 2
  d_model: int = 128
  num_heads: int = 4
  num_kv_heads: int | None = None
  mlp_dim: int | None = None
  rope_base: float = 10000.0
  norm_eps: float = 1e-5
  tie_embeddings: bool = True
  dtype: layers.Dtype = "float32"
  param_dtype: layers.Dtype = "float32"
  attention_impl: str | None = None
  remat: str = "none"
  scan_layers: bool = False
  activation_sharding: Any = None  # see `stack.apply_blocks`; the run builder sets it

  @nn.compact
  def __call__(self, tokens_BxL, return_hidden: bool = False):
    num_kv_heads = self.num_kv_heads or self.num_heads
    if self.d_model % self.num_heads or (self.d_model // self.num_heads) % 2:
      raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads} "
                       "into heads of even width")
    if self.num_heads % num_kv_heads:
      raise ValueError(f"num_kv_heads={num_kv_heads} does not divide num_heads={self.num_heads}")
    dtype, param_dtype = layers.as_dtype(self.dtype), layers.as_dtype(self.param_dtype)
    embed = nn.Embed(self.vocab_size, self.d_model, name="embed", dtype=dtype,
                     param_dtype=param_dtype,
                     embedding_init=layers.normal_init(0.02, ("vocab", "embed")))
    block_kwargs = dict(
        num_heads=self.num_heads, num_kv_heads=num_kv_heads,
        mlp_dim=self.mlp_dim or swiglu_width(self.d_model), rope_base=self.rope_base,
        norm_eps=self.norm_eps, out_stddev=0.02 / math.sqrt(2 * self.num_layers), dtype=dtype,
        param_dtype=param_dtype, attention_impl=self.attention_impl)
    x_BxLxD = stack.apply_blocks(embed(tokens_BxL), Block, block_kwargs, self.num_layers,
                                 self.remat, self.scan_layers,
                                 self.activation_sharding)
    hidden_BxLxD = layers.RMSNorm(self.norm_eps, dtype, param_dtype, name="final_norm")(x_BxLxD)
    if self.tie_embeddings:
      unembed_DxV = jnp.transpose(embed.embedding)
    else:
      unembed_DxV = self.param("head", layers.normal_init(0.02, ("embed", "vocab")),
                               (self.d_model, self.vocab_size), param_dtype)
    return hidden_BxLxD if return_hidden else layers.unembed(hidden_BxLxD, unembed_DxV)

  def unembedding_DxV(self, params) -> jax.Array:
    """The [D, V] output matrix in the model's `params`."""
    if self.tie_embeddings:
      return jnp.transpose(params["embed"]["embedding"])
    return params["head"]
