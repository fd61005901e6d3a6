"""ECO: FP8 training without master weights (Nikdan et al., arXiv 2601.22101).

Claim: ECO (weights stored quantized, no float32 master copy, the quantization error injected
into the momentum) with stochastic rounding matches FP8 training with float32 master weights
and beats dropping the master weights with plain stochastic rounding. Arms on the study model
(`experiments/study.py`, 2,400 steps, ~20 tokens per parameter), FP8 E4M3 with row-wise absmax
scales: master weights, ECO + SR, naive + SR, naive + round-to-nearest, ECO + RTN, and float32
AdamW as the anchor; each arm's learning rate tuned on a 2x grid on validation, 3 seeds at the
choice, paired differences on test. Protocol, verdict rules and scale gap: templates/eco.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from experiments import study
from reproductions import Context, RunSpec, markdown_table, mean_std, stats
from trainlab.algorithms import quantize as qz
from trainlab.training.run import build_run
from trainlab.training.trainer import Trainer

FORMAT = "fp8_e4m3"  # E4M3 codes, one float32 absmax scale per row (the paper's pre-training)
# arm -> (optimizer.name, optimizer keys over experiments/common.py's defaults)
ARMS: dict[str, tuple[str, dict[str, Any]]] = {
    "master": ("adamw_master", dict(master_weights_quantizer=FORMAT)),
    "eco-sr": ("eco_adamw", dict(quantizer=FORMAT, mode="eco", rounding="stochastic")),
    "naive-sr": ("eco_adamw", dict(quantizer=FORMAT, mode="naive", rounding="stochastic")),
    "naive-rtn": ("eco_adamw", dict(quantizer=FORMAT, mode="naive", rounding="nearest")),
    "eco-rtn": ("eco_adamw", dict(quantizer=FORMAT, mode="eco", rounding="nearest")),
    "float32": ("adamw", {}),
}
# Trained in this order: the first phase alone decides the two headline verdicts.
PHASES = (("master", "eco-sr", "naive-sr"), ("naive-rtn", "float32"), ("eco-rtn",))
LABELS = {"master": "FP8 + float32 master weights", "eco-sr": "ECO + SR (no master)",
          "naive-sr": "no master + SR", "naive-rtn": "no master + RTN",
          "eco-rtn": "ECO + RTN (no master)", "float32": "float32 AdamW"}
COLORS = {"master": "C0", "eco-sr": "C2", "naive-sr": "C1", "naive-rtn": "C3",
          "eco-rtn": "C4", "float32": "k"}
LRS = (2e-3, 4e-3, 8e-3)  # 2x apart; ctx.tune extends the grid at an edge
MARGIN = 0.01  # nats/byte: "matches" (near-lossless) means within this, stated before the runs
TUNE_SEEDS, SEEDS = (0,), (0, 1, 2)
# (label, A, B, the claim's reading of A - B): the pre-stated comparisons, in page order.
COMPARISONS = (
    ("ECO + SR - master", "eco-sr", "master", "matches or beats"),
    ("ECO + SR - no master + SR", "eco-sr", "naive-sr", "beats"),
    ("no master + SR - master", "naive-sr", "master", "(none: the review's finding)"),
    ("no master + RTN - master", "naive-rtn", "master", "(none: expected to trail)"),
    ("ECO + RTN - no master + RTN", "eco-rtn", "naive-rtn", "beats (secondary summary)"),
    ("master - float32", "master", "float32", "(none: cost of FP8 compute)"),
)


@dataclasses.dataclass(frozen=True)
class Setup:
  steps: int
  lrs: tuple[float, ...]
  seeds: tuple[int, ...]
  tune_seeds: tuple[int, ...]
  quick: bool

  @classmethod
  def of(cls, ctx: Context) -> "Setup":
    if ctx.quick:
      return cls(steps=20, lrs=(4e-3,), seeds=(0,), tune_seeds=(0,), quick=True)
    seeds = tuple(range(ctx.num_seeds(len(SEEDS))))
    return cls(steps=study.STEPS, lrs=LRS, seeds=seeds, tune_seeds=TUNE_SEEDS, quick=False)


def arm_config(setup: Setup, arm: str, lr: float, seed: int) -> Any:
  """The study model at `steps`, warmup-cosine (10% warmup, decay to lr/10), AdamW (0.9, 0.95),
  weight decay 0.1, clipping at 1, with `arm`'s weight storage and rounding."""
  name, extra = ARMS[arm]
  config = study.get_config(f"opt={name},steps={setup.steps},lr={lr},seed={seed},"
                            f"quick={str(setup.quick).lower()}")
  config.optimizer.update(extra)
  return config


def _spec(setup: Setup, arm: str, lr: float, seed: int) -> RunSpec:
  return RunSpec(f"{arm}_lr{lr:g}_s{seed}", arm_config(setup, arm, lr, seed),
                 meta=dict(arm=arm, lr=lr, seed=seed))


def state_bytes(config: Any) -> tuple[float, float]:
  """(train-state bytes per parameter, static bytes per parameter) from the abstract state:
  static adds, for master weights, the FP8 compute copy (codes + row scales) that FP8 systems
  keep beside the float32 master (our trainer rebuilds it inside each step instead)."""
  state = Trainer(build_run(config)).abstract_state
  is_q = lambda x: isinstance(x, qz.QuantizedArray)
  num_params = sum(x.size for x in jax.tree.leaves(state.params, is_leaf=is_q))
  total = qz.tree_nbytes(state)
  copy = 0
  quantizer = config.optimizer.get("master_weights_quantizer", "")
  if quantizer:
    copy = qz.tree_nbytes(jax.eval_shape(
        lambda p: qz.quantize_tree(p, qz.get_quantizer(quantizer)), state.params))
  return total / num_params, (total + copy) / num_params


def _test(record: dict[str, Any]) -> float:
  return record["summary"]["final_test_loss"]


def _series(record: dict[str, Any], key: str) -> tuple[np.ndarray, np.ndarray]:
  steps, values = record["curve"]["step"], record["curve"].get(key, [])
  pairs = [(s, v) for s, v in zip(steps, values) if v is not None]
  return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs], float)


def _gap_curve(a: list[dict], b: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Steps, mean and SE over seeds of the paired validation-loss difference A - B."""
  steps, _ = _series(a[0], "eval_loss")
  diffs = np.array([_series(x, "eval_loss")[1] - _series(y, "eval_loss")[1]
                    for x, y in zip(a, b)])
  se = (diffs.std(axis=0, ddof=1) / np.sqrt(len(diffs)) if len(diffs) > 1
        else np.full(diffs.shape[1], np.nan))
  return steps, diffs.mean(axis=0), se


def run(ctx: Context) -> None:
  setup = Setup.of(ctx)
  tuned, final = {}, {}
  for phase in PHASES:  # tune a phase's arms, train their 3 seeds, then the next phase
    makers = {arm: (lambda lr, seed, arm=arm: _spec(setup, arm, lr, seed), setup.lrs)
              for arm in phase}
    tuned.update(ctx.tune(makers, seeds=setup.tune_seeds))
    records = ctx.run([_spec(setup, arm, tuned[arm].best, s) for arm in phase
                       for s in setup.seeds])
    final.update({arm: [records[_spec(setup, arm, tuned[arm].best, s).name]
                        for s in setup.seeds] for arm in phase})
  arms = [arm for phase in PHASES for arm in phase]

  grid_rows = [[LABELS[arm], tuned[arm].row()] for arm in arms]
  memory = {arm: state_bytes(arm_config(setup, arm, setup.lrs[0], 0))
            for arm in ("float32", "master", "eco-sr")}
  memory_of = lambda arm: memory["eco-sr" if ARMS[arm][0] == "eco_adamw" else arm]
  arm_rows = [[LABELS[arm], f"{tuned[arm].best:g}",
               mean_std([r["summary"]["final_eval_loss"] for r in final[arm]]),
               mean_std([_test(r) for r in final[arm]]),
               f"{np.mean([r['summary']['final_test_loss_se'] for r in final[arm]]):.4f}",
               f"{memory_of(arm)[0]:.2f}", f"{memory_of(arm)[1]:.2f}"] for arm in arms]

  rows, verdicts = [], {}
  for label, a, b, claim in COMPARISONS:
    diff = stats.paired([_test(r) for r in final[a]], [_test(r) for r in final[b]])
    eval_se = np.mean([stats.paired_example_se(np.asarray(x["examples"]["test"]),
                                               np.asarray(y["examples"]["test"]))
                       for x, y in zip(final[a], final[b])])
    verdicts[label] = stats.verdict(diff, MARGIN)
    rows.append([label, str(diff), f"{eval_se:.4f}", verdicts[label], claim])

  marks = (0.25, 0.5, 0.75, 0.9, 1.0)
  lr_steps, lr_values = _series(final["master"][0], "lr")
  gap_rows = [["(learning rate / peak)", *[
      f"{lr_values[np.argmin(np.abs(lr_steps - f * setup.steps))] / lr_values.max():.2f}"
      for f in marks]]]
  for label, a, b, _ in COMPARISONS[:5]:
    steps, mean, se = _gap_curve(final[a], final[b])
    cells = []
    for fraction in marks:
      i = int(np.argmin(np.abs(steps - fraction * setup.steps)))
      cells.append(f"{mean[i]:+.4f} ± {se[i]:.4f}")
    gap_rows.append([label, *cells])

  curves = _plot(ctx, setup, arms, final)
  all_records = ctx.records()
  first = final["master"][0]["summary"]
  tokens = setup.steps * study.BATCH * study.SEQ_LEN
  ctx.write_page({
      "params": f"{first['num_params']:,}", "steps": setup.steps,
      "tokens": f"{tokens / 1e6:.2f}M", "tokens_per_param": f"{tokens / first['num_params']:.0f}",
      "lrs": ", ".join(f"{v:g}" for v in setup.lrs), "margin": MARGIN,
      "seeds": len(setup.seeds),
      "inside": "every choice lies strictly inside its grid" if all(
          t.inside for t in tuned.values()) else "NOT every choice lies inside its grid: "
      + ", ".join(LABELS[a] for a, t in tuned.items() if not t.inside),
      "grid_table": markdown_table(["arm", "learning rate: validation loss, seed 0 (choice "
                                    "in bold)"], grid_rows),
      "arm_table": markdown_table(["arm", "lr", "validation loss", "test loss",
                                   "test SE (eval)", "state B/param", "static B/param"],
                                  arm_rows),
      "main_table": markdown_table(["difference (A - B), test loss",
                                    "paired difference ± SE (seeds)", "eval SE of one pair",
                                    "verdict", "the claim needs"], rows),
      "gap_table": markdown_table(["difference (A - B), validation loss",
                                   *[f"step {round(f * setup.steps)}" for f in marks]], gap_rows),
      "verdict_lossless": verdicts[COMPARISONS[0][0]],
      "verdict_feedback": verdicts[COMPARISONS[1][0]],
      "verdict_sr": verdicts[COMPARISONS[2][0]],
      "verdict_rtn": verdicts[COMPARISONS[3][0]],
      "verdict_eco_rtn": verdicts[COMPARISONS[4][0]],
      "verdict_fp8": verdicts[COMPARISONS[5][0]],
      "ratio": f"{memory['eco-sr'][1] / memory['master'][1]:.3f}",
      "curves": curves.name,
  }, all_records)


def _plot(ctx: Context, setup: Setup, arms: list[str], final: dict) -> Any:
  fig, (ax_a, ax_b, ax_c) = plt.subplots(1, 3, figsize=(16, 4.4))
  for arm in arms:
    steps, _ = _series(final[arm][0], "eval_loss")
    mean = np.mean([_series(r, "eval_loss")[1] for r in final[arm]], axis=0)
    ax_a.plot(steps, mean, color=COLORS[arm], label=LABELS[arm])
  tail = [np.mean([_series(r, "eval_loss")[1] for r in final[a]], axis=0) for a in arms]
  ax_a.set_ylim(min(t.min() for t in tail) - 0.02,
                max(t[len(t) // 3:].max() for t in tail) + 0.02)
  ax_a.set(xlabel="step", ylabel="validation loss (nats/byte), mean over seeds",
           title="(a) each arm at its tuned learning rate")
  for arm in arms:
    if arm in ("master", "float32"):
      continue
    steps, mean, se = _gap_curve(final[arm], final["master"])
    ax_b.plot(steps, mean, color=COLORS[arm], label=f"{LABELS[arm]} - master")
    ax_b.fill_between(steps, mean - 2 * se, mean + 2 * se, color=COLORS[arm], alpha=0.15)
  ax_b.axhline(0, color="C0", lw=0.8)
  for y in (MARGIN, -MARGIN):
    ax_b.axhline(y, color="grey", ls=":", lw=0.8)
  lr_axis = ax_b.twinx()
  steps, lrs = _series(final["master"][0], "lr")
  lr_axis.plot(steps, lrs / lrs.max(), color="grey", ls="--", lw=0.8)
  lr_axis.set_ylabel("learning rate / peak (dashed)")
  ax_b.set(xlabel="step", ylabel="paired validation-loss difference (± 2 SE)",
           title="(b) gap to master weights over training")
  for arm in arms:
    if arm == "master":
      continue
    ratios = [_series(r, "update_norm")[1] / _series(m, "update_norm")[1]
              for r, m in zip(final[arm], final["master"])]
    steps, _ = _series(final[arm][0], "update_norm")
    ax_c.plot(steps, np.mean(ratios, axis=0), color=COLORS[arm], label=LABELS[arm])
  ax_c.set(xlabel="step", ylabel="update norm / master weights' update norm",
           yscale="log", title="(c) size of the applied weight update")
  for ax in (ax_a, ax_b, ax_c):
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
  return ctx.save_figure(fig, "curves")
