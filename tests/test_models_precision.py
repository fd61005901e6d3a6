"""bfloat16 compute with float32 parameters against the float32 model on the same weights.

Tolerance: bfloat16 keeps 8 significant bits, so one round-to-nearest has relative error at
most u = 2^-8. The forward pass rounds each activation once per operation: embedding, and per
block about 7 (norm output, q/k/v, attention output, its projection, residual sum, MLP hidden
and output, second residual sum), then the final norm: n ~ 17 roundings for 2 blocks.
Independent, unbiased rounding errors add in quadrature, so the logits' relative L2 error
should be about u * sqrt(n) ~ 4u = 2^-6; that is the bar. The backward pass rounds each
cotangent once more per operation, about 2n roundings: u * sqrt(2n) ~ 6u for the gradients.
Measured with std-0.1 weights (2 blocks, d = 32): logits 1.9u (GPT) and 2.1u (llama),
gradients 1.4u and 2.1u. Wrong weights or a wrong operation give O(1) errors (a bfloat16
softmax is one rounding more, which this cannot see); and the error must exceed u / 8, which
a model secretly running in float32 (~1e-7) cannot.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainlab.models import make_model

U_BF16 = 2.0**-8


def _relative_l2(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(a)


@pytest.mark.parametrize("name", ["gpt", "llama"])
def test_bfloat16_compute_matches_float32_within_bfloat16_rounding(name):
  kwargs = {"vocab_size": 256, "num_layers": 2, "d_model": 32, "num_heads": 4}
  kwargs.update({"context_len": 32} if name == "gpt" else {"num_kv_heads": 2})
  f32 = make_model(name, **kwargs)
  bf16 = make_model(name, dtype="bfloat16", param_dtype="float32", **kwargs)
  tokens = jax.random.randint(jax.random.PRNGKey(1), (4, 32), 0, 256)
  params = nn.meta.unbox(bf16.init(jax.random.PRNGKey(0), tokens))["params"]
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  params = jax.tree.map(lambda x: x * 5 if x.ndim > 1 else x, params)  # std 0.1

  logits_f32 = f32.apply({"params": params}, tokens)
  logits_bf16 = bf16.apply({"params": params}, tokens)
  assert logits_bf16.dtype == jnp.float32
  assert bf16.apply({"params": params}, tokens, return_hidden=True).dtype == jnp.bfloat16
  error = _relative_l2(logits_f32, logits_bf16)
  assert U_BF16 / 8 < error < 4 * U_BF16, error

  # Gradients of a float32 loss through the bfloat16 model stay float32 and close.
  def loss(p, model):
    return jnp.mean(jax.nn.logsumexp(model.apply({"params": p}, tokens), -1))
  grads_f32, grads_bf16 = (jax.grad(loss)(params, m) for m in (f32, bf16))
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads_bf16))
  flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])
  assert _relative_l2(flat(grads_f32), flat(grads_bf16)) < 6 * U_BF16


def test_dtype_names_are_checked():
  model = make_model("llama", num_layers=1, d_model=16, num_heads=2, dtype="bfloat17")
  with pytest.raises(ValueError, match="bfloat17"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))
