"""`python -m launch.reproduce wsd --quick` runs all three parts and writes its report and plots."""

from __future__ import annotations


def test_wsd_quick_writes_report_and_plots(run_module, tmp_path):
  result = run_module("launch.reproduce", "wsd", "--quick", "--out", str(tmp_path))
  assert result.returncode == 0, result.stderr[-3000:]
  report = (tmp_path / "wsd.md").read_text()
  for row in ("| cosine to 10% |", "| WSD 10% 1-sqrt |", "| total |", "fewer steps",
              "### Verdicts", "Scale gap"):
    assert row in report, row
  for plot in ("fixed_budget", "branching", "power"):
    assert (tmp_path / f"wsd_{plot}.png").stat().st_size > 1000, plot
