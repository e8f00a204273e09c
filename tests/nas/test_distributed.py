"""One search, several launchers that share only a storage URL and an artifact store.

Each launcher runs `shiftnas search` in its own working directory (its own run
directory, relative paths only): what they share is the storage (a real
PostgreSQL server, or Optuna's journal file) and the artifact folder. One is
SIGKILLed in the middle of a trial and started again. The finished search has
exactly the budget's trials, none lost or repeated, and its front, read from
a third directory through `--storage/--study`, is the front of an
uninterrupted run of the same architectures.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from shiftnas.nas.budget import budget_from_dict
from shiftnas.nas.cli import main
from shiftnas.nas.commands import open_search, resolve_storage, run_search
from shiftnas.record import FINISHED, RunDir, SearchStore, open_run
from shiftnas.results.pareto import pareto_front
from tests import pg

from .test_search import SPACE

TRIALS = 6


@pytest.fixture(scope="module")
def postgres():
    pytest.importorskip("psycopg")
    if pg.bindir() is None:
        pytest.skip("no PostgreSQL server binaries: apt-get install postgresql (.ci/run does)")
    with pg.server() as url:
        yield url


def _budget(**kw) -> dict:
    return {"name": "dist", "out_dir": "runs", "seed": 3, "data": {"name": "digits", "subset": 480},
            "space": SPACE, "objectives": ["accuracy", "params"], "sampler": "random",
            "trials": TRIALS, "train": {"epochs": 3, "batch_size": 60, "precise_bn": 0},
            "pruning": {"enabled": False}, "export": None, **kw}


def _launch(cwd: Path) -> subprocess.Popen:
    log = open(cwd / "out.txt", "ab")  # noqa: SIM115 (the child owns it)
    return subprocess.Popen([sys.executable, "-m", "shiftnas", "search", "budget.yaml"], cwd=cwd,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for(cond, timeout: float = 120.0, what: str = ""):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if found := cond():
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _front(run) -> set[tuple]:
    return {(t.archid, t.metrics["accuracy"], t.metrics["params"]) for t in pareto_front(run).trials}


@pytest.mark.parametrize("kind", ["postgres", "journal"])
def test_launchers_share_one_search_and_survive_a_kill(tmp_path, kind, request):
    storage = (request.getfixturevalue("postgres") if kind == "postgres"
               else f"journal://{tmp_path / 'shared' / 'journal.log'}")
    artifacts = str(tmp_path / "shared" / "artifacts")
    dirs = [tmp_path / "a", tmp_path / "b"]
    for d in dirs:
        d.mkdir()
        (d / "budget.yaml").write_text(yaml.safe_dump(_budget(storage=storage,
                                                              artifacts=artifacts)))
    first = _launch(dirs[0])
    _wait_for(lambda: (dirs[0] / "runs" / "dist" / "run.json").exists(), what="the study")
    store = SearchStore.open(storage, "dist")
    second = _launch(dirs[1])

    def training_in(proc):  # a trial sets its cost metrics just before it starts training
        return [t.number for t in store.frozen() if t.state.name == "RUNNING"
                and t.user_attrs.get("worker", "").endswith(f":{proc.pid}")
                and "metrics" in t.user_attrs]

    (killed,) = _wait_for(lambda: store.finished() >= 1 and training_in(first),
                          what="a trial of A in training")
    os.killpg(first.pid, signal.SIGKILL)  # in the middle of that trial (each takes seconds)
    first.wait()
    again = _launch(dirs[0])
    assert second.wait(timeout=300) == 0, (dirs[1] / "out.txt").read_text()[-2000:]
    assert again.wait(timeout=300) == 0, (dirs[0] / "out.txt").read_text()[-2000:]

    run = open_run(storage=storage, study="dist", artifacts=artifacts)
    done = [t for t in run.trials if t.state in FINISHED]
    assert len(done) == TRIALS  # exactly the budget
    assert not [t for t in run.trials if t.state in ("running", "waiting")]
    assert run.trial(killed).state == "failed"
    (retry,) = [t for t in run.trials if t.retry_of == killed]
    assert retry.state in FINISHED and retry.params == run.trial(killed).params
    fresh = [t.archid for t in done if t.reused_from is None]
    assert len(fresh) == len(set(fresh))  # nothing trained twice
    for t in done:
        if t.state == "complete" and t.reused_from is None:
            with run.weights_file(t) as w:
                assert w is not None and w.stat().st_size > 0  # in the shared artifact store

    # The report, built in a third directory from the storage alone.
    third = tmp_path / "c"
    assert main(["report", "--storage", storage, "--study", "dist", "--artifacts", artifacts,
                 "--out", str(third)]) == 0
    assert (third / "report.md").is_file() and (third / "trials.csv").is_file()

    # An uninterrupted one-worker run of the same architectures (same seed) has the same front.
    ref_dir = tmp_path / "ref"
    ref = budget_from_dict({**_budget(), "out_dir": str(ref_dir)})
    view = RunDir(ref.run_dir)
    url, art = resolve_storage(ref, view)
    open_search(ref, url, art, "cpu", view)
    ref_store = SearchStore.open(url, "dist")
    for t in sorted(done, key=lambda t: t.number):
        ref_store.study.enqueue_trial(t.params)
    run_search(ref)
    reference = open_run(ref.run_dir)
    assert sorted(t.archid for t in reference.trials) == sorted(t.archid for t in done)
    assert _front(reference) == _front(run)
