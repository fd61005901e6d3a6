"""The reproduction harness runs a named reproduction end to end and rejects unknown names."""

from __future__ import annotations


def test_baselines_quick_writes_report_and_plot(run_module, tmp_path):
  result = run_module("launch.reproduce", "baselines", "--quick", "--out", str(tmp_path))
  assert result.returncode == 0, result.stderr[-2000:]
  report = (tmp_path / "baselines.md").read_text()
  assert "| adamw |" in report and "Verdict" in report
  assert (tmp_path / "baselines_eval_loss.png").stat().st_size > 1000


def test_unknown_reproduction_is_a_usage_error(run_module):
  result = run_module("launch.reproduce", "nope")
  assert result.returncode == 2 and "baselines" in result.stderr
