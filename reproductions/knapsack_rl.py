"""Knapsack RL (Li et al., arXiv 2509.25849): GRPO with rollouts allocated by a knapsack over
the prompts' success rates, against uniform allocation at the same total rollouts per step.

Arms: uniform; the paper's pipeline (`rl.allocator=official` with its cost-based fallback and
the authors' success estimator, `recent`); and the old page's pipeline (`exact` with the last
visit's success rate). The GRPO learning rate is tuned on a validation split of held-out
prompts (uniform and official, 2x grid); 5 seeds per reported cell; the effective-gradient
share after the first epoch, the final greedy pass rate on test prompts disjoint from the
validation ones, and an offline allocator study replaying every run's logged prompt schedule.
Protocol, verdict rules and scale gap: templates/knapsack_rl.md.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import pathlib
import types
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from experiments import rl
from reproductions import Context, RunSpec, default_record, markdown_table, mean_std, stats
from trainlab.algorithms import allocator_study
from trainlab.algorithms import grpo as grpo_math
from trainlab.data import arithmetic
from trainlab.training import grpo
from trainlab.training.checkpoint import Checkpoints

# arm -> (allocation, rl.allocator, rl.success_estimator); uniform reads neither of the last two
ARMS = {"uniform": ("uniform", "exact", "last_epoch"),
        "official": ("knapsack", "official", "recent"),
        "exact-last": ("knapsack", "exact", "last_epoch")}
LABELS = {"uniform": "uniform", "official": "official + fallback, recent (paper's pipeline)",
          "exact-last": "exact, last visit (old page's pipeline)"}
LRS = (1.5e-4, 3e-4, 6e-4)  # 2x apart around the config's 3e-4; extended at an edge
SEEDS, TUNE_SEEDS = (0, 1, 2, 3, 4), (0, 1)
MARGIN = 0.02  # pass rate: the paper's smallest average gain (2 points), stated before the runs
PAPER_GAIN = (0.20, 0.40)  # the paper's relative rise of the effective-gradient share
OFFLINE_ESTIMATORS = ("recent", "last_epoch", "oracle")
# Held-out prompts (stream "heldout", seed 0, the trainer's in-training set is indices 0-255):
VALIDATION = (256, 1024)  # (first index, count): chooses the learning rate
TEST = (1280, 4096)  # reported


@dataclasses.dataclass(frozen=True)
class Setup:
  """What the page trains; `--quick` shrinks it to a smoke test."""
  size: str
  lrs: tuple[float, ...]
  seeds: tuple[int, ...]
  tune_seeds: tuple[int, ...]
  validation: tuple[int, int]
  test: tuple[int, int]

  @classmethod
  def of(cls, ctx: Context) -> "Setup":
    if ctx.quick:
      return cls("test", (3e-4,), (0,), (0,), (32, 32), (64, 64))
    seeds = SEEDS[:ctx.num_seeds(len(SEEDS))]
    return cls("default", LRS, seeds, seeds[:len(TUNE_SEEDS)], VALIDATION, TEST)

  def config(self, arm: str, lr: float, seed: int) -> Any:
    allocation, allocator, estimator = ARMS[arm]
    config = rl.get_config(f"size={self.size},allocation={allocation},allocator={allocator},"
                           f"estimator={estimator}")
    config.seed = seed
    config.optimizer.learning_rate = lr
    return config

  def spec(self, arm: str, lr: float, seed: int) -> RunSpec:
    return RunSpec(f"{arm}_lr{lr:g}_s{seed}", self.config(arm, lr, seed), kind="rl",
                   meta=dict(arm=arm, lr=lr, seed=seed))

  def steps_per_epoch(self) -> int:
    config = self.config("uniform", 1.0, 0)
    return config.task.pool_size // config.rl.prompts_per_step


# -- records: the run's numbers, its rollout log, and which held-out prompts it solves ---------

def heldout_problems(config: Any, first: int, count: int) -> arithmetic.Problems:
  task = config.task
  return arithmetic.make_problems(0, "heldout", first, count, max_add_digits=task.max_add_digits,
                                  max_mul_digits=task.max_mul_digits,
                                  mul_fraction=task.mul_fraction)


_GREEDY: dict[str, Any] = {}


def final_correct(config: Any, run_dir: pathlib.Path, problems: arithmetic.Problems
                  ) -> np.ndarray:
  """Whether the run's final policy, decoding greedily, answers each problem exactly."""
  trainer = grpo.GRPOTrainer(config)
  key = json.dumps([config.task.to_dict(), config.model.to_dict()], sort_keys=True)
  greedy = _GREEDY.setdefault(key, trainer.greedy)  # one compiled sampler for every run
  checkpoints = Checkpoints(run_dir, read_only=True)
  try:
    tree = checkpoints.restore(checkpoints.steps()[-1], trainer.abstract_checkpoint())
  finally:
    checkpoints.close()
  if int(tree["train"].step) != config.total_steps:
    raise RuntimeError(f"{run_dir}: the last checkpoint is step {int(tree['train'].step)}")
  import jax
  answers, _ = greedy(tree["train"].params, problems.prompts_NxP, jax.random.PRNGKey(0))
  return arithmetic.is_correct(np.asarray(answers), problems.answers_NxA, problems.answer_len_N)


def pack(correct: np.ndarray) -> str:
  return base64.b64encode(np.packbits(np.asarray(correct, bool))).decode()


def unpack(text: str, n: int) -> np.ndarray:
  return np.unpackbits(np.frombuffer(base64.b64decode(text), np.uint8))[:n].astype(np.float64)


def make_record_fn(setup: Setup):
  def record(spec: RunSpec, run_dir: pathlib.Path) -> dict[str, Any]:
    """The default record, the rollout log (the offline study's input) and the validation and
    test prompts' right/wrong bits of the final greedy policy."""
    result = default_record(spec, run_dir)
    log = grpo.read_rollout_log(run_dir)
    result["rollout_log"] = {k: log[f"{k}_TxM"].tolist()
                             for k in ("pool", "rollouts", "successes")}
    for split, (first, count) in (("validation", setup.validation), ("test", setup.test)):
      correct = final_correct(spec.config, run_dir, heldout_problems(spec.config, first, count))
      result["summary"][f"final_{split}_pass_rate"] = float(correct.mean())
      result[f"{split}_correct"], result[f"{split}_examples"] = pack(correct), int(count)
    return result
  return record


# -- statistics -------------------------------------------------------------------------------

def _val(r: dict[str, Any]) -> float:
  return r["summary"]["final_validation_pass_rate"]


def _test(r: dict[str, Any]) -> float:
  return r["summary"]["final_test_pass_rate"]


def _test_bits(r: dict[str, Any]) -> np.ndarray:
  return unpack(r["test_correct"], r["test_examples"])


def binomial_se(p: float, n: int) -> float:
  return math.sqrt(p * (1 - p) / n)


def after_first_epoch(r: dict[str, Any], key: str, steps_per_epoch: int) -> np.ndarray:
  """The per-step metric `key` over the steps after the first epoch (the first epoch is
  uniform in every arm: no prompt has history yet)."""
  curve = r["curve"]
  return np.array([v for s, v in zip(curve["step"], curve[key])
                   if s > steps_per_epoch and v is not None], np.float64)


def effective_share(r: dict[str, Any], steps_per_epoch: int) -> float:
  return float(after_first_epoch(r, "effective_rollout_ratio", steps_per_epoch).mean())


def gain_verdict(gain: stats.Paired) -> str:
  """The pre-stated rule for the relative rise g of the effective-gradient share (paired over
  seeds, s = 2 SE): *not reproduced* if g + s <= 0; *larger than the paper's* if g - s > 40%;
  *smaller than the paper's* if g - s > 0 and g + s < 20%; *reproduced* if g - s > 0 and
  [g - s, g + s] meets [20%, 40%]; else *inconclusive*."""
  g, s = gain.mean, 2 * gain.se
  if not math.isfinite(s):
    return "inconclusive (one seed)"
  if g + s <= 0:
    return "not reproduced"
  if g - s > PAPER_GAIN[1]:
    return "larger than the paper's"
  if g - s > 0 and g + s < PAPER_GAIN[0]:
    return "smaller than the paper's"
  if g - s > 0:
    return "reproduced"
  return "inconclusive"


@dataclasses.dataclass(frozen=True)
class PassComparison:
  """Test pass rate of arm A minus arm B over the same seeds and the same test prompts."""
  diff: stats.Paired  # training noise: per-seed differences
  eval_se: float  # the test set's own SE of the seed-mean difference (per-prompt differences)

  @property
  def se(self) -> float:  # both noises in quadrature
    return math.sqrt(self.diff.se ** 2 + self.eval_se ** 2)

  @property
  def verdict(self) -> str:
    return stats.verdict(types.SimpleNamespace(mean=self.diff.mean, se=self.se), MARGIN,
                         lower_is_better=False)


def compare_pass(ra: list[dict], rb: list[dict], keep: list[np.ndarray] | None = None
                 ) -> PassComparison:
  """`keep[i]`: the test prompts seed i's comparison reads (default all)."""
  bits_a = [_test_bits(r) for r in ra]
  bits_b = [_test_bits(r) for r in rb]
  keep = keep or [np.ones_like(b, bool) for b in bits_a]
  diff = stats.paired([a[k].mean() for a, k in zip(bits_a, keep)],
                      [b[k].mean() for b, k in zip(bits_b, keep)])
  # Per-prompt differences of the seed means (prompts every seed reads).
  common = np.logical_and.reduce(keep)
  eval_se = stats.paired_example_se(np.mean(bits_a, 0)[common], np.mean(bits_b, 0)[common])
  return PassComparison(diff, eval_se)


def pool_overlap(setup: Setup, seed: int) -> np.ndarray:
  """Which test prompts are also prompts of seed `seed`'s RL pool."""
  config = setup.config("uniform", 1.0, seed)
  task = config.task
  pool = arithmetic.make_problems(seed, "pool", 0, task.pool_size,
                                  max_add_digits=task.max_add_digits,
                                  max_mul_digits=task.max_mul_digits,
                                  mul_fraction=task.mul_fraction)
  prompts = {t.split("=")[0] for t in pool.text}
  test = heldout_problems(config, *setup.test)
  return np.array([t.split("=")[0] in prompts for t in test.text])


# -- the offline allocator study --------------------------------------------------------------

def offline(setup: Setup, r: dict[str, Any], estimator: str) -> dict[str, dict[str, Any]]:
  config = setup.config(r["meta"]["arm"], 1.0, r["meta"]["seed"])
  log = r["rollout_log"]
  replays = allocator_study.replay(
      np.array(log["pool"]), np.array(log["rollouts"]), np.array(log["successes"]),
      rollouts_per_prompt=config.rl.rollouts_per_prompt, min_rollouts=config.rl.min_rollouts,
      max_rollouts=config.rl.max_rollouts, estimator=estimator, seed=int(r["meta"]["seed"]))
  spe = setup.steps_per_epoch()
  return {name: {**allocator_study.summarize(result, from_step=spe),
                 "max_allocation": int(result.allocations_TxM[spe:].max()),
                 "fallback_skipped_steps": int(result.fallback_skipped_T[spe:].sum())}
          for name, result in replays.items()}


# -- the page ---------------------------------------------------------------------------------

def _grid_cell(tuning) -> str:
  cells = [f"**{v:g}: {-tuning.means[v]:.4f}**" if v == tuning.best else
           f"{v:g}: {-tuning.means[v]:.4f}" for v in tuning.grid]
  return " · ".join(cells) + ("" if tuning.inside else " (edge: not inside the grid)")


def _pct(x: float) -> str:
  return f"{100 * x:+.1f}%"


def run(ctx: Context) -> None:
  setup = Setup.of(ctx)
  record = make_record_fn(setup)
  spe = setup.steps_per_epoch()

  # 1. The learning rate on validation: uniform (it sets the shared rate) and official.
  tuned = ctx.tune({arm: (lambda lr, seed, arm=arm: setup.spec(arm, lr, seed), setup.lrs)
                    for arm in ("uniform", "official")},
                   seeds=setup.tune_seeds, score=lambda r: -_val(r), record_fn=record)
  lr = tuned["uniform"].best
  # 2. Every arm at the shared rate (the paper's drop-in protocol), all seeds; official also
  # at its own choice if that differs (secondary comparison).
  finals = {arm: [setup.spec(arm, lr, s) for s in setup.seeds] for arm in ARMS}
  own_lr = tuned["official"].best
  extra = [setup.spec("official", own_lr, s) for s in setup.seeds] if own_lr != lr else []
  records = ctx.run([s for specs in finals.values() for s in specs] + extra, record)
  cells = {arm: [records[s.name] for s in specs] for arm, specs in finals.items()}
  own = [records[s.name] for s in extra] if extra else cells["official"]
  all_records = ctx.records()

  # Effective-gradient share after the first epoch, and its relative rise over uniform.
  share = {arm: [effective_share(r, spe) for r in rs] for arm, rs in cells.items()}
  eff_rows, eff_verdicts = [], {}
  for a, b in (("official", "uniform"), ("exact-last", "uniform"), ("official", "exact-last")):
    diff = stats.paired(share[a], share[b])
    gain = stats.Paired(tuple(x / y - 1 for x, y in zip(share[a], share[b])))
    eff_verdicts[a, b] = gain_verdict(gain) if b == "uniform" else "(no claim)"
    eff_rows.append([f"{a} - {b}", str(diff), f"{_pct(gain.mean)} ± {100 * gain.se:.1f}% "
                     f"({', '.join(_pct(g) for g in gain.diffs)})", f"**{eff_verdicts[a, b]}**"])

  # Test pass rates.
  overlap = {s: pool_overlap(setup, s) for s in setup.seeds}
  fresh = [~overlap[s] for s in setup.seeds]
  pass_rows, pass_verdicts = [], {}
  pairs = [("official", "uniform", cells["official"], cells["uniform"]),
           ("exact-last", "uniform", cells["exact-last"], cells["uniform"]),
           ("official", "exact-last", cells["official"], cells["exact-last"])]
  if extra:
    pairs.append((f"official at lr {own_lr:g}", f"uniform at {lr:g}", own, cells["uniform"]))
  for a, b, ra, rb in pairs:
    c = compare_pass(ra, rb)
    c_fresh = compare_pass(ra, rb, fresh)
    pass_verdicts[a, b] = c.verdict
    pass_rows.append([f"{a} - {b}", str(c.diff), f"{c.eval_se:.4f}", f"{c.se:.4f}",
                      f"**{c.verdict}**", f"{c_fresh.diff} / {c_fresh.verdict}"])

  arm_rows = []
  for arm, rs in cells.items():
    tests = [_test(r) for r in rs]
    n_test = rs[0]["test_examples"]
    unsolved = [after_first_epoch(r, "rollouts_on_unsolved", spe).mean() for r in rs]
    solved = [after_first_epoch(r, "rollouts_on_solved", spe).mean() for r in rs]
    arm_rows.append([
        LABELS[arm], mean_std(share[arm], 3),
        mean_std([after_first_epoch(r, "effective_prompt_ratio", spe).mean() for r in rs], 3),
        mean_std(unsolved, 1), mean_std(solved, 1),
        mean_std([after_first_epoch(r, "alloc_max", spe).max() for r in rs], 1),
        mean_std([r["curve"]["heldout_pass_rate"][0] for r in rs], 3),
        mean_std([_val(r) for r in rs], 3), mean_std(tests, 3),
        f"{np.mean([binomial_se(p, n_test) for p in tests]):.4f}"])

  # The largest budgets (official arm; the estimate is what the allocator saw).
  largest = sorted(((n, p, prompt, r["meta"]["seed"]) for r in cells["official"]
                    for n, p, prompt in r["summary"]["largest_allocations"]),
                   key=lambda x: -x[0])[:8]
  largest_rows = [[n, "n/a" if p is None else f"{p:.3f}", f"`{prompt}`", s]
                  for n, p, prompt, s in largest]
  max_official = [max(n for n, _, _ in r["summary"]["largest_allocations"])
                  for r in cells["official"]]

  # Offline study on every final run's log.
  finals_flat = [r for rs in cells.values() for r in rs]
  studies = {(r["name"], est): offline(setup, r, est) for r in finals_flat
             for est in OFFLINE_ESTIMATORS}
  offline_rows = []
  for est in OFFLINE_ESTIMATORS:
    for alloc in ("uniform", "exact", "official"):
      vals = [studies[r["name"], est][alloc] for r in finals_flat]
      offline_rows.append([
          est, alloc, mean_std([v["effective_rollout_share"] for v in vals], 3),
          mean_std([v["effective_prompt_share"] for v in vals], 3),
          mean_std([v["unsolved_share"] for v in vals], 3),
          mean_std([v["solved_share"] for v in vals], 3),
          mean_std([v["mixed_share"] for v in vals], 3),
          mean_std([v["max_allocation"] for v in vals], 1),
          f"{sum(v['fallback_skipped_steps'] for v in vals)}"])
  by_source_rows = []
  for arm, rs in cells.items():
    def gains(alloc: str, est: str = "recent", rs=rs) -> stats.Paired:
      return stats.Paired(tuple(
          studies[r["name"], est][alloc]["effective_rollout_share"]
          / studies[r["name"], est]["uniform"]["effective_rollout_share"] - 1 for r in rs))
    by_source_rows.append([
        arm, mean_std([studies[r["name"], "recent"]["uniform"]["effective_rollout_share"]
                       for r in rs], 3), mean_std(share[arm], 3),
        f"{_pct(gains('official').mean)} ± {100 * gains('official').se:.1f}%",
        f"{_pct(gains('exact', 'last_epoch').mean)} ± {100 * gains('exact', 'last_epoch').se:.1f}%",
        f"{_pct(gains('official', 'oracle').mean)} ± {100 * gains('official', 'oracle').se:.1f}%",
        f"{_pct(gains('exact', 'oracle').mean)} ± {100 * gains('exact', 'oracle').se:.1f}%"])
  off = {alloc: np.mean([studies[r["name"], "recent"][alloc]["unsolved_share"]
                         for r in finals_flat]) for alloc in ("exact", "official")}

  overlap_share = [overlap[s].mean() for s in setup.seeds]
  c0 = setup.config("uniform", lr, 0)
  first = cells["uniform"][0]
  paired_se = np.mean([stats.paired_example_se(_test_bits(a), _test_bits(b))
                       for a, b in zip(cells["official"], cells["uniform"])])
  eff_gain = stats.Paired(tuple(x / y - 1 for x, y in zip(share["official"], share["uniform"])))
  uniform_se = binomial_se(np.mean([_test(r) for r in cells["uniform"]]), setup.test[1])
  ctx.write_page({
      "params": f"{first['summary']['num_params']:,}", "size": setup.size,
      "pool": c0.task.pool_size, "per_step": c0.rl.prompts_per_step,
      "rollouts": c0.rl.rollouts_per_prompt,
      "budget": c0.rl.prompts_per_step * c0.rl.rollouts_per_prompt,
      "steps": c0.total_steps, "spe": spe, "epochs": c0.total_steps // spe,
      "sft_steps": c0.sft.steps, "lo": c0.rl.min_rollouts, "hi": c0.rl.max_rollouts,
      "lrs": ", ".join(f"{v:g}" for v in setup.lrs), "lr": f"{lr:g}", "own_lr": f"{own_lr:g}",
      "seeds": len(setup.seeds), "tune_seeds": len(setup.tune_seeds), "margin": MARGIN,
      "n_val": f"{setup.validation[1]:,}", "n_test": f"{setup.test[1]:,}",
      "val_range": f"{setup.validation[0]}-{sum(setup.validation) - 1}",
      "test_range": f"{setup.test[0]}-{sum(setup.test) - 1}",
      "inside": "every choice lies strictly inside its grid" if all(
          t.inside for t in tuned.values()) else "NOT every choice lies inside its grid: "
      + ", ".join(a for a, t in tuned.items() if not t.inside),
      "own_lr_note": ("official's own choice is the same rate, so the secondary comparison is "
                      "the primary one" if not extra else
                      f"official's own choice differs ({own_lr:g}); it was also run at that "
                      f"rate on every seed (last row of the pass-rate table)"),
      "grid_table": markdown_table(
          ["arm", f"GRPO learning rate: mean validation pass rate ({len(setup.tune_seeds)} "
                  "seeds; choice in bold)"],
          [[LABELS[arm], _grid_cell(t)] for arm, t in tuned.items()]),
      "arm_table": markdown_table(
          ["arm", "effective rollout share", "effective prompt share",
           "rollouts / step on p=0 (est.)", "on p=1 (est.)", "largest allocation",
           "pass after warm start (256)", f"validation pass ({setup.validation[1]:,})",
           f"test pass ({setup.test[1]:,})", "binomial SE of one run"], arm_rows),
      "eff_table": markdown_table(
          ["A - B", "effective rollout share: paired difference ± SE",
           "relative rise A / B - 1 ± SE (per seed)", "verdict"], eff_rows),
      "pass_table": markdown_table(
          ["A - B (test pass rate)", "paired difference ± SE (seeds)",
           "test-set SE of the difference", "combined SE", "verdict",
           "on test prompts not in the pool: difference / verdict"], pass_rows),
      "largest_table": markdown_table(["rollouts", "estimated p", "prompt", "seed"],
                                      largest_rows),
      "max_official": ", ".join(str(n) for n in max_official),
      "offline_table": markdown_table(
          ["estimator", "allocator", "expected effective rollout share",
           "expected effective prompt share", "spend on p=0", "on p=1", "on 0<p<1",
           "largest allocation", "steps without fallback"], offline_rows),
      "offline_source_table": markdown_table(
          ["logs of arm", "offline uniform share (recent)", "online measured share (that arm)",
           "official / uniform - 1 (recent)", "exact / uniform - 1 (last visit)",
           "official / uniform - 1 (oracle)", "exact / uniform - 1 (oracle)"],
          by_source_rows),
      "off_official_p0": f"{off['official']:.0%}", "off_exact_p0": f"{off['exact']:.0%}",
      "overlap": f"{np.mean(overlap_share):.1%} ({', '.join(f'{x:.1%}' for x in overlap_share)})",
      "paired_se": f"{paired_se:.4f}",
      "binomial": f"{uniform_se:.4f}",
      "verdict_eff": f"{eff_verdicts['official', 'uniform']} ({_pct(eff_gain.mean)} ± "
                     f"{100 * eff_gain.se:.1f}%)",
      "verdict_eff_old": eff_verdicts["exact-last", "uniform"],
      "verdict_pass": pass_verdicts["official", "uniform"],
      "verdict_pass_old": pass_verdicts["exact-last", "uniform"],
      "plot": _plot(ctx, setup, cells),
      "offline_plot": _plot_offline(ctx, studies, finals_flat),
      "hours": f"{sum(r['train_minutes'] for r in all_records.values()) / 60:.2f}",
  }, all_records)


def _plot(ctx: Context, setup: Setup, cells: dict[str, list[dict]]) -> str:
  spe = setup.steps_per_epoch()
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
  for (arm, rs), color in zip(cells.items(), ("C0", "C3", "C1")):
    for key, ax in (("effective_rollout_ratio", axes[0]), ("heldout_pass_rate", axes[1])):
      curves = []
      for r in rs:
        pts = [(s, v) for s, v in zip(r["curve"]["step"], r["curve"][key]) if v is not None]
        curves.append(np.array(pts, np.float64))
      mean = np.mean([c[:, 1] for c in curves], axis=0)
      ax.plot(curves[0][:, 0], mean, color=color, label=f"{arm} (mean of {len(rs)} seeds)")
      for c in curves:
        ax.plot(c[:, 0], c[:, 1], color=color, alpha=0.15, lw=0.8)
    keys = [f"alloc_hist/{label}" for label in grpo_math.HIST_LABELS]
    totals = np.sum([[r["curve"][k][i] for k in keys] for r in rs
                     for i, s in enumerate(r["curve"]["step"])
                     if s > spe and r["curve"][keys[0]][i] is not None], axis=0)
    offset = {"uniform": -0.27, "official": 0.0, "exact-last": 0.27}[arm]
    axes[2].bar(np.arange(len(keys)) + offset, totals / max(totals.sum(), 1), width=0.27,
                color=color, label=arm)
  axes[0].axvline(spe, color="gray", ls=":", lw=0.8)
  axes[0].set(xlabel="RL step", ylabel="share of rollouts with non-zero advantage",
              title="effective-gradient share (dotted: end of epoch 1)")
  axes[1].set(xlabel="RL step", ylabel="greedy pass rate (256 in-training held-out prompts)",
              title="held-out pass rate during training")
  axes[2].set(xticks=np.arange(len(grpo_math.HIST_LABELS)), xticklabels=grpo_math.HIST_LABELS,
              xlabel="rollouts given to a prompt", ylabel="share of prompt visits",
              title="allocations after epoch 1")
  for ax in axes:
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
  return ctx.save_figure(fig, "curves", dpi=110).name


def _plot_offline(ctx: Context, studies: dict, runs: list[dict]) -> str:
  fig, (ax_e, ax_s) = plt.subplots(1, 2, figsize=(12, 4.2))
  allocs = ("uniform", "exact", "official")
  width = 0.27
  for i, est in enumerate(OFFLINE_ESTIMATORS):
    shares = [np.mean([studies[r["name"], est][a]["effective_rollout_share"] for r in runs])
              for a in allocs]
    ax_e.bar(np.arange(3) + (i - 1) * width, shares, width=width, label=f"estimator: {est}")
  ax_e.set(xticks=np.arange(3), xticklabels=allocs, ylabel="expected effective rollout share",
           title=f"offline replay on {len(runs)} run logs (after epoch 1)")
  bottom = np.zeros(3)
  for key, color in (("unsolved_share", "C3"), ("mixed_share", "C2"), ("solved_share", "C0")):
    vals = np.array([np.mean([studies[r["name"], "recent"][a][key] for r in runs])
                     for a in allocs])
    ax_s.bar(np.arange(3), vals, bottom=bottom, color=color,
             label={"unsolved_share": "p = 0", "mixed_share": "0 < p < 1",
                    "solved_share": "p = 1"}[key])
    bottom += vals
  ax_s.set(xticks=np.arange(3), xticklabels=allocs, ylabel="share of rollouts",
           title="where the budget goes (authors' estimator; p: whole-log rate)")
  for ax in (ax_e, ax_s):
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
  return ctx.save_figure(fig, "offline", dpi=110).name
