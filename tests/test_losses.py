"""Cross-entropy, whole and chunked over positions, against float64 NumPy values and gradients."""

from __future__ import annotations

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

from trainlab.models import layers
from trainlab.training import losses

B, L, D, V = 2, 12, 8, 50


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  hidden = rng.normal(size=(B, L, D)).astype(np.float32)
  unembed = rng.normal(size=(D, V)).astype(np.float32)
  targets = rng.integers(0, V, size=(B, L)).astype(np.int32)
  weights = (rng.random((B, L)) < 0.7).astype(np.float32)
  return hidden, unembed, targets, weights


def _np_loss_and_grads(hidden, unembed, targets, weights):
  """Float64 mean cross-entropy of logits h @ W and its gradients in closed form:
  d loss / d logits = w (softmax - onehot) / sum(w)."""
  h, w_dv = hidden.astype(np.float64), unembed.astype(np.float64)
  logits = h @ w_dv
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  onehot = np.eye(V)[targets]
  total = max(weights.sum(), 1.0)
  loss = -np.sum((log_probs * onehot).sum(-1) * weights) / total
  dlogits = weights[..., None] * (np.exp(log_probs) - onehot) / total
  return loss, dlogits @ w_dv.T, np.einsum("bld,blv->dv", h, dlogits)


def test_cross_entropy_matches_numpy():
  hidden, unembed, targets, weights = _inputs()
  loss, total = losses.cross_entropy(hidden @ unembed, targets, weights)
  expected, _, _ = _np_loss_and_grads(hidden, unembed, targets, weights)
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  assert total == weights.sum()


@pytest.mark.parametrize("chunk_size", [1, 4, 5, 12, 64])  # 5 does not divide L: padded
def test_chunked_loss_value_and_gradients_match_numpy(chunk_size):
  hidden, unembed, targets, weights = _inputs()
  fn = lambda h, w: losses.chunked_cross_entropy(h, w, targets, weights, chunk_size)
  (loss, total), grads = jax.value_and_grad(fn, argnums=(0, 1), has_aux=True)(hidden, unembed)
  expected, dhidden, dunembed = _np_loss_and_grads(hidden, unembed, targets, weights)
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  assert total == weights.sum()
  np.testing.assert_allclose(grads[0], dhidden, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(grads[1], dunembed, rtol=1e-5, atol=1e-7)


def test_chunked_loss_equals_the_loss_of_the_models_logits_in_bfloat16():
  hidden, unembed, targets, weights = _inputs(1)
  hidden = jnp.asarray(hidden, jnp.bfloat16)
  full = lambda h, w: losses.cross_entropy(layers.unembed(h, w), targets, weights)[0]
  chunked = lambda h, w: losses.chunked_cross_entropy(h, w, targets, weights, 4)[0]
  value, grads = jax.value_and_grad(full, (0, 1))(hidden, unembed)
  value_chunked, grads_chunked = jax.value_and_grad(chunked, (0, 1))(hidden, unembed)
  np.testing.assert_allclose(value, value_chunked, rtol=1e-6)
  # The unchunked gradient of the unembedding is rounded to bfloat16 once; the chunked one
  # per chunk, then summed in float32: they differ by about one rounding, u = 2^-8.
  for g, g_chunked in zip(grads, grads_chunked):
    assert g.dtype == g_chunked.dtype
    g, g_chunked = np.float64(g), np.float64(g_chunked)
    assert np.linalg.norm(g - g_chunked) / np.linalg.norm(g) < 2**-8


def _intermediate_shapes(jaxpr) -> set[tuple[int, ...]]:
  """Shapes of every value a jaxpr and the jaxprs inside it (scan, checkpoint) compute."""
  shapes = set()
  for eqn in jaxpr.eqns:
    shapes |= {tuple(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape")}
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      shapes |= _intermediate_shapes(sub)
  return shapes


def test_chunked_loss_and_its_gradient_never_hold_the_whole_batchs_logits():
  hidden, unembed, targets, weights = _inputs()
  chunked = lambda h, w: losses.chunked_cross_entropy(h, w, targets, weights, 3)[0]
  shapes = _intermediate_shapes(jax.make_jaxpr(jax.value_and_grad(chunked, (0, 1)))(
      hidden, unembed).jaxpr)
  assert (B, 3, V) in shapes and max(map(np.prod, shapes)) < B * L * V
  full = lambda h, w: losses.cross_entropy(h @ w, targets, weights)[0]
  shapes = _intermediate_shapes(jax.make_jaxpr(jax.value_and_grad(full, (0, 1)))(
      hidden, unembed).jaxpr)
  assert (B, L, V) in shapes


def test_chunk_size_must_be_positive():
  hidden, unembed, targets, weights = _inputs()
  with pytest.raises(ValueError, match="chunk_size=0"):
    losses.chunked_cross_entropy(hidden, unembed, targets, weights, 0)
