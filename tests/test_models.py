"""Model output shapes, causality of the GPT, and logical axis names on every parameter."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainlab.models import make_model


def _init(model, example):
  boxed = model.init(jax.random.PRNGKey(0), example)
  return boxed, nn.meta.unbox(boxed)


def test_gpt_shapes_and_causality():
  model = make_model("gpt", vocab_size=256, num_layers=2, d_model=32, num_heads=4, context_len=16)
  tokens = jax.random.randint(jax.random.PRNGKey(1), (3, 16), 0, 256)
  _, variables = _init(model, tokens)
  logits = model.apply(variables, tokens)
  assert logits.shape == (3, 16, 256)
  changed = tokens.at[:, 10].set((tokens[:, 10] + 1) % 256)
  logits_changed = model.apply(variables, changed)
  np.testing.assert_allclose(logits[:, :10], logits_changed[:, :10], rtol=1e-5, atol=1e-5)
  assert not np.allclose(logits[:, 10:], logits_changed[:, 10:])


def test_gpt_rejects_heads_that_do_not_divide_width():
  model = make_model("gpt", d_model=30, num_heads=4, context_len=8)
  with pytest.raises(ValueError, match="not divisible"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))


@pytest.mark.parametrize("name,shape", [("mlp", (4, 28, 28, 1)), ("cnn", (4, 28, 28, 1)),
                                        ("mlp", (4, 8, 8, 1)), ("cnn", (4, 8, 8, 1))])
def test_classifier_shapes(name, shape):
  model = make_model(name, num_classes=10)
  _, variables = _init(model, jnp.zeros(shape))
  assert model.apply(variables, jnp.ones(shape)).shape == (shape[0], 10)


@pytest.mark.parametrize("name,example", [
    ("gpt", jnp.zeros((1, 8), jnp.int32)), ("mlp", jnp.zeros((1, 8, 8, 1))),
    ("cnn", jnp.zeros((1, 8, 8, 1)))])
def test_every_parameter_has_logical_axis_names(name, example):
  kwargs = {"context_len": 8, "d_model": 16, "num_heads": 2} if name == "gpt" else {}
  boxed, variables = _init(make_model(name, **kwargs), example)
  specs = jax.tree.leaves(nn.get_partition_spec(boxed),
                          is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  params = jax.tree.leaves(variables)
  assert len(specs) == len(params)
  for spec, param in zip(specs, params):
    assert len(spec) == param.ndim
