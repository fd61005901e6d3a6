"""Paper-scale language-model runs, each sized (mesh, remat, per-chip batch) for a named slice.

`--config experiments/scale.py:model=gpt2-124m,opt=adamw,topology=v5e:4x4`; check it fits
before booking the slice with `python -m launch.compile --config ... --topology v5e:4x4`
(docs/scale.md tables every fit). The data are GPT-2-tokenized shards (`data.name=tokens`,
vocabulary 50,257 padded to 50,304) at `data.path`, e.g. fineweb shards written by
`python -m launch.prepare_tokens`; a compile needs only their shapes, not the files.

Models (`model=`), with the paper's tokens per step:
- `gpt2-124m`, `gpt2-355m`: GPT-2 small and medium, Sophia's setup (Liu et al., arXiv
  2305.14342; `Liuhong99/Sophia`): 480 x 1024 tokens per step, 100k steps, cosine with 2000
  warmup steps; `opt=sophia` (SophiaG, Hessian refresh every 10 steps) or `opt=adamw`.
- `wsd-124m`, `wsd-210m`: the WSD paper's LLaMA-style decoders (Hägele et al., arXiv 2405.18392;
  `epfml/schedules-and-scaling` defaults: 12 or 24 layers, d 768, 12 heads, sequence 512,
  50 x 4 = 200 sequences = 102,400 tokens per step, AdamW (0.9, 0.95), lr 1e-3, 300 warmup
  steps, 15,000 steps), WSD with a 20% 1-sqrt cooldown.
- `inflr-405m`: the infinite-LR schedule's 405M decoder (Ibrahim et al., arXiv 2403.08763:
  24 layers, d 1024, untied embeddings, sequence 2048; peak 3e-4, constant 1.65e-4, end 3e-5,
  warmup 1%, cooldown to 60% and anneal from 85% of the steps after warmup). The shape is the
  Pythia-410M one the paper's GPT-NeoX runs use; its 256 x 2048 tokens per step is our choice.
- `eco-210m`: `wsd-210m` trained by ECO (Nikdan et al., arXiv 2601.22101) with FP8 (E4M3)
  weights and no master copy (`opt=eco_adamw` by default).
- `llama-1.3b` (stretch): 24 layers, d 2048, 16 heads, sequence 2048, 512 x 2048 tokens per step.

Every model computes in bfloat16 with float32 parameters, scans its layers and chunks the loss;
`topology=` picks one of the slices the model was sized for (the first is the default).
"""

from __future__ import annotations

import dataclasses

import ml_collections

from experiments import common, lm

VOCAB_SIZE = 50304  # GPT-2's 50,257 padded to a multiple of 128


@dataclasses.dataclass(frozen=True)
class Shape:
  arch: str
  layers: int
  d_model: int
  heads: int
  seq_len: int
  batch: int  # sequences per step
  steps: int
  lr: float
  opt: str
  fields: tuple[tuple[str, object], ...] = ()  # more model fields


@dataclasses.dataclass(frozen=True)
class Fit:
  """How a model is laid out on one slice: mesh (data, fsdp, tensor), remat policy,
  microbatches per step, loss chunk (positions)."""
  mesh: tuple[int, int, int]
  remat: str = "full"
  accumulation: int = 1
  chunk: int = 256


MODELS = {
    "gpt2-124m": Shape("gpt", 12, 768, 12, 1024, 480, 100_000, 6e-4, "adamw"),
    "gpt2-355m": Shape("gpt", 24, 1024, 16, 1024, 480, 100_000, 3e-4, "adamw"),
    "wsd-124m": Shape("llama", 12, 768, 12, 512, 200, 15_000, 1e-3, "adamw"),
    "wsd-210m": Shape("llama", 24, 768, 12, 512, 200, 15_000, 1e-3, "adamw"),
    "inflr-405m": Shape("llama", 24, 1024, 16, 2048, 256, 100_000, 3e-4, "adamw",
                        (("tie_embeddings", False),)),
    "eco-210m": Shape("llama", 24, 768, 12, 512, 200, 15_000, 1e-3, "eco_adamw"),
    "llama-1.3b": Shape("llama", 24, 2048, 16, 2048, 512, 100_000, 2e-4, "adamw"),
}
# The slices each model was sized for, as `launch.compile --topology` names them; the first is
# the default. docs/scale.md has the compiled memory, step time and MFU of each. The meshes are
# data-parallel: with `mesh.fsdp` > 1 XLA shards the models' activations along `embed` and
# replicates the batch (docs/scale.md, "FSDP"), which costs more memory than it saves.
FITS: dict[str, dict[str, Fit]] = {
    "gpt2-124m": {"v5e:4x4": Fit((16, 1, 1))},
    "gpt2-355m": {"v5e:4x4": Fit((16, 1, 1), accumulation=2)},
    "wsd-124m": {"v5e:2x4": Fit((8, 1, 1))},
    "wsd-210m": {"v5e:2x4": Fit((8, 1, 1)), "8xH100": Fit((8, 1, 1))},
    "inflr-405m": {"v4:2x2x4": Fit((16, 1, 1))},
    "eco-210m": {"v5e:2x4": Fit((8, 1, 1))},
    "llama-1.3b": {"v5p:2x4x4": Fit((32, 1, 1))},
}


def schedule_block(model: str, shape: Shape) -> ml_collections.ConfigDict:
  steps, lr = shape.steps, shape.lr
  if model.startswith("gpt2"):
    return ml_collections.ConfigDict(dict(name="warmup_cosine", warmup_steps=2000,
                                          init_value=0.0, end_value=lr / 10))
  if model.startswith("inflr"):
    warmup = steps // 100
    after = steps - warmup
    return ml_collections.ConfigDict(dict(
        name="infinite_lr", warmup_steps=warmup, cooldown_steps=after * 6 // 10,
        anneal_steps=after * 15 // 100, constant_value=1.65e-4, end_value=3e-5,
        cooldown_shape="cosine", timescale=10.0))
  if model.startswith(("wsd", "eco")):
    return ml_collections.ConfigDict(dict(name="wsd", warmup_steps=300,
                                          decay_steps=steps // 5, decay_shape="1-sqrt",
                                          init_value=0.0, end_value=0.0))
  return ml_collections.ConfigDict(dict(name="warmup_cosine", warmup_steps=steps // 50,
                                        init_value=0.0, end_value=lr / 10))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, model="gpt2-124m", opt="", topology="")
  if args.model not in MODELS:
    raise common.UsageError(f"model={args.model!r} is unknown; use one of {', '.join(MODELS)}")
  shape, fits = MODELS[args.model], FITS[args.model]
  topology = args.topology or next(iter(fits))
  if topology not in fits:
    raise common.UsageError(f"topology={topology!r} is not a slice {args.model} is sized for; "
                            f"use one of {', '.join(fits)} (or set mesh.*, model.remat and "
                            "optimizer.accumulation_steps by hand)")
  fit = fits[topology]
  opt = args.opt or shape.opt

  config = common.base_config(total_steps=shape.steps)
  config.batch_size = shape.batch
  config.data = ml_collections.ConfigDict(dict(name="tokens", seq_len=shape.seq_len,
                                               split_seed=0, path="", vocab_size=VOCAB_SIZE))
  config.model = lm.model_block(shape.arch, layers=shape.layers, d_model=shape.d_model,
                                heads=shape.heads, seq_len=shape.seq_len, dtype="bfloat16",
                                remat=fit.remat, scan_layers=True, **dict(shape.fields))
  config.loss = ml_collections.ConfigDict(dict(chunk_size=fit.chunk))
  config.optimizer = common.optimizer_config(opt, shape.lr)
  config.optimizer.accumulation_steps = fit.accumulation
  if opt == "sophia":  # the GPT-2 settings of the official code
    config.optimizer.rho, config.optimizer.weight_decay = 0.05, 0.2
  config.schedule = schedule_block(args.model, shape)
  config.mesh = ml_collections.ConfigDict(dict(zip(("data", "fsdp", "tensor"), fit.mesh)))
  config.eval.every_steps = 1000
  config.eval.num_batches = 8
  config.log.every_steps = 50
  config.checkpoint.every_steps = 1000
  return config
