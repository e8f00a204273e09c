"""The record's small rules: every attribute written and read back, the fast SQL reader, URLs
and passwords, elapsed time, seeds."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from shiftnas.errors import ConfigError
from shiftnas.metrics import Constraint, Objective
from shiftnas.nas.budget import SAMPLERS, budget_from_dict
from shiftnas.nas.sampling import trial_seed
from shiftnas.record import TRIAL_ATTRS, SearchStore, TrialRecord, absolute_url, check_url, mask
from shiftnas.record.schema import RUNG
from tests.results.fixtures import synthetic_run


def test_every_attribute_of_an_outcome_is_written_and_read_back(tmp_path):
    """`write_outcome` stores every TrialRecord attribute that is set; both readers load it."""
    store = SearchStore.open(f"sqlite:///{tmp_path / 's.db'}", "a", directions=["maximize"])
    t = store.study.ask()
    expected = {"state": "complete", "archid": "0123456789ab", "arch": "cifar-net",
                "metrics": {"accuracy": 0.5, "params": 3.0}, "feasible": False,
                "reason": "params 3 breaks 'params <= 2'", "reused_from": 7, "retry_of": 3,
                "worker": "h:1", "weights": "artifact-id", "latency": {"source": "measured"},
                "surplus": True}
    assert set(expected) <= set(TRIAL_ATTRS)
    out = TrialRecord(t.number, **{**expected, "metrics": {**expected["metrics"],
                                                             "macs": float("nan")}})
    store.write_outcome(t, out, (Constraint.parse("params <= 2"),))
    store.tell(t, out, (Objective("accuracy", "maximize"),))
    (frozen,) = store.frozen()
    assert frozen.values == [0.5]
    assert frozen.system_attrs["constraints:params <= 2"] == pytest.approx(0.5)  # (3 - 2) / 2
    for r in (store.records()[0], TrialRecord.from_frozen(frozen)):  # the SQL reader, Optuna's
        assert {k: getattr(r, k) for k in expected} == expected  # NaN metrics are dropped
    # Unset attributes are not written; the reader's defaults stand for them.
    t = store.study.ask()
    store.write_outcome(t, TrialRecord(t.number, "failed", feasible=False), ())
    assert set(store.study.trials[1].user_attrs) == {"state", "metrics", "feasible"}
    assert store.record(1) == TrialRecord.from_frozen(store.study.trials[1])


def test_the_sql_reader_equals_optunas_get_trials(tmp_path):
    run_dir = synthetic_run(tmp_path, 30, seed=4)
    store = SearchStore.open(f"sqlite:///{run_dir / 'study.db'}", "synthetic")
    # Add what the fixture lacks: a rung, a failure Optuna recorded, a running trial.
    t = store.study.ask()
    store.claim(t)
    t.suggest_categorical("s0.b0.kind", ["fixed", "active", "dwconv3x3"])
    t.suggest_categorical("s0.b0.e", [1, 2, 3])
    store.record_rung(t, 1, 0.25)
    store.study._storage.set_trial_system_attr(t._trial_id, "fail_reason", "boom")
    store.study.tell(t, state=TrialState.FAIL)
    store.study.ask()
    fast = store.records()
    slow = sorted((TrialRecord.from_frozen(t) for t in store.frozen()), key=lambda r: r.number)
    assert len(fast) == 32 and fast == slow
    assert fast[30].rungs == {1: 0.25} and fast[30].reason == "boom" and fast[31].state == "running"
    assert fast[30].params == slow[30].params and len(fast[30].params) == 2
    assert any(r.state == "pruned" for r in fast)


def test_urls_are_checked_masked_and_made_absolute(tmp_path, monkeypatch):
    assert mask("postgresql://nas:s3cret@db:5432/x") == "postgresql://nas:***@db:5432/x"
    assert mask("sqlite:///a/b.db") == "sqlite:///a/b.db"
    for bad in ("study.db", "sqlite://", "sqlite:///", "sqlite:///:memory:", "journal://"):
        with pytest.raises(ConfigError):
            check_url(bad)
    monkeypatch.chdir(tmp_path)
    assert absolute_url("sqlite:///x.db") == f"sqlite:///{tmp_path / 'x.db'}"
    assert absolute_url("journal://runs/j.log") == f"journal://{tmp_path / 'runs' / 'j.log'}"
    assert absolute_url("postgresql://h/db") == "postgresql://h/db"


def test_elapsed_time_is_the_union_of_launches(tmp_path):
    store = SearchStore.open(f"sqlite:///{tmp_path / 's.db'}", "e", directions=["minimize"])
    for k, (a, b) in enumerate([(0, 10), (5, 20), (30, 35)]):  # overlapping, then a gap
        store.study.set_user_attr(f"session:{k}", {"worker": "h:1", "started": a, "seen": b})
    assert store.elapsed_s() == pytest.approx(25.0)  # [0, 20] and [30, 35]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_a_trial_is_claimed_by_its_process_the_moment_it_exists(sampler, tmp_path):
    """A kill right after `ask` leaves a trial that `recover` can fail (not one alive for a minute)."""
    import os
    import socket

    from shiftnas.nas.sampling import make_sampler
    from tests.nas.test_search import budget_dict

    budget = budget_from_dict(budget_dict(tmp_path, sampler=sampler))
    study = optuna.create_study(sampler=make_sampler(budget), directions=["maximize", "minimize"])
    trial = study.ask()  # the objective has not run: nothing else has touched the trial
    assert study.trials[trial.number].user_attrs["worker"] == f"{socket.gethostname()}:{os.getpid()}"


def test_trial_seeds_differ_per_trial_and_repeat_per_search():
    seeds = [trial_seed(0, n) for n in range(1000)]
    assert len(set(seeds)) == 1000 and seeds == [trial_seed(0, n) for n in range(1000)]
    assert trial_seed(1, 0) != trial_seed(0, 0)


def test_retries_happen_once(tmp_path):
    store = SearchStore.open(f"sqlite:///{tmp_path / 's.db'}", "r", directions=["minimize"])
    t = store.study.ask()
    t.suggest_categorical("x", ["a", "b"])
    store.study.tell(t, state=TrialState.FAIL)
    assert store.retry_failed() == [0] and store.retry_failed() == []
    waiting = store.frozen((TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].user_attrs["retry_of"] == 0
    assert f"{RUNG}1" not in waiting[0].system_attrs and optuna.__version__
