"""UBA against the common schedules under fixed iteration budgets (Tang et al., arXiv 2505.24452).

Fashion-MNIST with the MLP at budgets of 1, 3 and 10 epochs: every schedule's peak learning
rate is tuned per budget on the validation split (10,000 held-out training images) on a grid 2x
apart, then the best UBA (phi chosen on validation, phi != 2) meets the best common schedule
(chosen the same way) on the test split, paired over seeds. Protocol, verdict rule and scale
gap: templates/uba.md. `--quick` swaps in scikit-learn's digits, tiny budgets, one rate, one
seed.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import pathlib
import types
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from experiments import uba as uba_config
from reproductions import Context, RunSpec, default_record, markdown_table, mean_std, stats
from trainlab.algorithms import schedules
from trainlab.training.checkpoint import Checkpoints
from trainlab.training.run import build_run
from trainlab.training.trainer import Trainer

COMMON = ("constant", "step_decay", "linear", "cosine", "onecycle", "wsd")
PHIS = (0.5, 1.0, 5.0)  # phi = 2 is cosine bit for bit (checked on the page): `cosine` stands in
UBA = tuple(f"uba phi={phi:g}" for phi in PHIS)
LRS = (1e-3, 2e-3, 4e-3)  # 2x apart; extended by 2x steps until the choice is inside
EPOCHS = (1, 3, 10)
CNN_LRS = (8e-3, 1.6e-2, 3.2e-2)  # the CNN's optimum lies ~4x higher (the previous page)
CNN_EPOCHS = (0.5,)
MARGIN = 0.003  # test accuracy: "matches" means within 0.3 points, stated before the runs
RUNS_PER_PROCESS = 6


@dataclasses.dataclass(frozen=True)
class Study:
  """One model's part of the page: its budgets, schedules, starting grid and seeds."""
  model: str  # "mlp" or "cnn"
  data: str
  epochs: tuple[float, ...]
  arms: tuple[str, ...]
  lrs: tuple[float, ...]
  seeds: tuple[int, ...]
  width: int = 16  # the CNN's channels are (width, 2 width)

  @property
  def label(self) -> str:
    return self.model.upper() if self.model == "mlp" else f"CNN ({self.width}, {2 * self.width})"

  @property
  def tune_seeds(self) -> tuple[int, ...]:
    return self.seeds[:2]

  def steps(self, epochs: float) -> int:
    return self.config("cosine", epochs, 1e-3, 0).total_steps

  def config(self, arm: str, epochs: float, lr: float, seed: int) -> Any:
    schedule, _, phi = arm.partition(" phi=")
    return uba_config.get_config(
        f"model={self.model},data={self.data},schedule={schedule},phi={phi or 2},"
        f"epochs={epochs},lr={lr},seed={seed},width={self.width}")

  def spec(self, arm: str, epochs: float, lr: float, seed: int) -> RunSpec:
    config = self.config(arm, epochs, lr, seed)
    slug = arm.replace(" phi=", "_phi")
    prefix = self.model if self.model == "mlp" else f"cnn{self.width}"
    return RunSpec(f"{prefix}_T{config.total_steps}_{slug}_lr{lr:g}_s{seed}", config,
                   meta=dict(model=self.label, arm=arm, steps=config.total_steps, lr=lr,
                             seed=seed))


def studies(ctx: Context) -> list[Study]:
  """The MLP at 1, 3 and 10 epochs. The half-width CNN (a step ~9x the MLP's here) at half an
  epoch, `cnn_study`, did not fit this page's time: it is not on the page."""
  if ctx.quick:
    return [Study("mlp", "digits", (0.3, 0.6), ("cosine", "uba phi=0.5"), (3e-3,), (0,))]
  return [Study("mlp", "fashion-mnist", EPOCHS, (*COMMON, *UBA), LRS,
                tuple(range(ctx.num_seeds(3))))]


def cnn_study(ctx: Context) -> Study:
  """The same protocol for the CNN at half width (channels 8, 16) and half an epoch."""
  return Study("cnn", "fashion-mnist", CNN_EPOCHS, (*COMMON, *UBA), CNN_LRS,
               tuple(range(ctx.num_seeds(3))), width=8)


# -- records: the run's numbers and which test images its final parameters got right ------------

_PREDICTORS: dict[str, tuple[Any, list, Any]] = {}


def _predictor(config: Any) -> tuple[Any, list, Any]:
  """(abstract params, test batches, jitted argmax) for `config`'s model and data, built once."""
  key = json.dumps([config.model.to_dict(), config.data.to_dict(), config.batch_size],
                   sort_keys=True, default=str)
  if key not in _PREDICTORS:
    trainer = Trainer(build_run(config))
    model, support = trainer.run.model, trainer.run.support
    predict = jax.jit(lambda params, x: jnp.argmax(
        model.apply({"params": support.compute_params(params)}, x), -1))
    _PREDICTORS[key] = (trainer.abstract_state.params, trainer.run.dataset.test_batches(),
                        predict)
  return _PREDICTORS[key]


def test_correct(config: Any, run_dir: pathlib.Path) -> np.ndarray:
  """Whether the run's final parameters classify each test image right (in test-set order)."""
  abstract, batches, predict = _predictor(config)
  checkpoints = Checkpoints(run_dir, read_only=True)
  try:
    params = checkpoints.restore_params(checkpoints.steps()[-1], abstract)
  finally:
    checkpoints.close()
  right = [np.asarray(predict(params, b["inputs"])) == b["targets"] for b in batches]
  keep = np.concatenate([b["weights"] for b in batches]) > 0
  return np.concatenate(right)[keep]


def pack(correct: np.ndarray) -> str:
  return base64.b64encode(np.packbits(correct.astype(bool))).decode()


def unpack(text: str, n: int) -> np.ndarray:
  return np.unpackbits(np.frombuffer(base64.b64decode(text), np.uint8))[:n].astype(np.float64)


def record(spec: RunSpec, run_dir: pathlib.Path) -> dict[str, Any]:
  """The default record without per-example losses (20,000 numbers a run), with the test
  images' right/wrong bits instead: the paired eval SE of an accuracy difference."""
  result = default_record(spec, run_dir)
  result.pop("examples", None)
  correct = test_correct(spec.config, run_dir)
  accuracy = result["summary"]["final_test_accuracy"]
  if abs(correct.mean() - accuracy) > 1e-6:
    raise RuntimeError(f"{spec.name}: test accuracy {accuracy} but {correct.mean()} recomputed")
  result["test_correct"], result["test_examples"] = pack(correct), len(correct)
  return result


# -- statistics -------------------------------------------------------------------------------

def _val(r: dict[str, Any]) -> float:
  return r["summary"]["final_eval_accuracy"]


def _test(r: dict[str, Any]) -> float:
  return r["summary"]["final_test_accuracy"]


def _correct(rs: list[dict[str, Any]]) -> np.ndarray:
  return np.stack([unpack(r["test_correct"], r["test_examples"]) for r in rs])


def binomial_se(p: float, n: int) -> float:
  return math.sqrt(p * (1 - p) / n)


@dataclasses.dataclass(frozen=True)
class Comparison:
  """Test accuracy of arm A minus arm B over the same seeds and the same test images."""
  a: str
  b: str
  diff: stats.Paired  # per-seed differences and their SE (training noise)
  eval_se: float  # the test set's own SE of the seed-mean difference (per-image differences)
  n_examples: int

  @property
  def se(self) -> float:  # both noises, in quadrature (conservative: seeds share the images)
    return math.sqrt(self.diff.se ** 2 + self.eval_se ** 2)

  @property
  def verdict(self) -> str:
    return stats.verdict(types.SimpleNamespace(mean=self.diff.mean, se=self.se), MARGIN,
                         lower_is_better=False)


def compare(a: str, b: str, ra: list[dict[str, Any]], rb: list[dict[str, Any]]) -> Comparison:
  diff = stats.paired([_test(r) for r in ra], [_test(r) for r in rb])
  a_correct, b_correct = _correct(ra).mean(0), _correct(rb).mean(0)
  return Comparison(a, b, diff, stats.paired_example_se(a_correct, b_correct), len(a_correct))


# -- the page ---------------------------------------------------------------------------------

def phi2_check(parts: list[Study], lrs: list[float]) -> str:
  """UBA at phi = 2 against `warmup_cosine`, at every step of every budget and rate."""
  differ = total = 0
  budgets = sorted({study.steps(e) for study in parts for e in study.epochs})
  for T in budgets:
    grid = jnp.arange(T + 1)
    for lr in sorted(set(lrs)):
      cosine = np.asarray(jax.vmap(schedules.build_schedule("warmup_cosine", lr, T))(grid))
      uba = np.asarray(jax.vmap(schedules.build_schedule("uba", lr, T, phi=2.0))(grid))
      differ += int((cosine != uba).sum())
      total += T + 1
  return (f"the two float32 schedules differ at {differ} of {total} steps: every step of the "
          f"budgets {', '.join(map(str, budgets))} at each of the {len(set(lrs))} rates tried")


@dataclasses.dataclass
class Results:
  """One study's tuned cells and comparisons, budget by budget."""
  study: Study
  budgets: list[int]
  tuned: dict[tuple[int, str], Any]
  cells: dict[tuple[int, str], list[dict[str, Any]]]
  picks: dict[int, Comparison]  # best UBA - best common
  versus_cosine: dict[int, Comparison]  # best UBA - cosine, where cosine was not the best

  def val(self, T: int, arm: str) -> float:
    return float(np.mean([_val(r) for r in self.cells[T, arm]]))

  def best(self, T: int, arms: tuple[str, ...]) -> str:
    return max((a for a in self.study.arms if a in arms), key=lambda a: self.val(T, a))

  def budget(self, T: int) -> str:
    epochs = dict(zip(self.budgets, self.study.epochs))[T]
    return f"{self.study.label}, T={T} ({epochs:g} ep.)"


def train_study(ctx: Context, study: Study) -> Results:
  """Tunes every (budget, schedule) on validation, then trains the reported seeds."""
  budgets = [study.steps(e) for e in study.epochs]
  by_steps = dict(zip(budgets, study.epochs))

  def maker(arm: str, epochs: float):
    return lambda lr, seed: study.spec(arm, epochs, lr, seed)

  tuned = ctx.tune({(T, arm): (maker(arm, by_steps[T]), study.lrs)
                    for T in budgets for arm in study.arms},
                   seeds=study.tune_seeds, score=lambda r: -_val(r), record_fn=record,
                   runs_per_process=RUNS_PER_PROCESS)
  finals = {key: [maker(key[1], by_steps[key[0]])(tuned[key].best, s) for s in study.seeds]
            for key in tuned}
  records = ctx.run([s for specs in finals.values() for s in specs], record, RUNS_PER_PROCESS)
  cells = {key: [records[s.name] for s in specs] for key, specs in finals.items()}
  results = Results(study, budgets, tuned, cells, {}, {})
  for T in budgets:
    best_common, best_uba = results.best(T, COMMON), results.best(T, UBA)
    results.picks[T] = compare(best_uba, best_common, cells[T, best_uba], cells[T, best_common])
    if "cosine" in study.arms and best_common != "cosine":
      results.versus_cosine[T] = compare(best_uba, "cosine", cells[T, best_uba],
                                         cells[T, "cosine"])
  return results


def _plot(ctx: Context, parts: list[Results]) -> str:
  fig, (ax_s, ax_a, ax_d) = plt.subplots(1, 3, figsize=(16, 4.6))
  arms = parts[0].study.arms
  colors = {arm: plt.cm.tab10(i % 10) for i, arm in enumerate(arms)}
  style = lambda arm: dict(color=colors[arm], ls="-" if arm.startswith("uba") else "--")
  T = 1000
  grid = np.arange(T + 1)
  for arm in arms:
    config = parts[0].study.config(arm, 1, 1.0, 0)
    kwargs = {k: v for k, v in config.schedule.to_dict().items() if k != "name"}
    if "decay_steps" in kwargs:
      kwargs["decay_steps"] = int(0.2 * T)
    lr = jax.vmap(schedules.build_schedule(config.schedule.name, 1.0, T, **kwargs))(grid)
    ax_s.plot(grid / T, np.asarray(lr), lw=1.3, label=arm, **style(arm))
  ax_s.set(xlabel="t / T", ylabel="learning rate / peak", title="the schedules (phi = 2: cosine)")
  first = parts[0]
  for arm in arms:
    acc = np.array([[_test(r) for r in first.cells[b, arm]] for b in first.budgets])
    ax_a.errorbar(first.budgets, acc.mean(1), capsize=2, ms=4, lw=1.2, label=arm,
                  yerr=acc.std(1, ddof=1) if acc.shape[1] > 1 else None,
                  marker="o" if arm.startswith("uba") else "s", **style(arm))
  ax_a.set(xscale="log", xlabel="budget T (steps of 128 images)", ylabel="test accuracy",
           title=f"{first.study.label}: each tuned per budget (mean ± std over seeds)")
  ax_a.set_xticks(first.budgets, [str(b) for b in first.budgets])
  ax_a.minorticks_off()
  points = [(res.budget(T), res.picks[T]) for res in parts for T in res.budgets]
  x = np.arange(len(points))
  ax_d.errorbar(x, [c.diff.mean for _, c in points], yerr=[2 * c.se for _, c in points],
                fmt="o", color="C3", capsize=3, label="best UBA - best common (± 2 SE)")
  ax_d.axhspan(-MARGIN, MARGIN, color="0.85", label=f"margin ± {MARGIN}")
  ax_d.axhline(0, color="0.3", lw=0.8)
  ax_d.set_xticks(x, [label.replace(", ", "\n", 1) for label, _ in points], fontsize=7)
  ax_d.set(ylabel="test accuracy difference", title="the verdict's difference (SE: seeds and "
           "test set)")
  for ax in (ax_s, ax_a, ax_d):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  return ctx.save_figure(fig, "budgets", dpi=110).name


def _grid_cell(tuning) -> str:
  cells = [f"**{v:g}: {-tuning.means[v]:.4f}**" if v == tuning.best else
           f"{v:g}: {-tuning.means[v]:.4f}" for v in tuning.grid]
  return " · ".join(cells) + ("" if tuning.inside else " (edge: not inside the grid)")


COMPARISON_HEADER = ["budget", "A - B (test accuracy)", "paired difference ± SE (seeds)",
                     "test-set SE of the difference", "combined SE", "d ± 2 SE", "verdict"]


def _comparison_row(where: str, c: Comparison) -> list[str]:
  d = c.diff.mean
  return [where, f"{c.a} - {c.b}", str(c.diff), f"{c.eval_se:.4f}", f"{c.se:.4f}",
          f"[{d - 2 * c.se:+.4f}, {d + 2 * c.se:+.4f}]", f"**{c.verdict}**"]


def _eval_note(picks: list[Comparison]) -> str:
  """Whether the test set's own SE lies below the differences the verdict reads."""
  below = sum(c.eval_se < abs(c.diff.mean) for c in picks)
  return (f"The test set's own SE of the verdict's difference is "
          f"{min(c.eval_se for c in picks):.4f}-{max(c.eval_se for c in picks):.4f} (per-image "
          f"right/wrong differences on the same {picks[0].n_examples:,} images, well below one "
          f"run's binomial SE) and lies below |d| at {below} of {len(picks)} budgets: "
          + ("the eval resolves the differences read." if below == len(picks) else
             "the differences between the schedules are the size of the test set's own noise, "
             "so the verdict counts it (combined SE).")
          + f" Every interval d ± 2 SE lies within "
          f"[{min(c.diff.mean - 2 * c.se for c in picks):+.4f}, "
          f"{max(c.diff.mean + 2 * c.se for c in picks):+.4f}].")


def _arm_rows(res: Results) -> list[list[str]]:
  rows = []
  for T in res.budgets:
    best_common, best_uba = res.best(T, COMMON), res.best(T, UBA)
    for arm in res.study.arms:
      rs = res.cells[T, arm]
      tests = [_test(r) for r in rs]
      mark = " (best common)" if arm == best_common else " (best UBA)" if arm == best_uba else ""
      eval_se = np.mean([binomial_se(p, rs[0]["test_examples"]) for p in tests])
      rows.append([res.budget(T), arm + mark, f"{res.tuned[T, arm].best:g}",
                   f"{res.val(T, arm):.4f}", mean_std(tests), f"{eval_se:.4f}"])
  return rows


def run(ctx: Context) -> None:
  parts = [train_study(ctx, study) for study in studies(ctx)]
  mlp = parts[0]
  verdicts = {(res.study.label, T): res.picks[T].verdict for res in parts for T in res.budgets}
  mlp_verdicts = [mlp.picks[T].verdict for T in mlp.budgets]
  counts = ", ".join(f"{word} at {mlp_verdicts.count(word)}" for word in
                     ("beats", "matches", "trails", "inconclusive") if word in mlp_verdicts)
  claim = (f"{'supported' if mlp_verdicts.count('beats') == len(mlp.budgets) else 'not supported'}"
           f" on the MLP (it needs *beats* at every budget; UBA {counts} of {len(mlp.budgets)})")
  cosine_rows = [_comparison_row(res.budget(T), c) for res in parts
                 for T, c in res.versus_cosine.items()]
  all_records = ctx.records()
  first = mlp.cells[mlp.budgets[0], mlp.study.arms[0]][0]
  ctx.write_page({
      "data": mlp.study.data, "params": f"{first['summary']['num_params']:,}",
      "budgets": ", ".join(f"{T} ({e:g} epochs)" for T, e in zip(mlp.budgets, mlp.study.epochs)),
      "lrs": ", ".join(f"{v:g}" for v in mlp.study.lrs),
      "margin": MARGIN, "seeds": len(mlp.study.seeds), "tune_seeds": len(mlp.study.tune_seeds),
      "test_examples": f"{first['test_examples']:,}",
      "binomial_se": f"{binomial_se(0.89, first['test_examples']):.4f}",
      "inside": "every choice lies strictly inside its grid" if all(
          t.inside for res in parts for t in res.tuned.values())
      else "NOT every choice lies inside its grid: " + ", ".join(
          f"{a} at {res.budget(T)}" for res in parts for (T, a), t in res.tuned.items()
          if not t.inside),
      "grid_table": markdown_table(
          ["budget", "schedule", "peak learning rate: mean validation accuracy "
           f"({len(mlp.study.tune_seeds)} seeds; choice in bold)"],
          [[res.budget(T), arm, _grid_cell(res.tuned[T, arm])] for res in parts
           for T in res.budgets for arm in res.study.arms]),
      "arm_table": markdown_table(
          ["budget", "schedule", "lr", f"validation acc. (mean of {len(mlp.study.seeds)})",
           "test accuracy (mean ± std)", "binomial SE of one run"],
          [row for res in parts for row in _arm_rows(res)]),
      "main_table": markdown_table(COMPARISON_HEADER, [
          _comparison_row(res.budget(T), res.picks[T]) for res in parts for T in res.budgets]),
      "cosine_table": markdown_table(COMPARISON_HEADER, cosine_rows) if cosine_rows
      else "(cosine was the best common schedule everywhere: the main table is this comparison.)",
      "best_phi": ", ".join(f"{res.budget(T)}: {res.best(T, UBA)[8:]}" for res in parts
                            for T in res.budgets),
      "verdict_claim": claim,
      "eval_note": _eval_note([res.picks[T] for res in parts for T in res.budgets]),
      "verdicts": ", ".join(f"{res.budget(T)}: {verdicts[res.study.label, T]}" for res in parts
                            for T in res.budgets),
      "phi2": phi2_check([res.study for res in parts],
                         [t.best for res in parts for t in res.tuned.values()]
                         + [v for res in parts for v in res.study.lrs]),
      "plot": _plot(ctx, parts),
  }, all_records)
