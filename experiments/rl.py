"""GRPO on integer arithmetic with uniform or Knapsack-RL rollout allocation.

`--config experiments/rl.py:size=default,allocation=knapsack[,allocator=official,
estimator=recent]`. Sizes: `test` (seconds, for CI), `default` (a few minutes on 2 CPU cores).
The total rollouts per step is `rl.prompts_per_step * rl.rollouts_per_prompt` under every
allocation. `allocation=knapsack` allocates with `rl.allocator` ("exact": the optimum of the
paper's objective; "official": the authors' allocator with its cost-based fallback) from the
success rates `rl.success_estimator` reads ("last_epoch": each prompt's previous epoch;
"recent": the authors' estimator, the last 16 rewards, valid after 8); see
`trainlab.algorithms.allocators` and `rollout_history`. Checkpoints go to WORKDIR/checkpoints
every `checkpoint.every_steps` steps (and at the end and on SIGTERM/SIGINT); the console gets a
line every `log.every_steps` steps.
"""

from __future__ import annotations

import ml_collections

from experiments import common

SIZES = {
    #          pool heldout prompts/step sft_steps rl_steps eval_every checkpoint_every
    "test": (16, 32, 4, 20, 6, 3, 2),
    "default": (256, 256, 32, 800, 64, 8, 8),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, size="default", allocation="uniform", allocator="exact",
                          estimator="last_epoch")
  if args.size not in SIZES:
    raise common.UsageError(f"size={args.size!r} is unknown; use one of {', '.join(SIZES)}")
  pool, heldout, prompts, sft_steps, steps, eval_every, checkpoint_every = SIZES[args.size]

  config = ml_collections.ConfigDict()
  config.seed = 0
  config.allocation = args.allocation
  config.total_steps = steps
  config.task = ml_collections.ConfigDict(dict(
      max_add_digits=3, max_mul_digits=2, mul_fraction=0.2, pool_size=pool,
      heldout_size=heldout))
  config.model = ml_collections.ConfigDict(dict(num_layers=2, d_model=64, num_heads=4,
                                                mlp_ratio=4))
  config.sft = ml_collections.ConfigDict(dict(steps=sft_steps, batch_size=64,
                                              learning_rate=3e-3))
  config.rl = ml_collections.ConfigDict(dict(
      prompts_per_step=prompts, rollouts_per_prompt=8, min_rollouts=2, max_rollouts=128,
      clip_eps=0.2, updates_per_step=2, temperature=1.0, allocator=args.allocator,
      success_estimator=args.estimator))
  config.optimizer = common.optimizer_config("adamw", 3e-4)
  config.optimizer.weight_decay = 0.0
  config.schedule = ml_collections.ConfigDict(dict(name="constant"))
  config.eval = ml_collections.ConfigDict(dict(every_steps=eval_every))
  config.checkpoint = ml_collections.ConfigDict(dict(every_steps=checkpoint_every, keep=2))
  config.log = ml_collections.ConfigDict(dict(every_steps=1))
  return config
