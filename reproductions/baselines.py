"""Baselines: optax's AdamW, Lion and SGD-momentum on the test-size GPT over `stdlib-code`.

Not a paper claim: it anchors the other reproductions (which optimizer the tiny GPT prefers,
how much seeds vary) and exercises the reproduction harness end to end.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from experiments import lm
from reproductions import Context, markdown_table, mean_std

LEARNING_RATES = {"adamw": 1e-2, "lion": 3e-3, "sgd": 0.3}


def run(ctx: Context) -> None:
  steps = 20 if ctx.quick else 300
  seeds = range(ctx.num_seeds(3))
  results = {}
  for opt, lr in LEARNING_RATES.items():
    for seed in seeds:
      config = lm.get_config(f"size=test,opt={opt}")
      config.seed, config.total_steps, config.optimizer.learning_rate = seed, steps, lr
      config.schedule.warmup_steps = steps // 10
      config.schedule.end_value = lr / 10
      config.eval.every_steps = max(steps // 10, 1)
      config.log.every_steps = max(steps // 30, 1)
      results[opt, seed] = ctx.train(config, f"{opt}_seed{seed}")

  rows = [[opt, f"{lr:g}", mean_std([results[opt, s]["final_eval_loss"] for s in seeds]),
           mean_std([results[opt, s]["final_train_loss"] for s in seeds])]
          for opt, lr in LEARNING_RATES.items()]
  fig, ax = plt.subplots(figsize=(6, 4))
  for opt in LEARNING_RATES:
    history = [r for r in results[opt, 0]["history"] if "eval_loss" in r]
    ax.plot([r["step"] for r in history], [r["eval_loss"] for r in history], label=opt)
  ax.set_xlabel("step")
  ax.set_ylabel("eval loss (nats/byte)")
  ax.set_title("seed 0")
  ax.legend()
  plot = ctx.save_figure(fig, "eval_loss")
  best = min(rows, key=lambda r: float(r[2].split()[0]))[0]
  ctx.write_report("Baselines: AdamW, Lion, SGD on the test-size GPT", f"""
Test-size GPT (1 layer, d=32, 21.7k parameters), `stdlib-code`, sequence 32, batch 8,
{steps} steps, warmup-cosine (10% warmup, to lr/10), {len(seeds)} seed(s). Learning rates are
not swept here: AdamW's and Lion's are the best of the `sophia` reproduction's sweep on this
model (docs/results/sophia.md), SGD's was set by hand.

{markdown_table(["optimizer", "lr", "final eval loss", "final train loss"], rows)}

![eval loss](./{plot.name})

Verdict: at this scale {best} reaches the lowest eval loss. This is an anchor for the other
reproductions, not a claim from a paper.
""")
