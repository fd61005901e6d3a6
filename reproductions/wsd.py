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


def run(ctx: Context) -> None:
  setup = Setup.of(ctx)
  T = setup.steps

  # (a) Equal compute: each arm tuned on validation, seeds TUNE_SEEDS on the grid.
  def arm_maker(arm: str):
    return lambda lr, seed: _spec(f"a_{arm.replace(' ', '_')}_lr{lr:g}_s{seed}",
                                  _arm_config(setup, arm, lr, seed), arm=arm, lr=lr, seed=seed)

  tune_fraction = max(f for f, _ in setup.cells)
  tune_cell, tune_steps = f"{tune_fraction:g}T_b16", int(tune_fraction * T)
  power_maker = lambda a, seed: _spec(f"c_power_{tune_cell}_a{a:g}_s{seed}",
                                      power(setup, a, seed, tune_steps, 16), a=a, seed=seed)
  cell_makers = {}
  for fraction, batch in setup.cells:
    steps = int(fraction * T * 16 / batch)
    cell = f"{fraction:g}T_b{batch}"
    cell_makers[cell] = (
        lambda lr, seed, steps=steps, batch=batch, cell=cell: _spec(
            f"c_wsd_{cell}_lr{lr:g}_s{seed}",
            wsd(setup, lr, seed, steps=steps, batch=batch,
                warmup=max(1, round(WARMUP_FRACTION * steps))), cell=cell, lr=lr, seed=seed),
        steps, batch)
  tuned = ctx.tune(
      {**{arm: (arm_maker(arm), setup.lrs) for arm in ARMS},
       "power a": (power_maker, setup.power_a),
       **{f"wsd {cell}": (maker, setup.lrs, setup.tune_seeds[:1])
          for cell, (maker, _, _) in cell_makers.items()}},
      seeds=setup.tune_seeds)  # the Power cells' WSD is tuned on one seed: see the protocol

  finals = {arm: [arm_maker(arm)(tuned[arm].best, s) for s in setup.seeds] for arm in ARMS}
  best_wsd, best_cos = tuned["wsd 1-sqrt 20%"].best, tuned["cosine"].best
  wsd10 = [_spec(f"a_wsd_1-sqrt_10%_lr{best_wsd:g}_s{s}",
                 wsd(setup, best_wsd, s, fraction=0.1), arm="wsd 1-sqrt 10%", seed=s)
           for s in setup.seeds]

  # (b) Branching: one WSD run of budget 2T keeps its stable state at 0.4T and 0.8T; decays of
  # 20% branch from there for the budgets T/2 and T (T/2 and T: the same warmup in steps as the
  # 2T run, so the budget-T branch is step for step the (a) run). Cosine from scratch at T/2
  # and 2T uses cosine's learning rate tuned at T.
  budgets = (T // 2, T, 2 * T)
  stable = []
  for s in setup.seeds:
    config = wsd(setup, best_wsd, s, steps=2 * T)
    config.checkpoint.keep_every = int(np.gcd(int(0.4 * T), int(0.8 * T)))
    stable.append(_spec(f"b_stable2T_s{s}", config, seed=s))
  cosine_budgets = [_spec(f"b_cosine_{b}_s{s}", cosine(setup, best_cos, s, steps=b), budget=b,
                          seed=s) for b in (budgets[0], budgets[2]) for s in setup.seeds]

  # (c) Power: a tuned in one cell; the same a in every cell against WSD tuned per cell.
  best_a = tuned["power a"].best
  cells = {cell: (steps, batch) for cell, (_, steps, batch) in cell_makers.items()}
  power_cells = [_spec(f"c_power_{cell}_a{best_a:g}_s{s}", power(setup, best_a, s, steps, batch),
                       cell=cell, a=best_a, seed=s)
                 for cell, (steps, batch) in cells.items() for s in setup.seeds]
  cell_finals = [cell_makers[cell][0](tuned[f"wsd {cell}"].best, s)
                 for cell in cell_makers for s in setup.seeds]
  records = ctx.run([*[x for xs in finals.values() for x in xs], *wsd10, *stable,
                     *cosine_budgets, *power_cells, *cell_finals])
  branches = []
  for s, spec in zip(setup.seeds, stable):
    source = ctx.runs_dir / spec.name
    for budget in budgets[:2]:
      decay = int(0.2 * budget)
      config = branch_config(dict(spec.config.to_dict()), str(source), budget - decay, decay)
      branches.append(_spec(f"b_branch_{budget}_s{s}", config, budget=budget, seed=s))
  records.update(ctx.run(branches))
  all_records = ctx.records()

  # Tables.
  grid_rows = [[arm, tuned[arm].row()] for arm in tuned]
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

  by_budget = {}
  for b in budgets:
    if b == T:
      branch_b = final["wsd 1-sqrt 20%"]
      cosine_b = final["cosine"]
    else:
      branch_b = ([records[f"b_stable2T_s{s}"] for s in setup.seeds] if b == 2 * T
                  else [records[f"b_branch_{b}_s{s}"] for s in setup.seeds])
      cosine_b = [records[f"b_cosine_{b}_s{s}"] for s in setup.seeds]
    by_budget[b] = (branch_b, cosine_b)
  branch_rows, branch_verdicts = _paired_rows(
      [(f"budget {b} steps: branch - cosine", *by_budget[b]) for b in budgets])
  same = [records[f"b_branch_{T}_s{s}"]["summary"]["params_sha256"]
          == final["wsd 1-sqrt 20%"][i]["summary"]["params_sha256"]
          for i, s in enumerate(setup.seeds)]
  branch_steps = int(0.8 * 2 * T) + sum(int(0.2 * b) for b in budgets[:2]) + int(0.4 * T)
  cosine_steps = sum(budgets)

  def cell_wsd(cell: str) -> list[dict[str, Any]]:
    return [records[cell_makers[cell][0](tuned[f"wsd {cell}"].best, s).name]
            for s in setup.seeds]

  cell_pairs = [(f"{cell}: Power(a={best_a:g}) - WSD tuned",
                 [records[f"c_power_{cell}_a{best_a:g}_s{s}"] for s in setup.seeds],
                 cell_wsd(cell)) for cell in cells]
  cell_rows, cell_verdicts = _paired_rows(cell_pairs)
  transfer_ok = sum(v in ("matches", "beats") for v in cell_verdicts.values())

  curves_png = _plot(ctx, setup, final, by_budget, budgets)
  ctx.write_page({
      "params": f"{records[finals['cosine'][0].name]['summary']['num_params']:,}",
      "steps": T, "tokens": f"{T * 2048 / 1e6:.1f}M", "warmup": setup.warmup,
      "lrs": ", ".join(f"{v:g}" for v in setup.lrs), "power_a": ", ".join(f"{v:g}" for v in
                                                                           setup.power_a),
      "margin": MARGIN, "grid_table": markdown_table(["arm", "learning rate: mean validation "
                                                      "loss (choice in bold)"], grid_rows),
      "arm_table": markdown_table(["arm", "lr", "validation loss", "test loss",
                                   "test SE (eval)"], arm_rows),
      "main_table": markdown_table(["difference (A - B)", "A test loss", "B test loss",
                                    "paired difference ± SE (seeds)", "eval SE of one pair",
                                    "verdict"], main_rows),
      "branch_table": markdown_table(["difference", "branch", "cosine from scratch",
                                      "paired difference ± SE", "eval SE of one pair",
                                      "verdict"], branch_rows),
      "cell_table": markdown_table(["cell", "Power", "WSD (lr tuned in the cell)",
                                    "paired difference ± SE", "eval SE of one pair",
                                    "verdict"], cell_rows),
      "branch_same": f"{sum(same)}/{len(same)}",
      "branch_steps": branch_steps, "cosine_steps": cosine_steps,
      "branch_saving": f"{1 - branch_steps / cosine_steps:.0%}",
      "verdict_wsd": main_verdicts["WSD 1-sqrt 20% - cosine"],
      "verdict_shape": main_verdicts["WSD 1-sqrt 20% - WSD linear 20%"],
      "verdict_branch": ", ".join(f"{b} steps: {branch_verdicts[label]}"
                                  for b, label in zip(budgets, branch_verdicts)),
      "verdict_power": f"{transfer_ok}/{len(cell_verdicts)} cells",
      "best_a": f"{best_a:g}", "curves": curves_png.name, "tune_cell": tune_cell,
      "power_budgets": ", ".join(f"{f:g}T" for f in POWER_BUDGETS),
      "inside": "every choice lies strictly inside its grid" if all(
          t.inside for t in tuned.values()) else "NOT every choice lies inside its grid: "
      + ", ".join(a for a, t in tuned.items() if not t.inside),
  }, all_records)


def _plot(ctx: Context, setup: Setup, final: dict, by_budget: dict, budgets) -> Any:
  fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(12, 4.2))
  for arm, color in zip(ARMS, ("C0", "C3", "C1")):
    curves = [(np.array(r["curve"]["step"]), np.array(r["curve"].get("eval_loss", [])))
              for r in final[arm]]
    steps = curves[0][0][[v is not None for v in curves[0][1]]]
    ys = np.mean([np.array([v for v in c[1] if v is not None], float) for c in curves], axis=0)
    ax_a.plot(steps, ys, color=color, label=arm)
  ax_a.set(xlabel="step", ylabel="validation loss (nats/byte), mean over seeds",
           title=f"(a) equal compute, {setup.steps} steps")
  for b in budgets:
    branch, cosine_b = by_budget[b]
    ax_b.scatter([b] * len(branch), [_test(r) for r in branch], color="C3", marker="o",
                 label="WSD branch" if b == budgets[0] else None)
    ax_b.scatter([b] * len(cosine_b), [_test(r) for r in cosine_b], color="C0", marker="x",
                 label="cosine from scratch" if b == budgets[0] else None)
  ax_b.set(xlabel="budget (steps)", ylabel="test loss", xscale="log",
           title="(b) branched decays vs cosine per budget")
  for ax in (ax_a, ax_b):
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
  return ctx.save_figure(fig, "curves")
