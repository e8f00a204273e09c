"""Every trial of a study in a few SQL queries on Optuna's own tables (RDB storages only)."""

from __future__ import annotations

import json
from typing import Any

import optuna

from .schema import RUNG, TrialRecord


def rdb_records(storage: optuna.storages.RDBStorage, study_id: int) -> list[TrialRecord]:
    """Every trial of a study in four SQL queries on Optuna's own tables, with no ORM objects.

    Optuna's `get_trials` builds a FrozenTrial per trial through its ORM: 19.5 s
    for 10,000 trials in SQLite here; this reads the same rows in well under a
    second (benchmarks/RESULTS.md). Table definitions come from Optuna's models;
    `tests/nas/test_store.py` checks the result against `get_trials`.
    """
    from optuna.distributions import json_to_distribution
    from optuna.storages._rdb import models
    from sqlalchemy import select

    trials = models.TrialModel.__table__
    users = models.TrialUserAttributeModel.__table__
    systems = models.TrialSystemAttributeModel.__table__
    params = models.TrialParamModel.__table__
    mine = select(trials.c.trial_id).where(trials.c.study_id == study_id).scalar_subquery()
    with storage.engine.connect() as c:
        rows = c.execute(select(trials.c.trial_id, trials.c.number, trials.c.state,
                                trials.c.datetime_start, trials.c.datetime_complete)
                         .where(trials.c.study_id == study_id)).all()
        user = c.execute(select(users.c.trial_id, users.c.key, users.c.value_json)
                         .where(users.c.trial_id.in_(mine))).all()
        system = c.execute(select(systems.c.trial_id, systems.c.key, systems.c.value_json)
                           .where(systems.c.trial_id.in_(mine))
                           .where(systems.c.key.like(f"{RUNG}%") | (systems.c.key == "fail_reason"))
                           ).all()
        par = c.execute(select(params.c.trial_id, params.c.param_name, params.c.param_value,
                               params.c.distribution_json).where(params.c.trial_id.in_(mine))).all()
    attrs: dict[int, dict[str, Any]] = {r.trial_id: {} for r in rows}
    sys_attrs: dict[int, dict[str, Any]] = {r.trial_id: {} for r in rows}
    values: dict[int, dict[str, Any]] = {r.trial_id: {} for r in rows}
    for tid, key, value in user:
        attrs[tid][key] = json.loads(value)
    for tid, key, value in system:
        sys_attrs[tid][key] = json.loads(value)
    dists: dict[str, Any] = {}  # a search has few distinct distributions: parse each once
    for tid, name, value, dist in par:
        d = dists.get(dist) or dists.setdefault(dist, json_to_distribution(dist))
        values[tid][name] = d.to_external_repr(value)
    return sorted((TrialRecord.from_parts(r.number, r.state, r.datetime_start, r.datetime_complete,
                                          attrs[r.trial_id], sys_attrs[r.trial_id],
                                          values[r.trial_id]) for r in rows),
                  key=lambda t: t.number)
