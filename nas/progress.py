"""Progress of a running search: trials done, the front so far, elapsed and remaining time.

One line per finished trial, read from the storage, so the counts include every
worker and every launcher of the search.
"""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO

import numpy as np

from shiftnas.metrics import METRICS, Objective, fmt_duration
from shiftnas.record import FINISHED, SearchStore, TrialRecord, candidates
from shiftnas.results.pareto import hypervolume, nondominated_mask, reference_point

from .budget import Budget


def front_summary(trials: list[TrialRecord],
                  objectives: tuple[Objective, ...]) -> tuple[int, float | None]:
    """Size of the current front and its hypervolume (2-3 objectives; reference: worst + 10%)."""
    pts = [[o.sign * t.metrics[o.name] for o in objectives] for t in candidates(trials)
           if all(t.metric(o.name) is not None for o in objectives)]
    if not pts:
        return 0, None
    p = np.asarray(pts, dtype=float)
    front = p[nondominated_mask(p)]
    hv = hypervolume(front, reference_point(p)) if p.shape[1] in (2, 3) else None
    return len(front), hv


class Progress:
    """Prints one line per finished trial (to stderr by default)."""

    def __init__(self, budget: Budget, store: SearchStore, stream: TextIO | None = None):
        self.budget, self.store = budget, store
        self.t0, self.done_at_start = time.monotonic(), store.finished()
        self.stream = stream  # None: whatever sys.stderr is when printing (picklable, for Ray)

    def remaining(self, done: int, elapsed: float) -> float | None:
        """Estimated seconds left: the smaller of the trial and the time budget's."""
        est = []
        if self.budget.time_budget is not None:
            est.append(max(0.0, self.budget.time_budget - elapsed))
        new = done - self.done_at_start
        if self.budget.trials is not None and new > 0:
            est.append(max(0, self.budget.trials - done) * (time.monotonic() - self.t0) / new)
        return min(est) if est else None

    def trial_finished(self, rec: TrialRecord) -> None:
        trials = self.store.records()
        done = sum(t.state in FINISHED for t in trials)
        size, hv = front_summary(trials, self.budget.objectives)
        total = self.budget.trials if self.budget.trials is not None else "?"
        shown = "  ".join(METRICS[o.name].fmt(rec.metric(o.name)) for o in self.budget.objectives
                          if rec.metric(o.name) is not None)
        note = f"(= trial {rec.reused_from})" if rec.reused_from is not None else (
            f"({rec.reason})" if rec.state != "complete" and rec.reason else "")
        elapsed = self.store.elapsed_s()
        left = self.remaining(done, elapsed)
        hv_text = f", HV {hv:.4g}" if hv is not None and math.isfinite(hv) else ""
        print(f"[{done:>4}/{total}] trial {rec.number:<4} {rec.state:<10} {shown} {note}".rstrip()
              + f" | front {size}{hv_text} | {fmt_duration(elapsed)} elapsed"
              + (f", ~{fmt_duration(left)} left" if left is not None else ""),
              file=self.stream or sys.stderr, flush=True)
