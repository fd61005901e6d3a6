"""Schedule comparisons on the test-size GPT over `stdlib-code` (the WSD reproduction's runs).

`--config experiments/wsd.py:schedule=wsd,steps=400,decay=0.2,shape=1-sqrt,lr=0.003` (the
learning rates default to the values the reproduction's sweep picked for WSD and Power).
`schedule` is one of
- `cosine`: linear warmup, then a half cosine to `end * lr` (`end=0.1` is "cosine to 10%");
- `wsd`: warmup, constant `lr`, then a `shape` decay to 0 over the last `decay * steps` updates
  (Hägele et al., arXiv 2405.18392; MiniCPM, arXiv 2404.06395);
- `power`: the Power scheduler (Shen et al., arXiv 2408.13359) with `lr` as its cap `max_lr`,
  `b = -0.51` (the paper's), `a` given, and the paper's exponential decay over `decay * steps`.
All share `warmup` linear warmup steps from 0, so runs of different budgets are comparable and
a WSD run's stable phase is a valid prefix of every shorter WSD run.
"""

from __future__ import annotations

import ml_collections

from experiments import common, lm

POWER_B = -0.51  # the exponent b Shen et al. use with muP


def schedule_block(schedule: str, *, lr: float, steps: int, warmup: int, decay: float = 0.2,
                   shape: str = "1-sqrt", end: float = 0.0, a: float = 0.1,
                   batch_size: int = 8, tokens_per_step: int = 256) -> ml_collections.ConfigDict:
  """The `config.schedule` block of one of the three families."""
  if schedule == "cosine":
    block = dict(name="warmup_cosine", warmup_steps=warmup, init_value=0.0, end_value=end * lr)
  elif schedule == "wsd":
    block = dict(name="wsd", warmup_steps=warmup, decay_steps=max(round(decay * steps), 1),
                 decay_shape=shape, init_value=0.0, end_value=0.0)
  elif schedule == "power":
    block = dict(name="power", a=a, b=POWER_B, batch_size=batch_size,
                 tokens_per_step=tokens_per_step, warmup_steps=warmup,
                 decay_steps=max(round(decay * steps), 1), decay_shape="exponential")
  else:
    raise common.UsageError(f"schedule={schedule!r} is unknown; use cosine, wsd or power")
  return ml_collections.ConfigDict(block)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, schedule="wsd", steps=400, warmup=40, decay=0.2, shape="1-sqrt",
                          end=0.0, lr=3e-3, a=0.05, seed=0)
  config = lm.get_config("size=test")
  config.seed = args.seed
  config.total_steps = args.steps
  config.optimizer.learning_rate = args.lr
  config.schedule = schedule_block(
      args.schedule, lr=args.lr, steps=args.steps, warmup=args.warmup, decay=args.decay,
      shape=args.shape, end=args.end, a=args.a, batch_size=config.batch_size,
      tokens_per_step=config.batch_size * config.data.seq_len)
  config.eval.every_steps = 20
  config.eval.num_batches = 64
  config.log.every_steps = 5
  config.checkpoint.every_steps = 0  # checkpoints only at the end
  return config
