"""Byte-level GPT language modelling on the offline corpora.

`--config experiments/lm.py:size=tiny,opt=adamw,data=stdlib-code`. Sizes: `test` (seconds,
for CI), `tiny` (the embedded default: about 2 minutes on 2 CPU cores), `small` (about 5M
parameters; hours on CPU, minutes on an accelerator).
"""

from __future__ import annotations

import ml_collections

from experiments import common

SIZES = {
    #        layers d_model heads seq_len batch steps  lr     eval_every
    "test": (1, 32, 2, 32, 8, 30, 3e-3, 10),
    "tiny": (2, 128, 4, 128, 16, 400, 3e-3, 100),
    "small": (6, 256, 4, 256, 32, 4000, 1e-3, 250),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, size="tiny", opt="adamw", data="stdlib-code")
  if args.size not in SIZES:
    raise common.UsageError(f"size={args.size!r} is unknown; use one of {', '.join(SIZES)}")
  layers, d_model, heads, seq_len, batch, steps, lr, eval_every = SIZES[args.size]

  config = common.base_config()
  config.total_steps = steps
  config.batch_size = batch
  config.data = ml_collections.ConfigDict(dict(name=args.data, seq_len=seq_len, split_seed=0))
  config.model = ml_collections.ConfigDict(dict(
      name="gpt", num_layers=layers, d_model=d_model, num_heads=heads, mlp_ratio=4,
      context_len=seq_len))
  config.optimizer = common.optimizer_config(args.opt, lr)
  config.schedule = ml_collections.ConfigDict(dict(
      name="warmup_cosine", warmup_steps=steps // 10, init_value=0.0, end_value=lr / 10))
  config.eval.every_steps = eval_every
  config.eval.num_batches = 8
  return config
