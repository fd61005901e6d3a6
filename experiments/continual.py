"""Continual pre-training through a stream of domains (the `launch.continual` runner's config).

`--config experiments/continual.py:schedule=infinite,size=test,steps=300`. `schedule` is one of
- `infinite`: the infinite learning-rate schedule (Ibrahim et al., arXiv 2403.08763; Singh et
  al., arXiv 2503.02844) with a cosine cooldown; task 0 runs warmup, cooldown to
  `constant_value`, constant and an exponential anneal to `end_value`; every later task resumes
  from the previous task's pre-anneal checkpoint at `constant_value` and runs its own anneal;
- `infinite_invsqrt`: the same with the inverse-square-root cooldown (`timescale` 10);
- `cosine`: repeated cosine (Gupta et al., arXiv 2308.04014): every task re-warms from 0 to the
  peak and re-decays to `end_value`, starting from the previous task's final state.
The ratios follow the official 405M settings (`peak 3e-4, const 1.65e-4, end 3e-5`: constant
0.55 and end 0.1 of the peak); warmup 10%, cooldown to 60%, anneal over the last 20% of a task.

`stream.domains` is the comma-separated list of corpora trained one after another (in the
`:arg` part the list is `+`-separated: `:domains=stdlib-code+c-headers`),
`stream.steps_per_task` the updates per task (the same for every schedule),
`stream.replay_fraction` the share of each batch drawn from earlier domains, and
`stream.handoff` how a task starts from the previous one (`state`: its full state and step
counter; `weights`: its parameters only, as MAE-1 does, with a fresh optimizer and schedule), and
`stream.checkpoint_every` the checkpoint spacing kept in every task folder (0: the largest
spacing that keeps the pre-anneal step).
"""

from __future__ import annotations

import ml_collections

from experiments import common, lm, study

DEFAULT_DOMAINS = ("stdlib-code", "pydoc-english", "c-headers")
SCHEDULES = ("infinite", "infinite_invsqrt", "cosine")
CONSTANT_FRACTION, END_FRACTION = 0.55, 0.1  # of the peak, as in the official 405M runs


def schedule_block(schedule: str, *, lr: float, steps: int, warmup_fraction: float = 0.1,
                   anneal_fraction: float = 0.2) -> ml_collections.ConfigDict:
  """The `config.schedule` block of task 0; the runner derives later tasks' blocks from it.

  The cooldown ends at 60% of the task; the official 405M runs warm up over 1% and anneal over
  the last 15% (`warmup_fraction=0.01, anneal_fraction=0.15`).
  """
  warmup, anneal = int(warmup_fraction * steps), int(anneal_fraction * steps)
  if schedule in ("infinite", "infinite_invsqrt"):
    block = dict(name="infinite_lr", warmup_steps=warmup, cooldown_steps=steps * 6 // 10 - warmup,
                 anneal_steps=anneal, constant_value=CONSTANT_FRACTION * lr,
                 end_value=END_FRACTION * lr,
                 cooldown_shape="inv-sqrt" if schedule == "infinite_invsqrt" else "cosine",
                 timescale=10.0)
  elif schedule == "cosine":
    block = dict(name="repeated_cosine", warmup_steps=warmup, end_value=END_FRACTION * lr,
                 rewarm_from="zero")
  else:
    raise common.UsageError(f"schedule={schedule!r} is unknown; use one of {', '.join(SCHEDULES)}")
  return ml_collections.ConfigDict(block)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, schedule="infinite", size="test", steps=300, lr=3e-3,
                          domains=DEFAULT_DOMAINS, replay=0.0, seed=0, handoff="state")
  if args.steps < 10:
    raise common.UsageError(f"steps={args.steps} must be >= 10 (warmup, cooldown and anneal "
                            "need room)")
  if args.size in ("study", "study-quick"):  # the reproductions' model (experiments/study.py)
    config = study.get_config(f"steps={args.steps},lr={args.lr},seed={args.seed},"
                              f"quick={str(args.size == 'study-quick').lower()}")
  else:
    config = lm.get_config(f"size={args.size}")
  del config["total_steps"]  # the runner sets each task's total from stream.steps_per_task
  config.seed = args.seed
  config.optimizer.learning_rate = args.lr
  config.schedule = schedule_block(args.schedule, lr=args.lr, steps=args.steps)
  config.stream = ml_collections.ConfigDict(dict(
      domains=",".join(args.domains), steps_per_task=args.steps, replay_fraction=args.replay,
      checkpoint_every=0, handoff=args.handoff))
  config.eval.every_steps = 0  # the runner evaluates every domain after each task
  config.eval.num_batches = 16
  config.log.every_steps = 10
  config.checkpoint.every_steps = 0
  return config
