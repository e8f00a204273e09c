"""The live record of a search: `SearchStore`, the only code that writes the Optuna study.

Both engines, every worker, the evaluator and the end of a search talk to the study
through its verbs: open it (`open`), keep the run's metadata and each launch's span,
claim a trial, end it (`write_outcome` then `tell`, or `mark_surplus`,
`mark_interrupted`, `fail_lost`), report what other workers must see while a trial runs
(`set_metrics`, `set_latency`, `record_rung`, weights), and answer the budget's
questions (`budget_left`, `over_budget`, `failure_streak`, `recover`). What the study
holds is in `shiftnas.record.schema`; where it lives, in `shiftnas.record.storage`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import socket
import tempfile
import threading
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from shiftnas.errors import StorageError
from shiftnas.metrics import Constraint, Objective

from ._sql import rdb_records
from .schema import (
    LATENCY_CHECK,
    META,
    RUNG,
    SESSION,
    TRIAL_ATTRS,
    VIOLATIONS,
    RunMeta,
    TrialRecord,
    worker_id,
)
from .storage import HEARTBEAT_S, journal_path, make_artifact_store, make_storage, mask, sqlite_path

UNCLAIMED_S = 60  # a trial nobody claimed for this long was orphaned by a kill
NATIVE_CONSTRAINTS = hasattr(optuna.Trial, "set_constraint")  # Optuna >= 5
SURPLUS = "not run: other workers' trials filled the trial budget"
INTERRUPTED = "interrupted (Ctrl-C or SIGTERM); retried on resume"
_TELL = {"complete": TrialState.COMPLETE, "infeasible": TrialState.COMPLETE,
         "pruned": TrialState.PRUNED, "failed": TrialState.FAIL}


def new_session_id() -> str:
    return uuid.uuid4().hex[:12]


def _set(trial: optuna.Trial, **attrs: Any) -> None:
    """Write trial attributes, which must be `TrialRecord` fields (the one list of keys)."""
    for k, v in attrs.items():
        assert k in TRIAL_ATTRS, f"{k!r} is not a TrialRecord attribute"
        trial.set_user_attr(k, v)


def claim_new(study: optuna.Study, trial: FrozenTrial) -> None:
    """Mark `trial` as this process's the moment it exists (the samplers' `before_trial`; the
    loop claims it again).

    A kill between a trial's creation and the objective's first line left an
    unclaimed RUNNING trial, which `SearchStore.live_running` must count alive
    for a minute, so a resume in that minute stopped one trial short of the budget.
    """
    study._storage.set_trial_user_attr(trial._trial_id, "worker", worker_id())


class SearchStore:
    """One study in one storage, plus its artifact store; see the module docstring.

    Build it with `SearchStore.open(url, study_name, ...)`, once per process:
    `study` is an `optuna.Study` with the given sampler.
    """

    def __init__(self, url: str, study: optuna.Study, artifacts: str | None):
        self.url, self.study, self.artifacts_location = url, study, artifacts
        self._artifact_store = None

    @classmethod
    def open(cls, url: str, study_name: str, *, directions: list[str] | None = None,
             sampler: optuna.samplers.BaseSampler | None = None, artifacts: str | None = None,
             where: str = "storage") -> SearchStore:
        """Open the study `study_name`; create it when `directions` are given and it is missing."""
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        if directions is None:  # reading: never create an empty database or journal
            for path in (sqlite_path(url), journal_path(url)):
                if path is not None and not path.is_file():
                    raise StorageError(f"{where}: {mask(url)!r} does not exist ({path}); there "
                                       f"is no search there yet.")
        storage = make_storage(url, where)
        try:
            if directions is None:
                study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler)
            else:
                study = optuna.create_study(study_name=study_name, storage=storage,
                                            load_if_exists=True, directions=directions,
                                            sampler=sampler)
        except KeyError:
            names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
            raise StorageError(f"the storage {mask(url)!r} has no study {study_name!r}; it has "
                               f"{names or 'none'}.") from None
        except ValueError as exc:  # directions differ from the stored study's
            raise StorageError(f"study {study_name!r} in {mask(url)!r} cannot be opened as asked "
                               f"({exc}).") from None
        return cls(url, study, artifacts)

    # -- the run ---------------------------------------------------------------

    def meta(self) -> RunMeta | None:
        d = self.study.user_attrs.get(META)
        return RunMeta.from_dict(d) if d else None

    def set_meta(self, meta: RunMeta) -> None:
        self.study.set_user_attr(META, meta.to_dict())

    def set_latency_check(self, number: int, check: Mapping[str, Any]) -> None:
        """Record trial `number`'s latency measured after the search (its attributes are frozen)."""
        self.study.set_user_attr(f"{LATENCY_CHECK}{number}", dict(check))

    def latency_checks(self) -> dict[int, dict[str, Any]]:
        """`number -> {measured_ms, iqr_ms, predicted_ms, ...}` of every `set_latency_check`."""
        return {int(k[len(LATENCY_CHECK):]): dict(v) for k, v in self.study.user_attrs.items()
                if k.startswith(LATENCY_CHECK) and isinstance(v, dict)}

    def touch_session(self, session: str, started: float) -> None:
        """Record that this launch has been running from `started` until now (epoch seconds)."""
        self.study.set_user_attr(f"{SESSION}{session}", {
            "worker": worker_id(), "started": started, "seen": time.time()})

    def elapsed_s(self) -> float:
        """Wall time of the search: the union of every launch's [started, last seen]."""
        spans = sorted((v["started"], v["seen"]) for k, v in self.study.user_attrs.items()
                       if k.startswith(SESSION) and isinstance(v, dict))
        total, end = 0.0, -math.inf
        for a, b in spans:
            if b > end:
                total += b - max(a, end)
                end = b
        return total

    # -- reading trials -------------------------------------------------------

    def frozen(self, states: Iterable[TrialState] | None = None) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=tuple(states) if states else None)

    def records(self) -> list[TrialRecord]:
        """Every trial of the study, by number."""
        backend = getattr(self.study._storage, "_backend", self.study._storage)
        if isinstance(backend, optuna.storages.RDBStorage):
            with contextlib.suppress(Exception):  # an Optuna whose tables moved: the slow path
                return rdb_records(backend, self.study._study_id)
        return sorted((TrialRecord.from_frozen(t) for t in self.frozen()), key=lambda r: r.number)

    def record(self, number: int) -> TrialRecord:
        """Trial `number` as the storage holds it now."""
        return TrialRecord.from_frozen(self.study._storage.get_trial(self._trial_id(number)))

    def _trial_id(self, number: int) -> int:
        return self.study._storage.get_trial_id_from_study_id_trial_number(
            self.study._study_id, number)

    def finished(self) -> int:
        """Trials that count against the trial budget: complete, infeasible or pruned."""
        return len(self.frozen((TrialState.COMPLETE, TrialState.PRUNED)))

    def find_by_archid(self, archid: str) -> TrialRecord | None:
        """The first fully evaluated trial of this architecture, if any (duplicates reuse it)."""
        for t in self.frozen((TrialState.COMPLETE,)):
            if t.user_attrs.get("archid") == archid and t.user_attrs.get("reused_from") is None:
                return TrialRecord.from_frozen(t)
        return None

    def at_rung(self, epoch: int) -> dict[int, tuple[float, dict[str, float]]]:
        """`number -> (accuracy, metrics)` of every live or finished trial that reached `epoch`.

        Failed trials are left out: they are retried, and the retry reports again.
        """
        key = f"{RUNG}{epoch}"
        return {t.number: (float(t.system_attrs[key]), t.user_attrs.get("metrics") or {})
                for t in self.frozen((TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED))
                if key in t.system_attrs}

    # -- the budget -------------------------------------------------------------

    def live_running(self, before: int | None = None) -> int:
        """RUNNING trials that may still be alive (numbered below `before`, if given).

        A trial on this host is alive while its process is; on another host,
        until the storage's heartbeat goes stale (RDB storages; a journal file
        is for one machine). A trial not claimed yet is alive for its first
        `UNCLAIMED_S` seconds (a worker claims it within milliseconds; an older
        one was orphaned by a kill between its creation and its first line).
        """
        host, now = socket.gethostname(), datetime.now(timezone.utc)
        n = 0
        for t in self.frozen((TrialState.RUNNING,)):
            if before is not None and t.number >= before:
                continue
            who = t.user_attrs.get("worker")
            if who is None:
                started = t.datetime_start
                if started is not None and started.tzinfo is None:
                    started = started.astimezone(timezone.utc)
                n += started is not None and (now - started).total_seconds() < UNCLAIMED_S
                continue
            h, _, pid = who.rpartition(":")
            n += h != host or _alive(int(pid))
        return n

    def budget_left(self, trials: int | None, time_budget: float | None) -> bool:
        """Is any of the whole search's trial and time budget left (finished and live trials
        of every worker and launcher counted)?"""
        if trials is not None and self.finished() + self.live_running() >= trials:
            return False
        return time_budget is None or self.elapsed_s() < time_budget

    def over_budget(self, number: int, trials: int | None) -> bool:
        """Would running trial `number` exceed the trial budget? Lower numbers go first.

        Workers that finish at the same moment may both start a trial; the one
        with the higher number then steps aside, so the search ends with exactly
        `trials` finished trials.
        """
        return trials is not None and self.finished() + self.live_running(before=number) >= trials

    def failure_streak(self, n: int) -> str | None:
        """The common reason when the last `n` finished trials all failed, else None."""
        if n <= 0:
            return None
        done = [t for t in self.frozen((TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
                if t.datetime_complete is not None and not t.user_attrs.get("surplus")]
        last = sorted(done, key=lambda t: t.datetime_complete)[-n:]
        if len(last) < n or any(t.state != TrialState.FAIL for t in last):
            return None
        reasons = Counter(TrialRecord.from_frozen(t).reason or "no reason recorded" for t in last)
        return reasons.most_common(1)[0][0]

    def recover(self, log: Callable[[str], None] | None = None) -> list[int]:
        """Fail, and queue again with the same parameters, trials whose worker is gone.

        Same host: its process is dead. Other hosts: the RDB storage's
        heartbeat is stale (`optuna.storages.fail_stale_trials`). Returns their numbers.
        """
        failed_before = {t.number for t in self.frozen((TrialState.FAIL,))}
        with warnings.catch_warnings():  # a no-op for storages without a heartbeat
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)
        host = socket.gethostname()
        for t in self.frozen((TrialState.RUNNING,)):
            who = t.user_attrs.get("worker")
            if who is None:
                continue
            h, _, pid = who.rpartition(":")
            if h == host and not _alive(int(pid)):
                with contextlib.suppress(Exception):  # another launcher may have done it
                    self.study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        dead = [t for t in self.frozen((TrialState.FAIL,)) if t.number not in failed_before]
        for t in dead:
            self._retry(t)
            if log:
                log(f"trial {t.number} was left running by {t.user_attrs.get('worker', '?')}, "
                    f"which is gone; failed and queued again")
        return [t.number for t in dead]

    def retry_failed(self, log: Callable[[str], None] | None = None) -> list[int]:
        """Queue once more every failed trial that is neither a retry nor retried already."""
        out = [t.number for t in self.frozen((TrialState.FAIL,)) if self._retry(t)]
        if out and log:
            log(f"failed trials {out} queued again with the same parameters")
        return out

    def _retry(self, t: FrozenTrial) -> bool:
        queued = {k: t.user_attrs[k] for k in ("arch", "init_from") if t.user_attrs.get("init_from")}
        if not (t.params or queued) or t.user_attrs.get("retry_of") is not None \
                or t.user_attrs.get("surplus"):
            return False
        if any(o.user_attrs.get("retry_of") == t.number for o in self.frozen()):
            return False
        self.enqueue(t.params, retry_of=t.number, **queued)
        return True

    def enqueue(self, params: Mapping[str, Any], **attrs: Any) -> None:
        """Queue a trial with these parameters and record attributes (`TrialRecord` fields)."""
        assert set(attrs) <= set(TRIAL_ATTRS), sorted(set(attrs) - set(TRIAL_ATTRS))
        self.study.enqueue_trial(dict(params), user_attrs=attrs, skip_if_exists=False)

    def enqueue_network(self, arch: str, init_from: str) -> bool:
        """Queue network `arch` (canonical string) to be evaluated as it is, trained from the
        weights in folder `init_from`; once per search: False when that folder was queued before."""
        if any(t.user_attrs.get("init_from") == init_from for t in self.frozen()):
            return False
        self.enqueue({}, arch=arch, init_from=init_from)
        return True

    @staticmethod
    def queued_network(trial: optuna.Trial) -> tuple[str | None, str | None]:
        """The network string and weights folder `trial` was queued with (`enqueue_network`);
        (None, None) for a trial the sampler draws."""
        if not trial.user_attrs.get("init_from"):
            return None, None
        return trial.user_attrs.get("arch"), trial.user_attrs["init_from"]

    # -- a trial ----------------------------------------------------------------

    def ask(self) -> optuna.Trial:
        """A new trial, sampled by the study's sampler (an engine that tells it itself)."""
        with warnings.catch_warnings():  # the trial's runner beats the heartbeat itself
            warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
            return self.study.ask()

    def trial(self, trial_id: int) -> optuna.Trial:
        """The running trial `trial_id` (asked in another process) to write into."""
        return optuna.Trial(self.study, trial_id)

    def claim(self, trial: optuna.Trial) -> None:
        """Mark `trial` as run by this process (a dead process's trial is recognised by this)."""
        _set(trial, worker=worker_id())

    def set_metrics(self, trial: optuna.Trial, metrics: Mapping[str, float]) -> None:
        """The metrics a running trial has so far (the pruning rungs compare its costs)."""
        _set(trial, metrics=dict(metrics))

    def set_latency(self, trial: optuna.Trial, facts: Mapping[str, Any]) -> None:
        """How a running trial's latency was obtained, at once: other workers' predictors are
        fitted on every network measured so far, running ones included."""
        _set(trial, latency=dict(facts))

    def record_rung(self, trial: optuna.Trial, epoch: int, accuracy: float) -> None:
        self.study._storage.set_trial_system_attr(trial._trial_id, f"{RUNG}{epoch}",
                                                  float(accuracy))

    def write_outcome(self, trial: optuna.Trial, out: TrialRecord,
                      constraints: tuple[Constraint, ...],
                      weights: Mapping[str, Any] | None = None) -> TrialRecord:
        """Write a trial's outcome into it before it is told: the weights to keep (uploaded
        first, so the record names them), every attribute of `out` (`TrialRecord.attrs`), and
        its constraint values. Returns `out` as written."""
        if weights is not None:
            out = dataclasses.replace(out, weights=self.save_weights(trial, weights))
        for k, v in out.attrs().items():
            trial.set_user_attr(k, v)
        violations = out.violations(constraints)
        if NATIVE_CONSTRAINTS:
            for c, v in zip(constraints, violations):
                trial.set_constraint(str(c), v)
        else:  # older Optuna: the sampler's constraints_func reads this (`stored_violations`)
            trial.set_user_attr(VIOLATIONS, violations)
        return out

    def tell(self, trial: optuna.Trial, out: TrialRecord,
             objectives: tuple[Objective, ...]) -> None:
        """End the trial in Optuna: infeasible ones are COMPLETE, with their violations."""
        state = _TELL[out.state]
        self.study.tell(trial, state=state,
                        values=out.values(objectives) if state == TrialState.COMPLETE else None)

    def mark_surplus(self, trial: optuna.Trial) -> TrialRecord:
        """A trial that steps aside (see `over_budget`); returns its outcome: failed, not run."""
        _set(trial, surplus=True, reason=SURPLUS)
        return TrialRecord(trial.number, "failed", feasible=False, reason=SURPLUS, surplus=True)

    def mark_interrupted(self, trial: optuna.Trial) -> None:
        """Say why a trial stopped by Ctrl-C or SIGTERM fails (it is retried on resume)."""
        with contextlib.suppress(Exception):
            _set(trial, reason=INTERRUPTED)

    def fail_lost(self, number: int, reason: str) -> None:
        """Fail trial `number`, whose runner died before telling the study, with `reason`."""
        with contextlib.suppress(Exception):
            self.study._storage.set_trial_user_attr(self._trial_id(number), "reason", reason)
            self.study.tell(number, state=TrialState.FAIL)

    @contextlib.contextmanager
    def heartbeat(self, trial: optuna.Trial) -> Iterator[None]:
        """Beat the RDB storage's heartbeat while a trial runs outside `optimize` (which beats
        for its own trials), so that a trial whose node dies is seen as dead on every machine."""
        storage = self.study._storage
        if not (hasattr(storage, "record_heartbeat") and storage.get_heartbeat_interval()):
            yield
            return
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(HEARTBEAT_S):
                with contextlib.suppress(Exception):
                    storage.record_heartbeat(trial._trial_id)

        storage.record_heartbeat(trial._trial_id)
        t = threading.Thread(target=beat, daemon=True)
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join()

    def optimize(self, objective: Callable[[optuna.Trial], list[float]],
                 after: Callable[[TrialRecord], bool], catch: tuple[type[Exception], ...]) -> None:
        """Optuna's `optimize` on the study; after each trial, `after(record)` says whether
        to go on."""
        def callback(study: optuna.Study, frozen: FrozenTrial) -> None:
            if not after(TrialRecord.from_frozen(frozen)):
                study.stop()

        self.study.optimize(objective, callbacks=[callback], catch=catch, gc_after_trial=False)

    # -- weights ----------------------------------------------------------------

    def save_weights(self, trial: optuna.Trial | FrozenTrial, state_dict: Mapping) -> str:
        """Upload a state dict as an artifact of `trial`; return its artifact id."""
        import torch
        from optuna.artifacts import upload_artifact

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"trial_{trial.number:05d}.pt"
            torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, path)
            return upload_artifact(artifact_store=self.artifact_store, file_path=str(path),
                                   study_or_trial=trial, storage=self.study._storage)

    @property
    def artifact_store(self):
        if self._artifact_store is None:
            if self.artifacts_location is None:
                raise StorageError("this search has no artifact store; give `artifacts` in the "
                                   "budget, or --artifacts.")
            self._artifact_store = make_artifact_store(self.artifacts_location)
        return self._artifact_store

    @contextlib.contextmanager
    def weights_file(self, record: TrialRecord) -> Iterator[Path | None]:
        """A local copy of a trial's weights for the block (None when none were kept)."""
        if record.weights is None or self.artifacts_location is None:
            yield None
            return
        from optuna.artifacts import download_artifact

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "weights.pt"
            try:
                download_artifact(artifact_store=self.artifact_store, file_path=str(path),
                                  artifact_id=record.weights)
            except Exception:  # removed by keep_weights, or another artifact store
                yield None
                return
            yield path

    def remove_weights(self, records: Iterable[TrialRecord]) -> int:
        """Delete the weights of `records` from the artifact store; return how many went."""
        n = 0
        for r in records:
            if r.weights is not None:
                with contextlib.suppress(Exception):
                    self.artifact_store.remove(r.weights)
                    n += 1
        return n


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
