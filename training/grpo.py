"""GRPO training with uniform or Knapsack-RL rollout allocation (Li et al., 2025, arXiv
2509.25849, eq. 5) on verifiable integer arithmetic.

One RL step: take the next `prompts_per_step` prompts of a fixed pool (shuffled per epoch),
give them a fixed total of `prompts_per_step * rollouts_per_prompt` rollouts, either uniformly
or by `algorithms.knapsack.allocate_rollouts` from each prompt's success rate in its previous
epoch (prompts without history get the default count), sample the answers, reward exact
matches, and update the policy with the clipped GRPO objective (`algorithms.grpo`). The
rollouts of any allocation sit in one fixed buffer of `R = total_budget` rows with a validity
mask, so one compiled sampler and one compiled update serve every step. No KL term (as the
Knapsack-RL runs). Before RL, a short supervised phase on solved examples warm-starts the policy
so that pass rates spread between 0 and 1. Everything is a pure function of `config.seed`.
"""

from __future__ import annotations

import functools
import json
import pathlib
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from trainlab.algorithms import grpo, knapsack
from trainlab.data import arithmetic
from trainlab.errors import UsageError
from trainlab.models import GPT
from trainlab.training import metrics as metrics_lib
from trainlab.training import rundir, sharding
from trainlab.training.run import (integer, positive_number, schedule_from_config,
                                   update_rule_from_config)
from trainlab.training.state import TrainState

ALLOCATIONS = ("uniform", "knapsack")
WarmStarts = dict  # key -> (host params, final loss); owned by the caller, shared across runs


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise UsageError(message)


class GRPOTrainer:
  """The policy, its optimizer, the prompt pool and the compiled sampler, update and SFT step.

  Built from the config once; the constructor is the validation (a `UsageError` names the key).
  """

  def __init__(self, config: Any):
    self.config = config
    _require(config.allocation in ALLOCATIONS,
             f"allocation={config.allocation!r} is unknown; use one of {', '.join(ALLOCATIONS)}")
    self.seed = integer(config, "seed", 0)
    self.total_steps = integer(config, "total_steps", 1)
    self.eval_every = integer(config, "eval.every_steps", 0)
    task, rl = config.task, config.rl
    for key in ("task.pool_size", "task.heldout_size", "task.max_add_digits",
                "task.max_mul_digits", "rl.prompts_per_step", "rl.updates_per_step",
                "model.num_layers", "model.d_model", "model.num_heads", "model.mlp_ratio",
                "sft.batch_size"):
      integer(config, key, 1)
    integer(config, "sft.steps", 0)
    low = integer(config, "rl.min_rollouts", 2)
    default = integer(config, "rl.rollouts_per_prompt", low)
    integer(config, "rl.max_rollouts", default)
    _require(task.pool_size % rl.prompts_per_step == 0,
             f"task.pool_size={task.pool_size} is not a multiple of rl.prompts_per_step="
             f"{rl.prompts_per_step}; change one so epochs cover the pool exactly")
    _require(0.0 <= task.mul_fraction <= 1.0,
             f"task.mul_fraction={task.mul_fraction!r} must be in [0, 1]")
    _require(config.model.d_model % config.model.num_heads == 0,
             f"model.d_model={config.model.d_model} is not divisible by model.num_heads="
             f"{config.model.num_heads}; change one")
    _require(0.0 < rl.clip_eps < 1.0, f"rl.clip_eps={rl.clip_eps!r} must be in (0, 1)")
    _require(rl.temperature > 0, f"rl.temperature={rl.temperature!r} must be > 0")
    sft_lr = positive_number("sft.learning_rate", config.sft.learning_rate)
    lr = positive_number("optimizer.learning_rate", config.optimizer.learning_rate)

    digits = dict(max_add_digits=task.max_add_digits, max_mul_digits=task.max_mul_digits)
    problem_kwargs = dict(**digits, mul_fraction=task.mul_fraction)
    self.prompt_len = arithmetic.prompt_len(**digits)
    self.answer_len = arithmetic.answer_len(**digits)
    self.pool = arithmetic.make_problems(self.seed, "pool", 0, task.pool_size, **problem_kwargs)
    self.heldout = arithmetic.make_problems(0, "heldout", 0, task.heldout_size, **problem_kwargs)
    self._sft_problems = functools.partial(arithmetic.make_problems, self.seed, "sft",
                                           **problem_kwargs)
    self.buffer_size = rl.prompts_per_step * rl.rollouts_per_prompt
    self.model = GPT(vocab_size=arithmetic.VOCAB_SIZE, num_layers=config.model.num_layers,
                     d_model=config.model.d_model, num_heads=config.model.num_heads,
                     mlp_ratio=config.model.mlp_ratio,
                     context_len=self.prompt_len + self.answer_len)
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    schedule = schedule_from_config(config, self.total_steps, lr)
    self.tx, _ = update_rule_from_config(config, schedule, mesh)
    self.sft_tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sft_lr))
    apply_fn = self.model.apply
    sample = functools.partial(grpo.generate, apply_fn, answer_len=self.answer_len,
                               pad=arithmetic.PAD)
    self.sample = jax.jit(functools.partial(sample, temperature=rl.temperature))
    self.greedy = jax.jit(functools.partial(sample, temperature=0.0))
    self.rl_step = jax.jit(self._rl_step, donate_argnums=0)
    self.sft_step = jax.jit(self._sft_step, donate_argnums=(0, 1))

  def init_state(self) -> TrainState:
    init_rng, train_rng = jax.random.split(jax.random.PRNGKey(self.seed))
    example = jnp.zeros((1, self.prompt_len + self.answer_len), jnp.int32)
    params = nn.meta.unbox(self.model.init(init_rng, example))["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.tx.init(params), rng=train_rng)

  def _answer_mask(self, answers_RxA: jax.Array) -> jax.Array:
    return grpo.answer_mask(answers_RxA, arithmetic.EOS)

  def _sft_step(self, params: Any, opt_state: Any, prompts_BxP: jax.Array,
                answers_BxA: jax.Array) -> tuple[Any, Any, jax.Array]:
    def loss_fn(p):
      logp_BxA = grpo.token_logprobs(self.model.apply, p, prompts_BxP, answers_BxA)
      mask_BxA = self._answer_mask(answers_BxA)
      return -(logp_BxA * mask_BxA).sum() / mask_BxA.sum()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = self.sft_tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  def warm_start(self, state: TrainState, cache: WarmStarts | None = None
                 ) -> tuple[TrainState, float]:
    """Supervised steps on solved examples (teacher forcing on the answer tokens).

    The result depends only on the seed and the task, model and sft configs; a `cache` dict
    passed by the caller keeps it (as host arrays) for the next run that shares them, e.g. the
    other allocation of a comparison.
    """
    key = json.dumps([self.seed, self.config.task.to_dict(), self.config.model.to_dict(),
                      self.config.sft.to_dict()], sort_keys=True)
    cache = {} if cache is None else cache
    if key not in cache:
      params, opt_state, loss = state.params, self.sft_tx.init(state.params), jnp.zeros(())
      batch = self.config.sft.batch_size
      for step in range(self.config.sft.steps):
        problems = self._sft_problems(step * batch, batch)
        params, opt_state, loss = self.sft_step(params, opt_state, problems.prompts_NxP,
                                                problems.answers_NxA)
      cache[key] = (jax.device_get(params), float(loss))
    params, loss = cache[key]
    params = jax.tree.map(jnp.array, params)
    return state.replace(params=params, opt_state=self.tx.init(params)), loss

  def _rl_step(self, state: TrainState, prompts_RxP: jax.Array, answers_RxA: jax.Array,
               old_logp_RxA: jax.Array, rewards_R: jax.Array, group_R: jax.Array,
               valid_R: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
    rl = self.config.rl
    advantages_R = grpo.group_advantages(rewards_R, group_R, valid_R, rl.prompts_per_step)
    mask_RxA = self._answer_mask(answers_RxA) * valid_R[:, None]

    def loss_fn(params):
      logp_RxA = grpo.token_logprobs(self.model.apply, params, prompts_RxP, answers_RxA)
      return grpo.clipped_token_loss(logp_RxA, old_logp_RxA, advantages_R, mask_RxA,
                                     rl.clip_eps)

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
    order = np.random.default_rng([self.seed, 7, epoch]).permutation(self.config.task.pool_size)
    return order[k * per_step:(k + 1) * per_step]

  def allocate(self, success_rates_M: np.ndarray) -> np.ndarray:
    """Rollouts per prompt; NaN success rates mean "no history" (the default count)."""
    rl = self.config.rl
    if self.config.allocation == "uniform":
      return np.full(success_rates_M.shape, rl.rollouts_per_prompt, np.int64)
    return knapsack.allocate_rollouts(
        np.nan_to_num(success_rates_M), self.buffer_size, min_rollouts=rl.min_rollouts,
        max_rollouts=rl.max_rollouts, default_rollouts=rl.rollouts_per_prompt,
        valid=~np.isnan(success_rates_M), method="exact")


def train(config: Any, workdir: str | pathlib.Path, *, progress: bool = True,
          warm_starts: WarmStarts | None = None) -> dict[str, Any]:
  """Warm-starts, then runs `config.total_steps` GRPO steps; writes metrics.jsonl and
  summary.json to `workdir` and returns the summary. `warm_starts` (a dict the caller keeps)
  shares warm-start results between runs of the same seed, task and model."""
  start_time = time.time()
  trainer = GRPOTrainer(config)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  rundir.write_json(workdir / "config.json", rundir.as_json(config))
  writer = metrics_lib.MetricWriter(workdir)

  state, sft_loss = trainer.warm_start(trainer.init_state(), warm_starts)
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
      counts_M = trainer.allocate(history_M[pool_M])
      group_R, valid_R = grpo.rollout_buffer(counts_M, trainer.buffer_size)
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
          "alloc_max_success_rate": float(estimates_M[top]), **grpo.allocation_histogram(counts_M)})
      for key in sums:
        sums[key] += record[key]
      done = step + 1
      is_last = done == config.total_steps
      if config.eval.every_steps and done % config.eval.every_steps == 0 or is_last:
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
  rundir.write_json(workdir / "summary.json", summary)
  return summary
