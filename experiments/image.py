"""Image classification with the MLP or the small CNN on Fashion-MNIST or sklearn's digits.

`--config experiments/image.py:model=mlp,data=fashion-mnist,epochs=3`. Warmup (5% of
`total_steps`) and the eval cadence (3 evals) follow an override of `total_steps`.
"""

from __future__ import annotations

import ml_collections

from experiments import common

TRAIN_EXAMPLES = {"fashion-mnist": 60_000, "digits": 1_438}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, model="mlp", data="fashion-mnist", epochs=3, opt="adamw")
  if args.data not in TRAIN_EXAMPLES:
    raise common.UsageError(f"data={args.data!r} is not an image dataset; use one of "
                            f"{', '.join(TRAIN_EXAMPLES)}")
  batch_size = 128 if args.data == "fashion-mnist" else 32
  config = common.base_config(total_steps=args.epochs * (TRAIN_EXAMPLES[args.data] // batch_size))
  config.batch_size = batch_size
  # holdout > 0: that many training examples become the validation set (eval_loss); the
  # test split is then reported only at the end (test_loss).
  config.data = ml_collections.ConfigDict(dict(name=args.data, path="", split_seed=0, holdout=0))
  if args.model == "mlp":
    config.model = ml_collections.ConfigDict(dict(name="mlp", hidden_sizes=(256, 256)))
  else:
    config.model = ml_collections.ConfigDict(dict(name=args.model, channels=(16, 32)))
  config.optimizer = common.optimizer_config(args.opt, 1e-3)
  config.schedule = ml_collections.ConfigDict(dict(
      name="warmup_cosine", warmup_steps=common.fraction_of(config, "total_steps", 20),
      init_value=0.0, end_value=0.0))
  config.eval.every_steps = common.fraction_of(config, "total_steps", 3)
  config.eval.num_batches = 1
  config.log.every_steps = 50
  return config
