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
MARGIN = 0.003  # test accuracy: "matches" means within 0.3 points, stated before the runs
RUNS_PER_PROCESS = 6


@dataclasses.dataclass(frozen=True)
class Setup:
  """What one page trains; `--quick` shrinks it to a smoke test."""
  model: str
  data: str
  epochs: tuple[float, ...]
  arms: tuple[str, ...]
  lrs: tuple[float, ...]
  seeds: tuple[int, ...]

  @classmethod
  def of(cls, ctx: Context) -> "Setup":
    if ctx.quick:
      return cls("mlp", "digits", (0.3, 0.6), ("cosine", "uba phi=0.5"), (3e-3,), (0,))
    return cls("mlp", "fashion-mnist", EPOCHS, (*COMMON, *UBA), LRS,
               tuple(range(ctx.num_seeds(3))))

  @property
  def tune_seeds(self) -> tuple[int, ...]:
    return self.seeds[:2]

  def steps(self, epochs: float) -> int:
    return self.config("cosine", epochs, 1e-3, 0).total_steps

  def config(self, arm: str, epochs: float, lr: float, seed: int) -> Any:
    schedule, _, phi = arm.partition(" phi=")
    return uba_config.get_config(
        f"model={self.model},data={self.data},schedule={schedule},phi={phi or 2},"
        f"epochs={epochs},lr={lr},seed={seed}")

  def spec(self, arm: str, epochs: float, lr: float, seed: int) -> RunSpec:
    config = self.config(arm, epochs, lr, seed)
    slug = arm.replace(" phi=", "_phi")
    return RunSpec(f"{self.model}_T{config.total_steps}_{slug}_lr{lr:g}_s{seed}", config,
                   meta=dict(arm=arm, steps=config.total_steps, lr=lr, seed=seed))


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

  @property
  def se(self) -> float:  # both noises, in quadrature (conservative: seeds share the images)
    return math.sqrt(self.diff.se ** 2 + self.eval_se ** 2)

  @property
  def verdict(self) -> str:
    return stats.verdict(types.SimpleNamespace(mean=self.diff.mean, se=self.se), MARGIN,
                         lower_is_better=False)


def compare(a: str, b: str, ra: list[dict[str, Any]], rb: list[dict[str, Any]]) -> Comparison:
  diff = stats.paired([_test(r) for r in ra], [_test(r) for r in rb])
  eval_se = stats.paired_example_se(_correct(ra).mean(0), _correct(rb).mean(0))
  return Comparison(a, b, diff, eval_se)


# -- the page ---------------------------------------------------------------------------------

def phi2_check(setup: Setup, lrs: list[float]) -> str:
  """UBA at phi = 2 against `warmup_cosine`, at every step of every budget and chosen rate."""
  differ = total = 0
  for epochs in setup.epochs:
    T = setup.steps(epochs)
    grid = jnp.arange(T + 1)
    for lr in sorted(set(lrs)):
      cosine = np.asarray(jax.vmap(schedules.build_schedule("warmup_cosine", lr, T))(grid))
      uba = np.asarray(jax.vmap(schedules.build_schedule("uba", lr, T, phi=2.0))(grid))
      differ += int((cosine != uba).sum())
      total += T + 1
  return (f"the two float32 schedules differ at {differ} of {total} steps (every step of every "
          f"budget, at each of the {len(set(lrs))} rates chosen or tried)")


def _plot(ctx: Context, setup: Setup, cells: dict, budgets: list[int], picks: dict) -> str:
  fig, (ax_s, ax_a, ax_d) = plt.subplots(1, 3, figsize=(16, 4.4))
  T = 1000
  grid = np.arange(T + 1)
  colors = {arm: plt.cm.tab10(i % 10) for i, arm in enumerate(setup.arms)}
  for arm in setup.arms:
    config = setup.config(arm, 1, 1.0, 0)
    kwargs = {k: v for k, v in config.schedule.to_dict().items() if k != "name"}
    if "decay_steps" in kwargs:
      kwargs["decay_steps"] = int(0.2 * T)
    lr = jax.vmap(schedules.build_schedule(config.schedule.name, 1.0, T, **kwargs))(grid)
    ax_s.plot(grid / T, np.asarray(lr), color=colors[arm], lw=1.3,
              ls="-" if arm.startswith("uba") else "--", label=arm)
  ax_s.set(xlabel="t / T", ylabel="learning rate / peak", title="the schedules (phi = 2: cosine)")
  for arm in setup.arms:
    acc = np.array([[_test(r) for r in cells[b, arm]] for b in budgets])
    ax_a.errorbar(budgets, acc.mean(1), yerr=acc.std(1, ddof=1) if acc.shape[1] > 1 else None,
                  color=colors[arm], capsize=2, marker="o" if arm.startswith("uba") else "s",
                  ms=4, lw=1.2, ls="-" if arm.startswith("uba") else "--", label=arm)
  ax_a.set(xscale="log", xlabel="budget T (steps of 128 images)", ylabel="test accuracy",
           title=f"tuned per budget, mean ± std over {len(setup.seeds)} seed(s)")
  ax_a.set_xticks(budgets, [str(b) for b in budgets])
  ax_a.minorticks_off()
  d = [picks[b].diff.mean for b in budgets]
  ax_d.errorbar(budgets, d, yerr=[2 * picks[b].se for b in budgets], fmt="o", color="C3",
                capsize=3, label="best UBA - best common (± 2 SE, seeds and test set)")
  ax_d.axhspan(-MARGIN, MARGIN, color="0.85", label=f"margin ± {MARGIN}")
  ax_d.axhline(0, color="0.3", lw=0.8)
  ax_d.set(xscale="log", xlabel="budget T (steps)", ylabel="test accuracy difference",
           title="the verdict's difference")
  ax_d.set_xticks(budgets, [str(b) for b in budgets])
  ax_d.minorticks_off()
  for ax in (ax_s, ax_a, ax_d):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  return ctx.save_figure(fig, "budgets", dpi=110).name


def _grid_cell(tuning) -> str:
  cells = [f"**{v:g}: {-tuning.means[v]:.4f}**" if v == tuning.best else
           f"{v:g}: {-tuning.means[v]:.4f}" for v in tuning.grid]
  return " · ".join(cells) + ("" if tuning.inside else " (edge: not inside the grid)")


def run(ctx: Context) -> None:
  setup = Setup.of(ctx)
  budgets = [setup.steps(e) for e in setup.epochs]
  by_steps = dict(zip(budgets, setup.epochs))

  def maker(arm: str, epochs: float):
    return lambda lr, seed: setup.spec(arm, epochs, lr, seed)

  tuned = ctx.tune({(T, arm): (maker(arm, by_steps[T]), setup.lrs)
                    for T in budgets for arm in setup.arms},
                   seeds=setup.tune_seeds, score=lambda r: -_val(r), record_fn=record,
                   runs_per_process=RUNS_PER_PROCESS)
  finals = {key: [maker(key[1], by_steps[key[0]])(tuned[key].best, s) for s in setup.seeds]
            for key in tuned}
  records = ctx.run([s for specs in finals.values() for s in specs], record,
                    RUNS_PER_PROCESS)
  cells = {key: [records[s.name] for s in specs] for key, specs in finals.items()}

  common = [a for a in setup.arms if a in COMMON]
  ubas = [a for a in setup.arms if a in UBA]
  val = {key: float(np.mean([_val(r) for r in rs])) for key, rs in cells.items()}
  picks, cosine_rows, arm_rows = {}, [], []
  for T in budgets:
    best_common = max(common, key=lambda a, T=T: val[T, a])
    best_uba = max(ubas, key=lambda a, T=T: val[T, a])
    picks[T] = compare(best_uba, best_common, cells[T, best_uba], cells[T, best_common])
    if "cosine" in common and best_common != "cosine":
      cosine_rows.append((T, compare(best_uba, "cosine", cells[T, best_uba], cells[T, "cosine"])))
    for arm in setup.arms:
      rs = cells[T, arm]
      tests = [_test(r) for r in rs]
      mark = " (best common)" if arm == best_common else " (best UBA)" if arm == best_uba else ""
      arm_rows.append([f"{T} ({by_steps[T]:g} ep.)", arm + mark, f"{tuned[T, arm].best:g}",
                       f"{val[T, arm]:.4f}", mean_std(tests),
                       f"{np.mean([binomial_se(p, rs[0]['test_examples']) for p in tests]):.4f}"])

  def comparison_row(T: int, c: Comparison) -> list[str]:
    return [f"{T} ({by_steps[T]:g} ep.)", f"{c.a} - {c.b}", str(c.diff), f"{c.eval_se:.4f}",
            f"{c.se:.4f}", f"**{c.verdict}**"]

  comparison_header = ["budget T (epochs)", "A - B (test accuracy)",
                       "paired difference ± SE (seeds)", "test-set SE of the difference",
                       "combined SE", "verdict"]
  verdicts = [picks[T].verdict for T in budgets]
  counts = ", ".join(f"{word} at {verdicts.count(word)}" for word in
                     ("beats", "matches", "trails", "inconclusive") if word in verdicts)
  claim = (f"{'supported' if verdicts.count('beats') == len(budgets) else 'not supported'}"
           f" (it needs *beats* at every budget; UBA {counts} of {len(budgets)})")
  all_records = ctx.records()
  first = next(iter(cells.values()))[0]
  ctx.write_page({
      "model": setup.model.upper(), "data": setup.data,
      "params": f"{first['summary']['num_params']:,}",
      "budgets": ", ".join(f"{T} ({by_steps[T]:g} epochs)" for T in budgets),
      "lrs": ", ".join(f"{v:g}" for v in setup.lrs), "margin": MARGIN,
      "seeds": len(setup.seeds), "tune_seeds": len(setup.tune_seeds),
      "test_examples": f"{first['test_examples']:,}",
      "binomial_se": f"{binomial_se(0.89, first['test_examples']):.4f}",
      "inside": "every choice lies strictly inside its grid" if all(
          t.inside for t in tuned.values()) else "NOT every choice lies inside its grid: "
      + ", ".join(f"{a} at T={T}" for (T, a), t in tuned.items() if not t.inside),
      "grid_table": markdown_table(
          ["budget T", "schedule", "peak learning rate: mean validation accuracy "
           f"({len(setup.tune_seeds)} seeds; choice in bold)"],
          [[str(T), arm, _grid_cell(tuned[T, arm])] for T in budgets for arm in setup.arms]),
      "arm_table": markdown_table(
          ["budget T", "schedule", "lr", f"validation acc. (mean of {len(setup.seeds)})",
           "test accuracy (mean ± std)", "binomial SE of one run"], arm_rows),
      "main_table": markdown_table(comparison_header,
                                   [comparison_row(T, picks[T]) for T in budgets]),
      "cosine_table": markdown_table(comparison_header,
                                     [comparison_row(T, c) for T, c in cosine_rows])
      if cosine_rows else "(cosine was the best common schedule at every budget: the main "
      "table is this comparison.)",
      "best_phi": ", ".join(f"T={T}: {max(ubas, key=lambda a, T=T: val[T, a])[8:]}"
                            for T in budgets),
      "verdict_claim": claim,
      "verdicts": ", ".join(f"T={T}: {v}" for T, v in zip(budgets, verdicts)),
      "phi2": phi2_check(setup, [t.best for t in tuned.values()] + list(setup.lrs)),
      "plot": _plot(ctx, setup, cells, budgets, picks),
      "hours": f"{sum(r['train_minutes'] for r in all_records.values()) / 60:.2f}",
  }, all_records)
