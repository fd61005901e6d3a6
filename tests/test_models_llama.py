"""The LLaMA-style decoder against a float64 NumPy forward pass written from the papers, its
causality, grouped-query attention, tied vs untied embeddings and its building blocks."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest

from trainlab.models import layers, make_model
from trainlab.models.llama import swiglu_width

VOCAB, D, HEADS, SEQ = 64, 32, 4, 12


def _model(**kwargs):
  return make_model("llama", **{"vocab_size": VOCAB, "num_layers": 2, "d_model": D,
                                "num_heads": HEADS, **kwargs})


def _params(model, tokens, scale=5.0):
  """Weights at 5x the init scale (std 0.1), so attention is far from uniform."""
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), tokens))["params"]
  return jax.tree.map(lambda x: x * scale if x.ndim > 1 else x, params)


def _tokens(batch=3):
  return jax.random.randint(jax.random.PRNGKey(1), (batch, SEQ), 0, VOCAB)


def _np_rms_norm(x, scale, eps):
  return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * scale


def _np_rope(x_LxHxK, base):
  """Su et al. eq. 34 as complex multiplication: (x_2i + i x_2i+1) * exp(i m theta_i)."""
  seq_len, _, head_dim = x_LxHxK.shape
  theta = base ** (-np.arange(0, head_dim, 2) / head_dim)
  z = x_LxHxK[..., 0::2] + 1j * x_LxHxK[..., 1::2]
  z = z * np.exp(1j * np.arange(seq_len)[:, None, None] * theta)
  out = np.empty_like(x_LxHxK)
  out[..., 0::2], out[..., 1::2] = z.real, z.imag
  return out


def _np_llama(params, tokens, num_heads, num_kv_heads, tied, eps=1e-5, base=10000.0):
  """Float64 forward pass, one sequence and one head at a time, with an explicit causal mask."""
  p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  out = []
  for seq in np.asarray(tokens):
    x = p["embed"]["embedding"][seq]
    seq_len = len(seq)
    for i in range(sum(k.startswith("block_") for k in p)):
      b = p[f"block_{i}"]
      h = _np_rms_norm(x, b["attn_norm"]["scale"], eps)
      q = _np_rope(np.einsum("ld,dhk->lhk", h, b["attn"]["query"]["kernel"]), base)
      k = _np_rope(np.einsum("ld,dgk->lgk", h, b["attn"]["key"]["kernel"]), base)
      v = np.einsum("ld,dgk->lgk", h, b["attn"]["value"]["kernel"])
      heads = []
      for head in range(num_heads):
        kv = head // (num_heads // num_kv_heads)
        scores = q[:, head] @ k[:, kv].T / np.sqrt(q.shape[-1])
        scores = np.where(np.tril(np.ones((seq_len, seq_len), bool)), scores, -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        heads.append(probs / probs.sum(-1, keepdims=True) @ v[:, kv])
      x = x + np.einsum("lhk,hkd->ld", np.stack(heads, 1), b["attn"]["out"]["kernel"])
      h = _np_rms_norm(x, b["mlp_norm"]["scale"], eps)
      gate, up = h @ b["mlp"]["gate"]["kernel"], h @ b["mlp"]["up"]["kernel"]
      x = x + (gate / (1 + np.exp(-gate)) * up) @ b["mlp"]["down"]["kernel"]
    h = _np_rms_norm(x, p["final_norm"]["scale"], eps)
    out.append(h @ (p["embed"]["embedding"].T if tied else p["head"]))
  return np.stack(out)


@pytest.mark.parametrize("kv_heads,tied", [(None, True), (2, False), (1, True)])
def test_llama_matches_float64_numpy_forward(kv_heads, tied):
  model = _model(num_kv_heads=kv_heads, tie_embeddings=tied)
  tokens = _tokens()
  params = _params(model, tokens)
  logits = model.apply({"params": params}, tokens)
  assert logits.shape == (3, SEQ, VOCAB) and logits.dtype == np.float32
  expected = _np_llama(params, tokens, HEADS, kv_heads or HEADS, tied)
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_llama_is_causal():
  model = _model()
  tokens = _tokens()
  params = _params(model, tokens)
  logits = model.apply({"params": params}, tokens)
  changed = tokens.at[:, 7].set((tokens[:, 7] + 1) % VOCAB)
  logits_changed = model.apply({"params": params}, changed)
  np.testing.assert_allclose(logits[:, :7], logits_changed[:, :7], rtol=1e-6, atol=1e-6)
  assert np.all(np.abs(logits[:, 7:] - logits_changed[:, 7:]).max(-1) > 1e-3)


def test_grouped_query_attention_is_attention_with_repeated_key_value_heads():
  gqa, mha = _model(num_kv_heads=2), _model()
  tokens = _tokens()
  params = _params(gqa, tokens)
  assert params["block_0"]["attn"]["key"]["kernel"].shape == (D, 2, D // HEADS)
  assert params["block_0"]["attn"]["query"]["kernel"].shape == (D, HEADS, D // HEADS)
  repeated = jax.tree.map(lambda x: x, params)
  for i in range(2):
    for name in ("key", "value"):
      kernel = params[f"block_{i}"]["attn"][name]["kernel"]
      repeated[f"block_{i}"]["attn"][name] = {"kernel": np.repeat(kernel, HEADS // 2, axis=1)}
  np.testing.assert_allclose(gqa.apply({"params": params}, tokens),
                             mha.apply({"params": repeated}, tokens), rtol=1e-5, atol=1e-5)


def test_untied_head_with_the_embedding_as_kernel_equals_the_tied_model():
  tied, untied = _model(), _model(tie_embeddings=False)
  tokens = _tokens()
  params = _params(untied, tokens)
  assert params["head"].shape == (D, VOCAB) and "head" not in _params(tied, tokens)
  same = dict(params, head=params["embed"]["embedding"].T)
  tied_params = {k: v for k, v in params.items() if k != "head"}
  np.testing.assert_allclose(untied.apply({"params": same}, tokens),
                             tied.apply({"params": tied_params}, tokens), rtol=1e-6, atol=1e-6)
  assert not np.allclose(untied.apply({"params": params}, tokens),
                         tied.apply({"params": tied_params}, tokens), atol=1e-3)


@pytest.mark.parametrize("name,tied", [("llama", True), ("llama", False), ("gpt", True)])
def test_hidden_states_times_unembedding_are_the_logits(name, tied):
  kwargs = {"tie_embeddings": tied} if name == "llama" else {"context_len": SEQ}
  model = make_model(name, vocab_size=VOCAB, num_layers=1, d_model=D, num_heads=HEADS, **kwargs)
  tokens = _tokens()
  params = _params(model, tokens)
  hidden = model.apply({"params": params}, tokens, return_hidden=True)
  assert hidden.shape == (3, SEQ, D)
  np.testing.assert_allclose(layers.unembed(hidden, model.unembedding_DxV(params)),
                             model.apply({"params": params}, tokens), rtol=1e-6, atol=1e-6)


def test_rms_norm_and_rope_match_numpy():
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(2), (2, 5, 3, 8)), np.float64)
  rotated = layers.rotary_embedding(x.astype(np.float32), base=500.0)
  for b in range(2):
    np.testing.assert_allclose(rotated[b], _np_rope(x[b], 500.0), rtol=1e-5, atol=1e-6)
  norm = layers.RMSNorm(eps=1e-5)
  scale = np.linspace(0.5, 2.0, 8)
  out = norm.apply({"params": {"scale": scale.astype(np.float32)}}, x.astype(np.float32))
  np.testing.assert_allclose(out, _np_rms_norm(x, scale, 1e-5), rtol=1e-5, atol=1e-6)


def test_swiglu_width_and_explicit_mlp_dim():
  assert [swiglu_width(d) for d in (32, 768, 1024)] == [128, 2048, 2752]
  assert swiglu_width(1024, multiple_of=256) == 2816  # the WSD code's rounding
  params = _params(_model(mlp_dim=48), _tokens(1))
  assert params["block_0"]["mlp"]["gate"]["kernel"].shape == (D, 48)


def test_llama_rejects_bad_head_counts():
  with pytest.raises(ValueError, match="does not divide"):
    _model(num_kv_heads=3).init(jax.random.PRNGKey(0), _tokens(1))
  with pytest.raises(ValueError, match="not divisible"):
    _model(d_model=30).init(jax.random.PRNGKey(0), _tokens(1))
