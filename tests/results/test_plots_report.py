"""Plots are valid images, the report has its sections, the HTML carries hover text."""

from __future__ import annotations

import builtins

import pytest
from matplotlib import image as mpimg

from shiftnas.record import open_run
from shiftnas.results.pareto import pareto_front
from shiftnas.results.plots import plot_pareto, write_html
from shiftnas.results.report import budget_summary, write_report

from .fixtures import make_run, synthetic_run

PNG = b"\x89PNG\r\n\x1a\n"
THREE = [{"name": "accuracy", "direction": "maximize"},
         {"name": "latency_ms", "direction": "minimize"},
         {"name": "params", "direction": "minimize"}]


def _check_png(path):
    assert path.read_bytes()[:8] == PNG
    img = mpimg.imread(path)
    assert img.shape[0] > 200 and img.shape[1] > 300
    assert img.std() > 0.01  # not a blank canvas


def test_report_two_objectives(tmp_path):
    run_dir = synthetic_run(tmp_path, 40, seed=1)
    report = write_report(run_dir)
    for name in ("pareto.png", "hypervolume.png", "choices.png"):
        _check_png(run_dir / name)
    assert not (run_dir / "pareto_pairs.png").exists()
    md = report.read_text()
    run = open_run(run_dir)
    front = pareto_front(run)
    for t in front.trials:
        assert f"| {t.number} |" in md
    assert "Hypervolume: **" in md and "reference point accuracy = " in md
    b = budget_summary(run)
    assert f"trials: {len(run.trials)} (" in md
    assert f"reused, not retrained): {b['reused_duplicates']}" in md
    assert b["reused_duplicates"] > 0 and b["by_state"]["infeasible"] > 0
    assert "![Pareto front](pareto.png)" in md
    html = (run_dir / "pareto.html").read_text()
    assert front.trials[0].arch in html


def test_report_compares_predicted_and_measured_latency_on_the_front(tmp_path):
    f = {"const": 1.0, "parts_ms": 1.0, "parts": 5.0, "mmacs": 1.0, "traffic_mb": 1.0}
    measured = {"source": "measured", "features": f, "measured_ms": 1.0}
    predicted = {"source": "predicted", "features": f, "fitted_on": 1}
    # Each trial is faster and less accurate than the one before: all three on the front.
    run_dir = make_run(tmp_path, [
        {"number": 0, "state": "complete", "latency": measured,
         "metrics": {"accuracy": 0.9, "latency_ms": 1.0, "latency_iqr_ms": 0.01}},
        {"number": 1, "state": "complete", "latency": predicted,
         "metrics": {"accuracy": 0.8, "latency_ms": 0.5}},
        {"number": 2, "state": "complete", "latency": predicted,
         "metrics": {"accuracy": 0.7, "latency_ms": 0.3}},
    ], constraints=["latency_ms <= 0.55"])
    run = open_run(run_dir)
    run.store.set_latency_check(1, {"measured_ms": 0.625, "predicted_ms": 0.5})
    md = write_report(open_run(run_dir)).read_text()
    section = md.split("## Latency: predicted vs measured on the front")[1].split("## ")[0]
    assert "1 trial(s) measured whole" in section and "2 predicted" in section
    assert "| 0 |" not in section  # a measured trial has nothing to compare
    # Trial 1: (0.5 - 0.625) / 0.625 = -20%, and measured it breaks the constraint.
    assert "| 1 | 0.5 | 0.625 | -20.0% | measured, breaks `latency_ms <= 0.55` |" in section
    assert "| 2 | 0.3 | - | - |" in section
    assert "mean |error| **20.0%**, max 20.0% (1 trial(s))" in section
    assert "1 front trial(s) not measured yet" in section


def test_report_three_objectives_to_other_dir(tmp_path):
    run_dir = synthetic_run(tmp_path, 30, seed=2, objectives=THREE)
    out = tmp_path / "rep"
    write_report(run_dir, out)
    for name in ("pareto.png", "pareto_pairs.png", "hypervolume.png", "choices.png"):
        _check_png(out / name)
    assert (out / "report.md").is_file()


def test_log_axes_when_a_cost_spans_decades(tmp_path):
    trials = [dict(number=i, state="complete", metrics={"accuracy": 0.5 + 0.04 * i,
                                                        "latency_ms": 0.01 * 3.0 ** i})
              for i in range(10)]
    run = open_run(make_run(tmp_path, trials))
    path = plot_pareto(run, pareto_front(run), tmp_path / "p.png")
    _check_png(path)


def test_html_fallback_without_plotly(tmp_path, monkeypatch):
    run = open_run(synthetic_run(tmp_path, 12, seed=3))
    front = pareto_front(run)
    real_import = builtins.__import__

    def no_plotly(name, *a, **kw):
        if name.startswith("plotly"):
            raise ImportError(name)
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_plotly)
    html = write_html(run, front, tmp_path / "p.html").read_text()
    assert "<svg" in html and "<title>" in html and "plotly" not in html
    assert front.trials[0].arch in html


def test_plotly_html_is_self_contained(tmp_path):
    pytest.importorskip("plotly")
    run = open_run(synthetic_run(tmp_path, 12, seed=3))
    html = write_html(run, pareto_front(run), tmp_path / "p.html").read_text()
    assert "<script src=" not in html and len(html) > 1_000_000  # plotly.js inline


def test_the_budget_counts_each_kind_of_trial_as_what_it_is(tmp_path):
    """Failed and pruned trials are not infeasible: only a broken constraint is (before training,
    or after it: a complete trial below an accuracy floor)."""
    constraints = ["params <= 3000000", "accuracy >= 0.6"]
    ok = {"accuracy": 0.8, "latency_ms": 1.0, "params": 1e5, "train_s": 2.0}
    run_dir = make_run(tmp_path, [
        {"number": 0, "state": "complete", "metrics": ok},
        {"number": 1, "state": "complete", "metrics": {**ok, "accuracy": 0.9, "latency_ms": 2.0}},
        {"number": 2, "state": "complete", "feasible": False, "reason": "acc 0.5 breaks it",
         "metrics": {**ok, "accuracy": 0.5}},  # trained, then below the floor
        {"number": 3, "state": "infeasible", "feasible": False, "reason": "params 9M breaks it",
         "metrics": {"params": 9e6}},  # rejected before training
        {"number": 4, "state": "pruned", "feasible": False, "reason": "dominated",
         "metrics": {**ok, "accuracy": 0.4}},
        *({"number": n, "state": "failed", "feasible": False, "reason": "TypeError: dtype"}
          for n in (5, 6, 7)),
    ], constraints=constraints)
    run = open_run(run_dir)
    b = budget_summary(run)
    assert {s: n for s, n in b["by_state"].items() if n} == {
        "complete": 3, "pruned": 1, "infeasible": 1, "failed": 3}
    assert b["rejected_before_training"] == 1 and b["infeasible"] == 2  # trials 3 and 2
    md = write_report(run).read_text()
    assert "- trials: 8 (complete: 3, pruned: 1, infeasible: 1, failed: 3)" in md
    assert "- rejected as infeasible before training: 1 (infeasible in all: 2)" in md
