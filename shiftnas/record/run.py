"""A run as its readers see it: a snapshot of one search's metadata and every trial.

`open_run` loads one from a run directory (its `run.json` says where the record is) or
from a storage URL and study name; `read_run` from a store already open.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shiftnas.errors import ConfigError, StorageError
from shiftnas.metrics import Constraint, Objective

from .schema import STATES, RunMeta, TrialRecord
from .storage import mask
from .store import SearchStore
from .view import RunDir


@dataclass(frozen=True)
class Run:
    """A snapshot of one search: its metadata and every trial, read from the storage."""

    meta: RunMeta
    trials: tuple[TrialRecord, ...]  # sorted by number
    storage: str  # the storage URL, password masked
    study_name: str
    path: Path | None = None  # the run directory (the view), when there is one
    elapsed_s: float = 0.0  # wall time of the search so far
    store: SearchStore | None = field(default=None, compare=False, repr=False)
    latency_checks: dict[int, dict[str, Any]] = field(default_factory=dict)  # number -> check

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def engine(self) -> str:
        return self.meta.engine

    @property
    def objectives(self) -> tuple[Objective, ...]:
        return self.meta.objectives

    @property
    def constraints(self) -> tuple[Constraint, ...]:
        return self.meta.constraints

    @property
    def trials_budget(self) -> int | None:
        return self.meta.trials_budget

    def by_state(self, *states: str) -> list[TrialRecord]:
        """Trials in any of `states` (e.g. `run.by_state("complete")`)."""
        bad = [s for s in states if s not in STATES]
        if bad:
            raise ConfigError(f"unknown trial state {bad[0]!r}; states are {list(STATES)}.")
        return [t for t in self.trials if t.state in states]

    def candidates(self) -> list[TrialRecord]:
        """Feasible complete trials that may be on the front or be picked (see `candidates`)."""
        return candidates(self.trials)

    def column(self, name: str, trials: Iterable[TrialRecord] | None = None) -> list[float | None]:
        """Metric `name` of every trial (of `trials` if given), None where missing."""
        return [t.metric(name) for t in (self.trials if trials is None else trials)]

    def trial(self, number: int) -> TrialRecord:
        for t in self.trials:
            if t.number == number:
                return t
        nums = [t.number for t in self.trials]
        have = f"{min(nums)}..{max(nums)}" if nums else "none"
        raise ConfigError(f"run {self.study_name}: no trial number {number}; it has trials {have}.")

    def weights_file(self, record: TrialRecord):
        """Context manager: a local copy of the trial's weights, or of the trial it reused."""
        if self.store is None:
            return contextlib.nullcontext(None)
        if record.weights is None and record.reused_from is not None:
            record = self.trial(record.reused_from)
        return self.store.weights_file(record)


def candidates(trials: Iterable[TrialRecord]) -> list[TrialRecord]:
    """Feasible complete trials that may be on the front or be picked, by number.

    An architecture counts once, as its first complete trial: a duplicate
    reuses its result, and two workers that trained it at once give it no
    second chance on the front (so the front and every pick agree).
    """
    seen: set[str | None] = set()
    out = []
    for t in sorted(trials, key=lambda t: t.number):
        if t.state != "complete" or not t.feasible or t.reused_from is not None \
                or t.archid in seen:
            continue
        seen.add(t.archid)
        out.append(t)
    return out


def locate(run_dir: str | Path | None = None, storage: str | None = None,
           study: str | None = None, artifacts: str | None = None) -> tuple[str, str, str | None]:
    """`(storage URL, study name, artifact location)` from a run directory or explicit values."""
    if run_dir is not None:
        d = RunDir(run_dir).read_pointer()
        url = storage or d["storage"]
        if "***" in url and storage is None:
            raise ConfigError(f"{run_dir}: the run's storage URL {url!r} has a password, which "
                              f"shiftnas never writes down; give --storage with the full URL, or "
                              f"keep passwords in PGPASSWORD / ~/.pgpass.")
        return url, study or d["study"], artifacts or d.get("artifacts")
    if storage is None or study is None:
        raise ConfigError("give a run directory, or both --storage URL and --study NAME.")
    return storage, study, artifacts


def open_run(run_dir: str | Path | None = None, *, storage: str | None = None,
             study: str | None = None, artifacts: str | None = None) -> Run:
    """Load a run from its directory or from `storage` + `study` (+ `artifacts` for weights)."""
    url, name, art = locate(run_dir, storage, study, artifacts)
    return read_run(SearchStore.open(url, name, artifacts=art), run_dir)


def read_run(store: SearchStore, run_dir: str | Path | None = None) -> Run:
    """The run in `store` as it is now (`run_dir`: its view, when there is one)."""
    meta = store.meta()
    if meta is None:
        raise StorageError(f"study {store.study.study_name!r} in {mask(store.url)!r} was not made "
                           f"by shiftnas (it has no 'shiftnas' user attribute).")
    return Run(meta, tuple(store.records()), mask(store.url), store.study.study_name,
               Path(run_dir) if run_dir else None, store.elapsed_s(), store,
               store.latency_checks())
