"""The trial protocol, written once: both engines run their trials through `TrialLoop`.

One trial (`run`), as Optuna's own `_run_trial` and `_tell` (optuna/study/_optimize.py,
_tell.py) do it for any objective: claim the trial for this process, step aside if
other workers' trials already fill the trial budget, sample its architecture,
evaluate it (`nas.trial.TrialEvaluator`, which writes nothing of its outcome), write
the outcome into the trial (`SearchStore.write_outcome`), and tell the study. The
Optuna engine tells through `study.optimize` (`objective` returns the values or
raises); a Ray trial tells the study itself (`run_and_tell`).

Between trials (`after`, `keep_going`): the launch's span in the study, the view's
`trials.jsonl` line, the progress line, the failure streak, and whether the whole
search's budget has anything left (trials whose worker is gone are failed and queued
again first).
"""

from __future__ import annotations

import time

import optuna

from shiftnas.record import RunDir, SearchStore, TrialRecord, new_session_id
from shiftnas.searchspace import NetCfg, Space, decode_net, sample

from .budget import Budget
from .progress import Progress
from .trial import TrialEvaluator


def trial_network(store: SearchStore, space: Space, trial: optuna.Trial) -> NetCfg:
    """The network `trial` evaluates: the one it was queued with (a `shiftnas decompose`
    network, `SearchStore.enqueue_network`), set to the space's data; else sampled."""
    arch, _ = store.queued_network(trial)
    if arch:
        return decode_net(arch).for_data(space.in_chans, space.classes, space.input_size)
    return sample(space, trial)


class TrialFailed(Exception):
    """Raised inside the objective so that Optuna records a failed trial (the search goes on)."""


class TrialLoop:
    """One process's part of a search: the trials it runs, and its books between them.

    `evaluator` runs trials and `space` samples them (a loop that only keeps the books
    between trials has neither); `progress` prints a line per trial; `session` names
    this launch's span in the study.
    """

    def __init__(self, budget: Budget, store: SearchStore, view: RunDir,
                 evaluator: TrialEvaluator | None = None, space: Space | None = None,
                 progress: Progress | None = None, session: str | None = None):
        self.budget, self.store, self.view = budget, store, view
        self.evaluator, self.space, self.progress = evaluator, space, progress
        self.session, self.started = session or new_session_id(), time.time()
        self.stopped: str | None = None  # the failure streak's common reason, once it stops

    # -- one trial ----------------------------------------------------------------

    def run(self, trial: optuna.Trial, net: NetCfg | None = None) -> TrialRecord:
        """Run one trial and write its outcome (sampling it here unless `net` is given)."""
        store, b = self.store, self.budget
        assert self.evaluator is not None, "this loop only keeps the books"
        store.claim(trial)
        if store.over_budget(trial.number, b.trials):  # another worker took the last slot
            return store.mark_surplus(trial)
        if net is None:
            assert self.space is not None, "sampling needs the space"
            net = trial_network(store, self.space, trial)
        try:
            out = self.evaluator(trial, net)
        except KeyboardInterrupt:
            store.mark_interrupted(trial)
            raise
        return store.write_outcome(trial, out, b.constraints)

    def objective(self, trial: optuna.Trial) -> list[float]:
        """The Optuna engine's objective: Optuna tells what this returns or raises."""
        out = self.run(trial)
        if out.state == "pruned":
            raise optuna.TrialPruned(out.reason)
        if out.state == "failed":
            raise TrialFailed(out.reason)
        return out.values(self.budget.objectives)

    def run_and_tell(self, trial_id: int, net: NetCfg) -> TrialRecord:
        """Run trial `trial_id`, asked and sampled elsewhere (a Ray trial), and tell it."""
        trial = self.store.trial(trial_id)
        with self.store.heartbeat(trial):
            out = self.run(trial, net)
            self.store.tell(trial, out, self.budget.objectives)
        return out

    # -- between trials ------------------------------------------------------------

    def touch(self) -> None:
        """Extend this launch's span in the study to now (the search's elapsed time)."""
        self.store.touch_session(self.session, self.started)

    def after(self, rec: TrialRecord) -> bool:
        """Keep the books of a trial that ended; returns whether to start another one."""
        self.touch()
        if not rec.surplus:
            self.view.append_trial(rec)
            if self.progress is not None:
                self.progress.trial_finished(rec)
        if rec.state == "failed" and self.stopped is None:
            self.stopped = self.store.failure_streak(self.budget.stop_after_failures)
        return self.keep_going()

    def keep_going(self) -> bool:
        """No failure streak, and the whole search's budget has something left."""
        if self.stopped is not None:
            return False
        self.store.recover(self.view.log)
        return self.store.budget_left(self.budget.trials, self.budget.time_budget)
