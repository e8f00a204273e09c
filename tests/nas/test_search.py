"""The search end to end, with real Optuna storages (SQLite, journal) and a real local Ray.

The storage is the record: every assertion reads trials back through
`shiftnas.record.open_run`, or straight from the Optuna study.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import yaml

import shiftnas.nas.trial
import shiftnas.record.store
from shiftnas.errors import ConfigError, StorageError
from shiftnas.nas.budget import budget_from_dict
from shiftnas.nas.cli import main
from shiftnas.nas.commands import run_search
from shiftnas.nas.optuna_driver import SearchFailed
from shiftnas.nas.pruning import rungs, should_continue
from shiftnas.record import RunDir, SearchStore, open_run

SPACE = {
    "stem_width": 16,
    "stages": [{"depth": [1, 2], "width": [16, 24], "stride": 1},
               {"depth": [1, 2], "width": [32, 48], "stride": 2}],
    "block": {"family": ["csc", "basic", "asl_preact"], "kind": ["fixed", "active", "sparse"],
              "nbhd": ["4c", "8c"], "e": [1, 2], "down": ["conv", "shift"], "init": "grid"},
}
ONE_ARCH = {"stem_width": 16, "stages": [{"depth": 1, "width": 16, "stride": 1}],
            "block": {"family": "csc", "kind": "fixed", "nbhd": "4c", "e": 1}}


def budget_dict(tmp_path: Path, **kw) -> dict:
    d = {"name": "t", "out_dir": str(tmp_path / "runs"), "seed": 0,
         "data": {"name": "digits", "subset": 120}, "space": SPACE,
         "objectives": ["accuracy", "params"], "sampler": "random", "trials": 5,
         "train": {"epochs": 2, "batch_size": 60, "precise_bn": 0},
         "pruning": {"enabled": False}, "export": "max accuracy"}
    d.update(kw)
    return d


def records(run_dir: Path) -> dict[int, object]:
    return {t.number: t for t in open_run(run_dir).trials}


def finished(run_dir: Path) -> dict[int, object]:
    return {n: t for n, t in records(run_dir).items()
            if t.state in ("complete", "pruned", "infeasible")}


def _write_budget(tmp_path: Path, **kw) -> Path:
    path = tmp_path / "budget.yaml"
    path.write_text(yaml.safe_dump(budget_dict(tmp_path, **kw)))
    return path


def test_search_end_to_end_leaves_a_complete_run_dir(tmp_path, capsys):
    run_dir = run_search(budget_from_dict(budget_dict(tmp_path)))
    recs = records(run_dir)
    assert sorted(recs) == list(range(5))
    for r in recs.values():
        assert r.state == "complete" and r.archid and r.arch and r.worker
        assert 0 <= r.metrics["accuracy"] <= 1 and r.metrics["params"] > 0
        assert r.weights is not None  # kept in the artifact store
    artifacts = [p for p in (run_dir / "artifacts").rglob("*") if p.is_file()]
    assert len(artifacts) == 5
    for f in ("run.json", "study.db", "log.txt", "trials.jsonl", "trials.csv", "report.md",
              "pareto.png", "export/model.py", "export/arch.yaml", "export/weights.pt"):
        assert (run_dir / f).exists(), f
    assert not (run_dir / "archs").exists() and not (run_dir / "weights").exists()
    err = capsys.readouterr().err
    assert "[   5/5]" in err and "front" in err and "elapsed" in err  # progress lines
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{run_dir / 'study.db'}")
    assert len(study.trials) == 5 and study.user_attrs["shiftnas"]["objectives"][0]["name"] == \
        "accuracy"
    assert main(["status", str(run_dir)]) == 0
    assert "5/5 trials finished" in capsys.readouterr().out
    # The view is rebuilt from the storage: delete it, report again, same trials.
    (run_dir / "trials.csv").unlink()
    assert main(["report", str(run_dir)]) == 0
    assert len((run_dir / "trials.csv").read_text().splitlines()) == 6


def test_a_launch_opens_its_study_once(tmp_path, monkeypatch):
    """The launch, its engine and the end of the search share one open store."""
    opened, real = [], SearchStore.open.__func__

    def counting(cls, *a, **k):
        opened.append(a)
        return real(cls, *a, **k)

    monkeypatch.setattr(SearchStore, "open", classmethod(counting))
    run_dir = run_search(budget_from_dict(budget_dict(tmp_path, trials=2,
                                                      objectives=["params", "macs"])))
    assert len(opened) == 1 and (run_dir / "report.md").is_file()


def test_constraints_stop_training_and_reach_the_sampler(tmp_path, monkeypatch):
    def no_training(*a, **k):
        raise AssertionError("an infeasible candidate was trained")

    monkeypatch.setattr(shiftnas.nas.trial, "train", no_training)
    run_dir = run_search(budget_from_dict(budget_dict(tmp_path, constraints=["params <= 1000"],
                                                      trials=4)))
    recs = records(run_dir)
    assert len(recs) == 4 and {r.state for r in recs.values()} == {"infeasible"}
    assert all("params" in r.reason and r.metrics["params"] > 1000 for r in recs.values())
    assert not (run_dir / "artifacts").exists() or not any((run_dir / "artifacts").rglob("*.pt"))
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{run_dir / 'study.db'}")
    # Optuna's samplers see each trial's constraint violation (> 0: infeasible).
    for t in study.trials:
        (v,) = [val for k, val in t.system_attrs.items() if k.startswith("constraints")]
        assert v > 0


def test_duplicates_are_reused_not_retrained(tmp_path, monkeypatch):
    calls = []
    real = shiftnas.nas.trial.train

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(shiftnas.nas.trial, "train", counting)
    run_dir = run_search(budget_from_dict(budget_dict(tmp_path, space=ONE_ARCH, trials=3)))
    recs = records(run_dir)
    assert len(calls) == 1
    assert recs[0].reused_from is None
    assert recs[1].reused_from == 0 and recs[2].reused_from == 0
    assert recs[1].metrics == recs[0].metrics and recs[1].archid == recs[0].archid
    assert recs[1].weights == recs[0].weights  # the duplicate points at the same weights


def test_a_failing_trial_does_not_stop_the_search_and_is_retried_on_resume(tmp_path, monkeypatch):
    real, calls = shiftnas.nas.trial.train, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash inside training")
        return real(*a, **k)

    monkeypatch.setattr(shiftnas.nas.trial, "train", flaky)
    path = _write_budget(tmp_path, trials=4)
    run_dir = run_search(budget_from_dict(budget_dict(tmp_path, trials=4)))
    recs = records(run_dir)
    states = Counter(r.state for r in recs.values())
    assert states == {"complete": 4, "failed": 1}  # a failed trial does not count as done
    failed = next(r for r in recs.values() if r.state == "failed")
    assert "simulated crash" in failed.reason
    assert "simulated crash" in (run_dir / "log.txt").read_text()
    # A new launch retries it once, with the same parameters.
    assert main(["search", str(path), "--trials", "5"]) == 0
    retry = [r for r in records(run_dir).values() if r.retry_of == failed.number]
    assert len(retry) == 1 and retry[0].state == "complete" and retry[0].params == failed.params


def test_kernel_compile_time_is_reported_apart_from_training(tmp_path, monkeypatch):
    """A trial whose training compiled kernels for 1.5 s: train_s leaves it out, compile_s
    holds it, and the report's time line adds it up as its own part."""
    from shiftnas.results.report import budget_summary

    clock = [100.0]  # this process's compile seconds, as kernels.compile_seconds reports them
    monkeypatch.setattr(shiftnas.nas.trial, "compile_seconds", lambda: clock[0])
    real, walls = shiftnas.nas.trial.train, []

    def compiling(*a, **k):
        clock[0] += 1.5  # as if the first forward pass compiled and tuned new kernels
        res = real(*a, **k)
        walls.append(res.wall_s)
        return res

    monkeypatch.setattr(shiftnas.nas.trial, "train", compiling)
    run_dir = run_search(budget_from_dict(budget_dict(tmp_path, trials=2)))
    recs = [r for r in records(run_dir).values() if r.reused_from is None]
    assert len(recs) == 2 == len(walls)
    for rec, wall in zip(sorted(recs, key=lambda r: r.number), walls):
        assert rec.metric("compile_s") == pytest.approx(1.5)
        assert rec.metric("train_s") == pytest.approx(wall - 1.5)
    summary = budget_summary(open_run(run_dir))
    assert summary["compile_time_s"] == pytest.approx(3.0)
    assert "compiling and autotuning kernels 0m03s" in (run_dir / "report.md").read_text()


def test_a_cpp_kernel_build_counts_as_compile_time(monkeypatch):
    from torch.utils import cpp_extension

    from shiftnas.kernels import _cpu, compile_seconds

    def slow_build(*a, **k):  # stands in for the compiler: 0.2 s, then a module
        time.sleep(0.2)
        return object()

    monkeypatch.setattr(cpp_extension, "load", slow_build)
    _cpu._kernel.cache_clear()
    try:
        before = compile_seconds()
        assert _cpu.native_available()
        assert compile_seconds() - before >= 0.2
    finally:
        _cpu._kernel.cache_clear()  # the next caller loads the real kernel


class _OutOfMemory(torch.nn.Module):
    """Fails its forward pass as a GPU out of memory does."""

    def forward(self, x):
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 139.8 GiB "
                           "total capacity)")


def test_a_trial_out_of_device_memory_is_recorded_and_the_search_goes_on(tmp_path, monkeypatch):
    real, calls = shiftnas.nas.trial.train, []

    def second_runs_out(model, *a, **k):  # the real training loop, on a network that OOMs
        calls.append(1)
        return real(_OutOfMemory() if len(calls) == 2 else model, *a, **k)

    monkeypatch.setattr(shiftnas.nas.trial, "train", second_runs_out)
    run_dir = run_search(budget_from_dict(budget_dict(tmp_path, trials=2)))
    recs = records(run_dir)
    assert Counter(r.state for r in recs.values()) == {"complete": 2, "failed": 1}
    (failed,) = [r for r in recs.values() if r.state == "failed"]
    assert failed.reason.startswith("oom: RuntimeError: CUDA out of memory"), failed.reason


def test_a_run_of_failures_stops_the_search_with_the_reason(tmp_path, capsys):
    path = _write_budget(tmp_path, trials=5, stop_after_failures=3,
                         train={"epochs": 2, "batch_size": 30, "lr": 1e30, "precise_bn": 0})
    with pytest.raises(SearchFailed, match=r"3 failed trials in a row: nan: training loss"):
        run_search(budget_from_dict(budget_dict(tmp_path, trials=5, stop_after_failures=3,
                                                train={"epochs": 2, "batch_size": 30,
                                                       "lr": 1e30, "precise_bn": 0})))
    run_dir = tmp_path / "runs" / "t"
    assert Counter(r.state for r in records(run_dir).values()) == {"failed": 3}
    assert main(["search", str(path)]) == 1  # one paragraph, exit 1
    err = capsys.readouterr().err
    assert "in a row" in err and "Traceback" not in err


def test_successive_halving_rule():
    # Minimisation points at one rung: trial 0 and 1 are the front; 2..5 are dominated.
    pts = {0: np.array([-0.9, 5.0]), 1: np.array([-0.5, 1.0]), 2: np.array([-0.4, 6.0]),
           3: np.array([-0.3, 7.0]), 4: np.array([-0.2, 8.0]), 5: np.array([-0.1, 9.0])}
    assert should_continue(pts, 0, 3, 3) and should_continue(pts, 1, 3, 3)
    assert not should_continue(pts, 2, 3, 3)  # 2 trials better, quota ceil(6/3) = 2
    assert should_continue({k: pts[k] for k in (0, 2)}, 2, 3, 3)  # too few trials to prune
    assert rungs(budget_from_dict({"name": "x", "pruning": {"eta": 2, "min_epochs": 1}}).pruning,
                 9) == [1, 2, 4, 8]


def _brute_force_ranks(points: dict[int, tuple[float, float]]) -> dict[int, int]:
    """Non-dominated ranks by peeling fronts with a pairwise check (minimisation)."""
    left, rank, out = dict(points), 0, {}
    while left:
        front = [k for k, p in left.items() if not any(
            all(a <= b for a, b in zip(q, p)) and q != p for j, q in left.items() if j != k)]
        for k in front:
            out[k] = rank
            del left[k]
        rank += 1
    return out


def test_pruning_stops_dominated_trials_and_keeps_partial_results(tmp_path):
    b = budget_from_dict(budget_dict(
        tmp_path, trials=10, train={"epochs": 3, "batch_size": 60, "precise_bn": 0},
        pruning={"enabled": True, "eta": 2, "min_epochs": 1, "min_trials": 2}))
    recs = records(run_search(b))
    pruned = [r for r in recs.values() if r.state == "pruned"]
    assert pruned, "some trial should have been dominated at a rung"
    for r in pruned:
        assert r.metrics["epochs"] < 3 and "accuracy" in r.metrics  # partial results kept
        epoch = int(r.metrics["epochs"])
        assert r.rungs[epoch] == r.metrics["accuracy"]  # the rung value is in the storage
        # One worker: the trials at the rung when r arrived are those numbered up to r.
        seen = {n: (-t.rungs[epoch], t.metrics["params"]) for n, t in recs.items()
                if epoch in t.rungs and n <= r.number}
        ranks = _brute_force_ranks(seen)
        better = sum(1 for v in ranks.values() if v < ranks[r.number])
        assert ranks[r.number] > 0 and better >= math.ceil(len(seen) / 2)


def test_same_budget_and_seed_give_the_same_architectures(tmp_path):
    seqs = []
    for k in range(2):
        d = budget_dict(tmp_path / str(k), objectives=["params", "macs"], sampler="nsga2",
                        population_size=4, trials=10)
        run_dir = run_search(budget_from_dict(d))
        seqs.append([records(run_dir)[n].archid for n in range(10)])
    assert seqs[0] == seqs[1]


def test_resume_after_a_kill_loses_nothing_and_repeats_nothing(tmp_path):
    path = _write_budget(tmp_path, trials=7, train={"epochs": 3, "batch_size": 60, "precise_bn": 0})
    run_dir = tmp_path / "runs" / "t"
    proc = subprocess.Popen([sys.executable, "-m", "shiftnas", "search", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        if (run_dir / "trials.jsonl").exists() and len(RunDir(run_dir).recorded_numbers()) >= 3:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = finished(run_dir)
    assert 3 <= len(before) < 7
    assert main(["search", str(path), "--resume"]) == 0
    after = finished(run_dir)
    for n, r in before.items():
        assert after[n] == r  # no finished trial lost or changed
    assert len(after) == 7
    trained = Counter(r.archid for r in after.values() if r.reused_from is None)
    assert max(trained.values()) == 1  # nothing trained twice
    assert not [r for r in records(run_dir).values() if r.state == "running"]


def test_workers_share_the_journal_storage(tmp_path):
    run_dir = run_search(budget_from_dict(budget_dict(tmp_path, trials=8, workers=2)))
    assert (run_dir / "journal.log").is_file() and not (run_dir / "study.db").exists()
    assert len(finished(run_dir)) == 8  # exactly the budget: a surplus trial steps aside
    log = (run_dir / "log.txt").read_text()
    assert "worker 0 joined" in log and "worker 1 joined" in log


def test_a_run_whose_storage_lost_its_trials_is_refused(tmp_path, capsys):
    path = _write_budget(tmp_path, trials=2, objectives=["params", "macs"])
    assert main(["search", str(path)]) == 0
    run_dir = tmp_path / "runs" / "t"
    (run_dir / "study.db").unlink()  # F1: the record is gone, the view remains
    assert main(["search", str(path), "--trials", "4"]) == 2
    err = capsys.readouterr().err
    assert "recorded 2 finished trial(s)" in err and "never overwritten" in err
    assert not (run_dir / "study.db").exists() or not finished(run_dir)


def test_another_search_with_the_same_name_is_refused(tmp_path, capsys):
    shared = f"sqlite:///{tmp_path / 'shared.db'}"
    first = _write_budget(tmp_path, trials=1, objectives=["params", "macs"], storage=shared)
    assert main(["search", str(first)]) == 0
    (tmp_path / "other").mkdir()
    other = tmp_path / "other" / "b.yaml"  # another run directory, same study name, other settings
    other.write_text(yaml.safe_dump(budget_dict(tmp_path / "other", trials=1, storage=shared,
                                                objectives=["params", "macs"],
                                                train={"epochs": 3, "batch_size": 60})))
    assert main(["search", str(other)]) == 2
    assert "other settings (changed: train)" in capsys.readouterr().err


def test_moving_the_run_directory_or_the_data_path_is_the_same_search(tmp_path):
    path = _write_budget(tmp_path, trials=1, objectives=["params", "macs"])
    assert main(["search", str(path)]) == 0
    d = budget_dict(tmp_path, trials=2, objectives=["params", "macs"])
    d["out_dir"] = os.path.relpath(tmp_path / "runs")  # another spelling of the same folder
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        d["out_dir"] = "./runs"
        run_search(budget_from_dict(d))
    finally:
        os.chdir(cwd)
    assert len(finished(tmp_path / "runs" / "t")) == 2


def test_ray_engine_writes_the_same_record(tmp_path):
    ray = pytest.importorskip("ray")
    expect = {"complete": "COMPLETE", "infeasible": "COMPLETE", "pruned": "PRUNED",
              "failed": "FAIL"}
    try:
        run_dir = run_search(budget_from_dict(budget_dict(
            tmp_path, engine="ray", trials=3, workers=2, ray={"num_cpus": 2})))
        # A constraint nothing meets: every trial is infeasible, and the sampler is told so.
        run_dir2 = run_search(budget_from_dict(budget_dict(
            tmp_path, name="t2", engine="ray", trials=3, workers=2, ray={"num_cpus": 2},
            constraints=["params <= 1000"])))
    finally:
        ray.shutdown()
    recs = finished(run_dir)
    assert sorted(recs) == [0, 1, 2] and {r.state for r in recs.values()} == {"complete"}
    assert open_run(run_dir).engine == "ray"
    assert (run_dir / "report.md").exists() and (run_dir / "export" / "model.py").exists()
    for directory in (run_dir, run_dir2):
        assert (directory / "journal.log").is_file()  # two workers: the journal file storage
        study = open_run(directory).store.study
        rs = records(directory)
        # No trial left RUNNING; every study state matches the record's state.
        assert {t.number: t.state.name for t in study.trials} == {
            n: expect[r.state] for n, r in rs.items()}
    for t in open_run(run_dir2).store.study.trials:  # constraints reached the sampler: infeasible, not plain complete
        assert any(k.startswith("constraints") and v > 0 for k, v in t.system_attrs.items())


def test_optuna_dashboard_sees_the_study(tmp_path):
    dashboard = pytest.importorskip("optuna_dashboard")
    from wsgiref.util import setup_testing_defaults

    run_dir = run_search(budget_from_dict(budget_dict(tmp_path, trials=2,
                                                      objectives=["params", "macs"])))
    app = dashboard.wsgi(f"sqlite:///{run_dir / 'study.db'}")
    env: dict = {"PATH_INFO": "/api/studies", "REQUEST_METHOD": "GET"}
    setup_testing_defaults(env)
    status = []
    body = b"".join(app(env, lambda s, h, exc_info=None: status.append(s)))
    assert status[0].startswith("200")
    import json

    assert [s["study_name"] for s in json.loads(body)["study_summaries"]] == ["t"]


def test_a_line_cut_short_in_the_view_does_not_swallow_the_next(tmp_path):
    run_dir = run_search(budget_from_dict(budget_dict(tmp_path, trials=2,
                                                      objectives=["params", "macs"])))
    with open(run_dir / "trials.jsonl", "a") as fh:
        fh.write('{"number": 99, "sta')  # what a kill in the middle of a write leaves
    view = RunDir(run_dir)
    view.append_trial(open_run(run_dir).trial(0))
    assert view.recorded_numbers() == {0, 1}
    assert (run_dir / "trials.jsonl").read_text().splitlines()[-1].startswith('{"arch"')


def test_an_unclaimed_orphan_trial_does_not_eat_the_budget(tmp_path, monkeypatch):
    """A kill between Optuna creating a trial and the objective claiming it leaves an orphan."""
    d = budget_dict(tmp_path, trials=3, objectives=["params", "macs"])
    run_dir = run_search(budget_from_dict(d))
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{run_dir / 'study.db'}")
    study.ask()  # RUNNING, no worker: what the kill leaves behind
    monkeypatch.setattr(shiftnas.record.store, "UNCLAIMED_S", 0)  # long ago, as far as the run knows
    assert main(["search", "--trials", "5", str(_write_budget(tmp_path, trials=3,
                                                             objectives=["params", "macs"]))]) == 0
    assert len(finished(run_dir)) == 5


def test_reading_a_missing_search_creates_nothing(tmp_path, capsys):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "run.json").write_text(
        '{"storage": "sqlite:///%s", "study": "x"}' % (tmp_path / "r" / "study.db"))
    for cmd in (["status", str(tmp_path / "r")], ["dashboard", str(tmp_path / "r")]):
        assert main(cmd) == 2
    assert not (tmp_path / "r" / "study.db").exists()
    with pytest.raises((ConfigError, StorageError)):
        open_run(tmp_path / "r")


PREDICTED = {"mode": "predicted", "calibrate": 2, "warmup": 1, "repeats": 3, "lock": None}


def test_predicted_latency_measures_a_calibration_sample_and_checks_the_front(tmp_path):
    run_dir = run_search(budget_from_dict(budget_dict(
        tmp_path, objectives=["accuracy", "latency_ms"], latency=PREDICTED, trials=5)))
    run = open_run(run_dir)
    firsts = [t for t in run.trials if t.reused_from is None]
    sources = [t.latency_source for t in firsts]
    assert sources[:2] == ["measured", "measured"] and set(sources[2:]) == {"predicted"}
    for t in firsts:
        assert t.latency["features"]["parts_ms"] > 0 and t.latency["features"]["parts"] >= 4
        # Only a measurement has a spread; a prediction says what it was fitted on.
        assert ("latency_iqr_ms" in t.metrics) == (t.latency_source == "measured")
        if t.latency_source == "measured":
            assert t.latency["measured_ms"] == t.metrics["latency_ms"]
        else:
            assert t.latency["fitted_on"] >= 2
    # Every predicted trial on the front was measured when the search ended.
    from shiftnas.results.pareto import pareto_front

    front = pareto_front(run).trials
    predicted = [t.number for t in front if t.latency_source == "predicted"]
    assert sorted(run.latency_checks) == sorted(predicted)
    report = (run_dir / "report.md").read_text()
    if predicted:
        assert "## Latency: predicted vs measured on the front" in report
        assert "Predictor error on its own front: mean |error|" in report
        for n in predicted:
            c = run.latency_checks[n]
            assert c["predicted_ms"] == run.trial(n).metrics["latency_ms"] and c["measured_ms"] > 0
            assert f"| {n} | " in report.split("## Latency")[1]
    else:  # the front is all calibration trials: nothing to compare
        assert "## Latency" not in report
    # The final predictor is saved as JSON, fitted on the measured networks and the checks.
    from shiftnas.evaluators.predictor import LatencyPredictor

    saved = LatencyPredictor.from_dict(json.loads((run_dir / "latency-predictor.json").read_text()))
    assert saved.n == 2 + len(predicted) and saved.settings["backend"] == "eager"
    assert (run_dir / "latency-parts.json").is_file()  # part times, shared by the workers


def test_predicted_latency_with_two_workers_fits_from_the_storage(tmp_path):
    run_dir = run_search(budget_from_dict(budget_dict(
        tmp_path, objectives=["accuracy", "latency_ms"], latency=PREDICTED, trials=6, workers=2,
        train={"epochs": 1, "batch_size": 60, "precise_bn": 0})))
    firsts = [t for t in open_run(run_dir).trials if t.reused_from is None
              and t.state in ("complete", "pruned", "infeasible")]
    measured = [t for t in firsts if t.latency_source == "measured"]
    # Each worker counts the study's measured networks: at least `calibrate`, at most one more
    # per extra worker (both may start while the sample is one short).
    assert 2 <= len(measured) <= 3
    assert all(t.latency["fitted_on"] >= 2 for t in firsts if t.latency_source == "predicted")


def test_calibration_reads_every_measured_network_once():
    from shiftnas.nas.predicted import calibration
    from shiftnas.record import TrialRecord

    f = {"const": 1.0, "parts_ms": 1.0, "parts": 4.0, "mmacs": 1.0, "traffic_mb": 1.0}
    recs = [
        TrialRecord(0, "complete", "a", latency={"source": "measured", "features": f,
                                                  "measured_ms": 1.5}, metrics={"latency_ms": 1.5}),
        TrialRecord(1, "failed", "b", latency={"source": "measured", "features": f,
                                                "measured_ms": 2.0}),  # measured, then failed
        TrialRecord(2, "complete", "a", latency={"source": "measured", "features": f,
                                                  "measured_ms": 1.6}),  # the same network again
        TrialRecord(3, "complete", "c", latency={"source": "predicted", "features": f},
                    metrics={"latency_ms": 1.0}),
        TrialRecord(4, "complete", "d", latency={"source": "predicted", "features": f},
                    metrics={"latency_ms": 1.0}),
        TrialRecord(5, "running", "e"),
    ]
    rows, ms = calibration(recs, {4: {"measured_ms": 3.0}})
    assert ms == [1.5, 2.0, 3.0] and len(rows) == 3  # trial 4 was checked after the search
    assert calibration(recs, exclude=0)[1] == [2.0, 1.6]
    assert recs[3].latency_source == "predicted" and recs[5].latency_source is None
    assert TrialRecord(6, "complete", metrics={"latency_ms": 1.0}).latency_source == "measured"


def test_budget_latency_mode_errors_name_the_field(tmp_path, capsys):
    path = _write_budget(tmp_path, latency={"mode": "predict"})
    assert main(["search", str(path)]) == 2
    err = capsys.readouterr().err
    assert "budget.latency.mode: must be one of ['measured', 'predicted'], got 'predict'" in err
    assert len(err.strip().splitlines()) == 1  # one paragraph, no traceback
    path = _write_budget(tmp_path, latency={"mode": "predicted", "calibrate": 0})
    assert main(["search", str(path)]) == 2
    assert "budget.latency.calibrate: must be an integer >= 2" in capsys.readouterr().err
