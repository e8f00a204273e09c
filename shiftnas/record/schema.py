"""What the search's record holds: one trial type, the run's metadata, and every key they are
stored under in the Optuna study.

A trial is a `TrialRecord`, whether the evaluator has just measured it (its outcome) or a
reader loads it back. Each field marked `_attr` is stored as the trial's Optuna user
attribute of the same name; that marking is the one list of attribute keys
(`TRIAL_ATTRS`), so a new per-trial fact is one field line here, and the writer
(`SearchStore.write_outcome`), the readers (`TrialRecord.from_parts`, the fast SQL read)
and the view's `trials.jsonl` follow. Besides those, per trial: Optuna's own params,
values, state and constraints (`Trial.set_constraint`), and the validation accuracy at
each pruning rung as the system attr `shiftnas:rung:<epoch>`, as Optuna's own
successive-halving pruner keeps its rungs. Per study: user attr `shiftnas` (the
`RunMeta`), `session:<id>` (each launch's host, pid and time span; the search's elapsed
time is their union) and `latency_check:<number>` (a front trial's predicted latency
measured when the search ended: a finished trial's attributes are frozen).
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from shiftnas import __version__
from shiftnas.metrics import METRICS, Constraint, Objective

STATES = ("complete", "pruned", "infeasible", "failed", "running", "waiting")
FINISHED = ("complete", "pruned", "infeasible")  # what the trial budget counts
META = "shiftnas"  # study user attr: the RunMeta
SESSION = "session:"  # study user attr prefix: one launch's span
LATENCY_CHECK = "latency_check:"  # study user attr prefix: a predicted latency measured afterwards
RUNG = "shiftnas:rung:"  # trial system attr prefix: validation accuracy at a pruning rung
VIOLATIONS = "violations"  # trial user attr, Optuna < 5 only: constraint values for the sampler
_OPTUNA_STATE = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned",
                 TrialState.FAIL: "failed", TrialState.RUNNING: "running",
                 TrialState.WAITING: "waiting"}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def worker_id() -> str:
    """`host:pid` of this process: who is running a trial."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _iso(t: datetime | None) -> str | None:
    return t.astimezone(timezone.utc).isoformat(timespec="seconds") if t else None


def _attr(default: Any = None, *, factory: Any = None, always: bool = False) -> Any:
    """A field stored as the trial's user attribute of the same name: always, or when set
    (not its default), so that a reader's default stands for an attribute never written."""
    meta = {"attr": "always" if always else "set"}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class TrialRecord:
    """One trial: its outcome as the evaluator returns it, or the trial as the storage holds it
    (finished, running or waiting)."""

    number: int  # trial number, unique within the study
    state: str = field(metadata={"attr": "always"})  # one of STATES
    archid: str | None = _attr()  # 12-hex-digit id of the architecture (None before sampling)
    arch: str | None = _attr()  # canonical network string
    metrics: dict[str, float] = _attr(factory=dict, always=True)  # what the evaluators measured
    feasible: bool = _attr(True, always=True)  # satisfies the run's constraints (complete trials)
    reason: str | None = _attr()  # why it was pruned, rejected or failed
    started: str | None = None  # ISO time
    finished: str | None = None  # ISO time
    duration_s: float | None = None  # wall time of the evaluation
    reused_from: int | None = _attr()  # the trial whose result this duplicate architecture reused
    retry_of: int | None = _attr()  # the failed trial this one retries
    params: dict[str, Any] = field(default_factory=dict)  # the sampler's decisions
    rungs: dict[int, float] = field(default_factory=dict)  # epoch -> validation accuracy
    worker: str | None = _attr()  # host:pid that ran it
    weights: str | None = _attr()  # artifact id of the proxy-trained weights
    # latency.mode predicted: source (measured | predicted), features, fitted_on (networks)
    latency: dict[str, Any] = _attr(factory=dict)
    surplus: bool = _attr(False)  # not run: other workers' trials filled the trial budget
    init_from: str | None = _attr()  # a `shiftnas decompose` folder this trial was queued from:
    # its network (`arch`, set when queued) is evaluated as it is, trained from its weights

    @property
    def latency_source(self) -> str | None:
        """`measured` or `predicted`: how `latency_ms` was obtained (None: no latency)."""
        if "latency_ms" not in self.metrics:
            return None
        return self.latency.get("source", "measured")

    @property
    def short(self) -> str:
        """Short label for plots: `#12`."""
        return f"#{self.number}"

    def metric(self, name: str) -> float | None:
        v = self.metrics.get(name)
        return None if v is None or not math.isfinite(v) else float(v)

    # -- what the sampler is told -------------------------------------------

    def values(self, objectives: tuple[Objective, ...]) -> list[float]:
        """Objective values for the sampler; one never measured counts as its metric's worst."""
        return [v if (v := self.metric(o.name)) is not None else METRICS[o.name].worst
                for o in objectives]

    def violations(self, constraints: tuple[Constraint, ...]) -> list[float]:
        """Per constraint, how far it is broken (<= 0: it holds), for Optuna's samplers.

        A value never measured breaks it when the trial was rejected or failed
        before measuring it, and holds otherwise (a pruned trial's accuracy).
        """
        out = []
        for c in constraints:
            v = c.violation(self.metrics)
            out.append(v if v is not None else (1.0 if self.state in ("infeasible", "failed")
                                                 else 0.0))
        return out

    # -- stored form ----------------------------------------------------------

    def attrs(self) -> dict[str, Any]:
        """The user attributes that store this record: the always-stored ones and every other
        one that is set (`SearchStore.write_outcome` writes these)."""
        out = {}
        for f in _ATTR_FIELDS:
            v = getattr(self, f.name)
            if f.metadata["attr"] == "always" or v != _default(f):
                out[f.name] = v
        out["metrics"] = {k: v for k, v in self.metrics.items() if math.isfinite(v)}
        if out.get("reason"):
            out["reason"] = out["reason"][:1000]
        return out

    @classmethod
    def from_frozen(cls, t: FrozenTrial) -> TrialRecord:
        return cls.from_parts(t.number, t.state, t.datetime_start, t.datetime_complete,
                              t.user_attrs, t.system_attrs, t.params)

    @classmethod
    def from_parts(cls, number: int, state: TrialState, start: datetime | None,
                   complete: datetime | None, user: Mapping[str, Any],
                   system: Mapping[str, Any], params: Mapping[str, Any]) -> TrialRecord:
        """The record from a trial's parts, as Optuna stores them (naive local times)."""
        kw = {k: user[k] for k in TRIAL_ATTRS if k in user}
        ours = kw.pop("state", None)  # infeasible is COMPLETE to Optuna; a live trial has none
        if state not in (TrialState.COMPLETE, TrialState.PRUNED):
            ours = None
        if state == TrialState.FAIL and not kw.get("reason"):
            kw["reason"] = system.get("fail_reason")  # Optuna < 5's, for an exception it caught
        kw["metrics"] = {k: float(v) for k, v in (kw.get("metrics") or {}).items()
                         if v is not None}
        kw["feasible"] = bool(kw.get("feasible", True))
        kw["latency"] = dict(kw.get("latency") or {})
        return cls(
            number=number, state=ours or _OPTUNA_STATE[state], started=_iso(start),
            finished=_iso(complete),
            duration_s=(complete - start).total_seconds() if start and complete else None,
            params=dict(params),
            rungs={int(k[len(RUNG):]): float(v) for k, v in system.items() if k.startswith(RUNG)},
            **kw)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["rungs"] = {str(k): v for k, v in self.rungs.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrialRecord:
        kw = {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d}
        kw["rungs"] = {int(k): float(v) for k, v in (d.get("rungs") or {}).items()}
        return cls(**kw)


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


_ATTR_FIELDS = tuple(f for f in dataclasses.fields(TrialRecord) if "attr" in f.metadata)
TRIAL_ATTRS = tuple(f.name for f in _ATTR_FIELDS)  # the trial user attributes shiftnas writes


def stored_violations(trial: FrozenTrial, n: int) -> list[float]:
    """The constraint values a trial stored for the sampler (Optuna < 5; see `VIOLATIONS`)."""
    return trial.user_attrs.get(VIOLATIONS, [0.0] * n)


@dataclass(frozen=True)
class RunMeta:
    """What a search optimises, kept in the study so that every launcher and reader sees it."""

    name: str  # the study name
    engine: str  # optuna | ray
    objectives: tuple[Objective, ...]
    constraints: tuple[Constraint, ...] = ()
    settings: str = ""  # hash of every budget field that changes what a trial means
    budget: dict[str, Any] = field(default_factory=dict)  # the budget as used (defaults filled)
    trials_budget: int | None = None  # the latest launch's trial budget
    time_budget_s: float | None = None  # the latest launch's wall-clock budget
    device: str = ""
    created: str = ""  # ISO time
    version: str = __version__  # shiftnas version that created the study

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["objectives"] = [{"name": o.name, "direction": o.direction} for o in self.objectives]
        d["constraints"] = [str(c) for c in self.constraints]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunMeta:
        kw = {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d}
        kw["objectives"] = tuple(Objective(o["name"], o["direction"]) for o in d["objectives"])
        kw["constraints"] = tuple(Constraint.parse(c) for c in d.get("constraints") or ())
        return cls(**kw)
