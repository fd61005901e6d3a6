"""The small LLaMA-style language model the paper reproductions train (`experiments/study.py`).

0.25M parameters (2 layers, d=96, 4 heads, SwiGLU 256, RoPE, tied embeddings: the decoder the
WSD paper's code trains, shrunk), byte-level on `stdlib-code`, 16 x 128 = 2,048 tokens per
step. Its default budget, `steps=2400` (4.9M tokens), is about 20 tokens per parameter; a run
takes about 3 minutes on one CPU core. Validation (what tuning reads) and test (what pages
report) are 32 batches each: 512 fixed windows, 65k bytes, drawn from documents never trained
on. `--config experiments/study.py:opt=adamw,steps=2400,lr=4e-3,seed=0`; each reproduction sets
the schedule. `quick=true` is the smoke-test model of the reproductions' `--quick` runs.
"""

from __future__ import annotations

import ml_collections

from experiments import common, lm

D_MODEL, LAYERS, HEADS, SEQ_LEN, BATCH = 96, 2, 4, 128, 16
STEPS = 2400  # ~20 tokens per parameter
EVAL_BATCHES = 32


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, opt="adamw", steps=STEPS, lr=4e-3, seed=0, data="stdlib-code",
                          batch=BATCH, quick=False)
  config = lm.get_config(f"size=tiny,opt={args.opt},data={args.data},arch=llama")
  config.seed = args.seed
  config.total_steps = args.steps
  config.batch_size = args.batch
  config.data.seq_len = SEQ_LEN
  config.model = lm.model_block("llama", layers=LAYERS, d_model=D_MODEL, heads=HEADS,
                                seq_len=SEQ_LEN)
  config.optimizer.learning_rate = args.lr
  config.eval.every_steps = common.fraction_of(config, "total_steps", 20)
  config.eval.num_batches = EVAL_BATCHES
  config.log.every_steps = common.fraction_of(config, "total_steps", 60)
  config.checkpoint.every_steps = common.fraction_of(config, "total_steps", 4)
  config.checkpoint.keep = 1
  if args.quick:  # smoke runs: a 1-layer d=32 model, 2 eval batches, checkpoints at the end
    config.model.num_layers, config.model.d_model, config.model.num_heads = 1, 32, 2
    config.eval.num_batches, config.checkpoint.every_steps = 2, 0
    config.eval.every_steps, config.log.every_steps = 5, 5
  return config
