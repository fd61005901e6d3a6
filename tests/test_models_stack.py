"""Scanned layers and rematerialization change how the blocks compile, not what they compute:
scanned == unscanned on the same weights (moved by `stack_layers`), and every remat policy
gives the loss and gradients of none."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainlab.models import make_model, stack

NUM_LAYERS = 3
KWARGS = {"gpt": {"context_len": 8}, "llama": {"num_kv_heads": 2, "tie_embeddings": False}}


def _model(name, **options):
  return make_model(name, vocab_size=64, num_layers=NUM_LAYERS, d_model=16, num_heads=4,
                    **KWARGS[name], **options)


def _setup(name):
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 8), 0, 64)
  params = nn.meta.unbox(_model(name).init(jax.random.PRNGKey(0), tokens))["params"]
  params = jax.tree.map(lambda x: x * 5 if x.ndim > 1 else x, params)  # std 0.1
  return tokens, params


def _loss(model, params, tokens):
  logits = model.apply({"params": params}, tokens)
  return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[..., 0])


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", ["gpt", "llama"])
def test_scanned_equals_unscanned_on_the_same_weights(name):
  tokens, params = _setup(name)
  scanned_model = _model(name, scan_layers=True)
  scanned = stack.stack_layers(params, NUM_LAYERS)
  init_shapes = jax.eval_shape(scanned_model.init, jax.random.PRNGKey(0), tokens)["params"]
  assert (jax.tree.map(lambda x: x.shape, nn.meta.unbox(init_shapes))
          == jax.tree.map(lambda x: x.shape, scanned))
  assert "block_0" not in scanned and jax.tree.leaves(scanned["blocks"])[0].shape[0] == NUM_LAYERS
  _assert_trees_close(_model(name).apply({"params": params}, tokens),
                      scanned_model.apply({"params": scanned}, tokens))
  grads = jax.grad(_loss, 1)(_model(name), params, tokens)
  scanned_grads = jax.grad(_loss, 1)(scanned_model, scanned, tokens)
  _assert_trees_close(grads, stack.unstack_layers(scanned_grads))


def test_stack_and_unstack_are_inverse_and_check_their_input():
  _, params = _setup("gpt")
  back = stack.unstack_layers(stack.stack_layers(params, NUM_LAYERS))
  assert jax.tree.structure(back) == jax.tree.structure(params)
  for x, y in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
    np.testing.assert_array_equal(x, y)
  with pytest.raises(ValueError, match="missing"):
    stack.stack_layers(params, NUM_LAYERS + 1)
  with pytest.raises(ValueError, match="not a scanned tree"):
    stack.unstack_layers(params)


@pytest.mark.parametrize("name,remat,scan_layers", [
    ("gpt", "full", False), ("gpt", "dots_saveable", True), ("llama", "minimal", False),
    ("llama", "full", True)])
def test_remat_gives_the_loss_and_gradients_of_none(name, remat, scan_layers):
  tokens, params = _setup(name)
  params = stack.stack_layers(params, NUM_LAYERS) if scan_layers else params
  plain = _model(name, scan_layers=scan_layers)
  rematted = _model(name, remat=remat, scan_layers=scan_layers)
  loss, grads = jax.value_and_grad(_loss, 1)(plain, params, tokens)
  loss_remat, grads_remat = jax.value_and_grad(_loss, 1)(rematted, params, tokens)
  np.testing.assert_allclose(loss, loss_remat, rtol=1e-6)
  _assert_trees_close(grads, grads_remat)
  jaxpr = str(jax.make_jaxpr(jax.grad(_loss, 1), static_argnums=0)(rematted, params, tokens))
  assert "remat" in jaxpr or "checkpoint" in jaxpr


def test_unknown_remat_policy_is_rejected():
  with pytest.raises(ValueError, match="remat='some'"):
    _model("gpt", remat="some").init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))
