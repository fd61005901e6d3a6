"""Model output shapes, causality of the GPT, and logical axis names on every parameter."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainlab.models import make_model
from trainlab.training.sharding import LOGICAL_RULES


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


def test_gpt_parameter_tree_is_the_checkpoint_layout():
  model = make_model("gpt", vocab_size=50, num_layers=2, d_model=8, num_heads=2, context_len=6)
  _, variables = _init(model, jnp.zeros((1, 6), jnp.int32))
  shapes = {jax.tree_util.keystr(path): leaf.shape
            for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"])}
  block = {"attn']['key']['kernel": (8, 2, 4), "attn']['out']['kernel": (2, 4, 8),
           "attn']['query']['kernel": (8, 2, 4), "attn']['value']['kernel": (8, 2, 4),
           "ln1']['bias": (8,), "ln1']['scale": (8,), "ln2']['bias": (8,), "ln2']['scale": (8,),
           "mlp_in']['kernel": (8, 32), "mlp_out']['kernel": (32, 8)}
  expected = {f"['block_{i}']['{k}']": v for i in range(2) for k, v in block.items()}
  expected.update({"['embed']['embedding']": (50, 8), "['ln_final']['bias']": (8,),
                   "['ln_final']['scale']": (8,), "['positions']": (6, 8)})
  assert shapes == expected
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))


def _np_layer_norm(x, p):
  mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-6) * p["scale"] + p["bias"]


def _np_gpt(params, tokens, num_heads):
  """Float64 GPT forward, one sequence and one head at a time, explicit causal mask; GELU in
  its tanh form (Hendrycks & Gimpel, arXiv 1606.08415, section 2), as Flax's default."""
  p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  out = []
  for seq in np.asarray(tokens):
    x = p["embed"]["embedding"][seq] + p["positions"][:len(seq)]
    causal = np.tril(np.ones((len(seq), len(seq)), bool))
    for i in range(sum(k.startswith("block_") for k in p)):
      b = p[f"block_{i}"]
      h = _np_layer_norm(x, b["ln1"])
      q, k, v = (np.einsum("ld,dhk->lhk", h, b["attn"][n]["kernel"])
                 for n in ("query", "key", "value"))
      heads = []
      for head in range(num_heads):
        scores = np.where(causal, q[:, head] @ k[:, head].T / np.sqrt(q.shape[-1]), -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        heads.append(probs / probs.sum(-1, keepdims=True) @ v[:, head])
      x = x + np.einsum("lhk,hkd->ld", np.stack(heads, 1), b["attn"]["out"]["kernel"])
      u = _np_layer_norm(x, b["ln2"]) @ b["mlp_in"]["kernel"]
      gelu = 0.5 * u * (1 + np.tanh(np.sqrt(2 / np.pi) * (u + 0.044715 * u**3)))
      x = x + gelu @ b["mlp_out"]["kernel"]
    out.append(_np_layer_norm(x, p["ln_final"]) @ p["embed"]["embedding"].T)
  return np.stack(out)


def test_gpt_matches_float64_numpy_forward():
  model = make_model("gpt", vocab_size=64, num_layers=2, d_model=32, num_heads=4, context_len=16)
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 12), 0, 64)
  _, variables = _init(model, tokens)
  params = jax.tree.map(lambda x: x * 5 if x.ndim > 1 else x, variables["params"])  # std 0.1
  expected = _np_gpt(params, tokens, num_heads=4)
  logits = model.apply({"params": params}, tokens)
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


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


TOKENS = jnp.zeros((1, 8), jnp.int32)
LM = {"d_model": 16, "num_heads": 2}
UNSHARDED_AXES = {"head_dim", "seq", "conv_in", None}  # named for readers; never sharded


@pytest.mark.parametrize("name,kwargs,example", [
    ("gpt", {"context_len": 8, **LM}, TOKENS),
    ("gpt", {"context_len": 8, "scan_layers": True, "remat": "full", **LM}, TOKENS),
    ("llama", LM, TOKENS),
    ("llama", {"num_kv_heads": 1, "tie_embeddings": False, "scan_layers": True, **LM}, TOKENS),
    ("mlp", {}, jnp.zeros((1, 8, 8, 1))), ("cnn", {}, jnp.zeros((1, 8, 8, 1)))])
def test_every_parameter_has_logical_axis_names(name, kwargs, example):
  boxed, variables = _init(make_model(name, **kwargs), example)
  is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)
  specs = jax.tree.leaves(nn.get_partition_spec(boxed), is_leaf=is_spec)
  params = jax.tree.leaves(variables)
  assert len(specs) == len(params)
  for spec, param in zip(specs, params):
    assert len(spec) == param.ndim
    assert set(spec) <= set(LOGICAL_RULES) | UNSHARDED_AXES, spec
  if kwargs.get("scan_layers"):
    stacked = nn.get_partition_spec(boxed)["params"]["blocks"]
    assert all(spec[0] == "layers" for spec in jax.tree.leaves(stacked, is_leaf=is_spec))
    assert LOGICAL_RULES["layers"] is None
