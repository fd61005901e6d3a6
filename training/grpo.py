"""GRPO (Shao et al., 2024, arXiv 2402.03300, eq. 3) with Knapsack-RL rollout allocation
(Li et al., 2025, arXiv 2509.25849, eq. 5) on verifiable integer arithmetic.

One RL step: take the next `prompts_per_step` prompts of a fixed pool (shuffled per epoch),
give them a fixed total of `prompts_per_step * rollouts_per_prompt` rollouts, either uniformly
or by `algorithms.knapsack.allocate_rollouts` from each prompt's success rate in its previous
epoch (prompts without history get the default count), sample the answers, reward exact
matches, and update the policy with the clipped GRPO objective:

  A_i = (r_i - mean(r_group)) / (std(r_group) + eps)            (group-normalized, eq. 3)
  L = -sum_tokens min(rho A, clip(rho, 1 - e, 1 + e) A) / #tokens  (token mean, as in DAPO)

with `rho = exp(logp - logp_old)` and `std` the unbiased group std (as verl). The rollouts of
any allocation sit in one fixed buffer of `R = total_budget` rows with a validity mask, so one
compiled sampler and one compiled update serve every step. No KL term (as the Knapsack-RL runs).
Before RL, a short supervised phase on solved examples warm-starts the policy so that pass
rates spread between 0 and 1. Everything is a pure function of `config.seed`.
"""

from __future__ import annotations

import functools
import json
import pathlib
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from trainlab.algorithms import knapsack
from trainlab.data import arithmetic
from trainlab.errors import UsageError
from trainlab.models import GPT
from trainlab.training import metrics as metrics_lib
from trainlab.training.config import int_at_least, require
from trainlab.training.optimizer import build_optimizer
from trainlab.training.state import TrainState

ALLOCATIONS = ("uniform", "knapsack")
_COMPILED: dict[str, tuple[Callable[..., Any], ...]] = {}  # config key -> jitted functions
_WARM_STARTS: dict[str, tuple[Any, float]] = {}  # warm-start key -> (host params, final loss)
HIST_EDGES = (2, 3, 5, 9, 17, 33, 65, 129)
HIST_LABELS = tuple(f"{lo}" if hi - lo == 1 else f"{lo}-{hi - 1}"
                    for lo, hi in zip(HIST_EDGES[:-1], HIST_EDGES[1:]))


# ---------------------------------------------------------------------------------------------
# The math: group advantages, token log-probabilities, the clipped token-mean loss.

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
  return (per_token_RxA * mask_RxA).sum() / num_tokens, (is_clipped_RxA * mask_RxA).sum() / num_tokens


def answer_mask(answers_RxA: jax.Array) -> jax.Array:
  """1 on answer tokens up to and including the first EOS, 0 after it."""
  is_eos_RxA = (answers_RxA == arithmetic.EOS).astype(jnp.int32)
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
             rng: jax.Array, answer_len: int, temperature: float) -> tuple[jax.Array, jax.Array]:
  """Samples `answer_len` tokens per row (greedy when `temperature == 0`); returns the answer
  tokens and their log-probabilities under the untempered policy.

  One causal forward over the whole fixed-length buffer per token: positions after the one
  being predicted are never attended to, so their contents do not matter.
  """
  num_rows, prompt_len = prompts_RxP.shape
  tokens_RxL = jnp.concatenate(
      [prompts_RxP, jnp.full((num_rows, answer_len), arithmetic.PAD, jnp.int32)], axis=1)

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


# ---------------------------------------------------------------------------------------------
# Host-side bookkeeping: allocation, the static rollout buffer, histogram.

def allocate(allocation: str, success_rates_M: np.ndarray, total_budget: int,
             rl_config: Any) -> np.ndarray:
  """Rollouts per prompt; NaN success rates mean "no history" (default count)."""
  if allocation == "uniform":
    return np.full(success_rates_M.shape, rl_config.rollouts_per_prompt, np.int64)
  valid_M = ~np.isnan(success_rates_M)
  return knapsack.allocate_rollouts(
      np.nan_to_num(success_rates_M), total_budget, min_rollouts=rl_config.min_rollouts,
      max_rollouts=rl_config.max_rollouts, default_rollouts=rl_config.rollouts_per_prompt,
      valid=valid_M, method="exact")


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


# ---------------------------------------------------------------------------------------------
# Config validation.

def validate(config: Any) -> None:
  """Raises `UsageError` naming the first bad key."""
  require(config.allocation in ALLOCATIONS,
          f"allocation={config.allocation!r} is unknown; use one of {', '.join(ALLOCATIONS)}")
  int_at_least(config, "seed", 0)
  for key in ("total_steps", "task.pool_size", "task.heldout_size", "task.max_add_digits",
              "task.max_mul_digits", "rl.prompts_per_step", "rl.updates_per_step",
              "model.num_layers", "model.d_model", "model.num_heads", "model.mlp_ratio",
              "sft.batch_size"):
    int_at_least(config, key, 1)
  for key in ("sft.steps", "eval.every_steps"):
    int_at_least(config, key, 0)
  low = int_at_least(config, "rl.min_rollouts", 2)
  default = int_at_least(config, "rl.rollouts_per_prompt", low)
  int_at_least(config, "rl.max_rollouts", default)
  require(config.task.pool_size % config.rl.prompts_per_step == 0,
          f"task.pool_size={config.task.pool_size} is not a multiple of rl.prompts_per_step="
          f"{config.rl.prompts_per_step}; change one so epochs cover the pool exactly")
  require(0.0 <= config.task.mul_fraction <= 1.0,
          f"task.mul_fraction={config.task.mul_fraction!r} must be in [0, 1]")
  require(config.model.d_model % config.model.num_heads == 0,
          f"model.d_model={config.model.d_model} is not divisible by model.num_heads="
          f"{config.model.num_heads}; change one")
  require(0.0 < config.rl.clip_eps < 1.0, f"rl.clip_eps={config.rl.clip_eps!r} must be in (0, 1)")
  require(config.rl.temperature > 0, f"rl.temperature={config.rl.temperature!r} must be > 0")
  for key in ("sft.learning_rate", "optimizer.learning_rate"):
    section, name = key.split(".")
    lr = config[section][name]
    require(isinstance(lr, (int, float)) and lr > 0, f"{key}={lr!r} must be a positive number")
  try:
    build_optimizer(config)
  except (ValueError, TypeError, KeyError) as e:
    raise UsageError(f"optimizer: {e}; fix optimizer.* or schedule.* in the config") from None


# ---------------------------------------------------------------------------------------------
# The trainer.

class GRPOTrainer:
  """The policy, its optimizer, the prompt pool and the compiled sampler, update and SFT step."""

  def __init__(self, config: Any):
    validate(config)
    self.config = config
    task, rl = config.task, config.rl
    digits = dict(max_add_digits=task.max_add_digits, max_mul_digits=task.max_mul_digits)
    problem_kwargs = dict(**digits, mul_fraction=task.mul_fraction)
    self.prompt_len = arithmetic.prompt_len(**digits)
    self.answer_len = arithmetic.answer_len(**digits)
    self.pool = arithmetic.make_problems(config.seed, "pool", 0, task.pool_size, **problem_kwargs)
    self.heldout = arithmetic.make_problems(0, "heldout", 0, task.heldout_size, **problem_kwargs)
    self._sft_problems = functools.partial(arithmetic.make_problems, config.seed, "sft",
                                           **problem_kwargs)
    self.buffer_size = rl.prompts_per_step * rl.rollouts_per_prompt
    self.model = GPT(vocab_size=arithmetic.VOCAB_SIZE, num_layers=config.model.num_layers,
                     d_model=config.model.d_model, num_heads=config.model.num_heads,
                     mlp_ratio=config.model.mlp_ratio,
                     context_len=self.prompt_len + self.answer_len)
    self.tx = build_optimizer(config)
    self.sft_tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(config.sft.learning_rate))
    # The compiled functions read only the model, optimizer, rl and sft configs (never the seed
    # or the allocation), so runs that share those share one compilation in this process.
    key = json.dumps({k: v for k, v in config.to_dict().items()
                      if k in ("model", "optimizer", "schedule", "total_steps", "rl", "sft")}
                     | {"digits": [task.max_add_digits, task.max_mul_digits]}, sort_keys=True)
    if key not in _COMPILED:
      apply_fn = self.model.apply
      _COMPILED[key] = (
          jax.jit(functools.partial(generate, apply_fn, answer_len=self.answer_len,
                                    temperature=rl.temperature)),
          jax.jit(functools.partial(generate, apply_fn, answer_len=self.answer_len,
                                    temperature=0.0)),
          jax.jit(self._rl_step, donate_argnums=0),
          jax.jit(self._sft_step, donate_argnums=(0, 1)))
    self.sample, self.greedy, self.rl_step, self.sft_step = _COMPILED[key]

  def init_state(self) -> TrainState:
    init_rng, train_rng = jax.random.split(jax.random.PRNGKey(self.config.seed))
    example = jnp.zeros((1, self.prompt_len + self.answer_len), jnp.int32)
    params = nn.meta.unbox(self.model.init(init_rng, example))["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.tx.init(params), rng=train_rng)

  def _sft_step(self, params: Any, opt_state: Any, prompts_BxP: jax.Array,
                answers_BxA: jax.Array) -> tuple[Any, Any, jax.Array]:
    def loss_fn(p):
      logp_BxA = token_logprobs(self.model.apply, p, prompts_BxP, answers_BxA)
      mask_BxA = answer_mask(answers_BxA)
      return -(logp_BxA * mask_BxA).sum() / mask_BxA.sum()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = self.sft_tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  def warm_start(self, state: TrainState) -> tuple[TrainState, float]:
    """Supervised steps on solved examples (teacher forcing on the answer tokens).

    The result depends only on the seed and the task, model and sft configs, so it is kept
    in this process (as host arrays) for the next run that shares them, e.g. the other
    allocation of a comparison.
    """
    key = json.dumps([self.config.seed, self.config.task.to_dict(), self.config.model.to_dict(),
                      self.config.sft.to_dict()], sort_keys=True)
    if key not in _WARM_STARTS:
      params, opt_state, loss = state.params, self.sft_tx.init(state.params), jnp.zeros(())
      batch = self.config.sft.batch_size
      for step in range(self.config.sft.steps):
        problems = self._sft_problems(step * batch, batch)
        params, opt_state, loss = self.sft_step(params, opt_state, problems.prompts_NxP,
                                                problems.answers_NxA)
      _WARM_STARTS[key] = (jax.device_get(params), float(loss))
    params, loss = _WARM_STARTS[key]
    params = jax.tree.map(jnp.array, params)
    return state.replace(params=params, opt_state=self.tx.init(params)), loss

  def _rl_step(self, state: TrainState, prompts_RxP: jax.Array, answers_RxA: jax.Array,
               old_logp_RxA: jax.Array, rewards_R: jax.Array, group_R: jax.Array,
               valid_R: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
    rl = self.config.rl
    advantages_R = group_advantages(rewards_R, group_R, valid_R, rl.prompts_per_step)
    mask_RxA = answer_mask(answers_RxA) * valid_R[:, None]

    def loss_fn(params):
      logp_RxA = token_logprobs(self.model.apply, params, prompts_RxP, answers_RxA)
      return clipped_token_loss(logp_RxA, old_logp_RxA, advantages_R, mask_RxA, rl.clip_eps)

    params, opt_state = state.params, state.opt_state
    metrics = {}
    for update in range(rl.updates_per_step):
      (loss, clip_frac), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      updates, opt_state = self.tx.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
      if update == 0:
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads)}
      metrics["clip_fraction"] = clip_frac
    metrics["abs_advantage_mean"] = (jnp.abs(advantages_R) * valid_R).sum() / valid_R.sum()
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  def heldout_pass_rate(self, params: Any) -> float:
    answers, _ = self.greedy(params, self.heldout.prompts_NxP, jax.random.PRNGKey(0))
    correct = arithmetic.is_correct(np.asarray(answers), self.heldout.answers_NxA,
                                    self.heldout.answer_len_N)
    return float(correct.mean())

  def step_prompts(self, step: int) -> np.ndarray:
    """Pool indices of step `step`: consecutive slices of a per-epoch permutation."""
    per_step = self.config.rl.prompts_per_step
    steps_per_epoch = self.config.task.pool_size // per_step
    epoch, k = divmod(step, steps_per_epoch)
    order = np.random.default_rng([self.config.seed, 7, epoch]).permutation(
        self.config.task.pool_size)
    return order[k * per_step:(k + 1) * per_step]


def _write_json(path: pathlib.Path, obj: Any) -> None:
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
  tmp.replace(path)


def train(config: Any, workdir: str | pathlib.Path, *, progress: bool = True) -> dict[str, Any]:
  """Warm-starts, then runs `config.total_steps` GRPO steps; writes metrics.jsonl and
  summary.json to `workdir` and returns the summary."""
  start_time = time.time()
  trainer = GRPOTrainer(config)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  _write_json(workdir / "config.json", config.to_dict())
  writer = metrics_lib.MetricWriter(workdir)
  rl = config.rl

  state, sft_loss = trainer.warm_start(trainer.init_state())
  pass_rate = trainer.heldout_pass_rate(state.params)
  writer.write(0, {"heldout_pass_rate": pass_rate, "sft_loss": sft_loss})
  history_M = np.full(config.task.pool_size, np.nan)  # success rate in the prompt's last epoch
  largest: list[tuple[int, float, str]] = []
  sums = {"effective_prompt_ratio": 0.0, "effective_rollout_ratio": 0.0}
  bar = metrics_lib.Progress(config.total_steps, 0, trainer.buffer_size * trainer.answer_len,
                             enabled=progress)
  try:
    for step in range(config.total_steps):
      pool_M = trainer.step_prompts(step)
      counts_M = allocate(config.allocation, history_M[pool_M], trainer.buffer_size, rl)
      group_R, valid_R = rollout_buffer(counts_M, trainer.buffer_size)
      rows_R = pool_M[group_R]
      prompts_RxP = trainer.pool.prompts_NxP[rows_R]
      rng = jax.random.fold_in(state.rng, step)
      answers_RxA, old_logp_RxA = trainer.sample(state.params, prompts_RxP, rng)
      answers_RxA = np.asarray(answers_RxA)
      rewards_R = arithmetic.is_correct(answers_RxA, trainer.pool.answers_NxA[rows_R],
                                        trainer.pool.answer_len_N[rows_R]) * valid_R
      state, device_metrics = trainer.rl_step(state, prompts_RxP, answers_RxA, old_logp_RxA,
                                              rewards_R, group_R, valid_R)

      groups = np.split(rewards_R[valid_R], np.cumsum(counts_M)[:-1])
      prompt_ratio, rollout_ratio = knapsack.effective_gradient_ratio(groups)
      estimates_M = history_M[pool_M].copy()
      history_M[pool_M] = [g.mean() for g in groups]
      top = int(np.argmax(counts_M))
      for m in np.argsort(-counts_M, kind="stable")[:3]:
        estimate = None if np.isnan(estimates_M[m]) else float(estimates_M[m])
        largest.append((int(counts_M[m]), estimate,
                        trainer.pool.text[pool_M[m]].split("=")[0] + "="))
      largest = sorted(largest, key=lambda x: -x[0])[:8]
      record = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
      record.update({
          "effective_prompt_ratio": prompt_ratio, "effective_rollout_ratio": rollout_ratio,
          "effective_rollouts": int(sum(g.size for g in groups if g.size > 1 and np.ptp(g) > 0)),
          "train_reward": float(rewards_R.sum() / valid_R.sum()),
          "prompts_solved": int(sum(g.max() > 0 for g in groups)),
          "prompts_all_correct": int(sum(g.min() > 0 for g in groups)),
          "pool_seen_solved": int(np.nansum(history_M > 0)),
          "rollouts_used": int(counts_M.sum()), "alloc_max": int(counts_M[top]),
          "alloc_max_success_rate": float(estimates_M[top]), **allocation_histogram(counts_M)})
      for key in sums:
        sums[key] += record[key]
      done = step + 1
      if config.eval.every_steps and done % config.eval.every_steps == 0 or done == config.total_steps:
        pass_rate = trainer.heldout_pass_rate(state.params)
        record["heldout_pass_rate"] = pass_rate
      writer.write(done, record)
      bar.update(1, None)
  finally:
    bar.close()
    writer.close()

  summary = {
      "steps": config.total_steps,
      "allocation": config.allocation,
      "final_heldout_pass_rate": pass_rate,
      "mean_effective_prompt_ratio": sums["effective_prompt_ratio"] / max(config.total_steps, 1),
      "mean_effective_rollout_ratio": sums["effective_rollout_ratio"] / max(config.total_steps, 1),
      "largest_allocations": [list(x) for x in largest],
      "sft_loss": sft_loss,
      "num_params": int(sum(x.size for x in jax.tree.leaves(state.params))),
      "wall_time_s": time.time() - start_time,
      "params_sha256": metrics_lib.params_sha256(state.params),
  }
  _write_json(workdir / "summary.json", summary)
  return summary
