"""Byte-level GPT language modelling on the offline corpora.

`--config experiments/lm.py:size=tiny,opt=adamw,data=stdlib-code`. Sizes: `test` (seconds,
for CI), `tiny` (the embedded default: about 1 minute on 2 CPU cores), `small` (about 5M
parameters; hours on CPU, minutes on an accelerator). Warmup (10% of `total_steps`), the eval
cadence and the final learning rate (10% of the peak) follow overrides of `total_steps` and
`optimizer.learning_rate`.
"""

from __future__ import annotations

import ml_collections

from experiments import common

SIZES = {
    #        layers d_model heads seq_len batch steps  lr     evals per run
    "test": (1, 32, 2, 32, 8, 30, 3e-3, 3),
    "tiny": (2, 128, 4, 128, 16, 400, 3e-3, 4),
    "small": (6, 256, 4, 256, 32, 4000, 1e-3, 16),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, size="tiny", opt="adamw", data="stdlib-code")
  if args.size not in SIZES:
    raise common.UsageError(f"size={args.size!r} is unknown; use one of {', '.join(SIZES)}")
  layers, d_model, heads, seq_len, batch, steps, lr, evals = SIZES[args.size]

  config = common.base_config(total_steps=steps)
  config.batch_size = batch
  # data.path and data.vocab_size are for data.name=tokens (pre-tokenized shards).
  config.data = ml_collections.ConfigDict(dict(name=args.data, seq_len=seq_len, split_seed=0,
                                               path="", vocab_size=0))
  config.model = ml_collections.ConfigDict(dict(
      name="gpt", num_layers=layers, d_model=d_model, num_heads=heads, mlp_ratio=4,
      context_len=seq_len))
  config.optimizer = common.optimizer_config(args.opt, lr)
  config.schedule = ml_collections.ConfigDict(dict(
      name="warmup_cosine", warmup_steps=common.fraction_of(config, "total_steps", 10),
      init_value=0.0, end_value=config.optimizer.get_ref("learning_rate") / 10))
  config.eval.every_steps = common.fraction_of(config, "total_steps", evals)
  config.eval.num_batches = 8
  return config
