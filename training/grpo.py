"""GRPO training with uniform or Knapsack-RL rollout allocation (Li et al., 2025, arXiv
2509.25849, eq. 5) on verifiable integer arithmetic.

One RL step: take the next `prompts_per_step` prompts of a fixed pool (shuffled per epoch),
give them a fixed total of `prompts_per_step * rollouts_per_prompt` rollouts, either uniformly
or by `rl.allocator` (`algorithms.allocators`: "exact", the optimum of the paper's objective,
or "official", the authors' allocator with its cost-based fallback) from each prompt's success
rate as `rl.success_estimator` reads it from the prompt's reward history
(`algorithms.rollout_history`: "last_epoch", its previous epoch's rate, or "recent", the
authors' estimator); prompts without enough history get the default count. Sample the
answers, reward exact matches, and update the policy with the clipped GRPO objective
(`algorithms.grpo`). The rollouts of any allocation sit in one fixed buffer of
`R = total_budget` rows with a validity mask, so one compiled sampler and one compiled update
serve every step. No KL term (as the Knapsack-RL runs). Before RL, a short supervised phase on
solved examples warm-starts the policy so that pass rates spread between 0 and 1. Everything
is a pure function of the config.

A run saves and resumes like `launch.train`. `WORKDIR/checkpoints/` holds, right after the
warm start (step 0), every `checkpoint.every_steps` steps, at the end and on SIGTERM/SIGINT,
everything a step reads that is not a function of the config and the step: the `TrainState`
(policy parameters, optimizer state, step, RNG), every pool prompt's reward history (what both
estimators read) and the warm start's loss. A resumed run never redoes the warm start, and the
epoch's prompt order and the step's RNG (`fold_in(rng, step)`) follow from the seed and step.
Per step, `metrics.jsonl` gets the step's metrics and `rollouts.jsonl` the pool index,
rollouts, successes and the estimate the allocator saw of each prompt (the input of
`algorithms.allocator_study`; read it with `read_rollout_log`); both are cut back to the
restored step on resume, and `summary.json` is computed from them and the final parameters, so
a killed and resumed run writes what an uninterrupted one does (but its wall time).
"""

from __future__ import annotations

import contextlib
import functools
import json
import pathlib
import signal
import sys
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from trainlab.algorithms import allocators, grpo, knapsack
from trainlab.algorithms import rollout_history as rh
from trainlab.data import arithmetic
from trainlab.errors import UsageError
from trainlab.models import GPT
from trainlab.training import checkpoint as checkpoint_lib
from trainlab.training import metrics as metrics_lib
from trainlab.training import preemption, rundir, sharding
from trainlab.training import workdir as workdir_lib
from trainlab.training.run import (integer, positive_number, schedule_from_config,
                                   update_rule_from_config)
from trainlab.training.state import TrainState

ALLOCATIONS = ("uniform", "knapsack")
KNAPSACK_ALLOCATORS = ("exact", "official")
WarmStarts = dict  # key -> (host params, final loss); owned by the caller, shared across runs
METRICS, ROLLOUTS = "metrics.jsonl", "rollouts.jsonl"


class WarmStartInterrupted(preemption.Preempted):
  """SIGTERM or SIGINT arrived during the warm start, before anything was saved."""

  def __init__(self, signum: int):
    Exception.__init__(self, f"{signal.Signals(signum).name} during the warm start, before "
                       "the first checkpoint; rerun the same command to start it again")
    self.step, self.signum = 0, signum


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
    _require(config.rl.allocator in KNAPSACK_ALLOCATORS,
             f"rl.allocator={config.rl.allocator!r} is unknown; use one of "
             f"{', '.join(KNAPSACK_ALLOCATORS)}")
    _require(config.rl.success_estimator in rh.ESTIMATORS,
             f"rl.success_estimator={config.rl.success_estimator!r} is unknown; use one of "
             f"{', '.join(rh.ESTIMATORS)}")
    self.allocator = config.rl.allocator if config.allocation == "knapsack" else "uniform"
    self.seed = integer(config, "seed", 0)
    self.total_steps = integer(config, "total_steps", 1)
    self.eval_every = integer(config, "eval.every_steps", 0)
    task, rl = config.task, config.rl
    for key in ("task.pool_size", "task.heldout_size", "task.max_add_digits",
                "task.max_mul_digits", "rl.prompts_per_step", "rl.updates_per_step",
                "model.num_layers", "model.d_model", "model.num_heads", "model.mlp_ratio",
                "sft.batch_size", "checkpoint.keep", "log.every_steps"):
      integer(config, key, 1)
    integer(config, "sft.steps", 0)
    integer(config, "checkpoint.every_steps", 0)
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

  def abstract_checkpoint(self) -> dict[str, Any]:
    """The shapes, dtypes and placement of what `checkpoint_tree` saves."""
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    tree = jax.eval_shape(lambda: checkpoint_tree(
        self.init_state(), rh.empty(self.config.task.pool_size), 0.0))
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), tree)

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

  def warm_start(self, state: TrainState, cache: WarmStarts | None = None,
                 stop: Callable[[], int | None] = lambda: None) -> tuple[TrainState, float]:
    """Supervised steps on solved examples (teacher forcing on the answer tokens).

    The result depends only on the seed and the task, model and sft configs; a `cache` dict
    passed by the caller keeps it (as host arrays) for the next run that shares them, e.g. the
    other allocation of a comparison. `stop()` is checked between steps: a signal number
    raises `WarmStartInterrupted`.
    """
    key = json.dumps([self.seed, self.config.task.to_dict(), self.config.model.to_dict(),
                      self.config.sft.to_dict()], sort_keys=True)
    cache = {} if cache is None else cache
    if key not in cache:
      params, opt_state, loss = state.params, self.sft_tx.init(state.params), jnp.zeros(())
      batch = self.config.sft.batch_size
      for step in range(self.config.sft.steps):
        if (signum := stop()) is not None:
          raise WarmStartInterrupted(signum)
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

  def allocate(self, success_rates_M: np.ndarray, valid_M: np.ndarray
               ) -> tuple[np.ndarray, bool]:
    """Rollouts per prompt (prompts not `valid` get the default count), and whether the
    official fallback had to be skipped (see `algorithms.allocators`)."""
    rl = self.config.rl
    return allocators.allocate(self.allocator, success_rates_M, valid_M, self.buffer_size,
                               rollouts_per_prompt=rl.rollouts_per_prompt,
                               min_rollouts=rl.min_rollouts, max_rollouts=rl.max_rollouts)


def checkpoint_tree(state: TrainState, history: rh.RewardHistory, sft_loss: float
                    ) -> dict[str, Any]:
  """What a checkpoint holds: the train state, the pool's reward history, the warm-start loss."""
  return {"train": state, "history": {k: jnp.asarray(v) for k, v in history._asdict().items()},
          "sft_loss": jnp.asarray(sft_loss, jnp.float32)}


def _from_checkpoint(tree: dict[str, Any]) -> tuple[TrainState, rh.RewardHistory, float]:
  history = rh.RewardHistory(**{k: np.array(v) for k, v in tree["history"].items()})
  return tree["train"], history, float(tree["sft_loss"])


def _read_jsonl(path: pathlib.Path) -> list[dict[str, Any]]:
  if not path.exists():
    return []
  records = []
  for line in path.read_text().splitlines():
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:  # a line cut short by a kill
      pass
  return records


def read_rollout_log(workdir: str | pathlib.Path) -> dict[str, np.ndarray]:
  """A run's `rollouts.jsonl` as arrays over its T steps and M prompts per step: `step_T`,
  `pool_TxM` (pool index), `rollouts_TxM`, `successes_TxM` and `estimate_TxM` (the success
  rate the allocator saw; NaN where the prompt had too little history)."""
  lines = _read_jsonl(pathlib.Path(workdir) / ROLLOUTS)
  if not lines:
    raise UsageError(f"{pathlib.Path(workdir) / ROLLOUTS} is missing or empty; pass the "
                     "workdir of a GRPO run")
  estimate = [[np.nan if e is None else e for e in line["estimate"]] for line in lines]
  return {"step_T": np.array([line["step"] for line in lines]),
          "pool_TxM": np.array([line["pool"] for line in lines]),
          "rollouts_TxM": np.array([line["rollouts"] for line in lines]),
          "successes_TxM": np.array([line["successes"] for line in lines]),
          "estimate_TxM": np.array(estimate, np.float64)}


def train(config: Any, workdir: str | pathlib.Path, *, progress: bool = True,
          warm_starts: WarmStarts | None = None) -> dict[str, Any]:
  """Warm-starts (or resumes from `workdir/checkpoints`), then runs GRPO to
  `config.total_steps`; writes metrics.jsonl, rollouts.jsonl and summary.json to `workdir`
  and returns the summary. The workdir is locked for the whole run (`training.workdir`).
  `warm_starts` (a dict the caller keeps) shares warm-start results between runs of the same
  seed, task and model. SIGTERM/SIGINT save the step reached and raise `preemption.Preempted`.
  `progress` prints a line per logged step to stderr."""
  workdir_lib.check_usable(workdir)
  trainer = GRPOTrainer(config)
  with workdir_lib.hold(workdir) as held:
    return _train(trainer, held, progress, warm_starts)


def _train(trainer: GRPOTrainer, workdir: pathlib.Path, progress: bool,
           warm_starts: WarmStarts | None) -> dict[str, Any]:
  start_time = time.time()
  config = trainer.config
  say = functools.partial(print, file=sys.stderr, flush=True) if progress else lambda *_: None
  checkpoints = checkpoint_lib.Checkpoints(workdir, every_steps=config.checkpoint.every_steps,
                                           keep=config.checkpoint.keep)
  meta = checkpoint_lib.run_metadata(config)
  with preemption.PreemptionWatch() as watch, contextlib.ExitStack() as files:
    try:
      restored = checkpoints.restore_latest(trainer.abstract_checkpoint())
      start = -1 if restored is None else int(restored["train"].step)
      if start < config.total_steps:  # a run in progress has no summary
        (workdir / "summary.json").unlink(missing_ok=True)
      for name in (METRICS, ROLLOUTS):
        rundir.drop_records_after(workdir / name, start)
      rundir.write_json(workdir / "config.json", rundir.as_json(config))
      writer = metrics_lib.MetricWriter(workdir)
      files.callback(writer.close)
      rollout_log = files.enter_context(open(workdir / ROLLOUTS, "a", encoding="utf-8"))
      if restored is None:
        say(f"{workdir}: started from scratch; training to step {config.total_steps}")
        state, sft_loss = _warm_start(trainer, warm_starts, say, lambda: watch.signum)
        pass_rate = trainer.heldout_pass_rate(state.params)
        say(f"step 0: held-out pass {pass_rate:.3f} after the warm start")
        writer.write(0, {"heldout_pass_rate": pass_rate, "sft_loss": sft_loss})
        history = rh.empty(config.task.pool_size)
        checkpoints.save(0, checkpoint_tree(state, history, sft_loss), meta)
      else:
        state, history, sft_loss = _from_checkpoint(restored)
        _warn_if_config_changed(checkpoints, start, config)
        say(f"{workdir}: resumed from {checkpoints.directory} at step {start}; " +
            (f"training to step {config.total_steps}" if start < config.total_steps else
             "nothing left to train, rewriting the summary"))
      state, history = _rl_steps(trainer, state, history, sft_loss, writer, rollout_log,
                                 checkpoints, meta, watch, say)
    finally:
      checkpoints.wait()
      checkpoints.close()
    # Inside the watch: a signal noted during the last step stops nothing before this is written.
    summary = _summary(trainer, workdir, state, sft_loss, time.time() - start_time)
    rundir.write_json(workdir / "summary.json", summary)
  return summary


def _changed_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
  if isinstance(a, dict) and isinstance(b, dict):
    return sorted(k for key in set(a) | set(b)
                  for k in _changed_keys(a.get(key), b.get(key), f"{prefix}{key}."))
  return [] if a == b else [prefix.rstrip(".")]


def _warn_if_config_changed(checkpoints: checkpoint_lib.Checkpoints, step: int,
                            config: Any) -> None:
  saved = checkpoints.meta(step).get("config")
  changed = _changed_keys(saved, rundir.as_json(config)) if saved is not None else []
  if changed:
    print(f"warning: resuming step {step} of {checkpoints.directory} with a changed config "
          f"({', '.join(changed[:5])}{', ...' if len(changed) > 5 else ''})", file=sys.stderr)


def _warm_start(trainer: GRPOTrainer, cache: WarmStarts | None, say: Callable[..., None],
                stop: Callable[[], int | None]) -> tuple[TrainState, float]:
  sft = trainer.config.sft
  say(f"warm start: {sft.steps} supervised steps (batch {sft.batch_size}, AdamW "
      f"{sft.learning_rate:g}) on solved examples ...")
  began = time.time()
  state, loss = trainer.warm_start(trainer.init_state(), cache, stop)
  say(f"warm start done: loss {loss:.4f} in {time.time() - began:.1f} s")
  return state, loss


def _rl_steps(trainer: GRPOTrainer, state: TrainState, history: rh.RewardHistory,
              sft_loss: float, writer: metrics_lib.MetricWriter, rollout_log: Any,
              checkpoints: checkpoint_lib.Checkpoints, meta: dict[str, Any],
              watch: preemption.PreemptionWatch, say: Callable[..., None]
              ) -> tuple[TrainState, rh.RewardHistory]:
  """The RL steps from `state.step` to the end, each logged, some saved."""
  config = trainer.config
  last_said, last_said_step, compiled = time.time(), int(state.step), False
  for step in range(int(state.step), config.total_steps):
    pool_M = trainer.step_prompts(step)
    estimates_M, valid_M = rh.success_rates(history, pool_M, config.rl.success_estimator)
    counts_M, fallback_skipped = trainer.allocate(estimates_M, valid_M)
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
    history = rh.record(history, pool_M, counts_M, rewards_R[valid_R])
    prompt_ratio, rollout_ratio = knapsack.effective_gradient_ratio(groups)
    seen_M = np.where(valid_M, estimates_M, np.nan)
    top = int(np.argmax(counts_M))
    record = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
    record.update({
        "effective_prompt_ratio": prompt_ratio, "effective_rollout_ratio": rollout_ratio,
        "effective_rollouts": int(sum(g.size for g in groups if g.size > 1 and np.ptp(g) > 0)),
        "train_reward": float(rewards_R.sum() / valid_R.sum()),
        "prompts_solved": int(sum(g.max() > 0 for g in groups)),
        "prompts_all_correct": int(sum(g.min() > 0 for g in groups)),
        "pool_seen_solved": int((history.last_sum_M > 0).sum()),
        "rollouts_used": int(counts_M.sum()), "alloc_max": int(counts_M[top]),
        "alloc_max_success_rate": float(seen_M[top]),
        "rollouts_on_unsolved": int(counts_M[valid_M & (estimates_M == 0)].sum()),
        "rollouts_on_solved": int(counts_M[valid_M & (estimates_M == 1)].sum()),
        "rollouts_without_history": int(counts_M[~valid_M].sum()),
        "official_fallback_skipped": int(fallback_skipped),
        **grpo.allocation_histogram(counts_M)})
    done = step + 1
    is_last = done == config.total_steps
    if config.eval.every_steps and done % config.eval.every_steps == 0 or is_last:
      record["heldout_pass_rate"] = trainer.heldout_pass_rate(state.params)
    writer.write(done, record)
    rollout_log.write(json.dumps({
        "step": done, "pool": pool_M.tolist(), "rollouts": counts_M.tolist(),
        "successes": [int(g.sum()) for g in groups],
        "estimate": [float(e) if v else None for e, v in zip(estimates_M, valid_M)]}) + "\n")
    rollout_log.flush()
    if done % config.log.every_steps == 0 or is_last or "heldout_pass_rate" in record:
      now = time.time()
      held = (f", held-out pass {record['heldout_pass_rate']:.3f}"
              if "heldout_pass_rate" in record else "")
      say(f"step {done}/{config.total_steps}: reward {record['train_reward']:.3f}, effective "
          f"rollouts {rollout_ratio:.2f} (prompts {prompt_ratio:.2f}), loss "
          f"{record['loss']:.4f}{held}, {(now - last_said) / (done - last_said_step):.2f} s/step"
          f"{'' if compiled else ' (with compilation)'}")
      last_said, last_said_step, compiled = now, done, True
    if checkpoints.should_save(done) or is_last:
      checkpoints.save(done, checkpoint_tree(state, history, sft_loss), meta)
    if watch.requested(done) and not is_last:
      checkpoints.save(done, checkpoint_tree(state, history, sft_loss), meta)
      raise preemption.Preempted(done, watch.signum)
  return state, history


def _summary(trainer: GRPOTrainer, workdir: pathlib.Path, state: TrainState, sft_loss: float,
             wall_time_s: float) -> dict[str, Any]:
  """The run's summary, from its logs and final parameters (the same after any resume)."""
  logged = _read_jsonl(workdir / METRICS)
  records = [r for r in logged if r["step"] >= 1]
  evaluated = [r for r in logged if "heldout_pass_rate" in r]
  largest: list[tuple[int, float | None, str]] = []
  for line in _read_jsonl(workdir / ROLLOUTS):
    counts_M = np.array(line["rollouts"])
    for m in np.argsort(-counts_M, kind="stable")[:3]:
      prompt = trainer.pool.text[line["pool"][m]].split("=")[0] + "="
      largest.append((int(counts_M[m]), line["estimate"][m], prompt))
    largest = sorted(largest, key=lambda x: -x[0])[:8]
  steps = max(len(records), 1)
  config = trainer.config
  return {
      "steps": int(state.step),
      "allocation": config.allocation,
      "allocator": trainer.allocator,
      "success_estimator": config.rl.success_estimator,
      "final_heldout_pass_rate": evaluated[-1]["heldout_pass_rate"],
      "mean_effective_prompt_ratio": sum(r["effective_prompt_ratio"] for r in records) / steps,
      "mean_effective_rollout_ratio": sum(r["effective_rollout_ratio"] for r in records) / steps,
      "official_fallback_skipped_steps": sum(r.get("official_fallback_skipped", 0)
                                             for r in records),
      "largest_allocations": [list(x) for x in largest],
      "sft_loss": sft_loss,
      "num_params": int(sum(x.size for x in jax.tree.leaves(state.params))),
      "wall_time_s": wall_time_s,
      "params_sha256": metrics_lib.params_sha256(state.params),
  }
