"""Every reproduction's `--quick` smoke version runs end to end and writes its page and plots."""

from __future__ import annotations

import importlib
import re

import ml_collections
import numpy as np
import pytest

import reproductions

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", reproductions.available())
def test_quick_reproduction_writes_its_page_and_plots(name, run_module, tmp_path):
  result = run_module("launch.reproduce", name, "--quick", "--out", str(tmp_path))
  assert result.returncode == 0, result.stderr[-3000:]
  report = (tmp_path / f"{name}.md").read_text()
  assert "Verdict" in report and "QUICK" in report
  plots = re.findall(r"\]\(\./([^)]+\.png)\)", report)
  assert plots, "the page links no plot"
  for plot in plots:
    assert (tmp_path / plot).read_bytes()[:8] == PNG, plot


def test_unknown_reproduction_is_a_usage_error(run_module):
  result = run_module("launch.reproduce", "nope")
  assert result.returncode == 2 and "wsd" in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1


def test_plan_lists_the_first_runs_without_training_or_writing(run_module, tmp_path):
  result = run_module("launch.reproduce", "eco", "--plan", "--out", str(tmp_path))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "[eco] 0 of 9 runs of this phase have records; to train (9 runs," in result.stderr
  assert "master_lr0.002_s0" in result.stderr
  assert list(tmp_path.iterdir()) == []  # no records, no page


# Complete pages (knapsack_rl left out: its offline study costs 25 s).
COMPLETE = ("wsd", "infinite_lr", "uba", "sophia", "eco")


@pytest.mark.parametrize("name", COMPLETE)
def test_committed_records_regenerate_the_page_without_training(name, capsys):
  ctx = reproductions.Context(name=name, out_dir=reproductions.REPO / "docs" / "results",
                              quick=False, seeds=None, command="", plan_only=True)
  importlib.import_module(f"reproductions.{name}").run(ctx)  # a missing record exits
  assert "every run has a record" in capsys.readouterr().err


def test_a_record_made_in_another_checkout_matches_its_branch_run():
  config = {"lr": 0.1, "checkpoint": {"branch_from": "", "branch_step": 40}}
  here = {**config, "checkpoint": {"branch_from": str(
      reproductions.REPO / "runs" / "reproduce-wsd" / "stable_s0"), "branch_step": 40}}
  there = {**config, "checkpoint": {"branch_from": "/elsewhere/runs/reproduce-wsd/stable_s0",
                                    "branch_step": 40}}
  other_run = {**config, "checkpoint": {"branch_from": "/elsewhere/runs/reproduce-wsd/stable_s1",
                                        "branch_step": 40}}
  assert reproductions.config_sha(here) == reproductions.config_sha(there)
  assert reproductions.config_sha(here) != reproductions.config_sha(other_run)
  assert reproductions.config_sha(config) != reproductions.config_sha(here)


def test_a_stream_spec_counts_the_updates_of_all_its_tasks():
  from reproductions import infinite_lr
  setup = infinite_lr.Setup(steps=40, seeds=(0,), tune_seeds=(0,), lrs=(4e-3,),
                            size="study-quick", anneal=0.25, points=4)
  config = infinite_lr.stream_config(setup, "infinite", 4e-3, 0)
  assert reproductions.RunSpec("stream", config, kind="stream").steps == 3 * 40
  assert reproductions.RunSpec("run", ml_collections.ConfigDict({"total_steps": 7})).steps == 7


def _stream_record(rng, windows: int, noise: float) -> dict:
  """A 3-task loss matrix with per-window losses: a fixed level per cell plus window noise."""
  domains = ("a", "b", "c")
  examples = {f"{t}/{d}": 1.0 + 0.1 * t + 0.3 * i + noise * rng.standard_normal(windows)
              for t in range(3) for i, d in enumerate(domains[:t + 1])}
  tasks = [{"task": t, "domain": d, "losses": {e: float(np.mean(examples[f"{t}/{e}"]))
                                               for e in domains[:t + 1]}}
           for t, d in enumerate(domains)]
  return {"summary": {"tasks": tasks}, "examples": examples}


def test_the_pair_eval_se_of_stream_measures_matches_its_closed_form():
  from reproductions import infinite_lr
  rng = np.random.default_rng(0)
  windows, noise = 20_000, 0.5
  a, b = _stream_record(rng, windows, noise), _stream_record(rng, windows, noise)
  for measure, fn in (("forgetting", infinite_lr.forgetting),
                      ("adaptation", infinite_lr.adaptation),
                      ("final average loss", infinite_lr.final_average)):
    terms = infinite_lr._window_terms(a, measure)
    assert np.mean([t.mean() for t in terms]) == pytest.approx(fn(a), abs=1e-9)
  # Independent window noise of std s: forgetting's two terms each difference 4 vectors, so the
  # pair's SE is sqrt(2 * 4 s^2 / n) / 2; adaptation's 3 terms 2 vectors: sqrt(3 * 2 s^2 / n) / 3.
  assert infinite_lr.pair_eval_se(a, b, "forgetting") == pytest.approx(
      np.sqrt(2 * 4 * noise**2 / windows) / 2, rel=0.03)
  assert infinite_lr.pair_eval_se(a, b, "adaptation") == pytest.approx(
      np.sqrt(3 * 2 * noise**2 / windows) / 3, rel=0.03)
  shifted = {**a, "examples": {k: v + 0.2 for k, v in a["examples"].items()}}
  assert infinite_lr.pair_eval_se(a, shifted, "final average loss") == pytest.approx(0, abs=1e-9)
