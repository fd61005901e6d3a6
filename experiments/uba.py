"""The UBA study's runs: one schedule, one fixed iteration budget (Tang et al., arXiv 2505.24452).

`--config experiments/uba.py:model=mlp,schedule=uba,phi=1,epochs=3,lr=0.002,seed=0` is one
cell of `reproductions/uba.py` (Fashion-MNIST, 10,000 training images held out as validation,
batch 128, AdamW from `experiments/image.py`, no warmup). `schedule=` is one of `SCHEDULES`;
every decaying schedule ends at 0 at the budget. `epochs` may be fractional: the budget is
`round(epochs * 390)` steps (390 batches of 128 make one epoch of the 50,000 kept images).
`model=cnn,width=8` is the CNN with channels (8, 16) (the default width 16: (16, 32)).

`model=wsd-124m` (or another `experiments/scale.py` model) is the paper-scale version: that
model and slice with its warmup, then `schedule` over the rest of its steps (times `budget`,
a fraction of the model's own step count), e.g.
`experiments/uba.py:model=wsd-124m,schedule=uba,phi=1,budget=0.5`.
"""

from __future__ import annotations

import ml_collections

from experiments import common, image

HOLDOUT = 10_000  # training images held out as the validation split
SCALE_WARMUP = 300  # the scale models' warmup (experiments/scale.py)

# Schedule label -> registered schedule name. No warmup on the image runs (OneCycle's rise is
# its own shape); `wsd` decays over the last int(0.2 T) steps with 1-sqrt (Hägele et al.).
SCHEDULES = {
    "constant": "constant",
    "step_decay": "step_decay",  # x0.1 at 50% and 75% of the budget
    "linear": "linear",
    "cosine": "warmup_cosine",
    "onecycle": "onecycle",  # optax's defaults: 30% rise from peak/25, end peak/2.5e5
    "wsd": "wsd",
    "uba": "uba",
}


def schedule_block(schedule: str, steps: int, phi: float, warmup: int = 0,
                   ) -> ml_collections.ConfigDict:
  """The schedule `schedule` over `steps` updates (`warmup` of them a linear warmup from 0)."""
  if schedule not in SCHEDULES:
    raise common.UsageError(f"schedule={schedule!r} is unknown; use one of {', '.join(SCHEDULES)}")
  block = dict(name=SCHEDULES[schedule])
  if schedule == "uba":
    block["phi"] = phi
  if schedule == "wsd":
    block.update(decay_steps=int(0.2 * steps), decay_shape="1-sqrt")
  if warmup and schedule != "onecycle":
    block.update(warmup_steps=warmup, init_value=0.0)
  return ml_collections.ConfigDict(block)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, model="mlp", schedule="cosine", phi=2.0, epochs=1.0, lr=0.002,
                          seed=0, data="fashion-mnist", budget=1.0, width=16)
  if args.model not in ("mlp", "cnn"):
    return _scale_config(args)
  config = image.get_config(f"model={args.model},data={args.data},epochs=1")
  if args.model == "cnn":
    config.model.channels = (args.width, 2 * args.width)  # width=8: the half-width CNN
  holdout = HOLDOUT if args.data == "fashion-mnist" else 300
  config.data.holdout = holdout
  steps_per_epoch = (image.TRAIN_EXAMPLES[args.data] - holdout) // config.batch_size
  config.total_steps = max(1, round(args.epochs * steps_per_epoch))
  config.optimizer.learning_rate = args.lr
  config.schedule = schedule_block(args.schedule, config.total_steps, args.phi)
  config.seed = args.seed
  config.eval.every_steps = 0  # one evaluation, of the final parameters
  config.log.every_steps = max(1, config.total_steps // 10)
  config.checkpoint.every_steps = 0  # runs of seconds: only the final state is saved
  config.checkpoint.keep = 1
  return config


def _scale_config(args: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A paper-scale model of `experiments/scale.py` with `args.schedule` after its warmup."""
  from experiments import scale  # imported here: the image runs never need it
  if args.model not in scale.MODELS:
    raise common.UsageError(f"model={args.model!r} is unknown; use mlp, cnn or one of "
                            f"{', '.join(scale.MODELS)}")
  config = scale.get_config(f"model={args.model}")
  config.total_steps = max(SCALE_WARMUP + 1, round(args.budget * config.total_steps))
  config.optimizer.learning_rate = args.lr
  config.schedule = schedule_block(args.schedule, config.total_steps, args.phi, SCALE_WARMUP)
  config.seed = args.seed
  return config
