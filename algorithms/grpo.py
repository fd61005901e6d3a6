"""GRPO's math (Shao et al., 2024, arXiv 2402.03300, eq. 3): group-normalized advantages, the
clipped token-mean surrogate (as DAPO), token log-probabilities, sampling, and the fixed rollout
buffer that lets one compiled update serve every allocation.

  A_i = (r_i - mean(r_group)) / (std(r_group) + eps)            (std: unbiased, as verl)
  L = -sum_tokens min(rho A, clip(rho, 1 - e, 1 + e) A) / #tokens,  rho = exp(logp - logp_old)

`apply_fn` is any `apply_fn({"params": params}, tokens_BxL) -> logits_BxLxV`.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

HIST_EDGES = (2, 3, 5, 9, 17, 33, 65, 129)
HIST_LABELS = tuple(f"{lo}" if hi - lo == 1 else f"{lo}-{hi - 1}"
                    for lo, hi in zip(HIST_EDGES[:-1], HIST_EDGES[1:]))


def group_advantages(rewards_R: jax.Array, group_R: jax.Array, valid_R: jax.Array,
                     num_groups: int, eps: float = 1e-6) -> jax.Array:
  """(r - group mean) / (unbiased group std + eps) per valid rollout; 0 on padding rows."""
  w_R = valid_R.astype(jnp.float32)
  count_G = jax.ops.segment_sum(w_R, group_R, num_groups)
  mean_G = jax.ops.segment_sum(w_R * rewards_R, group_R, num_groups) / jnp.maximum(count_G, 1.0)
  centered_R = (rewards_R - mean_G[group_R]) * w_R
  var_G = jax.ops.segment_sum(centered_R**2, group_R, num_groups) / jnp.maximum(count_G - 1, 1.0)
  return centered_R / (jnp.sqrt(var_G)[group_R] + eps)


def clipped_token_loss(logp_RxA: jax.Array, old_logp_RxA: jax.Array, advantages_R: jax.Array,
                       mask_RxA: jax.Array, clip_eps: float) -> tuple[jax.Array, jax.Array]:
  """The clipped surrogate averaged over all unmasked tokens; also the clipped-token share."""
  ratio_RxA = jnp.exp(logp_RxA - old_logp_RxA)
  adv_Rx1 = advantages_R[:, None]
  clipped_RxA = jnp.clip(ratio_RxA, 1.0 - clip_eps, 1.0 + clip_eps) * adv_Rx1
  per_token_RxA = -jnp.minimum(ratio_RxA * adv_Rx1, clipped_RxA)
  num_tokens = jnp.maximum(mask_RxA.sum(), 1.0)
  is_clipped_RxA = (ratio_RxA * adv_Rx1 > clipped_RxA).astype(jnp.float32)
  return ((per_token_RxA * mask_RxA).sum() / num_tokens,
          (is_clipped_RxA * mask_RxA).sum() / num_tokens)


def answer_mask(answers_RxA: jax.Array, eos: int) -> jax.Array:
  """1 on answer tokens up to and including the first `eos`, 0 after it."""
  is_eos_RxA = (answers_RxA == eos).astype(jnp.int32)
  return (jnp.cumsum(is_eos_RxA, axis=1) - is_eos_RxA == 0).astype(jnp.float32)


def token_logprobs(apply_fn: Callable[..., jax.Array], params: Any, prompts_RxP: jax.Array,
                   answers_RxA: jax.Array) -> jax.Array:
  """log pi(answer token | prefix) for every answer position."""
  tokens_RxL = jnp.concatenate([prompts_RxP, answers_RxA], axis=1)
  logits_RxLxV = apply_fn({"params": params}, tokens_RxL[:, :-1])
  logits_RxAxV = logits_RxLxV[:, prompts_RxP.shape[1] - 1:]
  logp_RxAxV = jax.nn.log_softmax(logits_RxAxV.astype(jnp.float32))
  return jnp.take_along_axis(logp_RxAxV, answers_RxA[..., None], axis=-1)[..., 0]


def generate(apply_fn: Callable[..., jax.Array], params: Any, prompts_RxP: jax.Array,
             rng: jax.Array, answer_len: int, temperature: float,
             pad: int = 0) -> tuple[jax.Array, jax.Array]:
  """Samples `answer_len` tokens per row (greedy when `temperature == 0`); returns the answer
  tokens and their log-probabilities under the untempered policy.

  One causal forward over the whole fixed-length buffer per token: positions after the one
  being predicted are never attended to, so their contents do not matter.
  """
  num_rows, prompt_len = prompts_RxP.shape
  tokens_RxL = jnp.concatenate(
      [prompts_RxP, jnp.full((num_rows, answer_len), pad, jnp.int32)], axis=1)

  def body(t, carry):
    tokens_RxL, logp_RxA = carry
    logits_RxLxV = apply_fn({"params": params}, tokens_RxL[:, :-1])
    logits_RxV = jax.lax.dynamic_index_in_dim(logits_RxLxV, prompt_len - 1 + t, axis=1,
                                              keepdims=False).astype(jnp.float32)
    if temperature == 0:
      next_R = jnp.argmax(logits_RxV, axis=-1)
    else:
      next_R = jax.random.categorical(jax.random.fold_in(rng, t), logits_RxV / temperature)
    next_R = next_R.astype(jnp.int32)
    logp_R = jnp.take_along_axis(jax.nn.log_softmax(logits_RxV), next_R[:, None], axis=-1)[:, 0]
    tokens_RxL = jax.lax.dynamic_update_index_in_dim(tokens_RxL, next_R, prompt_len + t, axis=1)
    logp_RxA = jax.lax.dynamic_update_index_in_dim(logp_RxA, logp_R, t, axis=1)
    return tokens_RxL, logp_RxA

  tokens_RxL, logp_RxA = jax.lax.fori_loop(
      0, answer_len, body, (tokens_RxL, jnp.zeros((num_rows, answer_len), jnp.float32)))
  return tokens_RxL[:, prompt_len:], logp_RxA


def rollout_buffer(counts_M: np.ndarray, buffer_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Group index per buffer row (rows past the allocation point at group 0) and validity."""
  used = int(counts_M.sum())
  if used > buffer_size:
    raise ValueError(f"allocation of {used} rollouts exceeds the buffer of {buffer_size}")
  group_R = np.zeros(buffer_size, np.int32)
  group_R[:used] = np.repeat(np.arange(len(counts_M), dtype=np.int32), counts_M)
  return group_R, np.arange(buffer_size) < used


def allocation_histogram(counts_M: np.ndarray) -> dict[str, int]:
  hist, _ = np.histogram(counts_M, bins=HIST_EDGES)
  return {f"alloc_hist/{label}": int(h) for label, h in zip(HIST_LABELS, hist)}
