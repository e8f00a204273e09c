"""The search end to end, with real Optuna on SQLite and a real local Ray, on tiny budgets."""

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
import yaml

import shiftnas.nas.evaluate
from shiftnas.nas.budget import budget_from_dict
from shiftnas.nas.cli import main
from shiftnas.nas.commands import run_search
from shiftnas.nas.pruning import rungs, should_continue
from shiftnas.nas.store import RunStore
from shiftnas.results.pareto import nondominated_ranks

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


def records(run_dir: Path) -> dict[int, dict]:
    return RunStore(run_dir).trials()


def test_search_end_to_end_leaves_a_complete_run_dir(tmp_path, capsys):
    b = budget_from_dict(budget_dict(tmp_path))
    run_dir = run_search(b)
    recs = records(run_dir)
    assert sorted(recs) == list(range(5))
    for n, r in recs.items():
        assert (run_dir / "archs" / f"trial_{n:05d}.yaml").is_file()
        if r["state"] == "complete":
            assert 0 <= r["metrics"]["accuracy"] <= 1 and r["metrics"]["params"] > 0
            assert (run_dir / "weights" / f"trial_{n:05d}.pt").is_file()
    for f in ("run.json", "budget.yaml", "study.db", "log.txt", "report.md", "pareto.png",
              "export/model.py", "export/arch.yaml", "export/weights.pt"):
        assert (run_dir / f).exists(), f
    err = capsys.readouterr().err
    assert "[   5/5]" in err and "front" in err and "elapsed" in err  # progress lines
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{run_dir / 'study.db'}")
    assert len(study.trials) == 5
    assert main(["status", str(run_dir)]) == 0
    assert "5/5 trials" in capsys.readouterr().out


def test_constraints_stop_training(tmp_path, monkeypatch):
    def no_training(*a, **k):
        raise AssertionError("an infeasible candidate was trained")

    monkeypatch.setattr(shiftnas.nas.evaluate, "train", no_training)
    b = budget_from_dict(budget_dict(tmp_path, constraints=["params <= 1000"], trials=4))
    run_dir = run_search(b)
    recs = records(run_dir)
    assert len(recs) == 4 and {r["state"] for r in recs.values()} == {"infeasible"}
    assert all("params" in r["reason"] and r["metrics"]["params"] > 1000 for r in recs.values())
    assert not any((run_dir / "weights").iterdir())
    assert not (run_dir / "rungs.jsonl").exists()


def test_duplicates_are_reused_not_retrained(tmp_path, monkeypatch):
    calls = []
    real = shiftnas.nas.evaluate.train

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(shiftnas.nas.evaluate, "train", counting)
    run_dir = run_search(budget_from_dict(budget_dict(tmp_path, space=ONE_ARCH, trials=3)))
    recs = records(run_dir)
    assert len(calls) == 1
    assert recs[0]["reused_from"] is None
    assert recs[1]["reused_from"] == 0 and recs[2]["reused_from"] == 0
    assert recs[1]["metrics"] == recs[0]["metrics"] and recs[1]["archid"] == recs[0]["archid"]


def test_a_failing_trial_does_not_stop_the_run(tmp_path, monkeypatch):
    real, calls = shiftnas.nas.evaluate.train, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash inside training")
        return real(*a, **k)

    monkeypatch.setattr(shiftnas.nas.evaluate, "train", flaky)
    run_dir = run_search(budget_from_dict(budget_dict(tmp_path, trials=4)))
    recs = records(run_dir)
    states = Counter(r["state"] for r in recs.values())
    assert len(recs) == 4 and states["failed"] == 1
    failed = next(r for r in recs.values() if r["state"] == "failed")
    assert "simulated crash" in failed["reason"]
    assert "simulated crash" in (run_dir / "log.txt").read_text()


def test_nan_loss_is_recorded_as_failed(tmp_path):
    run_dir = run_search(budget_from_dict(budget_dict(
        tmp_path, trials=2, train={"epochs": 2, "batch_size": 30, "lr": 1e30, "precise_bn": 0})))
    recs = records(run_dir)
    assert len(recs) == 2
    assert all(r["state"] == "failed" and r["reason"].startswith("nan") for r in recs.values())


def test_successive_halving_rule():
    # Minimisation points at one rung: trial 0 and 1 are the front; 2..5 are dominated.
    pts = {0: np.array([-0.9, 5.0]), 1: np.array([-0.5, 1.0]), 2: np.array([-0.4, 6.0]),
           3: np.array([-0.3, 7.0]), 4: np.array([-0.2, 8.0]), 5: np.array([-0.1, 9.0])}
    assert should_continue(pts, 0, 3, 3) and should_continue(pts, 1, 3, 3)
    assert not should_continue(pts, 2, 3, 3)  # 2 trials better, quota ceil(6/3) = 2
    assert should_continue({k: pts[k] for k in (0, 2)}, 2, 3, 3)  # too few trials to prune
    assert rungs(budget_from_dict({"name": "x", "pruning": {"eta": 2, "min_epochs": 1}}).pruning,
                 9) == [1, 2, 4, 8]


def test_pruning_stops_dominated_trials_and_keeps_partial_results(tmp_path):
    b = budget_from_dict(budget_dict(
        tmp_path, trials=10, train={"epochs": 3, "batch_size": 60, "precise_bn": 0},
        pruning={"enabled": True, "eta": 2, "min_epochs": 1, "min_trials": 2}))
    run_dir = run_search(b)
    recs = records(run_dir)
    pruned = [r for r in recs.values() if r["state"] == "pruned"]
    assert pruned, "some trial should have been dominated at a rung"
    rung_lines = [json.loads(x) for x in (run_dir / "rungs.jsonl").read_text().splitlines()]
    for r in pruned:
        assert r["metrics"]["epochs"] < 3 and "accuracy" in r["metrics"]  # partial results kept
        epoch = int(r["metrics"]["epochs"])
        # Recompute the decision from what the rung held when this trial arrived.
        upto = [x for x in rung_lines if x["epoch"] == epoch]
        idx = next(i for i, x in enumerate(upto) if x["number"] == r["number"])
        seen = {x["number"]: np.array([-x["accuracy"], x["costs"]["params"]]) for x in upto[:idx + 1]}
        ranks = nondominated_ranks(np.stack(list(seen.values())))
        mine = ranks[list(seen).index(r["number"])]
        assert mine > 0 and (ranks < mine).sum() >= math.ceil(len(seen) / 2)


def test_same_budget_and_seed_give_the_same_architectures(tmp_path):
    seqs = []
    for k in range(2):
        d = budget_dict(tmp_path / str(k), objectives=["params", "macs"], sampler="nsga2",
                        population_size=4, trials=10)
        run_dir = run_search(budget_from_dict(d))
        seqs.append([records(run_dir)[n]["archid"] for n in range(10)])
    assert seqs[0] == seqs[1]


def _write_budget(tmp_path: Path, **kw) -> Path:
    path = tmp_path / "budget.yaml"
    path.write_text(yaml.safe_dump(budget_dict(tmp_path, **kw)))
    return path


def test_resume_after_a_kill_loses_nothing_and_repeats_nothing(tmp_path):
    path = _write_budget(tmp_path, trials=7, train={"epochs": 3, "batch_size": 60, "precise_bn": 0})
    run_dir = tmp_path / "runs" / "t"
    proc = subprocess.Popen([sys.executable, "-m", "shiftnas", "search", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(records(run_dir)) < 3:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = records(run_dir)
    assert 3 <= len(before) < 7
    assert main(["search", str(path), "--resume"]) == 0
    after = records(run_dir)
    for n, r in before.items():
        assert after[n] == r  # no finished trial lost or changed
    assert len(after) == 7
    trained = Counter(r["archid"] for r in after.values()
                      if r["state"] in ("complete", "pruned") and r["reused_from"] is None)
    assert max(trained.values()) == 1  # nothing trained twice


def test_workers_share_one_storage(tmp_path):
    d = budget_dict(tmp_path, trials=8, workers=2)
    run_dir = run_search(budget_from_dict(d))
    recs = records(run_dir)
    assert 8 <= len(recs) <= 9  # the last trials may start in both workers at once
    log = (run_dir / "log.txt").read_text()
    assert "worker 0 opened the study" in log and "worker 1 opened the study" in log
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{run_dir / 'study.db'}")
    assert sorted(t.number for t in study.trials) == sorted(recs)


def test_ray_engine_writes_the_same_run_directory(tmp_path):
    ray = pytest.importorskip("ray")
    expect = {"complete": "COMPLETE", "infeasible": "COMPLETE", "pruned": "PRUNED", "failed": "FAIL"}
    try:
        d = budget_dict(tmp_path, engine="ray", trials=3, workers=2, ray={"num_cpus": 2})
        run_dir = run_search(budget_from_dict(d))
        # A diverging learning rate fails every trained trial, in whichever process it runs.
        d2 = budget_dict(tmp_path, name="t2", engine="ray", trials=3, workers=2,
                         ray={"num_cpus": 2}, constraints=["params <= 20000"],
                         train={"epochs": 2, "batch_size": 30, "lr": 1e30, "precise_bn": 0})
        run_dir2 = run_search(budget_from_dict(d2))
    finally:
        ray.shutdown()
    recs = records(run_dir)
    assert sorted(recs) == [0, 1, 2]
    assert all(r["engine"] == "ray" and r["state"] == "complete" for r in recs.values())
    assert json.loads((run_dir / "run.json").read_text())["engine"] == "ray"
    assert (run_dir / "report.md").exists() and (run_dir / "export" / "model.py").exists()
    recs2 = records(run_dir2)
    assert "failed" in {r["state"] for r in recs2.values()}
    for name, rs in (("t", recs), ("t2", recs2)):
        study = optuna.load_study(study_name=name,
                                  storage=f"sqlite:///{tmp_path / 'runs' / name / 'study.db'}")
        # No trial left RUNNING; each study state matches the run directory's record.
        assert {t.number: t.state.name for t in study.trials} == {
            n: expect[r["state"]] for n, r in rs.items()}


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
    studies = json.loads(body)["study_summaries"]
    assert [s["study_name"] for s in studies] == ["t"]


def test_a_record_cut_short_by_a_kill_does_not_hide_later_ones(tmp_path):
    from shiftnas.results.store import load_run

    run_dir = run_search(budget_from_dict(budget_dict(tmp_path, trials=2,
                                                      objectives=["params", "macs"])))
    with open(run_dir / "trials.jsonl", "a") as fh:
        fh.write('{"number": 99, "sta')  # what a kill in the middle of a write leaves
    store = RunStore(run_dir)
    store.record_trial({**store.trials()[0], "number": 100})
    assert sorted(store.trials()) == [0, 1, 100]
    assert [t.number for t in load_run(run_dir).trials] == [0, 1, 100]


def test_an_unclaimed_orphan_trial_does_not_eat_the_budget(tmp_path):
    """A kill between Optuna creating a trial and the objective claiming it leaves an orphan."""
    d = budget_dict(tmp_path, trials=3, objectives=["params", "macs"])
    run_dir = run_search(budget_from_dict(d))
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{run_dir / 'study.db'}")
    study.ask()  # RUNNING, no host/pid: what the kill leaves behind
    assert main(["search", "--trials", "5", str(_write_budget(tmp_path, trials=3,
                                                             objectives=["params", "macs"]))]) == 0
    assert len(records(run_dir)) == 5
