"""Language modelling: byte-level on the offline corpora, or on tokenized shards.

`--config experiments/lm.py:size=tiny,opt=adamw,data=stdlib-code,arch=gpt`. Sizes: `test`
(seconds, for CI), `tiny` (the embedded default: about 1 minute on 2 CPU cores), `small` (about
5M parameters; hours on CPU, minutes on an accelerator). `arch=gpt` is the GPT-2-style decoder
(learned positions, LayerNorm, GELU); `arch=llama` the modern one (RoPE, RMSNorm, SwiGLU, no
biases). Both take `model.dtype` (compute, e.g. bfloat16), `model.param_dtype`, `model.remat`
(none, full, dots_saveable), `model.scan_layers` and `model.attention_impl` (xla, cudnn);
`loss.chunk_size` > 0 computes the loss over chunks of positions without the full logits.
Warmup (10% of `total_steps`), the eval cadence and the final learning rate (10% of the peak)
follow overrides of `total_steps` and `optimizer.learning_rate`.
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

from experiments import common

SIZES = {
    #        layers d_model heads seq_len batch steps  lr     evals per run
    "test": (1, 32, 2, 32, 8, 30, 3e-3, 3),
    "tiny": (2, 128, 4, 128, 16, 400, 3e-3, 4),
    "small": (6, 256, 4, 256, 32, 4000, 1e-3, 16),
}


def model_block(arch: str, *, layers: int, d_model: int, heads: int, seq_len: int,
                **fields: object) -> ml_collections.ConfigDict:
  """The `config.model` block of a GPT-2-style (`gpt`) or LLaMA-style (`llama`) decoder."""
  shared = dict(num_layers=layers, d_model=d_model, num_heads=heads, dtype="float32",
                param_dtype="float32", attention_impl=placeholder(str), remat="none",
                scan_layers=False)
  if arch == "gpt":
    block = dict(name="gpt", mlp_ratio=4, context_len=seq_len, **shared)
  elif arch == "llama":
    block = dict(name="llama", num_kv_heads=placeholder(int), mlp_dim=placeholder(int),
                 rope_base=10000.0, tie_embeddings=True, **shared)
  else:
    raise common.UsageError(f"arch={arch!r} is unknown; use gpt or llama")
  return ml_collections.ConfigDict({**block, **fields})


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, size="tiny", opt="adamw", data="stdlib-code", arch="gpt")
  if args.size not in SIZES:
    raise common.UsageError(f"size={args.size!r} is unknown; use one of {', '.join(SIZES)}")
  layers, d_model, heads, seq_len, batch, steps, lr, evals = SIZES[args.size]

  config = common.base_config(total_steps=steps)
  config.batch_size = batch
  # data.path and data.vocab_size are for data.name=tokens (pre-tokenized shards).
  config.data = ml_collections.ConfigDict(dict(name=args.data, seq_len=seq_len, split_seed=0,
                                               path="", vocab_size=0))
  config.model = model_block(args.arch, layers=layers, d_model=d_model, heads=heads,
                             seq_len=seq_len)
  config.loss = ml_collections.ConfigDict(dict(chunk_size=0))
  config.optimizer = common.optimizer_config(args.opt, lr)
  config.schedule = ml_collections.ConfigDict(dict(
      name="warmup_cosine", warmup_steps=common.fraction_of(config, "total_steps", 10),
      init_value=0.0, end_value=config.optimizer.get_ref("learning_rate") / 10))
  config.eval.every_steps = common.fraction_of(config, "total_steps", evals)
  config.eval.num_batches = 8
  return config
