"""WSD vs cosine at equal compute, cooldown shapes, branched decays, and Power's transfer.

Hägele et al. (arXiv 2405.18392) and MiniCPM (arXiv 2404.06395): a constant learning rate with a
short cooldown (WSD) matches cosine; the 1-sqrt cooldown beats linear; decays branched from one
stable run give finished models at several budgets for less compute than one cosine run per
budget. Shen et al. (arXiv 2408.13359): the Power scheduler's `(a, b)` transfers across token
budgets and batch sizes. Protocol, verdict rules and scale gap: templates/wsd.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import ml_collections
import numpy as np

from experiments import study
from reproductions import Context, RunSpec, markdown_table, mean_std, stats
from trainlab.training.branch import branch_config

LRS = (2e-3, 4e-3, 8e-3, 1.6e-2)  # 2x apart; extended automatically at an edge
POWER_A = (0.05, 0.1, 0.2, 0.4)
POWER_B = -0.51  # Shen et al. (with muP)
POWER_MAX_LR = 0.02  # Shen et al.'s cap
MARGIN = 0.01  # nats/byte: "matches" means within this, stated before the runs
WARMUP_FRACTION = 0.05
TUNE_SEEDS, SEEDS = (0, 1), (0, 1, 2)
ARMS = ("cosine", "wsd 1-sqrt 20%", "wsd linear 20%")
# Power transfer cells: budgets as fractions of T, at batch 8 and 16 (tokens fixed per budget);
# `a` is tuned in the last one at batch 16.
POWER_BUDGETS = (0.125, 0.25, 0.5)


@dataclasses.dataclass(frozen=True)
class Setup:
  """Budgets in steps of 2,048 tokens; `--quick` shrinks everything to a smoke test."""
  steps: int
  seeds: tuple[int, ...]
  tune_seeds: tuple[int, ...]
  lrs: tuple[float, ...]
  power_a: tuple[float, ...]
  cells: tuple[tuple[float, int], ...]  # Power transfer: (fraction of the budget, batch size)

  @classmethod
  def of(cls, ctx: Context) -> "Setup":
    if ctx.quick:
      return cls(steps=20, seeds=(0,), tune_seeds=(0,), lrs=(4e-3,), power_a=(0.1,),
                 cells=((0.25, 16), (0.5, 16)))
    return cls(steps=study.STEPS, seeds=SEEDS, tune_seeds=TUNE_SEEDS, lrs=LRS,
               power_a=POWER_A, cells=tuple((f, b) for b in (8, 16) for f in POWER_BUDGETS))

  @property
  def warmup(self) -> int:
    return max(1, round(WARMUP_FRACTION * self.steps))


def _base(setup: Setup, steps: int, lr: float, seed: int, batch: int = 16) -> Any:
  quick = str(setup.steps < 100).lower()
  return study.get_config(f"steps={steps},lr={lr},seed={seed},batch={batch},quick={quick}")


def cosine(setup: Setup, lr: float, seed: int, steps: int | None = None) -> Any:
  """The authors' cosine baseline: OneCycleLR(div_factor=100, final_div_factor=0.1), a cosine
  warmup from peak/100 and a cosine decay to peak/10."""
  steps = steps or setup.steps
  config = _base(setup, steps, lr, seed)
  config.schedule = ml_collections.ConfigDict(dict(
      name="onecycle", pct_start=setup.warmup / steps, div_factor=100.0, final_div_factor=0.1))
  return config


def wsd(setup: Setup, lr: float, seed: int, shape: str = "1-sqrt", fraction: float = 0.2,
        steps: int | None = None, batch: int = 16, warmup: int | None = None) -> Any:
  """Linear warmup from peak/100, constant, then `shape` to 0 over `int(fraction * steps)`
  steps: the authors' `wsd_schedule`, whose decay length truncates (`int`)."""
  steps = steps or setup.steps
  config = _base(setup, steps, lr, seed, batch)
  config.schedule = ml_collections.ConfigDict(dict(
      name="wsd", warmup_steps=setup.warmup if warmup is None else warmup,
      decay_steps=int(fraction * steps), decay_shape=shape, init_value=lr / 100, end_value=0.0))
  return config


def power(setup: Setup, a: float, seed: int, steps: int | None = None, batch: int = 16) -> Any:
  """The Power scheduler: min(max_lr, batch * a * tokens^b), warmup 5%, exponential decay to 0
  over the last 10% (Shen et al.'s recipe)."""
  steps = steps or setup.steps
  config = _base(setup, steps, POWER_MAX_LR, seed, batch)
  config.schedule = ml_collections.ConfigDict(dict(
      name="power", a=a, b=POWER_B, batch_size=batch, tokens_per_step=batch * study.SEQ_LEN,
      warmup_steps=max(1, round(WARMUP_FRACTION * steps)), decay_steps=max(1, steps // 10),
      decay_shape="exponential"))
  return config


def _arm_config(setup: Setup, arm: str, lr: float, seed: int) -> Any:
  if arm == "cosine":
    return cosine(setup, lr, seed)
  return wsd(setup, lr, seed, shape=arm.split()[1])


def _spec(name: str, config: Any, **meta: Any) -> RunSpec:
  return RunSpec(name, config, meta=meta)


def _test(record: dict[str, Any]) -> float:
  return record["summary"]["final_test_loss"]


def _examples(record: dict[str, Any]) -> np.ndarray:
  return np.asarray(record["examples"]["test"])


def _paired_rows(pairs: list[tuple[str, list[dict], list[dict]]]) -> tuple[list[list[str]], dict]:
  """Rows of paired comparisons A - B on test loss, with the eval's own paired SE."""
  rows, verdicts = [], {}
  for label, a, b in pairs:
    diff = stats.paired([_test(r) for r in a], [_test(r) for r in b])
    eval_se = np.mean([stats.paired_example_se(_examples(x), _examples(y))
                       for x, y in zip(a, b)])
    verdicts[label] = stats.verdict(diff, MARGIN)
    rows.append([label, mean_std([_test(r) for r in a]), mean_std([_test(r) for r in b]),
                 str(diff), f"{eval_se:.4f}", verdicts[label]])
  return rows, verdicts


NOT_YET_RUN = ("*not yet run: the command above trains this part's runs next (the sweep resumes "
               "where it stopped)*")


def run(ctx: Context) -> None:
  """Trains and reports the three parts in order; the page is rewritten after each, so a sweep
  stopped early still leaves the finished parts on the page and the rest marked not yet run."""
  setup = Setup.of(ctx)
  T = setup.steps
  values: dict[str, Any] = {
      "steps": T, "tokens": f"{T * 2048 / 1e6:.1f}M", "warmup": setup.warmup,
      "lrs": ", ".join(f"{v:g}" for v in setup.lrs),
      "power_a": ", ".join(f"{v:g}" for v in setup.power_a), "margin": MARGIN,
      "tune_cell": _tune_cell(setup)[0],
      "power_budgets": ", ".join(f"{f:g}T" for f in POWER_BUDGETS),
      **{key: NOT_YET_RUN for key in ("branch_table", "budget_figure", "cell_grid_table",
                                       "cell_table")},
      **{key: "not yet run" for key in ("verdict_branch", "verdict_power", "power_claim",
                                         "power_home", "best_a", "cell_inside")},
      **{key: "–" for key in ("branch_same", "branch_gap", "branch_first", "branch_steps",
                             "cosine_steps", "branch_saving")}}
  tuned, final, part_a = _equal_compute(ctx, setup)
  values.update(part_a)
  ctx.write_page(values, ctx.records())
  values.update(_branching(ctx, setup, tuned["wsd 1-sqrt 20%"].best, tuned["cosine"].best,
                           final))
  ctx.write_page(values, ctx.records())
  values.update(_power_transfer(ctx, setup))
  ctx.write_page(values, ctx.records())


def _inside(tuned: dict[str, Any]) -> str:
  if all(t.inside for t in tuned.values()):
    return "every choice lies strictly inside its grid"
  return "NOT every choice lies inside its grid: " + ", ".join(
      a for a, t in tuned.items() if not t.inside)


def _equal_compute(ctx: Context, setup: Setup) -> tuple[dict, dict, dict[str, Any]]:
  """(a) Each arm tuned on validation (seeds TUNE_SEEDS on the grid), then 3 seeds at the
  choice; the 10% decay at WSD's choice."""
  def arm_maker(arm: str):
    return lambda lr, seed: _spec(f"a_{arm.replace(' ', '_')}_lr{lr:g}_s{seed}",
                                  _arm_config(setup, arm, lr, seed), arm=arm, lr=lr, seed=seed)

  tuned = ctx.tune({arm: (arm_maker(arm), setup.lrs) for arm in ARMS}, seeds=setup.tune_seeds)
  finals = {arm: [arm_maker(arm)(tuned[arm].best, s) for s in setup.seeds] for arm in ARMS}
  best_wsd = tuned["wsd 1-sqrt 20%"].best
  wsd10 = [_spec(f"a_wsd_1-sqrt_10%_lr{best_wsd:g}_s{s}",
                 wsd(setup, best_wsd, s, fraction=0.1), arm="wsd 1-sqrt 10%", seed=s)
           for s in setup.seeds]
  records = ctx.run([*[x for xs in finals.values() for x in xs], *wsd10])
  final = {arm: [records[x.name] for x in finals[arm]] for arm in ARMS}
  main_rows, main_verdicts = _paired_rows([
      ("WSD 1-sqrt 20% - cosine", final["wsd 1-sqrt 20%"], final["cosine"]),
      ("WSD 1-sqrt 20% - WSD linear 20%", final["wsd 1-sqrt 20%"], final["wsd linear 20%"]),
      ("WSD 1-sqrt 10% - WSD 1-sqrt 20%", [records[x.name] for x in wsd10],
       final["wsd 1-sqrt 20%"])])
  arm_rows = [[arm, f"{tuned[arm].best:g}", mean_std([r["summary"]["final_eval_loss"]
                                                       for r in final[arm]]),
               mean_std([_test(r) for r in final[arm]]),
               f"{np.mean([r['summary']['final_test_loss_se'] for r in final[arm]]):.4f}"]
              for arm in ARMS]
  return tuned, final, {
      "params": f"{final['cosine'][0]['summary']['num_params']:,}",
      "grid_table": markdown_table(["arm", "learning rate: mean validation loss (choice in "
                                    "bold)"], [[arm, t.row()] for arm, t in tuned.items()]),
      "arm_table": markdown_table(["arm", "lr", "validation loss", "test loss",
                                   "test SE (eval)"], arm_rows),
      "main_table": markdown_table(["difference (A - B)", "A test loss", "B test loss",
                                    "paired difference ± SE (seeds)", "eval SE of one pair",
                                    "verdict"], main_rows),
      "curves": _plot_curves(ctx, setup, final).name,
      "verdict_wsd": main_verdicts["WSD 1-sqrt 20% - cosine"],
      "verdict_shape": main_verdicts["WSD 1-sqrt 20% - WSD linear 20%"],
      "inside": _inside(tuned)}


def _branching(ctx: Context, setup: Setup, best_wsd: float, best_cos: float,
               final: dict[str, list[dict]]) -> dict[str, Any]:
  """(b) One WSD run of budget 2T keeps its stable state at 0.4T and 0.8T; decays of 20%
  branch from there for the budgets T/2 and T (the same warmup in steps as the 2T run, so the
  budget-T branch is step for step the (a) run). Cosine from scratch at T/2 and 2T uses
  cosine's learning rate tuned at T."""
  T = setup.steps
  budgets = (T // 2, T, 2 * T)
  stable = []
  for s in setup.seeds:
    config = wsd(setup, best_wsd, s, steps=2 * T)
    config.checkpoint.keep_every = int(np.gcd(int(0.4 * T), int(0.8 * T)))
    stable.append(_spec(f"b_stable2T_s{s}", config, seed=s))
  cosine_budgets = [_spec(f"b_cosine_{b}_s{s}", cosine(setup, best_cos, s, steps=b), budget=b,
                          seed=s) for b in (budgets[0], budgets[2]) for s in setup.seeds]
  records = ctx.run([*stable, *cosine_budgets])
  branches = []
  for s, spec in zip(setup.seeds, stable):
    source = ctx.runs_dir / spec.name
    for budget in budgets[:2]:
      decay = int(0.2 * budget)
      config = branch_config(dict(spec.config.to_dict()), str(source), budget - decay, decay)
      branches.append(_spec(f"b_branch_{budget}_s{s}", config, budget=budget, seed=s))
  records.update(ctx.run(branches))

  by_budget = {}
  for b in budgets:
    if b == T:
      branch_b, cosine_b = final["wsd 1-sqrt 20%"], final["cosine"]
    else:
      branch_b = ([records[f"b_stable2T_s{s}"] for s in setup.seeds] if b == 2 * T
                  else [records[f"b_branch_{b}_s{s}"] for s in setup.seeds])
      cosine_b = [records[f"b_cosine_{b}_s{s}"] for s in setup.seeds]
    by_budget[b] = (branch_b, cosine_b)
  branch_rows, branch_verdicts = _paired_rows(
      [(f"budget {b} steps: branch - cosine", *by_budget[b]) for b in budgets])
  pairs = [(records[f"b_branch_{T}_s{s}"]["summary"], final["wsd 1-sqrt 20%"][i]["summary"])
           for i, s in enumerate(setup.seeds)]
  same = [b["params_sha256"] == a["params_sha256"] for b, a in pairs]
  gap = max(abs(b["final_test_loss"] - a["final_test_loss"]) for b, a in pairs)
  a_curve, stable_curve = final["wsd 1-sqrt 20%"][0]["curve"], records[stable[0].name]["curve"]
  first = min(set(a_curve["step"]) & set(stable_curve["step"]), default=None)
  first_losses = [c["train_loss"][c["step"].index(first)] if first else float("nan")
                  for c in (a_curve, stable_curve)]
  branch_steps = int(0.8 * 2 * T) + sum(int(0.2 * b) for b in budgets[:2]) + int(0.4 * T)
  cosine_steps = sum(budgets)
  figure = _plot_budgets(ctx, by_budget, budgets)
  return {
      "branch_table": markdown_table(["difference", "branch", "cosine from scratch",
                                      "paired difference ± SE", "eval SE of one pair",
                                      "verdict"], branch_rows),
      "budget_figure": f"![branched decays and cosine per budget](./{figure.name})",
      "branch_same": f"{sum(same)}/{len(same)}", "branch_gap": f"{gap:.4f}",
      "branch_first": f"step {first} ({first_losses[0]:.7f} against {first_losses[1]:.7f}, "
                      f"seed {setup.seeds[0]})",
      "branch_steps": branch_steps, "cosine_steps": cosine_steps,
      "branch_saving": f"{1 - branch_steps / cosine_steps:.0%}",
      "verdict_branch": ", ".join(f"{b} steps: {branch_verdicts[label]}"
                                  for b, label in zip(budgets, branch_verdicts))}


def _tune_cell(setup: Setup) -> tuple[str, int]:
  fraction = max(f for f, _ in setup.cells)
  return f"{fraction:g}T_b16", int(fraction * setup.steps)


def _power_transfer(ctx: Context, setup: Setup) -> dict[str, Any]:
  """(c) Power's `a` tuned in one cell; the same `a` in every cell against WSD tuned per cell
  (on one seed: see the protocol), then 3 seeds each."""
  T = setup.steps
  tune_cell, tune_steps = _tune_cell(setup)
  power_maker = lambda a, seed: _spec(f"c_power_{tune_cell}_a{a:g}_s{seed}",
                                      power(setup, a, seed, tune_steps, 16), a=a, seed=seed)
  cell_makers = {}
  for fraction, batch in setup.cells:
    steps = int(fraction * T * 16 / batch)  # the same tokens at both batch sizes
    cell = f"{fraction:g}T_b{batch}"
    cell_makers[cell] = (
        lambda lr, seed, steps=steps, batch=batch, cell=cell: _spec(
            f"c_wsd_{cell}_lr{lr:g}_s{seed}",
            wsd(setup, lr, seed, steps=steps, batch=batch,
                warmup=max(1, round(WARMUP_FRACTION * steps))), cell=cell, lr=lr, seed=seed),
        steps, batch)
  tuned = ctx.tune(
      {"power a": (power_maker, setup.power_a),
       **{f"wsd {cell}": (maker, setup.lrs, setup.tune_seeds[:1])
          for cell, (maker, _, _) in cell_makers.items()}},
      seeds=setup.tune_seeds)
  best_a = tuned["power a"].best
  power_cells = {cell: [_spec(f"c_power_{cell}_a{best_a:g}_s{s}",
                              power(setup, best_a, s, steps, batch), cell=cell, a=best_a, seed=s)
                        for s in setup.seeds]
                 for cell, (_, steps, batch) in cell_makers.items()}
  wsd_cells = {cell: [maker(tuned[f"wsd {cell}"].best, s) for s in setup.seeds]
               for cell, (maker, _, _) in cell_makers.items()}
  records = ctx.run([x for cells in (power_cells, wsd_cells) for xs in cells.values()
                     for x in xs])
  label = {cell: f"{cell}: Power(a={best_a:g}) - WSD tuned" for cell in cell_makers}
  cell_rows, cell_verdicts = _paired_rows([
      (label[cell], [records[x.name] for x in power_cells[cell]],
       [records[x.name] for x in wsd_cells[cell]]) for cell in cell_makers])
  transfer_ok = sum(v in ("matches", "beats") for v in cell_verdicts.values())
  home = cell_verdicts[label[tune_cell]]
  return {
      "cell_grid_table": markdown_table(["tuned", "value: mean validation loss (choice in "
                                         "bold)"], [[k, t.row()] for k, t in tuned.items()]),
      "cell_inside": _inside(tuned),
      "cell_table": markdown_table(["cell", "Power", "WSD (lr tuned in the cell)",
                                    "paired difference ± SE", "eval SE of one pair",
                                    "verdict"], cell_rows),
      "verdict_power": f"{transfer_ok}/{len(cell_verdicts)} cells",
      "power_claim": "supported" if transfer_ok == len(cell_verdicts) else "not supported",
      "power_home": home,
      "best_a": f"{best_a:g}"}


def _plot_curves(ctx: Context, setup: Setup, final: dict) -> Any:
  fig, ax = plt.subplots(figsize=(6.5, 4.2))
  for arm, color in zip(ARMS, ("C0", "C3", "C1")):
    curves = [(np.array(r["curve"]["step"]), np.array(r["curve"].get("eval_loss", [])))
              for r in final[arm]]
    steps = curves[0][0][[v is not None for v in curves[0][1]]]
    ys = np.mean([np.array([v for v in c[1] if v is not None], float) for c in curves], axis=0)
    ax.plot(steps, ys, color=color, label=arm)
  ax.set(xlabel="step", ylabel="validation loss (nats/byte), mean over seeds",
         title=f"(a) equal compute, {setup.steps} steps")
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  return ctx.save_figure(fig, "curves")


def _plot_budgets(ctx: Context, by_budget: dict, budgets) -> Any:
  fig, ax = plt.subplots(figsize=(6.5, 4.2))
  for b in budgets:
    branch, cosine_b = by_budget[b]
    ax.scatter([b] * len(branch), [_test(r) for r in branch], color="C3", marker="o",
               label="WSD branch" if b == budgets[0] else None)
    ax.scatter([b] * len(cosine_b), [_test(r) for r in cosine_b], color="C0", marker="x",
               label="cosine from scratch" if b == budgets[0] else None)
  ax.set(xlabel="budget (steps)", ylabel="test loss", xscale="log",
         title="(b) branched decays vs cosine per budget")
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  return ctx.save_figure(fig, "budgets")
