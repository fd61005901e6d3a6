"""Infinite learning-rate schedule vs repeated cosine in continual pre-training.

Ibrahim et al. (arXiv 2403.08763) and Singh et al. (arXiv 2503.02844, MAE-1): re-warming the
learning rate for every new dataset raises the loss on earlier data, even when the new data is
the old data; the infinite schedule (warmup and cooldown once, a constant phase, a short
anneal per task, the next task resuming from the pre-anneal weights) forgets less with similar
adaptation. Protocol, verdict rules and scale gap: templates/infinite_lr.md.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from experiments import continual as continual_configs
from experiments import study
from reproductions import Context, RunSpec, markdown_table, mean_std, stats
from trainlab.training import continual

LRS = (2e-3, 4e-3, 8e-3, 1.6e-2)  # 2x apart; extended automatically at an edge
ARMS = {"infinite": "infinite", "repeated cosine": "cosine"}
DOMAINS = ("stdlib-code", "pydoc-english", "c-headers")
WARMUP, ANNEAL = 0.05, 0.15  # of a task: the official anneal; a longer warmup than its 1%
MARGIN = 0.01  # nats/byte, stated before the runs
SEEDS, TUNE_SEEDS = (0, 1, 2), (0, 1)


@dataclasses.dataclass(frozen=True)
class Setup:
  steps: int
  seeds: tuple[int, ...]
  tune_seeds: tuple[int, ...]
  lrs: tuple[float, ...]
  size: str
  anneal: float = ANNEAL
  points: int = 20  # evals per task, and checkpoints per task of the same-data streams

  @classmethod
  def of(cls, ctx: Context) -> "Setup":
    if ctx.quick:  # an anneal of 1/4 lets 4 points per task fall on its pre-anneal step
      return cls(steps=40, seeds=(0,), tune_seeds=(0,), lrs=(4e-3,), size="study-quick",
                 anneal=0.25, points=4)
    return cls(steps=study.STEPS, seeds=SEEDS, tune_seeds=TUNE_SEEDS, lrs=LRS, size="study")


def stream_config(setup: Setup, arm: str, lr: float, seed: int,
                  domains: tuple[str, ...] = DOMAINS) -> Any:
  """A stream of `domains`, `setup.steps` per task, MAE-1's weights-only handoff."""
  schedule = ARMS[arm]
  config = continual_configs.get_config(
      f"schedule={schedule},size={setup.size},steps={setup.steps},lr={lr},seed={seed},"
      f"domains={'+'.join(domains)},handoff=weights")
  config.schedule = continual_configs.schedule_block(
      schedule, lr=lr, steps=setup.steps, warmup_fraction=WARMUP, anneal_fraction=setup.anneal)
  config.eval.every_steps = max(1, setup.steps // setup.points)
  config.eval.num_batches = 2 if setup.size == "study-quick" else study.EVAL_BATCHES
  config.log.every_steps = config.eval.every_steps
  if len(set(domains)) < len(domains):  # the same-data spike reads the stream at every 5%
    config.stream.checkpoint_every = max(1, setup.steps // setup.points)
  return config


def _slug(arm: str) -> str:
  return arm.replace(" ", "_")


def _eval_curve(run_dir: pathlib.Path) -> dict[str, list]:
  records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
  points = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
  return {"step": [p[0] for p in points], "eval_loss": [p[1] for p in points]}


def record_stream(spec: RunSpec, run_dir: pathlib.Path) -> dict[str, Any]:
  """The loss matrix, its cells' per-window losses, each task's validation curve, and (for the
  same-data streams) the loss along the stream at every kept checkpoint, including each task's
  starting point."""
  matrix = json.loads((run_dir / "loss_matrix.json").read_text())
  tasks = continual.plan(spec.config, run_dir)
  examples = continual.example_losses(spec.config, run_dir)
  record = {"summary": matrix,
            "curve": {f"task_{t.index}": _eval_curve(t.run_dir) for t in tasks},
            "examples": {k: np.round(v, 5).tolist() for k, v in examples.items()}}
  if spec.meta.get("same_data"):
    record["trajectory"] = continual.trajectory(spec.config, run_dir)
  return record


def _matrix(record: dict[str, Any]) -> list[dict[str, float]]:
  return [row["losses"] for row in record["summary"]["tasks"]]


def forgetting(record: dict[str, Any]) -> float:
  """Mean over earlier domains of (loss after the last task - loss right after its own task)."""
  rows, names = _matrix(record), [r["domain"] for r in record["summary"]["tasks"]]
  return float(np.mean([rows[-1][names[i]] - rows[i][names[i]] for i in range(len(rows) - 1)]))


def adaptation(record: dict[str, Any]) -> float:
  """Mean over tasks of the loss on each task's own domain right after it."""
  rows, names = _matrix(record), [r["domain"] for r in record["summary"]["tasks"]]
  return float(np.mean([rows[i][names[i]] for i in range(len(rows))]))


def final_average(record: dict[str, Any]) -> float:
  return float(np.mean(list(_matrix(record)[-1].values())))


def _window_terms(record: dict[str, Any], measure: str) -> list[np.ndarray]:
  """Per-window losses whose means, averaged, give `measure` (each term on one domain)."""
  names = [r["domain"] for r in record["summary"]["tasks"]]
  last = len(names) - 1

  def windows(task: int, domain: str) -> np.ndarray:
    return np.asarray(record["examples"][f"{task}/{domain}"])

  if measure == "forgetting":
    return [windows(last, names[i]) - windows(i, names[i]) for i in range(last)]
  if measure == "adaptation":
    return [windows(i, names[i]) for i in range(len(names))]
  if measure == "final average loss":
    return [windows(last, d) for d in dict.fromkeys(names)]
  raise ValueError(f"no per-window terms for measure {measure!r}")


def pair_eval_se(a: dict[str, Any], b: dict[str, Any], measure: str) -> float:
  """The eval's own standard error of `measure`(a) - `measure`(b), two streams evaluated on the
  same windows: each domain's term is a paired per-window difference; domains are independent."""
  terms = [stats.paired_example_se(x, y)
           for x, y in zip(_window_terms(a, measure), _window_terms(b, measure))]
  return float(np.sqrt(np.sum(np.square(terms))) / len(terms))


def _second_task_start(record: dict[str, Any], setup: Setup) -> list[float]:
  """Same-data stream: the loss at the second task's checkpoints in its first quarter, the
  weights it resumed from first."""
  return [p["losses"][DOMAINS[0]] for p in record["trajectory"]
          if p["task"] == 1 and p["stream_step"] <= setup.steps + setup.steps // 4]


def spike(record: dict[str, Any], setup: Setup) -> float:
  """The highest loss in the first quarter of the second task minus its starting loss (the
  weights it resumed from). Negative when the loss only falls."""
  start, *early = _second_task_start(record, setup)
  return float(max(early) - start)


def rise_over_deployed(record: dict[str, Any], setup: Setup) -> float:
  """The highest loss in the first quarter of the second task, its starting point included,
  minus the first task's deployable model's loss. For infinite this counts the anneal's gain,
  which the next task gives back by resuming from the pre-anneal weights."""
  first_model = record["summary"]["tasks"][0]["losses"][DOMAINS[0]]
  return float(max(_second_task_start(record, setup)) - first_model)


def run(ctx: Context) -> None:
  setup = Setup.of(ctx)

  # Tuning: each arm's peak learning rate on its first task alone (the stream's task 0 with the
  # arm's own schedule), by the deployable model's validation loss.
  def task0_maker(arm: str):
    def make(lr: float, seed: int) -> RunSpec:
      config = stream_config(setup, arm, lr, seed, domains=DOMAINS[:1])
      task0 = continual.plan(config, "/unused")[0].config
      task0.checkpoint.keep_every = 0  # only the end matters for tuning
      return RunSpec(f"tune_{_slug(arm)}_lr{lr:g}_s{seed}", task0,
                     meta=dict(arm=arm, lr=lr, seed=seed))
    return make

  tuned = ctx.tune({arm: (task0_maker(arm), setup.lrs) for arm in ARMS}, seeds=setup.tune_seeds)
  streams = {(arm, s): RunSpec(f"stream_{_slug(arm)}_s{s}",
                               stream_config(setup, arm, tuned[arm].best, s), kind="stream",
                               meta=dict(arm=arm, seed=s))
             for arm in ARMS for s in setup.seeds}
  same = {(arm, s): RunSpec(f"same_{_slug(arm)}_s{s}",
                            stream_config(setup, arm, tuned[arm].best, s,
                                          domains=(DOMAINS[0], DOMAINS[0])),
                            kind="stream", meta=dict(arm=arm, seed=s, same_data=True))
          for arm in ARMS for s in setup.seeds}
  records = ctx.run([*streams.values(), *same.values()], record_fn=record_stream)
  stream_records = {k: records[v.name] for k, v in streams.items()}
  same_records = {k: records[v.name] for k, v in same.items()}

  def per_arm(fn, source) -> dict[str, list[float]]:
    return {arm: [fn(source[arm, s]) for s in setup.seeds] for arm in ARMS}

  measures = {"forgetting": per_arm(forgetting, stream_records),
              "adaptation": per_arm(adaptation, stream_records),
              "final average loss": per_arm(final_average, stream_records),
              "same-data spike": per_arm(lambda r: spike(r, setup), same_records)}
  summary_rows = [[arm, *(mean_std(measures[m][arm]) for m in measures)] for arm in ARMS]
  diffs = {m: stats.paired(measures[m]["infinite"], measures[m]["repeated cosine"])
           for m in measures}
  pair_se = {m: np.mean([pair_eval_se(stream_records["infinite", s],
                                      stream_records["repeated cosine", s], m)
                         for s in setup.seeds]) for m in measures if m != "same-data spike"}
  diff_rows = [[m, str(d), f"{pair_se[m]:.4f}" if m in pair_se else "n/a (a maximum)",
                stats.verdict(d, MARGIN)] for m, d in diffs.items()]
  cosine_spike = stats.paired(measures["same-data spike"]["repeated cosine"],
                              [0.0] * len(setup.seeds))
  rise = per_arm(lambda r: rise_over_deployed(r, setup), same_records)
  matrix_rows = []
  for arm in ARMS:
    rows = [_matrix(stream_records[arm, s]) for s in setup.seeds]
    for i, domain in enumerate(DOMAINS):
      matrix_rows.append([arm, f"after task {i} ({domain})",
                          *(mean_std([r[i][d] for r in rows]) if d in rows[0][i] else ""
                            for d in DOMAINS)])
  forget_v, adapt_v = (stats.verdict(diffs["forgetting"], MARGIN),
                       stats.verdict(diffs["adaptation"], MARGIN))
  eval_se = np.mean([se for r in stream_records.values()
                     for se in r["summary"]["tasks"][-1]["losses_se"].values()])
  probe = stream_config(setup, "infinite", setup.lrs[0], 0)
  plot = _plot(ctx, setup, stream_records, same_records)
  infinite = tuned["infinite"]
  ctx.write_page({
      "steps": setup.steps,
      "params": f"{infinite.records[infinite.best][0]['summary']['num_params']:,}",
      "lrs": ", ".join(f"{v:g}" for v in setup.lrs),
      "margin": MARGIN, "domains": " -> ".join(DOMAINS), "eval_se": f"{eval_se:.4f}",
      "eval_windows": probe.eval.num_batches * probe.batch_size,
      "grid_table": markdown_table(["arm", "peak learning rate: mean validation loss of task 0 "
                                    "(choice in bold)"], [[a, tuned[a].row()] for a in ARMS]),
      "inside": "every choice lies strictly inside its grid" if all(
          t.inside for t in tuned.values()) else "NOT every choice lies inside its grid",
      "summary_table": markdown_table(["arm", *measures], summary_rows),
      "diff_table": markdown_table(["infinite - repeated cosine", "paired difference ± SE",
                                    "eval SE of one pair", "verdict"], diff_rows),
      "matrix_table": markdown_table(["arm", "model", *DOMAINS], matrix_rows),
      "cosine_spike": str(cosine_spike),
      "rise": "; ".join(f"{arm} {mean_std(rise[arm])}" for arm in ARMS),
      "rise_diff": str(stats.paired(rise["infinite"], rise["repeated cosine"])),
      "verdict_forgetting": f"{forget_v} (adaptation: {adapt_v})",
      "verdict_forgetting_claim": "supported" if forget_v == "beats" and adapt_v in (
          "matches", "beats") else "not supported",
      "verdict_rewarm": "supported" if cosine_spike.mean - 2 * cosine_spike.se > 0 else
      "not supported",
      "verdict_spike": stats.verdict(diffs["same-data spike"], MARGIN),
      "plot": plot.name,
  }, ctx.records())


def _plot(ctx: Context, setup: Setup, streams: dict, same: dict) -> Any:
  fig, (ax_stream, ax_same) = plt.subplots(1, 2, figsize=(12, 4.2))
  for arm, color in zip(ARMS, ("C3", "C0")):
    for s in setup.seeds:
      curves = streams[arm, s]["curve"]
      for i in range(len(DOMAINS)):
        c = curves[f"task_{i}"]
        ax_stream.plot(np.array(c["step"]) + i * setup.steps, c["eval_loss"], color=color,
                       alpha=0.6, label=arm if (s, i) == (setup.seeds[0], 0) else None)
      points = same[arm, s]["trajectory"]
      ax_same.plot([p["stream_step"] for p in points],
                   [p["losses"][DOMAINS[0]] for p in points], color=color, alpha=0.6,
                   label=arm if s == setup.seeds[0] else None)
  ax_stream.set(xlabel="updates since the start of the stream",
                ylabel="validation loss on the current task's domain",
                title=" -> ".join(DOMAINS))
  ax_same.set(xlabel="updates", ylabel=f"validation loss ({DOMAINS[0]})",
              title="the same data twice: re-warm vs infinite")
  for ax in (ax_stream, ax_same):
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
  return ctx.save_figure(fig, "streams")
