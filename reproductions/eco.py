"""ECO: quantized training without master weights (Nikdan et al., arXiv 2601.22101).

Claim checked: ECO (weights stored quantized, the quantization error injected into the
momentum) trains "near-losslessly" compared with float32 master weights plus a quantized
compute copy, while naive removal of the master weights (quantize after each step) is clearly
worse; and ECO's static memory is smaller. Two tasks: the test-size GPT on `stdlib-code` and
the MLP on Fashion-MNIST (`--quick`: scikit-learn's digits). Set-ups, FP8 (E4M3, row-wise
absmax scales) and INT4 (packed, row-wise scales): master weights, naive, ECO with
nearest and with stochastic rounding; plus plain float32 AdamW as the unquantized anchor.
Every set-up uses AdamW with the task's default learning rate (no sweep).
"""

from __future__ import annotations

from typing import Any

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from trainlab.algorithms import quantize as qz
from experiments import image, lm
from reproductions import Context, markdown_table, mean_std
from trainlab.training.run import build_run
from trainlab.training.trainer import Trainer

# label -> (optimizer.name, extra optimizer keys)
SETUPS: dict[str, tuple[str, dict[str, Any]]] = {"float32": ("adamw", {})}
for _fmt in ("fp8_e4m3", "int4"):
  _short = "fp8" if _fmt == "fp8_e4m3" else "int4"
  SETUPS.update({
      f"master {_short}": ("adamw_master", dict(master_weights_quantizer=_fmt)),
      f"naive {_short}": ("eco_adamw", dict(quantizer=_fmt, mode="naive", rounding="nearest")),
      f"eco {_short}": ("eco_adamw", dict(quantizer=_fmt, mode="eco", rounding="nearest")),
      f"eco-sr {_short}": ("eco_adamw", dict(quantizer=_fmt, mode="eco", rounding="stochastic")),
  })
QUICK_SETUPS = ("master fp8", "naive fp8", "eco-sr fp8")


def _config(task: str, setup: str, seed: int, quick: bool):
  name, extra = SETUPS[setup]
  if task == "gpt":
    config = lm.get_config(f"size=test,opt={name}")
    steps = 20 if quick else 300
  else:
    config = image.get_config(f"model=mlp,data={'digits' if quick else 'fashion-mnist'},"
                              f"opt={name},epochs=1")
    steps = 20 if quick else 200
  config.seed, config.total_steps = seed, steps
  config.optimizer.update(extra)
  config.schedule.warmup_steps = steps // 10
  config.eval.every_steps = max(steps // 5, 1)
  config.log.every_steps = max(steps // 20, 1)
  config.checkpoint.every_steps = 0
  return config


def static_bytes(config: Any) -> tuple[float, float]:
  """(train-state bytes per parameter, static bytes per parameter).

  Static memory adds, for master weights, the quantized compute copy that FP8/INT4 training
  systems keep beside the float32 master (our trainer rebuilds it each step instead).
  """
  state = Trainer(build_run(config)).abstract_state
  is_q = lambda x: isinstance(x, qz.QuantizedArray)
  num_params = sum(x.size for x in jax.tree.leaves(state.params, is_leaf=is_q))
  state_bytes = qz.tree_nbytes(state)
  copy_bytes = 0
  quantizer = config.optimizer.get("master_weights_quantizer", "")
  if quantizer:
    copy = jax.eval_shape(lambda p: qz.quantize_tree(p, qz.get_quantizer(quantizer)),
                          state.params)
    copy_bytes = qz.tree_nbytes(copy)
  return state_bytes / num_params, (state_bytes + copy_bytes) / num_params


def run(ctx: Context) -> None:
  seeds = range(ctx.num_seeds(3))
  setups = QUICK_SETUPS if ctx.quick else tuple(SETUPS)
  tasks = {"gpt": "final_eval_loss", "mlp": "final_eval_accuracy"}
  results: dict[tuple[str, str, int], dict[str, Any]] = {}
  memory: dict[str, tuple[float, float]] = {}
  for task in tasks:
    for setup in setups:
      if task == "mlp" and setup == "float32":
        continue  # the budget: the unquantized anchor on the GPT only
      memory[task, setup] = static_bytes(_config(task, setup, 0, ctx.quick))
      for seed in seeds:
        # An absolute run folder: Orbax refuses relative checkpoint paths.
        run_dir = (ctx.runs_dir / f"{task}_{setup.replace(' ', '_')}_seed{seed}").resolve()
        results[task, setup, seed] = ctx.train(_config(task, setup, seed, ctx.quick),
                                               str(run_dir))

  def values(task, setup, key):
    return [results[task, setup, s][key] for s in seeds]

  sections, verdicts = [], []
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  for ax, task in zip(axes, tasks):
    anchor = {fmt: np.mean(values(task, f"master {fmt}", "final_eval_loss"))
              for fmt in ("fp8", "int4") if f"master {fmt}" in setups}
    rows = []
    for setup in (s for s in setups if (task, s) in memory):
      losses = values(task, setup, "final_eval_loss")
      fmt = setup.split()[-1]
      gap = f"{np.mean(losses) - anchor[fmt]:+.4f}" if fmt in anchor else "-"
      row = [setup, f"{memory[task, setup][0]:.2f}", f"{memory[task, setup][1]:.2f}",
             mean_std(losses), gap]
      if task == "mlp":
        row.append(mean_std(values(task, setup, "final_eval_accuracy")))
      rows.append(row)
      color = "k" if setup == "float32" else ("C0" if "master" in setup else
                                              "C3" if "naive" in setup else "C2")
      marker = "o" if "int4" in setup else ("s" if "fp8" in setup else "*")
      ax.errorbar(memory[task, setup][1], np.mean(losses), yerr=np.std(losses, ddof=1)
                  if len(losses) > 1 else None, fmt=marker, color=color, capsize=3)
      ax.annotate(setup, (memory[task, setup][1], np.mean(losses)), fontsize=7,
                  xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel("static memory (bytes / parameter)")
    ax.set_ylabel("final eval loss")
    ax.set_title("test-size GPT, stdlib-code" if task == "gpt" else "MLP, " + (
        "digits" if ctx.quick else "Fashion-MNIST"))
    header = ["set-up", "state B/param", "static B/param", "final eval loss",
              "gap to master (same format)"] + (["eval accuracy"] if task == "mlp" else [])
    sections.append(markdown_table(header, rows))
    verdicts += [_verdict(task, fmt, {s: np.mean(values(task, s, "final_eval_loss"))
                                      for s in setups if s.endswith(fmt)})
                 for fmt in anchor]
  ctx.save_figure(fig, "pareto")
  ctx.write_report("ECO: quantized training without master weights (arXiv 2601.22101)",
                   _body(ctx, sections, len(seeds), results, setups, verdicts))


NEAR = 0.02  # "near-lossless": mean eval loss within 2% of master weights' (fixed beforehand)


def _verdict(task: str, fmt: str, loss: dict[str, float]) -> str:
  """One line per task and format, by the rule stated in the report."""
  master = loss[f"master {fmt}"]
  rel = {s: (v - master) / master for s, v in loss.items()}
  ecos = [s for s in loss if s.startswith("eco")]
  naives = [s for s in loss if s.startswith("naive")]
  best_eco, best_naive = min(ecos, key=rel.get), min(naives, key=rel.get)
  eco_ok = rel[best_eco] <= NEAR
  naive_worse = rel[best_naive] > NEAR and rel[best_naive] > rel[best_eco] + NEAR
  others = ", ".join(f"`{s}` {rel[s]:+.1%} ({'within' if rel[s] <= NEAR else 'outside'} "
                     f"{NEAR:.0%})" for s in ecos if s != best_eco)
  return (f"- {task} {fmt}: best ECO (`{best_eco}`) {rel[best_eco]:+.1%} vs master "
          f"({'near-lossless' if eco_ok else 'NOT near-lossless'}); other ECO: {others}; "
          f"best naive (`{best_naive}`) {rel[best_naive]:+.1%} "
          f"({'clearly worse' if naive_worse else 'NOT clearly worse than ECO'}).")


def _body(ctx: Context, sections: list[str], num_seeds: int, results, setups,
          verdicts: list[str]) -> str:
  gpt_steps = next(iter(results.values()))["steps"]
  mlp_steps = results["mlp", setups[-1], 0]["steps"]
  return f"""
Set-ups (all AdamW, b1 0.9, b2 0.95, wd 0.1, the task's default learning rate with
warmup-cosine, no sweep; m and v in float32 everywhere; FP8 = E4M3 with one float32 absmax
scale per row (last axis), INT4 = symmetric codes in [-7, 7] packed two per byte with one
float32 scale per row; matrices quantized, norms/biases/vectors float32):

- `float32`: plain AdamW, no quantization (anchor);
- `master`: float32 master weights, forward and backward on a quantized copy (round to
  nearest), gradients applied straight through to the master (`optimizer.name=adamw`,
  `optimizer.master_weights_quantizer`);
- `naive`: weights stored quantized, re-quantized after every step, no error injection
  (`optimizer.name=eco_adamw`, `mode=naive`, round to nearest);
- `eco`: ECO, weights stored quantized, the quantization error injected into the momentum
  (`mode=eco`; `eco` rounds to nearest, `eco-sr` stochastically).

`state B/param` is the measured train state (params + optimizer state + step/rng) in bytes
over the parameter count; `static B/param` adds the quantized compute copy that master-weight
FP8/INT4 systems keep beside the float32 weights (our trainer rebuilds it each step instead).
{num_seeds} seed(s) (seed changes init, data order and the rounding key).

## Test-size GPT on stdlib-code ({gpt_steps} steps, batch 8 x 32 bytes, 21.7k parameters)

{sections[0]}

## MLP (256-256) on {"digits" if ctx.quick else "Fashion-MNIST"} ({mlp_steps} steps, batch {"32" if ctx.quick else "128"})

{sections[1]}

![static memory vs final eval loss](./{ctx.plot_path("pareto").name})

## Verdict

Rule (fixed before the runs): ECO is "near-lossless" when its mean final eval loss is within
{NEAR:.0%} (relative) of master weights' in the same format; naive is "clearly worse" when it
is more than {NEAR:.0%} above master weights and more than {NEAR:.0%} above ECO.

{chr(10).join(verdicts)}

Caveats. The near-lossless result holds for ECO with **stochastic** rounding; ECO with
round-to-nearest keeps part of the gap, large for INT4 (not investigated further: nearest
rounding makes the error systematic rather than zero-mean, and Adam's injection coefficient is
exact only for a constant denominator; the paper's claim is read here for the stochastic
variant). The naive baseline
rounds to nearest; naive with stochastic rounding (unbiased, but without error feedback) was
dropped from the grid to fit the time budget, so how much of ECO's gain stochastic rounding
alone would give is not measured here. Master weights use round-to-nearest for the copy, as
usual. The GPT's float32 row shows FP8/INT4 master weights cost nothing at this scale, so the
comparison is against a lossless baseline. Wall time: about 35 minutes for the 51 runs on the
shared 2-core machine at load average 25-29 (over the 20-minute target; compiled steps are
cached across seeds under `runs/reproduce-eco/jax_cache`).

Scale gap: the paper pre-trains 30M-800M-parameter Transformers (and Gemma-3 1B, a 2.1B MoE)
for billions of tokens in FP8 and fine-tunes DeepSeek-MoE-16B in INT4; here a 21.7k-parameter
GPT sees {gpt_steps} x 256 bytes and a 270k-parameter MLP {mlp_steps} batches, on CPU, with no
learning-rate tuning. The quantization error relative to the update is far larger at this
size (rows of 32-128 elements share a scale), so these runs test the mechanism, not the
paper's numbers. Memory: with float32 m and v, ECO FP8 stores 1 byte + one float32 scale per
row per weight against 4 bytes of master weight (+ the 1-byte compute copy); AdamW's 8 bytes
of m and v dominate, so the saving tops out near 0.70x of the static memory.
"""
