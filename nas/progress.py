"""Progress of a running search: trials done, the front so far, elapsed and remaining time."""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO

import numpy as np

from shiftnas.results.pareto import hypervolume, nondominated_ranks, reference_point
from shiftnas.results.store import Objective

from .budget import Budget
from .store import RunStore


def _fmt_time(s: float) -> str:
    s = max(0, int(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s"


def _fmt_metric(name: str, v: float) -> str:
    if name == "accuracy":
        return f"acc {v:.3f}"
    if name in ("params", "macs"):
        return f"{name} {v / 1e6:.2f}M" if v >= 1e6 else f"{name} {v / 1e3:.1f}k"
    if name == "latency_ms":
        return f"lat {v:.3f}ms"
    return f"{name} {v:.4g}"


def front_summary(trials: list[dict], objectives: tuple[Objective, ...]) -> tuple[int, float | None]:
    """Size of the current front and its hypervolume (2-3 objectives; reference: worst + 10%)."""
    pts = [[o.sign * t["metrics"][o.name] for o in objectives] for t in trials
           if t["state"] == "complete" and t.get("feasible", True) and t.get("reused_from") is None
           and all(o.name in t["metrics"] for o in objectives)]
    if not pts:
        return 0, None
    p = np.asarray(pts, dtype=float)
    front = p[nondominated_ranks(p) == 0]
    hv = hypervolume(front, reference_point(p)) if p.shape[1] in (2, 3) else None
    return len(front), hv


class Progress:
    """Prints one line per finished trial (to stderr by default)."""

    def __init__(self, budget: Budget, store: RunStore, elapsed_before: float = 0.0,
                 stream: TextIO | None = None):
        self.budget, self.store = budget, store
        self.t0 = time.monotonic() - elapsed_before
        self.done_at_start = len(store.trials())
        self.stream = stream  # None: whatever sys.stderr is when printing (picklable, for Ray)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def remaining(self, done: int) -> float | None:
        """Estimated seconds left: the smaller of the trial and the time budget's."""
        est = []
        if self.budget.time_budget is not None:
            est.append(max(0.0, self.budget.time_budget - self.elapsed))
        new = done - self.done_at_start
        if self.budget.trials is not None and new > 0:
            est.append((self.budget.trials - done) * self.elapsed / max(done, 1))
        return min(est) if est else None

    def trial_finished(self, number: int, state: str, metrics: dict[str, float], reason: str | None,
                       reused_from: int | None = None) -> None:
        trials = list(self.store.trials().values())
        done = len(trials)
        size, hv = front_summary(trials, self.budget.objectives)
        total = self.budget.trials if self.budget.trials is not None else "?"
        shown = "  ".join(_fmt_metric(o.name, metrics[o.name])
                          for o in self.budget.objectives if o.name in metrics)
        note = f"(= trial {reused_from})" if reused_from is not None else (
            f"({reason})" if state != "complete" and reason else "")
        left = self.remaining(done)
        hv_text = f", HV {hv:.4g}" if hv is not None and math.isfinite(hv) else ""
        print(f"[{done:>4}/{total}] trial {number:<4} {state:<10} {shown} {note}".rstrip()
              + f" | front {size}{hv_text} | {_fmt_time(self.elapsed)} elapsed"
              + (f", ~{_fmt_time(left)} left" if left is not None else ""),
              file=self.stream or sys.stderr, flush=True)
