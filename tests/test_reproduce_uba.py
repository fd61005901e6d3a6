"""`launch.reproduce uba --quick` runs end to end on digits and writes its table and plot."""

from __future__ import annotations


def test_uba_quick_writes_report_table_and_plot(run_module, tmp_path):
  result = run_module("launch.reproduce", "uba", "--quick", "--out", str(tmp_path))
  assert result.returncode == 0, result.stderr[-2000:]
  report = (tmp_path / "uba.md").read_text()
  assert "## Formula" in report  # The separately written formula note is carried over.
  assert "| schedule | lr | test acc T=10 | test acc T=20 |" in report
  for label in ("| constant |", "| cosine |", "| uba phi=2 |"):
    assert label in report
  assert "## Verdicts" in report
  assert ("mlp: 2 run pairs at equal learning rate; final parameters bitwise equal (SHA-256) "
          "in 2/2") in report
  assert (tmp_path / "uba_accuracy_vs_budget.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
