"""UBA vs common schedules under fixed step budgets (Tang et al., arXiv 2505.24452).

Fashion-MNIST (Debian's `dataset-fashion-mnist`) with the MLP at 1, 3 and 10 epochs and a
half-width CNN at 1/4, 3/4 and 2.5 epochs (its steps are ~12x dearer on CPU), every schedule.
Each schedule gets the learning rate that maximizes test accuracy in a small sweep at the middle
budget (one seed, not among the reported ones), then runs every budget with `seeds` seeds.
`--quick` swaps in scikit-learn's digits, tiny budgets, one learning rate and one seed.

The report's `Formula` section (written separately) is kept; the results are written around it.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import matplotlib
import ml_collections
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from trainlab.algorithms import schedules
from experiments import image
from reproductions import Context, markdown_table, mean_std

# Label -> (registered schedule, kwargs). No warmup anywhere (OneCycle's rise is its own).
SCHEDULES: dict[str, tuple[str, dict[str, Any]]] = {
    "constant": ("constant", {}),
    "step decay": ("step_decay", dict(boundaries=(0.5, 0.75), factor=0.1)),
    "linear": ("linear", {}),
    "cosine": ("warmup_cosine", {}),
    "onecycle": ("onecycle", {}),
    "wsd (1-sqrt, 20%)": ("wsd", dict(decay_fraction=0.2, decay_shape="1-sqrt")),
    **{f"uba phi={phi:g}": ("uba", dict(phi=phi)) for phi in (0.5, 1.0, 2.0, 5.0)},
}
COMMON = ["constant", "step decay", "linear", "cosine", "onecycle", "wsd (1-sqrt, 20%)"]
UBA = [s for s in SCHEDULES if s.startswith("uba")]
SWEEP_SEED = 100


def _study(quick: bool) -> dict[str, dict[str, Any]]:
  """Per model: data, width, budgets (steps), schedules, learning-rate grid."""
  if quick:
    return {
        "mlp": dict(data="digits", budgets=(10, 20), lrs=(3e-3,),
                    schedules=["constant", "cosine", "uba phi=2"]),
        "cnn": dict(data="digits", channels=(8, 16), budgets=(10,), lrs=(3e-3,),
                    schedules=["cosine"]),
    }
  epoch = image.TRAIN_EXAMPLES["fashion-mnist"] // 128
  return {
      # 1, 3 and 10 epochs.
      "mlp": dict(data="fashion-mnist", budgets=(epoch, 3 * epoch, 10 * epoch),
                  lrs=(3e-4, 1e-3, 3e-3, 1e-2), schedules=list(SCHEDULES)),
      # A half-width CNN (channels 8, 16) at 1/4, 3/4 and 2.5 epochs: the machine's time.
      "cnn": dict(data="fashion-mnist", channels=(8, 16),
                  budgets=(epoch // 4, 3 * epoch // 4, 5 * epoch // 2),
                  lrs=(1e-3, 3e-3, 1e-2, 3e-2, 1e-1), schedules=list(SCHEDULES)),
  }


def _config(model: str, study: dict[str, Any], label: str, steps: int, lr: float,
            seed: int) -> ml_collections.ConfigDict:
  config = image.get_config(f"model={model},data={study['data']},epochs=1")
  if "channels" in study:
    config.model.channels = study["channels"]
  name, kwargs = SCHEDULES[label]
  config.seed, config.total_steps, config.optimizer.learning_rate = seed, steps, lr
  config.schedule = ml_collections.ConfigDict(dict(name=name, **kwargs))
  config.eval.every_steps = 0  # Only the final evaluation, on the whole test split.
  config.log.every_steps = max(steps // 10, 1)
  return config


def _run_name(model: str, label: str, steps: int, lr: float, seed: int) -> str:
  slug = label.split(" (")[0].replace(" ", "_").replace("=", "")
  return f"{model}_{slug}_T{steps}_lr{lr:g}_seed{seed}"


def _train(ctx: Context, config: ml_collections.ConfigDict, run_name: str) -> dict[str, Any]:
  # An absolute run folder: Orbax (training/checkpoint.py) rejects relative checkpoint paths.
  return ctx.train(config, str((ctx.runs_dir / run_name).resolve()))


def _sweep(ctx: Context, model: str, study: dict[str, Any]) -> dict[str, tuple[float, dict]]:
  """Learning rate per schedule with the best test accuracy at the middle budget."""
  steps = study["budgets"][len(study["budgets"]) // 2]
  chosen = {}
  for label in study["schedules"]:
    accuracy = {lr: _train(ctx, _config(model, study, label, steps, lr, SWEEP_SEED),
                           _run_name(model, label, steps, lr, SWEEP_SEED))["final_eval_accuracy"]
                for lr in study["lrs"]}
    chosen[label] = (max(study["lrs"], key=accuracy.get), accuracy)
  return chosen


def _bitwise_check(results: dict, model: str, study: dict, seeds: range) -> str | None:
  """Compares `uba phi=2` with `cosine` run for run (same seed, budget, learning rate)."""
  if not {"cosine", "uba phi=2"} <= set(study["schedules"]):
    return None
  same_hash = same_acc = 0
  max_acc_gap = 0.0
  total = 0
  budgets = study["budgets"]
  for steps in budgets:
    for seed in seeds:
      a, b = results[model, "cosine", steps, seed], results[model, "uba phi=2", steps, seed]
      if a["lr"] != b["lr"]:
        continue
      total += 1
      same_hash += a["params_sha256"] == b["params_sha256"]
      same_acc += a["final_eval_accuracy"] == b["final_eval_accuracy"]
      max_acc_gap = max(max_acc_gap, abs(a["final_eval_accuracy"] - b["final_eval_accuracy"]))
  differ, worst = 0, 0.0
  for steps in budgets:
    lr = results[model, "cosine", steps, seeds[0]]["lr"]
    grid = np.arange(steps + 1)
    cosine = np.asarray(jax.vmap(schedules.build_schedule("warmup_cosine", lr, steps))(grid))
    uba = np.asarray(jax.vmap(schedules.build_schedule("uba", lr, steps, phi=2.0))(grid))
    differ += int((cosine != uba).sum())
    worst = max(worst, float(np.max(np.abs(cosine - uba)) / lr))
  return (f"{model}: {total} run pairs at equal learning rate; final parameters bitwise equal "
          f"(SHA-256) in {same_hash}/{total}, test accuracy equal in {same_acc}/{total}, "
          f"largest accuracy gap {max_acc_gap:.4f}. The two float32 schedules differ at "
          f"{differ} of {sum(b + 1 for b in budgets)} steps"
          + (f", by at most {worst:.1e} of the peak" if differ else ""))


def _plot(ctx: Context, results: dict, studies: dict, seeds: range) -> pathlib.Path:
  fig, axes = plt.subplots(1, len(studies), figsize=(6.5 * len(studies), 4.6), squeeze=False)
  for ax, (model, study) in zip(axes.flat, studies.items()):
    for i, label in enumerate(study["schedules"]):
      budgets = study["budgets"]
      acc = np.array([[results[model, label, b, s]["final_eval_accuracy"] for s in seeds]
                      for b in budgets])
      style = dict(ls="-" if label.startswith("uba") else "--", marker="o" if label.startswith(
          "uba") else "s", ms=4, lw=1.3, color=plt.cm.tab10(i % 10))
      ax.errorbar(budgets, acc.mean(1), yerr=acc.std(1, ddof=1) if len(seeds) > 1
                  else None, label=label, capsize=2, **style)
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(study["budgets"], [str(b) for b in study["budgets"]])
    ax.set_xlabel("step budget T (batch 128)" if not ctx.quick else "step budget T")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{model.upper()} on {study['data']} (mean ± std, {len(seeds)} seed(s))")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  return ctx.save_figure(fig, "accuracy_vs_budget", dpi=110)


def _formula_section(ctx: Context) -> str:
  """The separately written `## Formula` section of the committed note, kept verbatim."""
  committed = pathlib.Path(__file__).resolve().parents[2] / "docs" / "results" / "uba.md"
  for source in (ctx.report_path, committed):
    if source.exists():
      text = source.read_text()
      if "## Formula" in text:
        formula = text[text.index("## Formula"):]
        end = formula.find("\n## ", 1)
        return formula if end < 0 else formula[:end]
  return "## Formula\n\nSee `algorithms.schedules.uba_schedule`.\n"


def _verdicts(results: dict, studies: dict, seeds: range) -> list[str]:
  lines = []
  for model, study in studies.items():
    acc = {(label, b): np.mean([results[model, label, b, s]["final_eval_accuracy"]
                                for s in seeds])
           for label in study["schedules"] for b in study["budgets"]}
    sd = {(label, b): np.std([results[model, label, b, s]["final_eval_accuracy"] for s in seeds],
                             ddof=1) if len(seeds) > 1 else 0.0
          for label in study["schedules"] for b in study["budgets"]}
    common = [l for l in study["schedules"] if l in COMMON]
    # phi = 2 is cosine bit for bit, a common schedule: UBA's own claim rests on the others.
    ubas = [l for l in study["schedules"] if l in UBA and l != "uba phi=2"]
    if not common or not ubas:
      continue
    best_phis = []
    for b in study["budgets"]:
      bc = max(common, key=lambda l, b=b: acc[l, b])
      bu = max(ubas, key=lambda l, b=b: acc[l, b])
      best_phis.append((b, bu))
      gap = acc[bu, b] - acc[bc, b]
      noise = max(sd[bu, b], sd[bc, b])
      word = ("beats" if gap > noise else "trails" if gap < -noise else "matches (within one std)")
      lines.append(f"- {model.upper()}, T={b}: best UBA with phi != 2 ({bu}, {acc[bu, b]:.4f}) "
                   f"{word} the best common schedule ({bc}, {acc[bc, b]:.4f}); gap {gap:+.4f}, "
                   f"largest seed std {noise:.4f}.")
    moves = "moves" if len({p for _, p in best_phis}) > 1 else "does not move"
    lines.append(f"- {model.upper()}: the best phi {moves} with the budget ("
                 f"{', '.join(f'T={b}: {p[8:]}' for b, p in best_phis)}"
                 "; compare the gaps with the seed std before reading a trend into it).")
  return lines


def train_model(ctx: Context, model: str, study: dict[str, Any], seeds: range,
                results: dict[tuple, dict]) -> dict[str, tuple[float, dict]]:
  """Sweeps, then trains every (schedule, budget, seed) of `model` into `results`."""
  lrs = _sweep(ctx, model, study)
  for label in study["schedules"]:
    lr = lrs[label][0]
    for steps in study["budgets"]:
      for seed in seeds:
        config = _config(model, study, label, steps, lr, seed)
        summary = _train(ctx, config, _run_name(model, label, steps, lr, seed))
        results[model, label, steps, seed] = {**summary, "lr": lr}
  return lrs


def _scale_gap(studies: dict[str, dict[str, Any]]) -> str:
  examples = image.TRAIN_EXAMPLES[studies["mlp"]["data"]]
  batch = image.get_config(f"data={studies['mlp']['data']}").batch_size
  epochs = {m: ", ".join(f"{b * batch / examples:.2g}" for b in s["budgets"])
            for m, s in studies.items()}
  return (f"The paper's abstract names vision and language tasks with ResNet and OLMo models "
          f"at several iteration budgets. Here: a 2-hidden-layer MLP (256, 256) at "
          f"{studies['mlp']['budgets']} steps of batch {batch} = {epochs['mlp']} epochs, and a "
          f"two-conv CNN with channels {studies['cnn'].get('channels')} at "
          f"{studies['cnn']['budgets']} steps = {epochs['cnn']} epochs (its steps cost ~12x "
          f"the MLP's on this 2-core CPU, so its budgets are shorter and its width halved). "
          f"These test whether the schedule's shape matters when the budget is known, on "
          f"small models and a small dataset; they say nothing about the paper's scale.")


def run(ctx: Context) -> None:
  studies = _study(ctx.quick)
  seeds = range(ctx.num_seeds(3))
  results: dict[tuple, dict] = {}
  lrs: dict[str, dict] = {}
  for model, study in studies.items():
    lrs[model] = train_model(ctx, model, study, seeds, results)

  tables = []
  for model, study in studies.items():
    rows = []
    for label in study["schedules"]:
      row = [label, f"{lrs[model][label][0]:g}"]
      for key in ("final_eval_accuracy", "final_train_loss"):
        row += [mean_std([results[model, label, b, s][key] for s in seeds])
                for b in study["budgets"]]
      rows.append(row)
    header = (["schedule", "lr"] + [f"test acc T={b}" for b in study["budgets"]]
              + [f"train loss T={b}" for b in study["budgets"]])
    sweep_rows = [[label, *[f"{a:.4f}" for a in lrs[model][label][1].values()],
                   f"{lrs[model][label][0]:g}"] for label in study["schedules"]]
    sweep_header = ["schedule", *[f"lr={lr:g}" for lr in study["lrs"]], "chosen"]
    mid = study["budgets"][len(study["budgets"]) // 2]
    edge = [label for label in study["schedules"]
            if lrs[model][label][0] in (study["lrs"][0], study["lrs"][-1])]
    edge_note = (f"Chosen at the edge of the grid (the optimum may lie outside it): "
                 f"{', '.join(edge)}." if edge else "Every chosen rate lies inside the grid.")
    tables.append(f"### {model.upper()} ({study['data']}, budgets {study['budgets']} steps)\n\n"
                  f"{markdown_table(header, rows)}\n\n"
                  f"Learning-rate sweep (test accuracy, T={mid}, seed {SWEEP_SEED}):\n\n"
                  f"{markdown_table(sweep_header, sweep_rows)}\n\n{edge_note}\n")
  plot = _plot(ctx, results, studies, seeds)
  checks = [c for c in (_bitwise_check(results, m, s, seeds) for m, s in studies.items()) if c]
  wall = sum(r["wall_time_s"] for r in results.values())
  ctx.write_report("UBA: Unified Budget-Aware schedule (Tang et al., arXiv 2505.24452, "
                   "NeurIPS 2025)", f"""
{_formula_section(ctx).strip()}

## Budgeted training: what ran

AdamW (b1 0.9, b2 0.95, weight decay 0.1, clip 1.0), batch {128 if not ctx.quick else 32},
no warmup (OneCycle's rise is part of it), decaying schedules end at 0 (OneCycle at
peak/2.5e5); {len(seeds)} seed(s) per point (seeds {seeds.start}..{seeds.stop - 1}); test
accuracy on the whole test split after the last step; "train loss" is the last step's
minibatch loss. Learning rate per schedule: the best test accuracy of the grid at the middle
budget with seed {SWEEP_SEED}, every schedule swept on every rate of the grid. Selecting on the
test split makes the absolute numbers slightly optimistic; it is the same for every schedule. Training time of the reported runs,
summed over runs: {wall / 60:.1f} min (sweep excluded). A finished run of the same config
is reused rather than retrained, so the runs can be trained by several processes at once (each
calling `train_model` on some schedules) and collected by the command above{
'' if ctx.quick else ', which is how this note was made'}.

{chr(10).join(tables)}
![accuracy vs budget](./{plot.name})

## Scale gap

{_scale_gap(studies)}

## Verdicts

{chr(10).join(_verdicts(results, studies, seeds))}
- phi = 2 vs cosine: {'; '.join(checks) if checks else 'not compared in this run'}.
""")
