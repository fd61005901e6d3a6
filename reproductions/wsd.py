"""WSD vs cosine, branched decays, and the Power scheduler on the test-size GPT.

Claims (Hägele et al., arXiv 2405.18392; MiniCPM, arXiv 2404.06395; Shen et al., arXiv
2408.13359): the loss drops sharply once the decay starts; WSD with a 10-20% decay matches or
beats cosine at the same budget; the 1-sqrt decay beats linear; decays branched from one stable
run match cosine trained from scratch at each budget for less compute; the Power scheduler is
a budget-agnostic alternative to WSD. Configs come from `experiments/wsd.py`.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from experiments import wsd as wsd_configs
from trainlab.training.branch import branch_config
from reproductions import Context, markdown_table, mean_std

SWEEP_SEED = 100  # the learning-rate sweep uses a seed that no reported run uses
SWEEP_LRS = {"cosine": (3e-3, 6e-3, 1.2e-2), "wsd": (3e-3, 6e-3, 1.2e-2)}
POWER_MAX_LR = 0.02  # Shen et al.'s max_lr; at this scale it only caps the first steps
SWEEP_POWER_A = (0.05, 0.1, 0.2)
# name -> (family, kwargs) at the fixed budget of part (a).
FIXED_BUDGET = {
    "cosine to 10%": ("cosine", dict(end=0.1)),
    "cosine to 0": ("cosine", dict(end=0.0)),
    # Guards against a noisy sweep: cosine at the learning rate the WSD sweep picked.
    "cosine to 10% at WSD's lr": ("cosine", dict(end=0.1, lr_from="wsd")),
    **{f"WSD {int(frac * 100)}% {shape}": ("wsd", dict(decay=frac, shape=shape))
       for frac in (0.1, 0.2) for shape in ("linear", "1-sqrt", "exponential")},
}
BRANCH_DECAY = 0.2  # each branched budget B decays over its last 20%: at 0.8 B for 0.2 B steps


class _Setup:
  """Budgets and run sizes; `--quick` shrinks them to a smoke test."""

  def __init__(self, ctx: Context):
    self.quick = ctx.quick
    self.seeds = list(range(ctx.num_seeds(3)))
    self.budget = 20 if ctx.quick else 400
    self.warmup = 2 if ctx.quick else 40
    self.power_budgets = (self.budget,) if ctx.quick else (self.budget, 2 * self.budget)
    self.branch_budgets = (10, 20) if ctx.quick else (self.budget // 2, self.budget,
                                                       2 * self.budget)
    quick_names = ("cosine to 10%", "WSD 10% 1-sqrt")
    self.fixed = ({k: FIXED_BUDGET[k] for k in quick_names} if ctx.quick else FIXED_BUDGET)


def _config(setup: _Setup, family: str, *, steps: int, lr: float, seed: int,
            **kwargs: Any) -> Any:
  config = wsd_configs.get_config(f"steps={steps},seed={seed}")
  config.optimizer.learning_rate = lr
  config.schedule = wsd_configs.schedule_block(
      family, lr=lr, steps=steps, warmup=setup.warmup, batch_size=config.batch_size,
      tokens_per_step=config.batch_size * config.data.seq_len, **kwargs)
  if setup.quick:
    config.eval.every_steps, config.eval.num_batches, config.log.every_steps = 5, 4, 1
  return config


def _slug(text: str) -> str:
  return text.replace(" ", "_").replace("%", "pct")


def _sweep(ctx: Context, setup: _Setup) -> tuple[dict[str, float], list[list[str]]]:
  """The best learning rate (or Power `a`) of each family at the fixed budget, one seed."""
  if setup.quick:
    return {"cosine": 6e-3, "wsd": 6e-3, "power_a": 0.1}, []
  steps, rows, best = setup.budget, [], {}
  candidates: dict[str, list[tuple[float, Callable[[], Any]]]] = {
      "cosine": [(lr, lambda lr=lr: _config(setup, "cosine", steps=steps, lr=lr,
                                            seed=SWEEP_SEED, end=0.1))
                 for lr in SWEEP_LRS["cosine"]],
      "wsd": [(lr, lambda lr=lr: _config(setup, "wsd", steps=steps, lr=lr, seed=SWEEP_SEED,
                                         decay=0.2, shape="1-sqrt"))
              for lr in SWEEP_LRS["wsd"]],
      "power_a": [(a, lambda a=a: _config(setup, "power", steps=steps, lr=POWER_MAX_LR,
                                          seed=SWEEP_SEED, decay=0.1, a=a))
                  for a in SWEEP_POWER_A],
  }
  for family, runs in candidates.items():
    losses = {}
    for value, make in runs:
      losses[value] = ctx.train(make(), f"sweep_{family}_{value:g}")["final_eval_loss"]
    best[family] = min(losses, key=losses.get)
    rows.append([family, *(f"{v:g}: {l:.4f}" + (" **best**" if v == best[family] else "")
                           for v, l in losses.items())])
  return best, rows


def _eval_curve(result: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
  points = [(r["step"], r["eval_loss"]) for r in result["history"] if "eval_loss" in r]
  return tuple(np.array(x) for x in zip(*points))


def _mean_eval_curve(results: dict[tuple[str, int], dict[str, Any]], name: str,
                     seeds: list[int]) -> tuple[np.ndarray, np.ndarray]:
  """Eval steps and the loss at each, averaged over `seeds` (runs share their eval steps)."""
  return (_eval_curve(results[name, seeds[0]])[0],
          np.mean([_eval_curve(results[name, s])[1] for s in seeds], axis=0))


def _lr_curve(result: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
  points = [(r["step"], r["lr"]) for r in result["history"] if "lr" in r]
  return tuple(np.array(x) for x in zip(*points))


def _eval_at(result: dict[str, Any], step: int) -> float:
  """Eval loss at `step` (interpolated between evaluations when `step` falls between two)."""
  steps, losses = _eval_curve(result)
  return float(np.interp(step, steps, losses))


def _finals(results: dict[tuple[str, int], dict[str, Any]], name: str,
            seeds: list[int]) -> np.ndarray:
  return np.array([results[name, s]["final_eval_loss"] for s in seeds])


def _paired(a: np.ndarray, b: np.ndarray) -> str:
  """`mean(a - b) ± std` over seeds, the runs of one seed sharing init and data order."""
  return mean_std(a - b)


def _part_a(ctx: Context, setup: _Setup, best: dict[str, float]):
  """Fixed budget: cosine (to 10% and to 0) vs WSD with 10% and 20% decays of three shapes."""
  results = {}
  for name, (family, kwargs) in setup.fixed.items():
    for seed in setup.seeds:
      kwargs = dict(kwargs)
      lr = best[kwargs.pop("lr_from", family)]
      config = _config(setup, family, steps=setup.budget, lr=lr, seed=seed, **kwargs)
      results[name, seed] = ctx.train(config, f"a_{_slug(name)}_seed{seed}")
  return results


def _part_c(ctx: Context, setup: _Setup, best: dict[str, float], results_a):
  """Power scheduler vs WSD (1-sqrt, both decaying over the last 10%) at two budgets."""
  results = {}
  for budget in setup.power_budgets:
    for seed in setup.seeds:
      power = _config(setup, "power", steps=budget, lr=POWER_MAX_LR, seed=seed, decay=0.1,
                      a=best["power_a"])
      results[f"Power {budget}", seed] = ctx.train(power, f"c_power_{budget}_seed{seed}")
      if ("WSD 10% 1-sqrt", seed) in results_a and budget == setup.budget:
        results[f"WSD {budget}", seed] = results_a["WSD 10% 1-sqrt", seed]
      else:
        wsd = _config(setup, "wsd", steps=budget, lr=best["wsd"], seed=seed, decay=0.1,
                      shape="1-sqrt")
        results[f"WSD {budget}", seed] = ctx.train(wsd, f"c_wsd_{budget}_seed{seed}")
  return results


def _part_b(ctx: Context, setup: _Setup, best: dict[str, float], results_a):
  """One stable WSD run, decays branched at three budgets; cosine from scratch at each."""
  budgets, results = setup.branch_budgets, {}
  longest = max(budgets)
  points = [round((1 - BRANCH_DECAY) * b) for b in budgets]
  for seed in setup.seeds:
    stable = _config(setup, "wsd", steps=longest, lr=best["wsd"], seed=seed, decay=BRANCH_DECAY,
                     shape="1-sqrt")
    stable.checkpoint.keep_every = int(np.gcd.reduce(points))
    results["stable", seed] = stable_run = ctx.train(stable, f"b_stable_{longest}_seed{seed}")
    source = json.loads((pathlib.Path(stable_run["workdir"]) / "config.json").read_text())
    for budget, at in zip(budgets, points):
      if budget == longest:  # the stable run's own decay is the branch of the longest budget
        results[f"branch {budget}", seed] = stable_run
      else:
        config = branch_config(source, str(pathlib.Path(stable_run["workdir"]).resolve()),
                                      at, budget - at)
        results[f"branch {budget}", seed] = ctx.train(config, f"b_branch_{budget}_seed{seed}")
      if budget == setup.budget and ("cosine to 10%", seed) in results_a:
        results[f"cosine {budget}", seed] = results_a["cosine to 10%", seed]
      else:
        cosine = _config(setup, "cosine", steps=budget, lr=best["cosine"], seed=seed, end=0.1)
        results[f"cosine {budget}", seed] = ctx.train(cosine, f"b_cosine_{budget}_seed{seed}")
  return results


def _drop(result: dict[str, Any], constant: dict[str, Any], start: int,
          decay: int) -> tuple[float, float]:
  """Eval-loss drop over `[start, start + decay]`: at constant lr, and with the decay.

  `constant` is the stable run of part (b): same peak lr, warmup, seed and data, so it is the
  same run as `result` up to `start` and holds the learning rate where `result` decays.
  """
  window = lambda r: _eval_at(r, start) - _eval_at(r, start + decay)
  return window(constant), window(result)


def _plot_fixed_budget(ctx: Context, setup: _Setup, results) -> str:
  fig, (ax_lr, ax_loss) = plt.subplots(2, 1, figsize=(7, 7), sharex=True,
                                       gridspec_kw=dict(height_ratios=[1, 2]))
  for i, name in enumerate(setup.fixed):
    style = dict(color=f"C{i}", linestyle="--" if "10%" in name and "WSD" in name else "-")
    ax_lr.plot(*_lr_curve(results[name, setup.seeds[0]]), **style, label=name)
    steps, mean = _mean_eval_curve(results, name, setup.seeds)
    keep = steps >= setup.budget // 4
    ax_loss.plot(steps[keep], mean[keep], marker=".", **style, label=name)
  ax_lr.set_ylabel("learning rate")
  ax_loss.set_ylabel(f"eval loss, mean of {len(setup.seeds)} seeds")
  ax_loss.set_xlabel("step")
  ax_loss.legend(fontsize=7)
  return ctx.save_figure(fig, "fixed_budget").name


def _plot_branching(ctx: Context, setup: _Setup, results) -> str:
  fig, ax = plt.subplots(figsize=(7, 4.5))
  longest = max(setup.branch_budgets)
  for i, budget in enumerate(setup.branch_budgets):
    for kind, style in (("branch", "-"), ("cosine", ":")):
      steps, mean = _mean_eval_curve(results, f"{kind} {budget}", setup.seeds)
      if kind == "branch" and budget != longest:  # joined to the stable run at the branch
        start = round((1 - BRANCH_DECAY) * budget)
        at_start = np.mean([_eval_at(results["stable", s], start) for s in setup.seeds])
        steps, mean = np.r_[start, steps[steps > start]], np.r_[at_start, mean[steps > start]]
      keep = steps >= setup.budget // 8
      label = (f"WSD stable run + its own decay ({budget})" if kind == "branch" and
               budget == longest else f"{kind} {budget}")
      ax.plot(steps[keep], mean[keep], style, color=f"C{i}", marker="." if kind == "branch"
              else None, label=label)
  ax.set_xlabel("step")
  ax.set_ylabel(f"eval loss, mean of {len(setup.seeds)} seeds")
  ax.legend(fontsize=7)
  return ctx.save_figure(fig, "branching").name


def _plot_power(ctx: Context, setup: _Setup, results) -> str:
  fig, (ax_lr, ax_loss) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
  for i, budget in enumerate(setup.power_budgets):
    for kind, style in (("WSD", "-"), ("Power", "--")):
      name = f"{kind} {budget}"
      ax_lr.plot(*_lr_curve(results[name, setup.seeds[0]]), style, color=f"C{i}", label=name)
      steps, mean = _mean_eval_curve(results, name, setup.seeds)
      keep = steps >= setup.budget // 4
      ax_loss.plot(steps[keep], mean[keep], style, color=f"C{i}", label=name)
  ax_lr.set_ylabel("learning rate")
  ax_lr.set_yscale("log")
  ax_loss.set_ylabel(f"eval loss, mean of {len(setup.seeds)} seeds")
  ax_loss.set_xlabel("step")
  ax_loss.legend(fontsize=7)
  return ctx.save_figure(fig, "power").name


def _sign_verdict(diff: np.ndarray, better: str, worse: str) -> str:
  """How consistently `diff` (one entry per seed, negative = first is better) points one way."""
  n = len(diff)
  if np.all(diff < 0):
    return f"{better} in all {n} seeds"
  if np.all(diff > 0):
    return f"{worse} in all {n} seeds"
  return f"mixed across seeds ({int(np.sum(diff < 0))} of {n} {better.split()[0]})"


def run(ctx: Context) -> None:
  setup = _Setup(ctx)
  seeds, n = setup.seeds, len(setup.seeds)
  best, sweep_rows = _sweep(ctx, setup)
  results_a = _part_a(ctx, setup, best)
  results_c = _part_c(ctx, setup, best, results_a)
  results_b = _part_b(ctx, setup, best, results_a)
  constant_until = round((1 - BRANCH_DECAY) * max(setup.branch_budgets))
  fixed_png = _plot_fixed_budget(ctx, setup, results_a)
  branch_png = _plot_branching(ctx, setup, results_b)
  power_png = _plot_power(ctx, setup, results_c)

  # (a) fixed budget.
  reference = _finals(results_a, "cosine to 10%", seeds)
  rows_a, drops = [], {}
  for name, (family, kwargs) in setup.fixed.items():
    finals = _finals(results_a, name, seeds)
    drop = ""
    if family == "wsd" and setup.budget <= constant_until:
      decay = round(kwargs["decay"] * setup.budget)
      pairs = np.array([_drop(results_a[name, s], results_b["stable", s],
                              setup.budget - decay, decay) for s in seeds])
      drops[name] = pairs.mean(axis=0)
      drop = f"{drops[name][0]:.3f} → {drops[name][1]:.3f}"
    rows_a.append([name, f"{best[kwargs.get('lr_from', family)]:g}", mean_std(finals),
                   "—" if name == "cosine to 10%" else _paired(finals, reference), drop])
  wsd_names = [k for k, (f, _) in setup.fixed.items() if f == "wsd"]
  best_wsd = min(wsd_names, key=lambda k: _finals(results_a, k, seeds).mean())
  best_cosine = min((k for k, (f, _) in setup.fixed.items() if f == "cosine"),
                    key=lambda k: _finals(results_a, k, seeds).mean())
  wsd_vs_cos = _finals(results_a, best_wsd, seeds) - _finals(results_a, best_cosine, seeds)
  sqrt_vs_linear = {
      frac: _finals(results_a, f"WSD {frac}% 1-sqrt", seeds)
      - _finals(results_a, f"WSD {frac}% linear", seeds)
      for frac in (10, 20) if f"WSD {frac}% linear" in setup.fixed}
  seed_std = np.mean([_finals(results_a, k, seeds).std(ddof=1) if n > 1 else 0.0
                      for k in setup.fixed])
  sharp = {k: v[1] / max(v[0], 1e-9) for k, v in drops.items()}

  # (b) branching.
  longest = max(setup.branch_budgets)
  rows_b, branched_steps, cosine_steps = [], longest, 0
  for budget in setup.branch_budgets:
    at = round((1 - BRANCH_DECAY) * budget)
    marginal = budget - at if budget != longest else longest
    if budget != longest:
      branched_steps += budget - at
    cosine_steps += budget
    branch_f = _finals(results_b, f"branch {budget}", seeds)
    cosine_f = _finals(results_b, f"cosine {budget}", seeds)
    how = (f"branch at {at}, decay {budget - at}" if budget != longest
           else f"stable run, own decay at {at}")
    rows_b.append([budget, how, mean_std(branch_f), mean_std(cosine_f),
                   _paired(branch_f, cosine_f), marginal, budget])
  rows_b.append(["total", "", "", "", "", branched_steps, cosine_steps])
  branch_diffs = {b: _finals(results_b, f"branch {b}", seeds)
                  - _finals(results_b, f"cosine {b}", seeds) for b in setup.branch_budgets}
  saved = 1 - branched_steps / cosine_steps

  # (c) Power vs WSD.
  rows_c = []
  for budget in setup.power_budgets:
    wsd_f = _finals(results_c, f"WSD {budget}", seeds)
    power_f = _finals(results_c, f"Power {budget}", seeds)
    rows_c.append([budget, mean_std(wsd_f), mean_std(power_f), _paired(power_f, wsd_f),
                   _sign_verdict(power_f - wsd_f, "Power better", "Power worse")])

  num_params = results_a["cosine to 10%", seeds[0]]["num_params"]
  grids = {"cosine": SWEEP_LRS["cosine"], "wsd": SWEEP_LRS["wsd"], "power_a": SWEEP_POWER_A}
  at_edge = [k for k, grid in grids.items() if not ctx.quick and best[k] in (grid[0], grid[-1])]
  edge_text = (f"The chosen value is at the edge of the grid for {', '.join(at_edge)}: the "
               "optimum may lie outside it, and a one-seed sweep is noisy (compare the cosine "
               "row at WSD's learning rate in (a))." if at_edge else "")
  sweep_text = (markdown_table(["family", *["value: final eval loss"] * len(sweep_rows[0][1:])],
                               sweep_rows) if sweep_rows else "(skipped in --quick)")
  ctx.write_report("WSD, branched decays and the Power scheduler on a tiny GPT", f"""
Claims: Hägele et al. (arXiv 2405.18392), MiniCPM (arXiv 2404.06395), Shen et al. (Power
scheduler, arXiv 2408.13359). Configs: `experiments/wsd.py`; code: `reproductions/wsd.py`.

**Setup.** Test-size GPT (1 layer, d=32, 2 heads, {num_params:,} parameters), byte-level
`stdlib-code`, sequence 32, batch 8 (256 tokens per step), AdamW (b2=0.95, weight decay 0.1,
clip 1.0), {setup.warmup} linear warmup steps from 0 for every schedule, fixed budget
{setup.budget} steps ({setup.budget * 256:,} tokens), {n} seeds (seed = initialization and data
order; all schedules share them, so differences are paired per seed). Eval loss is the mean
over the same {64 if not ctx.quick else 4} validation batches
({(64 if not ctx.quick else 4) * 256:,} bytes) for every run, in nats per byte. WSD decays go to
0; the exponential shape uses MiniCPM's form with half-life D/5 (ends at 1/32 of the peak).

**Learning rates, from a sweep.** Each family's peak learning rate was picked by a one-seed
sweep (seed {SWEEP_SEED}, not a reported seed) at the fixed budget: cosine to 10% and WSD
20% 1-sqrt over {", ".join(f"{v:g}" for v in SWEEP_LRS["wsd"])}; the Power scheduler
(max_lr = {POWER_MAX_LR}, b = -0.51 as in the paper, exponential decay over the last 10%) over
its coefficient a in {", ".join(f"{v:g}" for v in SWEEP_POWER_A)} (with batch 8 and 256 tokens
per step, a sets the whole learning-rate level; max_lr only caps the first steps). The chosen
value is used for every schedule of the family, at every budget.

{sweep_text}

{edge_text}

### (a) Fixed budget: cosine vs WSD

{markdown_table(["schedule", "peak lr", "final eval loss", "Δ vs cosine to 10% (paired)",
                 "eval-loss drop over [T-D, T]: constant lr → decay"], rows_a)}

The last column is the mean eval-loss decrease over the decay window `[T - D, T]`, first for
the stable run of part (b) (the same run up to `T - D`: identical seed, data, warmup and peak
lr; it keeps the peak lr through that window), then for the WSD run, which decays there.

![fixed budget](./{fixed_png})

### (b) One stable run, decays branched at three budgets, vs cosine from scratch

The stable run is WSD at {longest} steps with a {int(BRANCH_DECAY * 100)}% 1-sqrt decay,
saving checkpoints at every branch point; each shorter budget B is `launch.branch`'s config
(`launch.branch.branch_config`: the stable run's full state at 0.8 B, then a {int(BRANCH_DECAY *
100)}% 1-sqrt decay over 0.2 B). Cosine (to 10%) runs are trained from scratch at each budget.
"steps spent" counts the optimizer steps each approach trains for that budget.

{markdown_table(["budget", "branched from", "branched final eval", "cosine final eval",
                 "Δ branched - cosine (paired)", "steps spent: branching",
                 "steps spent: cosine"], rows_b)}

Compute: the three finished models cost {branched_steps} steps by branching vs {cosine_steps}
from scratch with cosine: **{saved:.0%} fewer steps**.

![branching](./{branch_png})

### (c) Power scheduler vs WSD (1-sqrt, both decaying over the last 10%)

{markdown_table(["budget", "WSD final eval", "Power final eval", "Δ Power - WSD (paired)",
                 "sign"], rows_c)}

![power](./{power_png})

### Verdicts

Seed noise: the standard deviation of the final eval loss across seeds averages
{seed_std:.4f}; differences below are paired per seed, so they are measured against the spread
of the paired differences.

1. *The loss drops sharply once the decay starts*: over the decay window the eval loss falls
   {", ".join(f"{k}: {r:.1f}x" for k, r in sharp.items()) or "(not measured)"} as much as
   the same run's continuation at constant learning rate falls over the same steps.
   {"**Supported.**" if sharp and min(sharp.values()) > 1.5 else "**Not clearly supported.**"}
2. *WSD with a 10-20% decay matches or beats cosine at the same budget*: best WSD
   ({best_wsd}) vs best cosine ({best_cosine}): {_paired(wsd_vs_cos, 0 * wsd_vs_cos)}
   ({_sign_verdict(wsd_vs_cos, "WSD better", "WSD worse")}).
   {"**Supported.**" if wsd_vs_cos.mean() <= seed_std else "**Not supported.**"}
3. *1-sqrt beats linear*: {"; ".join([f"{f}% decay: {_paired(d, 0 * d)} "
                                     f"({_sign_verdict(d, '1-sqrt better', '1-sqrt worse')})"
                                     for f, d in sqrt_vs_linear.items()] or ["not run"])}.
   {"**Supported.**" if sqrt_vs_linear and all(np.all(d < 0) for d in sqrt_vs_linear.values())
    else "**Not clearly supported at this scale.**"}
4. *Branched decays match from-scratch cosine for less compute*: per budget,
   {"; ".join(f"{b}: {_paired(d, 0 * d)}" for b, d in branch_diffs.items())} (branched minus
   cosine); {saved:.0%} fewer steps for the three models.
   {"**Supported.**" if all(d.mean() <= seed_std for d in branch_diffs.values())
    else "**Partly supported**: see the budgets where branching is worse."}

**Scale gap.** The papers train 124M-360M (Hägele et al.; MiniCPM up to 2.4B; Power: up to 3B)
parameter models on billions of tokens; this is a {num_params:,}-parameter model on
{setup.budget * 256:,}-{2 * setup.budget * 256:,} tokens on a shared 2-core CPU, with learning
rates from a one-seed sweep of 3 values. Schedule effects shrink or change sign at such scales
and budgets; read the verdicts as a check of the mechanism and the code, not as evidence for or
against the papers' claims.
""")
