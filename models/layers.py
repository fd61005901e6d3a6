"""Layers shared by the decoders: projections, RMSNorm, rotary embeddings, causal attention and
the float32 unembedding, each taking a compute `dtype` and a parameter `param_dtype`.

Mixed precision follows the Flax convention: parameters are stored in `param_dtype` and cast to
`dtype` for the matmuls; activations between layers are in `dtype`; normalization statistics,
softmax statistics and the logits are float32.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any  # a dtype or its name ("bfloat16"): configs are JSON
ATTENTION_IMPLS = (None, "xla", "cudnn")


def as_dtype(dtype: Dtype) -> jnp.dtype:
  """`jnp.dtype` of a name or dtype; an unknown name is a ValueError naming it."""
  try:
    return jnp.dtype(dtype)
  except TypeError as e:
    raise ValueError(f"dtype {dtype!r} is not a dtype name (e.g. 'float32', 'bfloat16')") from e


def normal_init(stddev: float, axes: tuple[str | None, ...]):
  return nn.with_logical_partitioning(nn.initializers.normal(stddev=stddev), axes)


def dense(features, kernel_axes, name, dtype, param_dtype, axis=-1, stddev=0.02):
  """A bias-free projection whose kernel carries logical axis names."""
  return nn.DenseGeneral(features, axis=axis, use_bias=False, name=name, dtype=as_dtype(dtype),
                         param_dtype=as_dtype(param_dtype),
                         kernel_init=normal_init(stddev, kernel_axes))


class RMSNorm(nn.Module):
  """x / sqrt(mean(x^2) + eps) * scale (Zhang & Sennrich, arXiv 1910.07467, eq. 4), in float32."""
  eps: float = 1e-5
  dtype: Dtype = "float32"
  param_dtype: Dtype = "float32"

  @nn.compact
  def __call__(self, x_BxLxD):
    scale_D = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                         (x_BxLxD.shape[-1],), as_dtype(self.param_dtype))
    x_BxLxD = x_BxLxD.astype(jnp.float32)
    inv_rms_BxLx1 = jax.lax.rsqrt(jnp.mean(jnp.square(x_BxLxD), -1, keepdims=True) + self.eps)
    return (x_BxLxD * inv_rms_BxLx1 * scale_D.astype(jnp.float32)).astype(as_dtype(self.dtype))


def layer_norm(name, dtype, param_dtype):
  """LayerNorm with float32 statistics and output cast to `dtype`."""
  return nn.LayerNorm(name=name, dtype=as_dtype(dtype), param_dtype=as_dtype(param_dtype),
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))


def rotary_embedding(x_BxLxHxK: jax.Array, base: float = 10000.0) -> jax.Array:
  """RoPE (Su et al., arXiv 2104.09864, eq. 34): rotates each adjacent pair (x_2i, x_2i+1) at
  position m by the angle m * base^(-2i/K), computed in float32; returns `x`'s dtype.

  Pairs are interleaved as in RoFormer, Meta's LLaMA and the WSD paper's code.
  """
  seq_len, head_dim = x_BxLxHxK.shape[1], x_BxLxHxK.shape[-1]
  if head_dim % 2:
    raise ValueError(f"rotary embeddings need an even head dimension, got {head_dim}")
  inv_freq_J = 1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim)
  angle_LxJ = jnp.arange(seq_len, dtype=jnp.float32)[:, None] * inv_freq_J[None, :]
  cos_Lx1xJ, sin_Lx1xJ = jnp.cos(angle_LxJ)[:, None], jnp.sin(angle_LxJ)[:, None]
  x_BxLxHxJx2 = x_BxLxHxK.astype(jnp.float32).reshape(*x_BxLxHxK.shape[:-1], head_dim // 2, 2)
  even, odd = x_BxLxHxJx2[..., 0], x_BxLxHxJx2[..., 1]
  rotated_BxLxHxJx2 = jnp.stack([even * cos_Lx1xJ - odd * sin_Lx1xJ,
                                 even * sin_Lx1xJ + odd * cos_Lx1xJ], axis=-1)
  return rotated_BxLxHxJx2.reshape(x_BxLxHxK.shape).astype(x_BxLxHxK.dtype)


def causal_attention(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, implementation=None):
  """softmax(q k^T / sqrt(K)) v over earlier positions, through `jax.nn.dot_product_attention`
  (float32 logits and softmax statistics); G < H key/value heads is grouped-query attention."""
  if implementation not in ATTENTION_IMPLS:
    raise ValueError(f"attention_impl={implementation!r}; use one of {ATTENTION_IMPLS}")
  return jax.nn.dot_product_attention(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, is_causal=True,
                                      implementation=implementation)


def unembed(hidden_BxLxD: jax.Array, unembed_DxV: jax.Array) -> jax.Array:
  """float32 logits of `hidden` (its dtype is the compute dtype) against a [D, V] matrix."""
  return jnp.einsum("bld,dv->blv", hidden_BxLxD, unembed_DxV.astype(hidden_BxLxD.dtype),
                    preferred_element_type=jnp.float32)
